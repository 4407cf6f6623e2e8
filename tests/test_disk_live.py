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

import orjson
import pytest
import requests

from tests.liveserver import LiveServer
from tests.postgresql.throwaway import throwaway_database
from tests.tmpfs import fill, tmpfs

pytestmark = pytest.mark.e2e

LEFTOVERS = [
    ".tokens.json.tmp",
    ".repo_66666666-6666-4666-8666-666666666666.json.tmp",
    ".changelog_66666666-6666-4666-8666-666666666666.jsonl.tmp",
    ".secret_key.4242.139872.tmp",
    ".health.4242.139872.tmp",
    "secret_key.tmp4242",
    "pullcache/.66666666-6666-4666-8666-666666666666.1-2-3.json.gz.tmp",
]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def big(prefix: str, count: int = 1000) -> dict:
    """A store over 256 KiB: large enough for the pull cache."""
    return {"humans": {f"{prefix}{n}": {"name": f"Person {n}", "notes": "x" * 300} for n in range(count)}}


class Client:
    def __init__(self, server: LiveServer) -> None:
        self.url = server.url
        self.session = requests.Session()

    def post(self, path: str, body: object, token: str | None = None) -> requests.Response:
        headers = auth(token) if token else {"Content-Type": "application/json"}
        return self.session.post(self.url + path, data=orjson.dumps(body), headers=headers, timeout=120)

    def get(self, path: str, token: str | None = None, **headers: str) -> requests.Response:
        return self.session.get(self.url + path, headers={**(auth(token) if token else {}), **headers}, timeout=60)

    def register(self, username: str, password: str = "secret1") -> tuple[str, str]:
        response = self.post("/api/auth/register", {"username": username, "password": password})
        assert response.status_code == 200, response.text
        return response.json()["token"], response.json()["user"]["id"]


def start_in_a_shared_looking_directory(data_dir: Path, **kwargs: object) -> LiveServer:
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
        return LiveServer(data_dir, **kwargs).start()  # type: ignore[arg-type]
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


def busy_run(client: Client) -> dict[str, str]:
    """What clients do all day: accounts, big pushes, plain, gzip and conditional pulls, changes, status."""
    tokens = {}
    for name in ("admin", "ann", "bob"):
        tokens[name], _ = client.register(name)
    for round_ in range(2):
        for name, token in tokens.items():
            response = client.post("/api/sync", {"clientVersion": round_, "stores": big(f"{name}{round_}-")}, token)
            assert response.status_code == 200, response.text
            plain = client.get("/api/sync", token)
            packed = client.get("/api/sync", token, **{"Accept-Encoding": "gzip"})
            assert packed.headers["Content-Encoding"] == "gzip" and packed.content == plain.content
            again = client.get("/api/sync", token, **{"If-None-Match": plain.headers["ETag"]})
            assert again.status_code == 304
            assert client.get("/api/sync/changes?since=0", token).json()["currentVersion"] == round_ + 1
            assert client.get("/api/sync/status", token).json()["account"]["records"] == 1000 * (round_ + 1)
    login = client.post("/api/auth/login", {"username": "ann", "password": "secret1"})
    assert login.status_code == 200
    changed = client.post(
        "/api/auth/change-password", {"currentPassword": "secret1", "newPassword": "secret2"}, login.json()["token"]
    )
    assert changed.status_code == 200, changed.text
    assert client.post("/api/auth/logout", {}, tokens["bob"]).status_code == 200
    assert client.get("/api/admin/users", tokens["admin"]).status_code == 200
    return tokens


def kill_a_push_mid_write(server: LiveServer, client: Client, token: str, user_id: str) -> Path:
    """SIGKILL every worker while a large push writes its repository file; returns the file it left."""
    temporary = server.data_dir / f".repo_{user_id}.json.tmp"
    for attempt in range(6):
        body = {"stores": big(f"killed{attempt}-", 40000)}
        pusher = threading.Thread(target=lambda b=body: _swallow(client.post, "/api/sync", b, token))
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


def _swallow(call, *args) -> None:
    try:
        call(*args)
    except requests.RequestException:
        pass


def wait_for_workers(server: LiveServer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(server.url + "/api/auth/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail("the workers did not come back")


def test_files_storage_every_file_is_private_and_crash_leftovers_go(tmp_path: Path) -> None:
    data_dir = tmp_path / "server" / "data"
    server = start_in_a_shared_looking_directory(data_dir, workers=3, env={"PZLS_LOGIN_RATE": "1000/minute"})
    try:
        assert [name for name in LEFTOVERS if (data_dir / name).exists()] == []  # removed at start
        client = Client(server)
        tokens = busy_run(client)
        token = tokens["admin"]
        user_id = client.get("/api/auth/me", token).json()["user"]["id"]
        left = kill_a_push_mid_write(server, client, token, user_id)
        wait_for_workers(server)
        assert left.exists()  # the master forks new workers; no start has run
        version = client.get("/api/sync/changes?since=0", token).json()["currentVersion"]
        response = client.post("/api/sync", {"clientVersion": version, "stores": {"tags": {"t1": {}}}}, token)
        assert response.status_code == 200, response.text
        assert not left.exists()  # the user's next push removed it
        assert [n for n in os.listdir(data_dir) if n.endswith(".tmp")] == []
        names = assert_private(data_dir)
    finally:
        server.stop()
    for expected in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "secret_key", "tokens.json", "tokens.lock"):
        assert expected in names
    assert {f"repo_{user_id}.json", f"repo_{user_id}.meta.json", f"repo_{user_id}.lock"} <= set(names)
    assert [n for n in names if n.startswith("pullcache/") and n.endswith(".json.gz")]
    assert "notes.txt" in names  # the operator's file is kept, made private


def test_database_storage_the_data_directory_is_private_too(tmp_path: Path) -> None:
    with throwaway_database() as url:
        env = {"PZLS_STORAGE": "database", "DATABASE_URL": url, "PZLS_LOGIN_RATE": "1000/minute"}
        server = start_in_a_shared_looking_directory(tmp_path / "server" / "data", workers=2, env=env)
        try:
            assert [name for name in LEFTOVERS if (server.data_dir / name).exists()] == []
            busy_run(Client(server))
            names = assert_private(server.data_dir)
        finally:
            server.stop()
    assert "secret_key" in names and "db.sqlite3" not in names
    cached = [n for n in names if n.startswith("pullcache/")]
    assert [n for n in cached if n.endswith(".json")] and [n for n in cached if n.endswith(".json.gz")]


@pytest.fixture
def server_on_a_small_disk(tmp_path: Path) -> Iterator[LiveServer]:
    with tmpfs(tmp_path / "disk", "48m") as mount:
        server = LiveServer(mount / "data", workers=2, env={"PZLS_LOGIN_RATE": "1000/minute"})
        server.log_path = tmp_path / "server.log"
        server.start()
        try:
            yield server
        finally:
            server.stop()


def pzls_files(data_dir: Path) -> dict[str, bytes]:
    """Every file but SQLite's (which keeps its own transactions) and the filler, with its bytes."""
    return {
        str(p.relative_to(data_dir)): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("db.sqlite3")
    }


def test_on_a_full_disk_pushes_and_logins_fail_clearly_change_nothing_and_work_again(
    server_on_a_small_disk: LiveServer,
) -> None:
    server = server_on_a_small_disk
    client = Client(server)
    token, _ = client.register("alice")
    assert client.post("/api/sync", {"clientVersion": 0, "stores": big("a")}, token).status_code == 200
    pulled = client.get("/api/sync", token).content
    filler = fill(server.data_dir.parent)
    before = pzls_files(server.data_dir)

    health = client.get("/api/auth/health")
    assert (health.status_code, health.json()) == (503, {"status": "unavailable", "error": "Data directory is full"})
    for stores in (big("b"), {"humans": {"a1": {"name": "Renamed"}}}):
        response = client.post("/api/sync", {"clientVersion": 1, "stores": stores}, token)
        assert (response.status_code, response.json()) == (507, {"error": "Not enough disk space on the server"})
    for _ in range(3):
        login = client.post("/api/auth/login", {"username": "alice", "password": "secret1"})
        assert (login.status_code, login.json()) == (507, {"error": "Not enough disk space on the server"})
    assert pzls_files(server.data_dir) == before
    assert client.get("/api/sync", token).content == pulled
    packed = client.get("/api/sync", token, **{"Accept-Encoding": "gzip"})  # compressed on the fly
    assert packed.headers["Content-Encoding"] == "gzip" and packed.content == pulled  # requests decompresses

    filler.unlink()
    assert client.get("/api/auth/health").status_code == 200
    response = client.post("/api/sync", {"clientVersion": 1, "stores": {"humans": {"a1": {"name": "Renamed"}}}}, token)
    assert response.status_code == 200 and response.json()["version"] == 2
    assert client.post("/api/auth/login", {"username": "alice", "password": "secret1"}).status_code == 200
