"""The data directory on disk, in one process: caches that cannot serve a replaced file, crash
leftovers that never pile up, a live writer's file that no clean-up touches, and full or
read-only disks answered with a clear error that changed nothing.

Everything here runs on the files storage whatever ``PZLS_TEST_STORAGE`` says: these are
promises of the files on disk.
"""

from __future__ import annotations

import errno
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
from typing import Any

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from accounts.backends.base import TokenRecord
from accounts.backends.json_file import JSONFileTokenStore
from accounts.services import token_digest
from pzls_site.files import atomic_write, prepare_data_dir, remove_leftover
from sync.backends import json_file
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
    assert store.summary(U).records == 2  # the snapshot's index is now in this worker
    tag = store.pull_tag(U)
    path = data_dir / f"repo_{U}.json"
    # The same size, one record instead of two, written by a PZLS writer (its own stamp).
    one_length = len(orjson.dumps(two)) - len(b'{"humans":{"b1":{"v":""}}}')
    one = {"humans": {"b1": {"v": "z" * one_length}}}
    elsewhere = data_dir / "elsewhere"
    elsewhere.mkdir()
    JSONFileRepositoryStore(location=elsewhere).replace(U, dump_of(Repository(version=1, data=one)), [])
    (index,) = elsewhere.glob("*.idx")  # that writer's snapshot comes with its index, named by its stamp
    (data_dir / index.name).write_bytes(index.read_bytes())
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
    replaced = new_stamp_line(path.read_bytes().replace(b"Person", b"Ghosts"))
    # The other writer's index, for its stamp: the records lie where they did.
    old_stamp, new_stamp = path.read_bytes()[10:42], replaced[10:42]
    old_index = files_storage / f"repo_{user_id}.{old_stamp.decode()}.idx"
    (files_storage / f"repo_{user_id}.{new_stamp.decode()}.idx").write_bytes(
        old_index.read_bytes().replace(old_stamp, new_stamp)
    )
    replace_in_place(path, replaced)

    again = api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert gzip.decompress(again.content) == old_body.replace(b"Person", b"Ghosts") != old_body
    assert again["ETag"] != first["ETag"]
    conditional = api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip", HTTP_IF_NONE_MATCH=first["ETag"])
    assert conditional.status_code == 200
    assert gzip.decompress(conditional.content) == old_body.replace(b"Person", b"Ghosts")


PREVIOUS_RELEASE = ROOT / "tests" / "fixtures" / "previous-release"
# Written by tests/fixtures/previous-release/generate.py with the code of 8d405d5 (a stamped repository file
# and its sidecar) and of b3371d3^ (the release before, without the stamp line).
PREVIOUS_USERS = {"stamped": "66666666-6666-4666-8666-666666666666", "without a stamp": "77777777-7777-4777-8777-777777777777"}  # fmt: skip

SUMMARY = ("version", "stores", "records", "dataSizeBytes", "totalSyncs", "lastSync")


def install_previous_release(data_dir: Path, kind: str, user_id: str) -> tuple[bytes, dict, list[dict]]:
    """Copy the fixture repository of ``kind`` in as ``user_id``'s: (its pull body, its sidecar, its changelog)."""
    fixture = PREVIOUS_USERS[kind]
    for name in (f"repo_{fixture}.json", f"repo_{fixture}.meta.json", f"changelog_{fixture}.jsonl"):
        (data_dir / name.replace(fixture, user_id)).write_bytes((PREVIOUS_RELEASE / name).read_bytes())
    (data_dir / f"repo_{user_id}.lock").touch()  # empty, and left beside the repository by every release
    raw = (PREVIOUS_RELEASE / f"repo_{fixture}.json").read_bytes()
    assert raw.startswith(b'{"stamp":"') == (kind == "stamped")
    body = raw.split(b"\n", 1)[1] if kind == "stamped" else raw
    meta = orjson.loads((PREVIOUS_RELEASE / f"repo_{fixture}.meta.json").read_bytes())
    changelog = [orjson.loads(line) for line in (PREVIOUS_RELEASE / f"changelog_{fixture}.jsonl").read_bytes().splitlines()]  # fmt: skip
    return body, meta, changelog


@pytest.mark.parametrize("kind", list(PREVIOUS_USERS))
def test_a_repository_written_by_the_previous_release_is_read_and_upgraded_in_place_on_first_use(
    files_storage: Path, kind: str
) -> None:
    api = Api()
    user_id = api.register("alice")["user"]["id"]
    body, meta, changelog = install_previous_release(files_storage, kind, user_id)
    repo = files_storage / f"repo_{user_id}.json"
    old = os.stat(repo)
    old_tag = f'"{old.st_ino:x}-{old.st_size:x}-{old.st_mtime_ns:x}"'

    pull = api.get("/api/sync")
    assert pull.content == body  # byte for byte: the records as they were pushed
    # Upgraded in place by that first use: a snapshot with a new stamp, its index, no sidecar.
    raw = repo.read_bytes()
    stamp = raw[10:42].decode()
    assert sorted(p.name for p in files_storage.iterdir() if user_id in p.name) == [
        f"changelog_{user_id}.jsonl",
        f"repo_{user_id}.{stamp}.idx",
        f"repo_{user_id}.json",
        f"repo_{user_id}.lock",
    ]
    assert raw.startswith(b'{"stamp":"') and raw.split(b"\n", 1)[1] == body
    assert raw[:45] != (PREVIOUS_RELEASE / f"repo_{PREVIOUS_USERS[kind]}.json").read_bytes()[:45]
    assert api.get("/api/sync", HTTP_IF_NONE_MATCH=pull["ETag"]).status_code == 304
    stale = api.get("/api/sync", HTTP_IF_NONE_MATCH=old_tag)  # a tag of the file before the upgrade
    assert (stale.status_code, stale.content) == (200, body)
    assert gzip.decompress(api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip").content) == body

    status = api.get("/api/sync/status").json()["account"]
    assert {key: status[key] for key in SUMMARY} == {key: meta[key] for key in SUMMARY}
    assert (status["version"], status["records"], status["stores"], status["totalSyncs"]) == (3, 5, 3, 3)
    assert api.get("/api/sync/changes?since=0").json()["changes"] == changelog
    assert api.get("/api/sync/stores").json() == {
        "stores": [{"store": "humans", "count": 3}, {"store": "tags", "count": 1}, {"store": "cases", "count": 1}],
        "total": 5,
        "latestSeq": 3,
    }
    # Every record version 1, last changed at the repository's version; the cursor walks them all, in pull order.
    data = orjson.loads(body)["data"]
    walked: list[dict] = []
    cursor = ""
    while True:
        page = api.get(f"/api/sync/cursor?limit=2&cursor={cursor}").json()
        walked.extend(page["entities"])
        cursor = page["nextCursor"]
        assert page["latestSeq"] == 3
        if not page["hasMore"]:
            break
    assert walked == [
        {"store": store, "id": record_id, "version": 1, "seq": 3, "data": value}
        for store, records in data.items()
        for record_id, value in records.items()
    ]
    record = api.get("/api/sync/records/humans/h3")
    assert (record.status_code, record["ETag"], record.json()["data"]) == (200, '"1"', data["humans"]["h3"])

    # An op then works on the upgraded repository, and goes to a journal beside the snapshot.
    result = api.post(
        "/api/sync/ops",
        {
            "operations": [
                {"action": "update", "store": "humans", "entity_id": "h1", "data": {"v": 2}, "expectedVersion": 1},
                {"action": "delete", "store": "tags", "entity_id": "t1", "expectedVersion": 1},
                {"action": "update", "store": "cases", "entity_id": "c1", "data": {}, "expectedVersion": 2},
            ]
        },
    ).json()
    assert (result["version"], result["applied"], result["conflicts"]) == (4, 2, 1)
    assert result["results"][2]["serverVersion"] == 1
    assert repo.read_bytes() == raw  # the upgraded snapshot stays; the op is a journal line
    assert (files_storage / f"repo_{user_id}.journal").exists()
    data["humans"]["h1"] = {"v": 2}
    del data["tags"]["t1"]
    assert api.get("/api/sync").json() == {"version": 4, "data": data}
    assert api.get("/api/sync/records/humans/h1").json()["version"] == 2
    pushed = api.post("/api/sync", {"clientVersion": 4, "stores": {"humans": {"h2": {"a": 2}}}}).json()
    assert (pushed["version"], pushed["modified"]) == (5, 1)
    entries = api.get("/api/sync/changes?since=0").json()["changes"]
    assert entries[:3] == changelog and [e["version"] for e in entries] == [1, 2, 3, 4, 5]


def test_a_token_file_written_by_an_earlier_release_is_read_and_stamped_when_rewritten(files_storage: Path) -> None:
    api = Api()
    user_id = api.register("alice")["user"]["id"]
    old_token = "1f0e4c1e-2f7a-4c6b-9d1e-2b3c4d5e6f71"
    far = "2099-01-01T00:00:00.000Z"
    tokens = {token_digest(old_token): {"userId": user_id, "created": TS, "lastUsed": far, "expires": far}}
    (files_storage / "tokens.json").write_bytes(orjson.dumps({"tokens": tokens}))  # without a stamp

    assert api.get("/api/auth/me", token=old_token).json()["user"]["id"] == user_id
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
        for name in (
            f"repo_{U}.json",
            f"repo_{U}.journal",
            f"changelog_{U}.jsonl",
            f"repo_{U}.meta.json",  # an earlier release's sidecar
        )
    ]
    theirs = leftover(data_dir / f".repo_{V}.json.tmp")
    store_push(store, U, {"humans": {"h2": {}}}, client_version=1, timestamp=TS)
    assert [p for p in mine if p.exists()] == []
    assert theirs.exists()  # another user's: their next push, or the next start
    assert store.load(U).data == {"humans": {"h1": {}, "h2": {}}}
    assert store.summary(U).records == 2
    # A killed snapshot write's index (named by a stamp of its own): the next snapshot written removes it.
    index = leftover(data_dir / f".repo_{U}.{'0' * 32}.idx.tmp")
    store_push(store, U, {"notes": {f"n{i}": {"text": "x" * 1000} for i in range(1500)}}, client_version=2)
    assert not index.exists()
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
            f".repo_{U}.{'0' * 32}.idx.tmp",
            f".repo_{U}.journal.tmp",
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


# --- full disks at each step of a commit ---------------------------------------------------


class Failures:
    """The disk errors the files store met, by step: a spy that changes nothing, or with ``full`` a disk
    that is full for the files whose names end so (the write fails as it starts)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, full: str | None = None) -> None:
        self.seen: list[tuple[str, int | None]] = []
        real_write, real_pwrite = json_file.atomic_write, os.pwrite

        def atomic_write(path: Path, data: Any, **options: Any) -> Any:
            try:
                if full is not None and path.name.endswith(full):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return real_write(path, data, **options)
            except OSError as exc:
                self.seen.append((path.name, exc.errno))
                raise

        def pwrite(fd: int, data: Any, offset: int) -> int:
            try:
                return real_pwrite(fd, data, offset)
            except OSError as exc:
                self.seen.append((os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1], exc.errno))
                raise

        monkeypatch.setattr(json_file, "atomic_write", atomic_write)
        monkeypatch.setattr(json_file.os, "pwrite", pwrite)


def free(filler: Path, size: int) -> None:
    """Give ``size`` bytes of the full disk back."""
    os.truncate(filler, filler.stat().st_size - size)


def test_a_full_disk_during_a_journal_append_changes_nothing_and_answers_507(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = Api()
    user_id = api.register("alice")["user"]["id"]
    assert api.post("/api/sync", {"clientVersion": 0, "stores": big_stores("a")}).status_code == 200
    op = {"action": "update", "store": "humans", "entity_id": "a1", "data": {"name": "Renamed"}}
    assert api.post("/api/sync/ops", {"operations": [op]}).json()["version"] == 2
    journal = small_disk / f"repo_{user_id}.journal"
    assert journal.exists()
    pulled = api.get("/api/sync").content
    filler = fill(small_disk.parent)
    free(filler, 8192)  # room for the changelog line, not for the journal line
    before = snapshot(small_disk)
    failures = Failures(monkeypatch)

    large = {"action": "update", "store": "humans", "entity_id": "a2", "data": {"notes": "y" * 40_000}}
    assert_error(api.post("/api/sync/ops", {"operations": [large]}), 507, "Not enough disk space on the server")
    assert failures.seen == [(journal.name, errno.ENOSPC)]  # it failed writing the journal line
    assert snapshot(small_disk) == before  # the changelog line cut, the journal as it was
    assert api.get("/api/sync").content == pulled
    assert api.get("/api/sync/changes?since=0").json()["currentVersion"] == 2
    assert api.get("/api/sync/records/humans/a2").json()["version"] == 1

    filler.unlink()
    result = api.post("/api/sync/ops", {"operations": [large]}).json()
    assert result["version"] == 3 and result["results"][0]["version"] == 2
    assert journal.read_bytes().startswith(before[journal.name])
    assert api.get("/api/sync").json()["data"]["humans"]["a2"] == large["data"]
    assert [e["version"] for e in api.get("/api/sync/changes?since=0").json()["changes"]] == [1, 2, 3]


@pytest.mark.parametrize("step", ["the snapshot", "its index"])
def test_a_full_disk_during_a_snapshot_write_changes_nothing_and_answers_507(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    api = Api()
    user_id = api.register("alice")["user"]["id"]
    assert api.post("/api/sync", {"clientVersion": 0, "stores": big_stores("a")}).status_code == 200
    op = {"action": "delete", "store": "humans", "entity_id": "a1"}
    assert api.post("/api/sync/ops", {"operations": [op]}).json()["version"] == 2  # journalled
    pulled = api.get("/api/sync").content
    status = api.get("/api/sync/status").json()["account"]
    filler = fill(small_disk.parent)
    if step == "the snapshot":
        free(filler, 256 << 10)  # room for the changelog line, not for the new snapshot
        failures = Failures(monkeypatch)
    else:
        free(filler, 3 << 20)  # room for the new snapshot: the disk is full when its index is written
        failures = Failures(monkeypatch, full=".idx")
    before = snapshot(small_disk)

    large = {"notes": {f"n{i}": {"text": "z" * 1000} for i in range(1200)}}  # too large for the journal
    response = api.post("/api/sync", {"clientVersion": 2, "stores": large})
    assert_error(response, 507, "Not enough disk space on the server")
    failed = [(f"repo_{user_id}.json", errno.ENOSPC)]
    if step == "its index":  # written once the new snapshot is, before it takes the name
        failed.insert(0, (next(name for name, _ in failures.seen if name.endswith(".idx")), errno.ENOSPC))
    assert failures.seen == failed
    assert snapshot(small_disk) == before  # no new snapshot or index, the journal whole, the changelog line gone
    for reader in (api, Api()):
        reader.token = api.token
        assert reader.get("/api/sync").content == pulled
        assert reader.get("/api/sync/status").json()["account"] == status
    assert api.get("/api/sync/records/humans/a1").status_code == 404  # the journalled delete stands

    monkeypatch.undo()
    filler.unlink()
    assert api.post("/api/sync", {"clientVersion": 2, "stores": large}).json()["version"] == 3
    assert not (small_disk / f"repo_{user_id}.journal").exists()
    data = api.get("/api/sync").json()["data"]
    assert "a1" not in data["humans"] and len(data["humans"]) == 999 and len(data["notes"]) == 1200


@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_a_previous_release_repository_on_a_disk_that_takes_no_write_is_read_and_upgraded_later(
    small_disk: Path, disk: str
) -> None:
    api = Api()
    user_id = api.register("alice")["user"]["id"]
    body, meta, changelog = install_previous_release(small_disk, "stamped", user_id)
    filler = None
    if disk == "full":
        filler = fill(small_disk.parent)
    else:
        read_only(small_disk.parent)
    before = snapshot(small_disk)
    try:
        for reader in (api, Api()):  # this worker, and the next request's
            reader.token = api.token
            assert reader.get("/api/sync").content == body
            status = reader.get("/api/sync/status").json()["account"]
            assert {key: status[key] for key in SUMMARY} == {key: meta[key] for key in SUMMARY}
            assert reader.get("/api/sync/changes?since=0").json()["changes"] == changelog
            assert reader.get("/api/sync/records/humans/h1").json()["version"] == 1
        op = {"action": "update", "store": "humans", "entity_id": "h1", "data": {"v": 2}, "expectedVersion": 1}
        refused = api.post("/api/sync/ops", {"operations": [op]})
        assert refused.status_code == (503 if disk == "read-only" else 507)
        assert snapshot(small_disk) == before
    finally:
        if filler is not None:
            filler.unlink()
        else:
            read_only(small_disk.parent, on=False)
    assert api.get("/api/sync").content == body
    assert api.post("/api/sync/ops", {"operations": [op]}).json()["version"] == 4  # upgraded first, then the op
    assert len(list(small_disk.glob(f"repo_{user_id}.*.idx"))) == 1
    assert not (small_disk / f"repo_{user_id}.meta.json").exists()
    assert api.get("/api/sync/records/humans/h1").json()["version"] == 2
    assert api.get("/api/sync/records/humans/h2").json()["version"] == 1
