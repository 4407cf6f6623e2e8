"""The data directory on disk, in one process: caches that cannot serve a replaced file, crash
leftovers that never pile up, a live writer's file that no clean-up touches, and full or
read-only disks answered with a clear error that changed nothing.

Everything here runs on the files storage whatever ``PZLS_TEST_STORAGE`` says: these are
promises of the files on disk.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from accounts.backends.base import TokenRecord
from accounts.backends.json_file import JSONFileTokenStore
from accounts.services import token_digest
from pzls_site.files import atomic_write, prepare_data_dir, remove_leftover
from sync.backends.base import Repository
from sync.backends.json_file import JSONFileRepositoryStore
from sync.services import dump_of
from testkit.server import ROOT
from tests.helpers import Api, assert_error, data_dir_settings, fill, read_only, store_push, tmpfs

# Promises of the files storage's files: never part of the database-storage run.
pytestmark = pytest.mark.files_only

U = "44444444-4444-4444-8444-444444444444"
V = "55555555-5555-4555-8555-555555555555"
TS = "2026-05-17T10:04:05.123Z"
FILES = {
    "token_backend": "accounts.backends.json_file.JSONFileTokenStore",
    "sync_backend": "sync.backends.json_file.JSONFileRepositoryStore",
}


@pytest.fixture
def files_storage(data_dir: Path) -> Iterator[Path]:
    with override_settings(**data_dir_settings(data_dir, **FILES)):
        yield data_dir


def replace_in_place(path: Path, content: bytes) -> None:
    """Put ``content`` in ``path``'s own inode and give it back its mtime: what a reused inode
    number and a coarse clock make of a file that another worker replaced."""
    before = os.stat(path)
    assert len(content) == before.st_size, (len(content), before.st_size)
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, content, 0) == len(content)
    finally:
        os.close(fd)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert path.read_bytes() == content


def new_stamp_line(content: bytes) -> bytes:
    """``content`` with another stamp, as another writer would have written it."""
    assert content.startswith(b'{"stamp":"')
    return content[:10] + os.urandom(16).hex().encode() + content[42:]


# --- no cache serves a replaced file (same inode, same size, same mtime) ----------------


def test_tokens_json_replaced_in_the_same_inode_with_the_same_size_and_mtime_is_read_anew(
    files_storage: Path,
) -> None:
    api = Api()
    alice = api.register("alice")["token"]
    assert api.get("/api/auth/me").status_code == 200  # tokens.json is now cached in this process
    path = files_storage / "tokens.json"
    other = "0b5f9c1e-2f7a-4c6b-9d1e-2b3c4d5e6f70"
    # Another worker rewrote the file: alice's token revoked, another one issued with the same times.
    replaced = new_stamp_line(path.read_bytes().replace(token_digest(alice).encode(), token_digest(other).encode()))
    replace_in_place(path, replaced)
    assert_error(api.get("/api/auth/me", token=alice), 401, "Invalid or expired token")
    assert api.get("/api/auth/me", token=other).json()["user"]["username"] == "alice"


def test_token_store_cache_sees_a_replaced_file_at_the_store(data_dir: Path) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)

    def record(digest: str) -> TokenRecord:
        return TokenRecord(digest=digest, user_id=U, created=now, last_used=now, expires=now + timedelta(days=1))

    first, second = "a" * 64, "b" * 64
    store = JSONFileTokenStore(location=data_dir)
    store.add(record(first))
    assert store.get(first) is not None
    elsewhere = data_dir / "elsewhere"
    elsewhere.mkdir()
    JSONFileTokenStore(location=elsewhere).add(record(second))
    replace_in_place(data_dir / "tokens.json", (elsewhere / "tokens.json").read_bytes())
    assert store.get(first) is None
    assert store.get(second) == record(second)


def test_a_repository_replaced_in_the_same_inode_with_the_same_size_and_mtime_is_read_anew(data_dir: Path) -> None:
    store = JSONFileRepositoryStore(location=data_dir)
    two = {"humans": {"a1": {"v": "x" * 100}, "a2": {"v": "y" * 100}}}
    store_push(store, U, two, client_version=0, timestamp=TS)
    assert store.summary(U).records == 2  # the sidecar now describes the file
    tag = store.pull_tag(U)
    path = data_dir / f"repo_{U}.json"
    # The same size, one record instead of two, written by a PZLS writer (its own stamp).
    one_length = len(orjson.dumps(two)) - len(b'{"humans":{"b1":{"v":""}}}')
    one = {"humans": {"b1": {"v": "z" * one_length}}}
    elsewhere = data_dir / "elsewhere"
    elsewhere.mkdir()
    JSONFileRepositoryStore(location=elsewhere).replace(U, dump_of(Repository(version=1, data=one)), [])
    replace_in_place(path, (elsewhere / f"repo_{U}.json").read_bytes())

    assert store.pull_tag(U) != tag
    assert store.pull_bytes(U) == b'{"version":1,"data":' + orjson.dumps(one) + b"}"
    summary = store.summary(U)
    assert (summary.version, summary.records) == (1, 1)
    result = store_push(store, U, {"humans": {"c1": {}}}, client_version=1, timestamp=TS)
    assert (result.version, result.added, result.modified) == (2, 1, 0)
    assert store.load(U).data == {"humans": {"b1": one["humans"]["b1"], "c1": {}}}
    assert store.summary(U).records == 2


def test_a_gzip_pull_of_a_repository_replaced_in_the_same_inode_is_the_new_body(files_storage: Path) -> None:
    api = Api()
    api.register("alice")
    stores = {"humans": {f"h{n:04}": {"name": "Person", "notes": "x" * 300} for n in range(1000)}}
    assert api.post("/api/sync", {"clientVersion": 0, "stores": stores}).status_code == 200
    first = api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert first["Content-Encoding"] == "gzip"
    old_body = gzip.decompress(first.content)
    assert list((files_storage / "pullcache").glob("*.json.gz"))  # kept: the next gzip pull is a file sent
    user_id = api.get("/api/auth/me").json()["user"]["id"]
    path = files_storage / f"repo_{user_id}.json"
    replace_in_place(path, new_stamp_line(path.read_bytes().replace(b"Person", b"Ghosts")))

    again = api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert gzip.decompress(again.content) == old_body.replace(b"Person", b"Ghosts") != old_body
    assert again["ETag"] != first["ETag"]
    conditional = api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip", HTTP_IF_NONE_MATCH=first["ETag"])
    assert conditional.status_code == 200
    assert gzip.decompress(conditional.content) == old_body.replace(b"Person", b"Ghosts")


def test_files_written_by_the_previous_release_are_read_and_upgraded_when_rewritten(files_storage: Path) -> None:
    # Today's formats, byte for byte: a repository file that is exactly the pull
    # body, its sidecar naming it by (inode, size, mtime_ns) with its layout, a
    # changelog, and tokens.json without a stamp.
    api = Api()
    user_id = api.register("alice")["user"]["id"]
    old_token = "1f0e4c1e-2f7a-4c6b-9d1e-2b3c4d5e6f71"
    body = b'{"version":2,"data":{"humans":{"h1":{"a":1},"h2":{"b":[1,2]}},"tags":{"t1":{}}}}'
    repo = files_storage / f"repo_{user_id}.json"
    repo.write_bytes(body)
    st = os.stat(repo)
    humans = [body.index(b'"h1"'), body.index(b"}}", body.index(b'"h2"')) + 1]
    tags = [body.index(b'"t1"'), body.index(b"{}}") + 2]
    (files_storage / f"repo_{user_id}.meta.json").write_bytes(
        orjson.dumps(
            {
                "version": 2,
                "stores": 2,
                "records": 3,
                "dataSizeBytes": len(body),
                "totalSyncs": 2,
                "lastSync": TS,
                "file": [st.st_ino, st.st_size, st.st_mtime_ns],
                "layout": {"humans": [humans], "tags": [tags]},
            }
        )
    )
    entries = [
        {"version": 1, "timestamp": TS, "clientVersion": 0, "added": [{"store": "humans", "id": "h1"}], "modified": [], "action": "push"},
        {"version": 2, "timestamp": TS, "clientVersion": 1, "added": [{"store": "humans", "id": "h2"}, {"store": "tags", "id": "t1"}], "modified": [], "action": "push"},
    ]  # fmt: skip
    (files_storage / f"changelog_{user_id}.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    far = "2099-01-01T00:00:00.000Z"
    tokens = {token_digest(old_token): {"userId": user_id, "created": TS, "lastUsed": far, "expires": far}}
    (files_storage / "tokens.json").write_bytes(orjson.dumps({"tokens": tokens}))

    assert api.get("/api/auth/me", token=old_token).json()["user"]["id"] == user_id
    pull = api.get("/api/sync", token=old_token)
    assert pull.content == body
    assert pull["ETag"] == f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'  # the tag clients already hold
    assert api.get("/api/sync", token=old_token, HTTP_IF_NONE_MATCH=pull["ETag"]).status_code == 304
    status = api.get("/api/sync/status", token=old_token).json()["account"]
    assert (status["version"], status["records"], status["totalSyncs"]) == (2, 3, 2)
    assert api.get("/api/sync/changes?since=0", token=old_token).json()["changes"] == entries

    pushed = api.post("/api/sync", {"clientVersion": 2, "stores": {"humans": {"h1": {"a": 2}}}}, token=old_token)
    assert pushed.json()["version"] == 3
    assert repo.read_bytes().startswith(b'{"stamp":"')
    assert api.get("/api/sync", token=old_token).json() == {
        "version": 3,
        "data": {"humans": {"h1": {"a": 2}, "h2": {"b": [1, 2]}}, "tags": {"t1": {}}},
    }
    new_token = api.post("/api/auth/login", {"username": "alice", "password": "secret1"}).json()["token"]
    assert (files_storage / "tokens.json").read_bytes().startswith(b'{"stamp":"')
    for token in (old_token, new_token):
        assert api.get("/api/auth/me", token=token).status_code == 200


# --- crash leftovers ----------------------------------------------------------------------


def leftover(path: Path) -> Path:
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b'{"version":9,"data":{"half')  # what a writer killed mid-write leaves
    return path


def test_the_next_push_of_a_user_removes_what_a_killed_push_of_that_user_left(data_dir: Path) -> None:
    store = JSONFileRepositoryStore(location=data_dir)
    store_push(store, U, {"humans": {"h1": {}}}, client_version=0, timestamp=TS)
    mine = [
        leftover(data_dir / f".{name}.tmp")
        for name in (f"repo_{U}.json", f"repo_{U}.meta.json", f"changelog_{U}.jsonl")
    ]
    theirs = leftover(data_dir / f".repo_{V}.json.tmp")
    store_push(store, U, {"humans": {"h2": {}}}, client_version=1, timestamp=TS)
    assert [p for p in mine if p.exists()] == []
    assert theirs.exists()  # another user's: their next push, or the next start
    assert store.load(U).data == {"humans": {"h1": {}, "h2": {}}}
    assert store.summary(U).records == 2
    prepare_data_dir(data_dir)  # what every start does
    assert not theirs.exists()


def test_the_next_gzip_copy_of_a_user_removes_their_leftover_copies(files_storage: Path) -> None:
    api = Api()
    api.register("alice")
    user_id = api.get("/api/auth/me").json()["user"]["id"]
    stray = leftover(files_storage / "pullcache" / f".{user_id}.1-2-3.json.gz.tmp")
    stores = {"humans": {f"h{n}": {"notes": "x" * 300} for n in range(1000)}}
    assert api.post("/api/sync", {"clientVersion": 0, "stores": stores}).status_code == 200
    api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    names = sorted(p.name for p in (files_storage / "pullcache").iterdir())
    assert [n for n in names if n.endswith(".tmp")] == [] and not stray.exists()
    assert len([n for n in names if n.endswith(".json.gz")]) == 1


def test_a_start_removes_every_kind_of_leftover_and_keeps_every_other_file(data_dir: Path) -> None:
    kept = {data_dir / "tokens.json": b'{"tokens":{}}', data_dir / f"repo_{U}.json": b'{"version":0,"data":{}}'}
    for path, content in kept.items():
        path.write_bytes(content)
    leftovers = [
        leftover(data_dir / name)
        for name in (
            f".repo_{U}.json.tmp",
            f".repo_{U}.meta.json.tmp",
            f".changelog_{U}.jsonl.tmp",
            ".tokens.json.tmp",
            ".tokens.json.4242.139872.tmp",  # a writer without the lock: pid and thread
            ".secret_key.4242.139872.tmp",
            ".health.4242.139872.tmp",
            "secret_key.tmp4242",  # earlier releases
            ".health-k2j4h5g6",
            f"pullcache/.{U}.1-2-3.json.gz.tmp",
            f"pullcache/.{U}.1-2-3.json.tmp",
        )
    ]
    prepare_data_dir(data_dir)
    assert [p for p in leftovers if p.exists()] == []
    assert {p: p.read_bytes() for p in kept} == kept


def test_a_live_writers_temporary_file_is_never_removed(data_dir: Path) -> None:
    target = data_dir / "tokens.json"
    writing, go_on = threading.Event(), threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b'{"tokens":'
        writing.set()
        go_on.wait(30)
        yield b"{}}"

    writer = threading.Thread(target=atomic_write, args=(target, chunks()), kwargs={"exclusive": True})
    writer.start()
    try:
        assert writing.wait(30)
        temporary = data_dir / ".tokens.json.tmp"
        assert temporary.exists()
        prepare_data_dir(data_dir)  # a start (manage.py, another server process) meanwhile
        assert not remove_leftover(temporary)
        assert temporary.exists()
    finally:
        go_on.set()
        writer.join(30)
    assert target.read_bytes() == b'{"tokens":{}}'
    assert sorted(p.name for p in data_dir.iterdir()) == ["tokens.json"]


def test_the_temporary_file_of_a_killed_writer_process_is_a_leftover(data_dir: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pzls_site.files import atomic_write\n"
        "def chunks():\n"
        "    yield b'{\"half'\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "    yield b'\"}'\n"
        "atomic_write(Path(sys.argv[1]), chunks(), exclusive=True)\n"
    )
    target = data_dir / f"repo_{U}.json"
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(target)], cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ}
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == b"writing\n"
        temporary = data_dir / f".repo_{U}.json.tmp"
        assert not remove_leftover(temporary)  # alive: its file stays
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert temporary.read_bytes() == b'{"half'
    assert remove_leftover(temporary)
    assert list(data_dir.iterdir()) == []


# --- full and read-only disks -------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes; lock files hold none (a writer that leaves no repository removes its lock file)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.suffix != ".lock"
    }


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "4m") as mount:
        directory = mount / "data"
        prepare_data_dir(directory)
        with override_settings(**data_dir_settings(directory, **FILES)):
            yield directory


def big_stores(prefix: str) -> dict:
    return {"humans": {f"{prefix}{n}": {"name": "Person", "notes": "x" * 300} for n in range(1000)}}


def test_on_a_full_disk_health_says_so_and_a_push_or_login_changes_nothing(small_disk: Path) -> None:
    api = Api()
    api.register("alice")
    assert api.post("/api/sync", {"clientVersion": 0, "stores": big_stores("a")}).status_code == 200
    pulled = api.get("/api/sync").content
    filler = fill(small_disk.parent)
    before = snapshot(small_disk)

    health = api.get("/api/auth/health")
    assert (health.status_code, health.json()) == (503, {"status": "unavailable", "error": "Data directory is full"})
    for stores in (big_stores("b"), {"humans": {"a1": {"name": "Renamed"}}}):
        response = api.post("/api/sync", {"clientVersion": 1, "stores": stores})
        assert_error(response, 507, "Not enough disk space on the server")
    login = api.post("/api/auth/login", {"username": "alice", "password": "secret1"})
    assert_error(login, 507, "Not enough disk space on the server")
    assert snapshot(small_disk) == before  # every file byte for byte, no temporary file left
    # Reads go on: pulls (gzip is compressed on the fly), changes, status.
    assert api.get("/api/sync").content == pulled
    assert gzip.decompress(api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip").content) == pulled
    assert api.get("/api/sync/changes?since=0").json()["currentVersion"] == 1
    assert api.get("/api/sync/status").json()["account"]["records"] == 1000

    filler.unlink()
    assert api.get("/api/auth/health").status_code == 200
    response = api.post("/api/sync", {"clientVersion": 1, "stores": {"humans": {"a1": {"name": "Renamed"}}}})
    assert response.json()["version"] == 2
    assert api.post("/api/auth/login", {"username": "alice", "password": "secret1"}).status_code == 200
    assert api.get("/api/sync/changes?since=0").json()["pendingChanges"] == 2


def test_a_first_push_on_a_full_disk_leaves_no_file(small_disk: Path) -> None:
    api = Api()
    api.register("alice")
    user_id = api.get("/api/auth/me").json()["user"]["id"]
    (small_disk / f"repo_{user_id}.lock").touch()  # taking the lock needs no space; the test is about the data
    filler = fill(small_disk.parent)
    before = snapshot(small_disk)
    assert_error(api.post("/api/sync", {"stores": big_stores("a")}), 507, "Not enough disk space on the server")
    assert snapshot(small_disk) == before
    filler.unlink()
    assert api.post("/api/sync", {"stores": big_stores("a")}).json()["version"] == 1


def test_on_a_read_only_disk_health_says_so_writes_are_refused_and_reads_go_on(small_disk: Path) -> None:
    api = Api()
    api.register("alice")
    assert api.post("/api/sync", {"clientVersion": 0, "stores": big_stores("a")}).status_code == 200
    pulled = api.get("/api/sync").content
    before = snapshot(small_disk)
    read_only(small_disk.parent)
    try:
        health = api.get("/api/auth/health")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "error": "Data directory is read-only"}
        response = api.post("/api/sync", {"clientVersion": 1, "stores": {"humans": {"a1": {}}}})
        assert_error(response, 503, "The server's storage is read-only")
        login = api.post("/api/auth/login", {"username": "alice", "password": "secret1"})
        assert_error(login, 503, "The server's storage is read-only")
        assert api.get("/api/sync").content == pulled
        assert gzip.decompress(api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip").content) == pulled
        assert api.get("/api/sync/status").json()["account"]["version"] == 1
    finally:
        read_only(small_disk.parent, on=False)
    assert snapshot(small_disk) == before
    assert api.post("/api/sync", {"clientVersion": 1, "stores": {"humans": {"a1": {}}}}).json()["version"] == 2


def test_an_export_to_a_full_disk_says_so_and_leaves_no_file(small_disk: Path) -> None:
    Api().register("alice")
    filler = fill(small_disk.parent)
    target = small_disk.parent / "backup.jsonl"
    with pytest.raises(CommandError, match=r"^Not enough disk space on the server$"):
        call_command("export_data", str(target), stdout=io.StringIO())
    assert sorted(p.name for p in small_disk.parent.iterdir()) == ["data", "filler"]
    filler.unlink()
    call_command("export_data", str(target), stdout=io.StringIO())
    assert target.read_bytes().count(b"\n") == 3  # header, alice, end
