"""What the test modules share: the in-process API client, assertions, small disks, and the rules for what may skip.

Fixtures are in conftest.py; test modules import from here (and from
``testkit``), never from conftest or from one another.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import pytest
from django.conf import settings
from django.utils.module_loading import import_string
from rest_framework.test import APIClient

from pzls_site.env import store_settings
from testkit.client import Calls
from testkit.database import DatabaseUnavailable
from testkit.server import ROOT, ServerFactory

if TYPE_CHECKING:
    from playwright.sync_api import Browser

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(message: str) -> NoReturn:
    """A server or program the test needs is missing: skip on a laptop, fail in CI (``CI=true``), where it must run."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: this test must run)")
    pytest.skip(message)


# --- settings -----------------------------------------------------------------------


def data_dir_settings(
    directory: Path, *, token_backend: str | None = None, sync_backend: str | None = None
) -> dict[str, Any]:
    """Settings that put the data directory and both stores in ``directory``.

    Each store keeps the backend it has unless one is named.
    """
    token_store, sync_store = store_settings(
        "files",
        directory,
        token_backend=token_backend or settings.PZLS_TOKEN_STORE["BACKEND"],
        sync_backend=sync_backend or settings.PZLS_SYNC_STORE["BACKEND"],
    )
    return {"PZLS_DATA_DIR": directory, "PZLS_TOKEN_STORE": token_store, "PZLS_SYNC_STORE": sync_store}


def settings_in_subprocess(data_dir: Path, code: str, **env: str) -> str:
    """Run ``code`` after loading pzls_site.settings fresh with this environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PZLS_") and k != "DJANGO_SETTINGS_MODULE"}
    clean.update({"PZLS_DATA_DIR": str(data_dir), **env})
    result = subprocess.run(
        [sys.executable, "-c", f"from pzls_site import settings as s\n{code}"],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.strip()


# --- the API in process ----------------------------------------------------------------


class Api(Calls):
    """The API through Django's test client, as Pazator talks to it (``testkit.client.Calls``)."""

    def __init__(self) -> None:
        self.client = APIClient()
        self.token: str | None = None

    def _headers(self, token: str | None) -> dict[str, Any]:
        token = token if token is not None else self.token
        return {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def get(self, path: str, *, token: str | None = None, **extra: Any) -> Any:
        return self.client.get(path, content_type="application/json", **self._headers(token), **extra)

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        token: str | None = None,
        content_type: str = "application/json",
        **extra: Any,
    ) -> Any:
        """POST ``body`` as JSON, or ``data``: bytes sent as they are, as ``content_type``."""
        if data is not None:
            return self.client.post(path, data, content_type=content_type, **self._headers(token), **extra)
        return self.client.post(path, body if body is not None else {}, format="json", **self._headers(token), **extra)

    def delete(self, path: str, *, token: str | None = None, **extra: Any) -> Any:
        return self.client.delete(path, content_type="application/json", **self._headers(token), **extra)

    def put(
        self,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        token: str | None = None,
        content_type: str = "application/json",
        **extra: Any,
    ) -> Any:
        """PUT ``body`` as JSON, or ``data``: bytes sent as they are, as ``content_type``."""
        payload = data if data is not None else orjson.dumps(body if body is not None else {})
        return self.client.put(path, payload, content_type=content_type, **self._headers(token), **extra)


# --- assertions ---------------------------------------------------------------------------


def assert_error(response: Any, status: int, message: str | None = None) -> str:
    """The answer is exactly ``{"error": <string>}`` as JSON with ``status``; returns the text."""
    assert response.status_code == status, (response.status_code, response.content)
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = orjson.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    if message is not None:
        assert body["error"] == message
    return body["error"]


def assert_implements_every_method(base: type, path: str) -> None:
    """The backend class at ``path`` overrides every public method ``base`` leaves to its backends (those that
    raise NotImplementedError; the base implements the others on top of them)."""
    cls = import_string(path)
    for name, member in inspect.getmembers(base, inspect.isfunction):
        if not name.startswith("_") and "raise NotImplementedError" in inspect.getsource(member):
            assert getattr(cls, name) is not member, f"{path} does not implement {name}"


def in_threads(count: int, work: Callable[[int], object]) -> None:
    """Run ``work(0)`` ... ``work(count - 1)`` at once, one thread each; re-raise the first exception any raised."""
    errors: list[BaseException] = []

    def run(number: int) -> None:
        try:
            work(number)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


# Tables whose rows a rejected request may legitimately write: the login rate
# limit counts failed logins (that is its job).
VOLATILE_TABLES = {"accounts_loginattemptwindow"}


def snapshot(data_dir: Path) -> dict[str, Any]:
    """What a live server's data directory holds: every file's bytes (hashed) and every database row."""
    state: dict[str, Any] = {}
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and not path.name.startswith("db.sqlite3"):
            state[str(path.relative_to(data_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    with sqlite3.connect(f"file:{data_dir / 'db.sqlite3'}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            if table in VOLATILE_TABLES:
                continue
            rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
            if table == "sqlite_sequence":  # AUTOINCREMENT counters, the volatile tables' included
                rows = [row for row in rows if row[0] not in VOLATILE_TABLES]
            state[f"table {table}"] = sorted(map(repr, rows))
    return state


# --- small disks ---------------------------------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small, real file system at ``path`` for the ``with`` block: a tmpfs of ``size``, mounted as root.

    For tests of full and read-only disks; where mounting is not allowed, see ``unavailable``.
    """
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or str(exc)
        unavailable(f"cannot mount a tmpfs at {path} (needs root): {detail!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the file system has no byte left; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for block in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def read_only(path: Path, on: bool = True) -> None:
    """Remount the tmpfs at ``path`` read-only (which stops root too, unlike permission bits), or back."""
    _mount("-o", f"remount,{'ro' if on else 'rw'}", str(path))


# --- live servers and the browser -------------------------------------------------------------


class LiveServers(ServerFactory):
    """``testkit.server.ServerFactory`` in a test: without PostgreSQL the test skips, or fails in CI."""

    def database(self) -> str:
        try:
            return super().database()
        except DatabaseUnavailable as exc:
            unavailable(str(exc))


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (``make test`` installs it; missing, see ``unavailable``).

    Django refuses database access while Playwright's event loop runs in the
    thread, so a test using it must not touch the test database meanwhile.
    """
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# --- repository stores driven directly ---------------------------------------------------


def store_push(
    store: Any,
    user_id: str,
    stores: dict,
    *,
    client_version: int | None = 0,
    timestamp: str = "2026-05-17T10:04:05.123Z",
) -> Any:
    """A full push of parsed ``stores`` straight into ``store`` for an id no user needs to have (the service's one way)."""
    from sync.merge import encode_stores
    from sync.services import push_records

    return push_records(
        user_id=user_id,
        stores=encode_stores(stores),
        client_version=client_version,
        timestamp=timestamp,
        store=store,
        check_user=False,
    )
