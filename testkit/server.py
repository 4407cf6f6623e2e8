"""Start the real PZLS server the way ``make run`` does, for the live-server tests and the benchmark.

``LiveServer`` runs ``scripts/serve.sh`` (migrate, collectstatic, then gunicorn
with several workers) in its own process group with its own data directory and
port, waits until ``/api/auth/health`` answers, and stops or kills the whole
group. ``ServerFactory`` starts any number of them, on the files or the
database storage (a throwaway PostgreSQL database each unless told which), and
stops every one it started, then drops the databases.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import psutil
import requests

from testkit.client import Client
from testkit.database import throwaway_database

ROOT = Path(__file__).resolve().parent.parent

Storage = Literal["files", "database"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _inherited_environment() -> dict[str, str]:
    """This process's environment without what would configure the server behind the caller's back.

    A developer's own ``PZLS_*``, ``DATABASE_URL`` or ``DJANGO_SETTINGS_MODULE``
    (the test suite's, for one) must not reach a server started here.
    """
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PZLS_") and name not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }


class LiveServer:
    """One PZLS server process group on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        *,
        storage: Storage = "files",
        database_url: str | None = None,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        if storage == "database" and database_url is None:
            raise ValueError("the database storage needs a database_url")
        self.data_dir = Path(data_dir)
        self.storage, self.database_url = storage, database_url
        self.port = port or free_port()
        self.workers = workers
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        # Beside the data directory unless told; a test that fills the data
        # directory's disk keeps the log elsewhere.
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> Client:
        """A new HTTP client of this server (with ``token``, or none until it registers or logs in)."""
        return Client(self.url, token)

    def environment(self) -> dict[str, str]:
        """What ``scripts/serve.sh`` is started with: the settings an operator would give ``make run``."""
        return {
            **_inherited_environment(),
            "PORT": str(self.port),
            "PZLS_BIND_HOST": "127.0.0.1",
            "PZLS_DATA_DIR": str(self.data_dir),
            "PZLS_WORKERS": str(self.workers),
            "PZLS_VENV": str(Path(sys.prefix)),
            "PZLS_STORAGE": self.storage,
            **({"DATABASE_URL": self.database_url} if self.database_url else {}),
            **self.extra_env,
        }

    def start(self, timeout: float = 60) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["bash", str(ROOT / "scripts" / "serve.sh")],
                cwd=ROOT,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/api/auth/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")

    def log(self, limit: int = 5000) -> str:
        """The end of what the server wrote (its last ``limit`` characters)."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the whole process group: master and workers die at once, mid-request."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Shut down gracefully (SIGTERM), killing whatever is left after 30 s."""
        self._signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def worker_pids(self) -> list[int]:
        """PIDs of the gunicorn workers (children of the master, which ``serve.sh`` execs into)."""
        if self.process is None or self.process.poll() is not None:
            return []
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerFactory:
    """Starts live servers under ``root`` and, on ``close``, stops them all and drops their databases."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.servers: list[LiveServer] = []
        self._databases = contextlib.ExitStack()

    def database(self) -> str:
        """The URL of a new, empty PostgreSQL database, dropped on ``close`` (``DatabaseUnavailable`` without a server)."""
        return self._databases.enter_context(throwaway_database())

    def start(
        self,
        *,
        storage: Storage = "files",
        database_url: str | None = None,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        timeout: float = 60,
    ) -> LiveServer:
        """Start a server and wait until it answers.

        ``storage="database"`` puts it on ``database_url``, or on a throwaway
        database of its own. ``data_dir`` (default a new directory) may be an
        earlier server's, to restart on its data; ``env`` adds or overrides
        settings (``PZLS_LOGIN_RATE``, ...). ``log_path`` is where the server's
        output goes (default beside the data directory).
        """
        if storage == "database" and database_url is None:
            database_url = self.database()
        if data_dir is None:
            data_dir = self.root / f"server-{len(self.servers) + 1}" / "data"
        server = LiveServer(
            data_dir, storage=storage, database_url=database_url, workers=workers, env=env, log_path=log_path
        )
        self.servers.append(server)
        return server.start(timeout=timeout)

    def close(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
        self._databases.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
