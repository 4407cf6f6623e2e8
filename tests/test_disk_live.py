"""The data directory of the real server (gunicorn, several workers) after busy runs: every
file and directory in it is the server user's alone whoever created it and whatever umask
started the server, a push killed mid-write leaves a file the next push removes, and a full
disk (SQLite's database included) is answered with a clear error that changed nothing.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from testkit.client import Client
from testkit.server import LiveServer
from tests.helpers import LiveServers, fill, tmpfs

pytestmark = pytest.mark.live

LEFTOVERS = [
    ".tokens.json.tmp",
    ".repo_66666666-6666-4666-8666-666666666666.json.tmp",
    ".changelog_66666666-6666-4666-8666-666666666666.jsonl.tmp",
    ".secret_key.4242.139872.tmp",
    ".health.4242.139872.tmp",
    "secret_key.tmp4242",
    "pullcache/.66666666-6666-4666-8666-666666666666.1-2-3.json.gz.tmp",
]
# Big pushes on a busy two-core machine take longer than a client's default 30 s.
TIMEOUT = 120


def big(prefix: str, count: int = 1000) -> dict:
    """A store over 256 KiB: large enough for the pull cache."""
    return {"humans": {f"{prefix}{n}": {"name": f"Person {n}", "notes": "x" * 300} for n in range(count)}}


def client_of(server: LiveServer, token: str | None = None) -> Client:
    return Client(server.url, token, timeout=TIMEOUT)


def start_in_a_shared_looking_directory(factory: LiveServers, data_dir: Path, **kwargs: Any) -> LiveServer:
    """The data directory made 0755 with a 0644 file and crash leftovers, and the server started with umask 022."""
    old = os.umask(0o022)
    try:
        data_dir.mkdir(parents=True)
        os.chmod(data_dir, 0o755)
        for name in ("notes.txt", *LEFTOVERS):
            path = data_dir / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"left by an operator or a killed process")
            os.chmod(path, 0o644)
        return factory.start(data_dir=data_dir, **kwargs)
    finally:
        os.umask(old)


def assert_private(data_dir: Path) -> list[str]:
    """Every directory under ``data_dir`` (itself included) is 0700 and every file 0600; returns the names."""
    wrong = []
    names = []
    for root, dirnames, filenames in os.walk(data_dir):
        for path in [Path(root)] + [Path(root) / name for name in dirnames]:
            mode = os.lstat(path).st_mode
            if not stat.S_ISDIR(mode) or stat.S_IMODE(mode) != 0o700:
                wrong.append(f"{path} {stat.filemode(mode)}")
        for name in filenames:
            path = Path(root) / name
            names.append(str(path.relative_to(data_dir)))
            mode = os.lstat(path).st_mode
            if not stat.S_ISREG(mode) or stat.S_IMODE(mode) != 0o600:
                wrong.append(f"{path} {stat.filemode(mode)}")
    assert wrong == []
    return names


def busy_run(server: LiveServer) -> dict[str, Client]:
    """What clients do all day: accounts, big pushes, plain, gzip and conditional pulls, changes, status."""
    clients = {}
    for name in ("admin", "ann", "bob"):
        clients[name] = client_of(server)
        clients[name].register(name)
    for round_ in range(2):
        for name, client in clients.items():
            client.push(big(f"{name}{round_}-"), round_)  # answered 200
            plain = client.get("/api/sync")
            packed = client.get("/api/sync", headers={"Accept-Encoding": "gzip"})
            assert packed.headers["Content-Encoding"] == "gzip" and packed.content == plain.content
            again = client.get("/api/sync", headers={"If-None-Match": plain.headers["ETag"]})
            assert again.status_code == 304
            assert client.changes(since=0)["currentVersion"] == round_ + 1
            assert client.status()["account"]["records"] == 1000 * (round_ + 1)
    login = client_of(server)
    login.login("ann")  # answered 200
    changed = login.post("/api/auth/change-password", {"currentPassword": "secret1", "newPassword": "secret2"})
    assert changed.status_code == 200, changed.text
    clients["bob"].logout()  # answered 200
    assert clients["admin"].get("/api/admin/users").status_code == 200
    return clients


def kill_a_push_mid_write(server: LiveServer, client: Client, user_id: str) -> Path:
    """SIGKILL every worker while a large push of ``client`` writes its repository file; returns the file it left."""
    temporary = server.data_dir / f".repo_{user_id}.json.tmp"
    pusher_client = client_of(server, client.token)
    for attempt in range(6):
        body = {"stores": big(f"killed{attempt}-", 40000)}
        pusher = threading.Thread(target=_swallow, args=(pusher_client, body))
        pusher.start()
        deadline = time.monotonic() + 120
        while not temporary.exists() and pusher.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0005)
        if temporary.exists():
            for pid in server.worker_pids():
                os.kill(pid, signal.SIGKILL)
        pusher.join(120)
        if temporary.exists():
            return temporary
    pytest.fail("no push could be caught writing its repository file")


def _swallow(client: Client, body: dict) -> None:
    """Push ``body``; the connection dying under it is what the caller wants."""
    try:
        client.post("/api/sync", body)
    except requests.RequestException:
        pass


def wait_for_workers(server: LiveServer) -> None:
    health = client_of(server)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if health.get("/api/auth/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail("the workers did not come back")


@pytest.mark.files_only
def test_files_storage_every_file_is_private_and_crash_leftovers_go(
    live_server_factory: LiveServers, tmp_path: Path
) -> None:
    data_dir = tmp_path / "server" / "data"
    server = start_in_a_shared_looking_directory(
        live_server_factory, data_dir, workers=3, env={"PZLS_LOGIN_RATE": "1000/minute"}
    )
    try:
        assert [name for name in LEFTOVERS if (data_dir / name).exists()] == []  # removed at start
        admin = busy_run(server)["admin"]
        user_id = admin.me()["user"]["id"]
        left = kill_a_push_mid_write(server, admin, user_id)
        wait_for_workers(server)
        assert left.exists()  # the master forks new workers; no start has run
        version = admin.changes(since=0)["currentVersion"]
        response = admin.post("/api/sync", {"clientVersion": version, "stores": {"tags": {"t1": {}}}})
        assert response.status_code == 200, response.text
        assert not left.exists()  # the user's next push removed it
        assert [n for n in os.listdir(data_dir) if n.endswith(".tmp")] == []
        names = assert_private(data_dir)
    finally:
        server.stop()
    for expected in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "secret_key", "tokens.json", "tokens.lock"):
        assert expected in names
    assert {f"repo_{user_id}.json", f"repo_{user_id}.lock"} <= set(names)
    assert [n for n in names if n.startswith(f"repo_{user_id}.") and n.endswith(".idx")]  # the snapshot's index
    assert [n for n in names if n.startswith("pullcache/") and n.endswith(".json.gz")]
    assert "notes.txt" in names  # the operator's file is kept, made private


@pytest.mark.postgres
def test_database_storage_the_data_directory_is_private_too(live_server_factory: LiveServers, tmp_path: Path) -> None:
    server = start_in_a_shared_looking_directory(
        live_server_factory,
        tmp_path / "server" / "data",
        storage="database",  # on a throwaway PostgreSQL database of the factory's
        workers=2,
        env={"PZLS_LOGIN_RATE": "1000/minute"},
    )
    try:
        assert [name for name in LEFTOVERS if (server.data_dir / name).exists()] == []
        busy_run(server)
        names = assert_private(server.data_dir)
    finally:
        server.stop()
    assert "secret_key" in names and "db.sqlite3" not in names
    cached = [n for n in names if n.startswith("pullcache/")]
    assert [n for n in cached if n.endswith(".json")] and [n for n in cached if n.endswith(".json.gz")]


@pytest.fixture
def server_on_a_small_disk(live_server_factory: LiveServers, tmp_path: Path) -> Iterator[LiveServer]:
    with tmpfs(tmp_path / "disk", "48m") as mount:
        # The log stays off the small disk: filling it must not silence the server.
        server = live_server_factory.start(
            data_dir=mount / "data",
            log_path=tmp_path / "server.log",
            workers=2,
            env={"PZLS_LOGIN_RATE": "1000/minute"},
        )
        try:
            yield server
        finally:
            server.stop()  # before the file system goes


def pzls_files(data_dir: Path) -> dict[str, bytes]:
    """Every file but SQLite's (which keeps its own transactions) and the filler, with its bytes."""
    return {
        str(p.relative_to(data_dir)): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("db.sqlite3")
    }


@pytest.mark.files_only
def test_on_a_full_disk_pushes_and_logins_fail_clearly_change_nothing_and_work_again(
    server_on_a_small_disk: LiveServer,
) -> None:
    server = server_on_a_small_disk
    client = client_of(server)
    anonymous = client_of(server)  # health and logins, without a token
    client.register("alice")
    client.push(big("a"), 0)  # answered 200
    pulled = client.get("/api/sync").content
    filler = fill(server.data_dir.parent)
    before = pzls_files(server.data_dir)

    health = anonymous.get("/api/auth/health")
    assert (health.status_code, health.json()) == (503, {"status": "unavailable", "error": "Data directory is full"})
    for stores in (big("b"), {"humans": {"a1": {"name": "Renamed"}}}):
        response = client.post("/api/sync", {"clientVersion": 1, "stores": stores})
        assert (response.status_code, response.json()) == (507, {"error": "Not enough disk space on the server"})
    for _ in range(3):
        login = anonymous.post("/api/auth/login", {"username": "alice", "password": "secret1"})
        assert (login.status_code, login.json()) == (507, {"error": "Not enough disk space on the server"})
    assert pzls_files(server.data_dir) == before
    assert client.get("/api/sync").content == pulled
    packed = client.get("/api/sync", headers={"Accept-Encoding": "gzip"})  # compressed on the fly
    assert packed.headers["Content-Encoding"] == "gzip" and packed.content == pulled  # requests decompresses

    filler.unlink()
    assert anonymous.get("/api/auth/health").status_code == 200
    response = client.post("/api/sync", {"clientVersion": 1, "stores": {"humans": {"a1": {"name": "Renamed"}}}})
    assert response.status_code == 200 and response.json()["version"] == 2
    assert anonymous.post("/api/auth/login", {"username": "alice", "password": "secret1"}).status_code == 200
