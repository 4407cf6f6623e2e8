"""What the JSON-file repository and token stores promise beyond the contract: the
on-disk layout (snapshot, index, journal, changelog), crash recovery, atomic writes,
and caching by file identity."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from accounts.backends.base import TokenRecord
from accounts.backends.json_file import JSONFileTokenStore
from accounts.services import token_digest
from pzls_site.exceptions import StorageError
from sync.backends.base import Repository
from sync.backends.json_file import _RECORDS_PER_PIECE as PIECE
from sync.backends.json_file import JSONFileRepositoryStore
from sync.ops import decode_ops
from sync.records import AuditContext, plan_ops
from sync.services import _commit, dump_of
from tests.helpers import store_push

U = "33333333-3333-4333-8333-333333333333"
TS = "2026-05-17T10:04:05.123Z"


@pytest.fixture
def store(data_dir: Path) -> JSONFileRepositoryStore:
    return JSONFileRepositoryStore(location=data_dir)


def push(store: JSONFileRepositoryStore, stores: dict, cv: int | None = 0) -> Any:
    return store_push(store, U, stores, client_version=cv, timestamp=TS)


def ops(store: JSONFileRepositoryStore, *operations: dict) -> Any:
    """An ops batch (§7.2) straight into ``store``, as the service commits it."""
    planned = decode_ops(orjson.dumps({"operations": list(operations)}))
    return _commit(
        U,
        lambda snapshot: plan_ops(snapshot, planned, timestamp=TS, audit=AuditContext(U, "", None)),
        optimistic=False,
        store=store,
        check_user=False,
    )


def body(version: int, stores: dict) -> bytes:
    return b'{"version":%d,"data":' % version + orjson.dumps(stores) + b"}"


def path(data_dir: Path, kind: str) -> Path:
    names = {
        "repo": f"repo_{U}.json",
        "journal": f"repo_{U}.journal",
        "changelog": f"changelog_{U}.jsonl",
    }
    return data_dir / names[kind]


def names(data_dir: Path) -> list[str]:
    """The data directory's files, the index named ``<stamp>.idx`` when it is the snapshot's."""
    stamp = STAMP_LINE.match(path(data_dir, "repo").read_bytes()) if path(data_dir, "repo").exists() else None
    index = f"repo_{U}.{stamp.group(1).decode()}.idx" if stamp else None
    return sorted("<stamp>.idx" if p.name == index else p.name for p in data_dir.iterdir())


def index_path(data_dir: Path) -> Path:
    """The index of the snapshot, named by the snapshot's stamp."""
    return data_dir / f"repo_{U}.{stamp_of(data_dir)}.idx"


def indexes(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob(f"repo_{U}.*.idx"))


def changelog_lines(data_dir: Path) -> list[bytes]:
    return path(data_dir, "changelog").read_bytes().splitlines()


def journal_lines(data_dir: Path) -> list[dict]:
    """The journal's lines after its head, each parsed (a torn line fails the test)."""
    raw = path(data_dir, "journal").read_bytes()
    assert raw.endswith(b"\n"), raw[-80:]
    return [orjson.loads(line) for line in raw.splitlines()[1:]]


def journal_head(data_dir: Path) -> str:
    return orjson.loads(path(data_dir, "journal").read_bytes().split(b"\n", 1)[0])["journal"]


STAMP_LINE = re.compile(rb'\{"stamp":"([0-9a-f]{32})"\}\n')


def snapshot_body(data_dir: Path) -> bytes:
    """The pull body in the snapshot, after its stamp line (which must be there)."""
    raw = path(data_dir, "repo").read_bytes()
    stamp = STAMP_LINE.match(raw)
    assert stamp is not None, raw[:80]
    return raw[stamp.end() :]


def stamp_of(data_dir: Path) -> str:
    stamp = STAMP_LINE.match(path(data_dir, "repo").read_bytes())
    assert stamp is not None
    return stamp.group(1).decode()


def index_stamp(data_dir: Path) -> str:
    return orjson.loads(index_path(data_dir).read_bytes().split(b"\n", 1)[0])["stamp"]


def snapshot_files(data_dir: Path) -> tuple[int, int, str, str]:
    """The snapshot's inode and mtime, its bytes' and its index's hash: what a rewrite changes."""
    st = os.stat(path(data_dir, "repo"))
    digest = hashlib.sha256(path(data_dir, "repo").read_bytes()).hexdigest()
    return st.st_ino, st.st_mtime_ns, digest, hashlib.sha256(index_path(data_dir).read_bytes()).hexdigest()


def everything(store: JSONFileRepositoryStore) -> tuple:
    """All a client can read of the repository: pull, summary, store counts, the cursor with tombstones, changes."""
    page = store.cursor(U, after=0, limit=100_000, store=None, deleted=True)
    cursor = [(e.store, e.id, e.version, e.seq, e.position, e.text) for e in page.entries]
    return (
        store.pull_bytes(U),
        store.summary(U),
        store.store_counts(U),
        (cursor, page.version, page.position, page.epoch),
        store.changelog(U),
    )


# --- the snapshot ----------------------------------------------------------------------


def test_snapshot_is_a_stamp_line_then_exactly_the_pull_body(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"humans": {"h1": {"name": "A"}}})
    assert snapshot_body(data_dir) == b'{"version":1,"data":{"humans":{"h1":{"name":"A"}}}}'
    assert store.pull_bytes(U) == snapshot_body(data_dir)
    pulled = store.pull(U)
    assert pulled.file is not None and pulled.body is None  # the snapshot itself is sent
    pulled.file.close()
    assert index_stamp(data_dir) == stamp_of(data_dir)
    first = stamp_of(data_dir)
    store.replace(U, dump_of(Repository(version=2, data={"humans": {"h2": {}}})), [])
    assert stamp_of(data_dir) != first  # a new stamp with every snapshot written
    assert index_stamp(data_dir) == stamp_of(data_dir)
    assert snapshot_body(data_dir) == b'{"version":2,"data":{"humans":{"h2":{}}}}' == store.pull_bytes(U)
    assert store.summary(U).data_size_bytes == len(store.pull_bytes(U))  # as this worker holds it


@pytest.mark.parametrize("sizes", [[0], [1], [PIECE], [PIECE + 1, 0, 3], [5000, 2 * PIECE]])
def test_large_repositories_are_written_piece_by_piece_to_the_same_bytes(
    store: JSONFileRepositoryStore, data_dir: Path, sizes: list[int]
) -> None:
    stores = {
        f"s{n}": {f"r{i}": {"i": i, "name": 'Zoë \u2028 "q"'} for i in range(size)} for n, size in enumerate(sizes)
    }
    store.replace(U, dump_of(Repository(version=1, data=stores)), [])  # keeps empty stores, which a push never adds
    assert snapshot_body(data_dir) == body(1, stores)
    push(store, {"s0": {"new": {"a": 1}}})
    stores["s0"]["new"] = {"a": 1}
    assert store.pull_bytes(U) == body(2, stores)
    assert JSONFileRepositoryStore(location=data_dir).pull_bytes(U) == body(2, stores)


# --- the journal ---------------------------------------------------------------------


def test_an_op_writes_one_journal_line_and_does_not_rewrite_the_snapshot(
    store: JSONFileRepositoryStore, data_dir: Path
) -> None:
    stores = {"humans": {f"h{i}": {"i": i} for i in range(3000)}}
    push(store, stores)
    assert not path(data_dir, "journal").exists()
    written = snapshot_files(data_dir)
    stamp = stamp_of(data_dir)

    ops(store, {"action": "update", "store": "humans", "entity_id": "h7", "data": {"i": -7}, "expectedVersion": 1})
    assert journal_head(data_dir) == stamp
    assert [line["version"] for line in journal_lines(data_dir)] == [2]
    ops(store, {"action": "delete", "store": "humans", "entity_id": "h8"})
    push(store, {"humans": {"h9": {"i": -9}}, "tags": {"t1": {}}}, cv=3)
    assert [line["version"] for line in journal_lines(data_dir)] == [2, 3, 4]
    assert snapshot_files(data_dir) == written  # snapshot and index: the same inode, bytes and stamp
    assert stamp_of(data_dir) == stamp

    stores["humans"]["h7"] = {"i": -7}
    del stores["humans"]["h8"]
    stores["humans"]["h9"] = {"i": -9}
    stores["tags"] = {"t1": {}}
    assert store.pull_bytes(U) == body(4, stores)
    assert JSONFileRepositoryStore(location=data_dir).pull_bytes(U) == body(4, stores)  # another worker replays it
    with JSONFileRepositoryStore(location=data_dir).reading(U) as snapshot:
        states = snapshot.states("humans", ["h7", "h8", "h9", "h10"])
    assert {k: tuple(v) for k, v in states.items()} == {
        "h7": (2, 2, False),
        "h8": (2, 3, True),
        "h9": (2, 4, False),
        "h10": (1, 1, False),
    }


def test_a_noop_push_or_op_writes_nothing(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"humans": {"h1": {"a": 1}, "h2": {}}})
    ops(store, {"action": "delete", "store": "humans", "entity_id": "h2"})  # a journal to leave alone
    files = sorted(data_dir.iterdir())
    before = {p.name: p.read_bytes() for p in files}
    stats = {p.name: p.stat().st_mtime_ns for p in files}
    assert push(store, {"humans": {"h1": {"a": 1.0}}}, cv=2).version == 2
    ops(store, {"action": "update", "store": "humans", "entity_id": "h1", "data": {"a": 1}})
    ops(store, {"action": "delete", "store": "humans", "entity_id": "h2"})
    ops(store, {"action": "delete", "store": "humans", "entity_id": "never"})
    assert sorted(data_dir.iterdir()) == files
    assert {p.name: p.read_bytes() for p in files} == before
    assert {p.name: p.stat().st_mtime_ns for p in files} == stats


def test_a_large_change_set_writes_a_new_snapshot_and_removes_the_journal(
    store: JSONFileRepositoryStore, data_dir: Path
) -> None:
    push(store, {"humans": {"h1": {"a": 1}}})
    push(store, {"humans": {"h2": {"a": 2}}}, cv=1)
    old_stamp = stamp_of(data_dir)
    assert journal_head(data_dir) == old_stamp
    big = {"notes": {f"n{i}": {"text": "x" * 1000} for i in range(1500)}}  # more than a journal takes
    push(store, big, cv=2)
    assert not path(data_dir, "journal").exists()
    assert stamp_of(data_dir) != old_stamp
    assert index_stamp(data_dir) == stamp_of(data_dir)
    expected = body(3, {"humans": {"h1": {"a": 1}, "h2": {"a": 2}}, **big})
    assert snapshot_body(data_dir) == expected == store.pull_bytes(U)
    assert names(data_dir) == ["<stamp>.idx", f"changelog_{U}.jsonl", f"repo_{U}.json", f"repo_{U}.lock"]
    # And the next small one goes to a new journal that follows the new snapshot.
    push(store, {"humans": {"h3": {}}}, cv=3)
    assert journal_head(data_dir) == stamp_of(data_dir)
    assert [line["version"] for line in journal_lines(data_dir)] == [4]


def test_the_journal_goes_to_a_new_snapshot_before_it_grows_large_beside_it(
    store: JSONFileRepositoryStore, data_dir: Path
) -> None:
    push(store, {"humans": {f"h{i}": {"notes": "x" * 100} for i in range(1000)}})
    stamps = {stamp_of(data_dir)}
    for n in range(40):  # each ~40 kB: the journal would pass 1 MiB
        push(store, {"humans": {f"h{n}": {"notes": f"{n}" * 40_000}}}, cv=n + 1)
        stamps.add(stamp_of(data_dir))
        journal = path(data_dir, "journal")
        assert not journal.exists() or journal.stat().st_size <= max(1 << 20, path(data_dir, "repo").stat().st_size)
    assert len(stamps) > 1


def test_the_pull_of_a_repository_with_a_journal_is_the_pull_after_compaction_byte_for_byte(
    store: JSONFileRepositoryStore, data_dir: Path
) -> None:
    stores: dict[str, dict] = {
        "humans": {f"h{i}": {"i": i, "name": f"Zoë {i} \u2028"} for i in range(2 * PIECE + 10)},
        "tags": {"t1": {}, "t2": {"x": [1, 2.5]}},
        "gone": {"g1": {}},
    }
    push(store, stores)
    ops(
        store,
        {"action": "update", "store": "humans", "entity_id": "h0", "data": {"first": True}},
        {"action": "update", "store": "humans", "entity_id": f"h{PIECE}", "data": {"piece": 2}},
        {"action": "delete", "store": "humans", "entity_id": f"h{PIECE + 1}"},
        {"action": "delete", "store": "humans", "entity_id": "h1"},
        {"action": "delete", "store": "gone", "entity_id": "g1"},
        {"action": "create", "store": "cases", "entity_id": "c1", "data": {"c": "\u00e9"}},
    )
    ops(store, {"action": "create", "store": "humans", "entity_id": "h1", "data": {"revived": True}})
    push(store, {"tags": {"t2": {"x": [1, 2.5], "y": None}, "t3": {}}, "humans": {"h-last": {}}}, cv=3)
    ops(store, {"action": "update", "store": "humans", "entity_id": "h0", "data": {"first": "again"}})
    assert [line["version"] for line in journal_lines(data_dir)] == [2, 3, 4, 5]

    stores["humans"]["h0"] = {"first": "again"}
    stores["humans"][f"h{PIECE}"] = {"piece": 2}
    del stores["humans"][f"h{PIECE + 1}"], stores["humans"]["h1"], stores["gone"]["g1"]
    stores["humans"]["h1"] = {"revived": True}  # a revived id goes to the end of its store
    stores["humans"]["h-last"] = {}
    stores["tags"]["t2"] = {"x": [1, 2.5], "y": None}
    stores["tags"]["t3"] = {}
    stores["cases"] = {"c1": {"c": "\u00e9"}}
    expected = body(5, stores)
    journalled = everything(store)
    assert journalled[0] == expected
    assert everything(JSONFileRepositoryStore(location=data_dir)) == journalled  # another worker, from the files

    assert store.purge(U, through_seq=0) == 0  # nothing to purge: nothing written
    assert path(data_dir, "journal").exists()
    # A purge of the first deletes' tombstones (no repository change) writes the state as a new snapshot.
    assert store.purge(U, through_seq=2) == 2
    assert not path(data_dir, "journal").exists()
    assert snapshot_body(data_dir) == expected
    for reader in (store, JSONFileRepositoryStore(location=data_dir)):
        compacted = everything(reader)
        assert compacted[0] == expected
        assert compacted[1:3] == journalled[1:3] and compacted[4] == journalled[4]
        cursor, *where = journalled[3]
        kept = [e for e in cursor if not (e[5] is None and e[3] <= 2)]
        assert len(kept) == len(cursor) - 2
        assert compacted[3] == (kept, *where)


def test_a_torn_last_journal_line_is_not_committed_and_is_cut_by_the_next_commit(
    store: JSONFileRepositoryStore, data_dir: Path
) -> None:
    push(store, {"humans": {"h1": {}}})
    push(store, {"humans": {"h2": {}}}, cv=1)
    committed = store.pull_bytes(U)
    journal = path(data_dir, "journal")
    whole = journal.read_bytes()
    # A commit killed while writing its journal line (after its changelog line).
    crashed = orjson.loads(whole.splitlines()[-1])
    crashed["version"] = 3
    with open(journal, "ab") as fh:
        fh.write(orjson.dumps(crashed)[:-20])
    with open(path(data_dir, "changelog"), "ab") as fh:
        fh.write(changelog_lines(data_dir)[-1].replace(b'"version":2', b'"version":3') + b"\n")

    for reader in (store, JSONFileRepositoryStore(location=data_dir)):
        assert reader.pull_bytes(U) == committed
        assert (reader.summary(U).version, reader.summary(U).records) == (2, 2)
        assert reader.changes(U, 0).current_version == 2 and reader.changes(U, 0).pending == 2
    reader = JSONFileRepositoryStore(location=data_dir)
    assert push(reader, {"humans": {"h3": {}}}, cv=2).version == 3
    assert journal.read_bytes().startswith(whole)
    assert [line["version"] for line in journal_lines(data_dir)] == [2, 3]  # the torn bytes are gone
    assert [orjson.loads(line)["version"] for line in changelog_lines(data_dir)] == [1, 2, 3]
    for reader in (store, JSONFileRepositoryStore(location=data_dir)):
        assert reader.load(U).data == {"humans": {"h1": {}, "h2": {}, "h3": {}}}


def test_a_journal_naming_another_snapshot_is_ignored(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"humans": {"h1": {}}})
    push(store, {"humans": {"h2": {}}}, cv=1)
    obsolete = path(data_dir, "journal").read_bytes()
    # A new snapshot, then the journal it made obsolete put back: a writer killed before removing it.
    push(store, {"notes": {f"n{i}": {"text": "x" * 1000} for i in range(1500)}}, cv=2)
    expected = store.pull_bytes(U)
    path(data_dir, "journal").write_bytes(obsolete)
    assert journal_head(data_dir) != stamp_of(data_dir)

    reader = JSONFileRepositoryStore(location=data_dir)
    assert reader.pull_bytes(U) == expected == store.pull_bytes(U)
    assert reader.summary(U).version == 3
    assert push(reader, {"humans": {"h3": {}}}, cv=3).version == 4
    assert journal_head(data_dir) == stamp_of(data_dir)  # a new journal replaced the obsolete one
    assert [line["version"] for line in journal_lines(data_dir)] == [4]
    assert list(store.load(U).data["humans"]) == ["h1", "h2", "h3"]


# --- the index ---------------------------------------------------------------------


def big_repository() -> dict:
    return {
        "humans": {f"h{i}": {"i": i, "name": f"Person {i}"} for i in range(5000)},
        "tags": {f"t{i}": {"i": i} for i in range(10)},
    }


def expected_after_re_push(stores: dict) -> tuple[dict, dict]:
    """A re-push touching the first, a middle and the last piece of humans, adding records and a store; and the result."""
    pushed = {"humans": {key: dict(value) for key, value in stores["humans"].items()}}
    for i in (5, 4100, 4999):
        pushed["humans"][f"h{i}"]["name"] = f"Renamed {i}"
    pushed["humans"]["h-new"] = {"new": True}
    pushed["cases"] = {"c1": {"title": "case"}}
    result = {"humans": {**stores["humans"], **pushed["humans"]}, "tags": stores["tags"], "cases": pushed["cases"]}
    return pushed, result


@pytest.mark.parametrize("index", ["current", "missing"])
def test_a_re_push_merges_the_same_whether_the_index_is_there_or_rebuilt(
    store: JSONFileRepositoryStore, data_dir: Path, index: str
) -> None:
    # The index says where the snapshot's records lie; a snapshot with no index, no journal and no other
    # index beside it is read as an earlier release's and given one.
    stores = big_repository()
    push(store, stores)
    push(store, {"tags": {"t0": {"i": 0}}}, cv=1)  # no change: nothing journalled
    assert not path(data_dir, "journal").exists()
    assert index_stamp(data_dir) == stamp_of(data_dir)
    summary = store.summary(U)
    assert (summary.version, summary.records, summary.stores, summary.total_syncs) == (1, 5010, 2, 1)
    if index == "missing":
        index_path(data_dir).unlink()
    reader = JSONFileRepositoryStore(location=data_dir)
    assert reader.pull_bytes(U) == body(1, stores)
    assert reader.summary(U) == summary
    assert index_stamp(data_dir) == stamp_of(data_dir)  # rebuilt (or kept) for this snapshot
    assert indexes(data_dir) == [index_path(data_dir).name]

    pushed, result = expected_after_re_push(stores)
    outcome = push(reader, pushed, cv=1)
    assert (outcome.version, outcome.added, outcome.modified) == (2, 2, 3)
    assert reader.pull_bytes(U) == body(2, result) == store.pull_bytes(U)
    summary = JSONFileRepositoryStore(location=data_dir).summary(U)
    assert (summary.records, summary.stores, summary.total_syncs) == (5012, 3, 2)
    # And the next push reads through the index (and journal) this one wrote.
    assert push(store, {"tags": {"t0": {"i": -1}}}, cv=2).modified == 1
    result["tags"]["t0"] = {"i": -1}
    assert JSONFileRepositoryStore(location=data_dir).pull_bytes(U) == body(3, result)


@pytest.mark.parametrize(
    "index", ["missing beside a journal", "of another snapshot", "only another snapshot's", "cut short", "garbage"]
)
def test_a_snapshot_whose_index_is_lost_or_damaged_is_refused_never_reset(
    store: JSONFileRepositoryStore, data_dir: Path, index: str
) -> None:
    # Record versions and tombstones live in the index (and journal): without it the repository is refused,
    # and every file stays as it is until the index is put back.
    push(store, {"humans": {"h1": {"a": 1}, "h2": {}}})
    if index == "missing beside a journal":
        ops(store, {"action": "delete", "store": "humans", "entity_id": "h2"})
    ours = index_path(data_dir)
    good = ours.read_bytes()
    before = everything(store)
    elsewhere = data_dir / "elsewhere"
    elsewhere.mkdir()
    store_push(JSONFileRepositoryStore(location=elsewhere), U, {"humans": {"h0": {}}}, timestamp=TS)
    (theirs,) = elsewhere.glob("*.idx")
    if index == "missing beside a journal":
        ours.unlink()
    elif index == "of another snapshot":
        ours.write_bytes(theirs.read_bytes())
    elif index == "only another snapshot's":
        ours.unlink()
        (data_dir / theirs.name).write_bytes(theirs.read_bytes())
    elif index == "cut short":
        ours.write_bytes(good[:-100])
    elif index == "garbage":
        ours.write_bytes(b"[1,2")
    files = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}
    reader = JSONFileRepositoryStore(location=data_dir)
    for read, answer in ((reader.pull_bytes, before[0]), (reader.summary, before[1])):
        try:
            assert read(U) == answer  # (the snapshot and the index's first line may still serve a read)
        except StorageError:
            pass
    with pytest.raises(StorageError):
        push(reader, {"humans": {"h3": {}}}, cv=2)
    assert {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()} == files
    ours.write_bytes(good)
    with contextlib.suppress(FileNotFoundError):
        (data_dir / theirs.name).unlink()
    assert everything(JSONFileRepositoryStore(location=data_dir)) == before


@pytest.mark.parametrize("killed", ["before the new snapshot took the name", "before the old index went"])
def test_a_writer_killed_between_a_snapshot_and_its_index_leaves_a_whole_pair(
    store: JSONFileRepositoryStore, data_dir: Path, killed: str
) -> None:
    push(store, {"humans": {"h1": {}, "h2": {}}})
    ops(store, {"action": "delete", "store": "humans", "entity_id": "h2"})
    ops(store, {"action": "update", "store": "humans", "entity_id": "h1", "data": {"v": 2}})
    old_index = index_path(data_dir)
    old_bytes = old_index.read_bytes()
    if killed == "before the new snapshot took the name":
        # The new snapshot's index is written (and its temporary file half), the old pair is untouched.
        stray = "0" * 32
        (data_dir / f"repo_{U}.{stray}.idx").write_bytes(old_bytes.replace(stamp_of(data_dir).encode(), stray.encode()))
        (data_dir / f".repo_{U}.{'1' * 32}.idx.tmp").write_bytes(old_bytes[:50])
    else:
        push(store, {"notes": {f"n{i}": {"text": "x" * 1000} for i in range(1500)}}, cv=3)
        old_index.write_bytes(old_bytes)
    assert len(indexes(data_dir)) == 2
    before = everything(store)
    reader = JSONFileRepositoryStore(location=data_dir)
    assert everything(reader) == before
    with reader.reading(U) as snapshot:
        assert {k: tuple(v) for k, v in snapshot.states("humans", ["h1", "h2"]).items()} == {
            "h1": (2, 3, False),
            "h2": (2, 2, True),
        }
    reader.purge(U, through_seq=2)  # the next snapshot written tidies up
    assert indexes(data_dir) == [index_path(data_dir).name]
    assert [p.name for p in data_dir.glob(".*")] == []
    assert reader.pull_bytes(U) == before[0]


# --- crash leftovers and workers ------------------------------------------------------------------


def test_no_temporary_files_are_left(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    for n in range(5):
        push(store, {"humans": {f"h{n}": {}}}, cv=n)
    assert names(data_dir) == [
        "<stamp>.idx",
        f"changelog_{U}.jsonl",
        f"repo_{U}.journal",
        f"repo_{U}.json",
        f"repo_{U}.lock",
    ]
    assert [line["version"] for line in journal_lines(data_dir)] == [2, 3, 4, 5]
    push(store, {"notes": {f"n{i}": {"text": "x" * 1000} for i in range(1500)}}, cv=5)
    assert names(data_dir) == ["<stamp>.idx", f"changelog_{U}.jsonl", f"repo_{U}.json", f"repo_{U}.lock"]


def test_leftover_changelog_line_of_a_crashed_commit_is_ignored_then_replaced(
    store: JSONFileRepositoryStore, data_dir: Path
) -> None:
    push(store, {"humans": {"h1": {}}})
    push(store, {"humans": {"h2": {}}}, cv=1)  # journalled
    # A commit that crashed after its changelog line but before its journal line.
    crashed = {
        "version": 3,
        "timestamp": TS,
        "clientVersion": 2,
        "added": [{"store": "humans", "id": "ghost"}],
        "modified": [],
        "action": "push",
    }
    with open(path(data_dir, "changelog"), "ab") as fh:
        fh.write(orjson.dumps(crashed) + b"\n")
    reader = JSONFileRepositoryStore(location=data_dir)
    page = reader.changes(U, 0)
    assert page.current_version == 2 and page.pending == 2
    assert [entry["version"] for entry in reader.changelog(U)] == [1, 2]
    assert reader.summary(U).total_syncs == 2
    push(reader, {"humans": {"h3": {}}}, cv=2)
    lines = [orjson.loads(line) for line in changelog_lines(data_dir)]
    assert [e["version"] for e in lines] == [1, 2, 3]
    assert lines[2]["added"] == [{"store": "humans", "id": "h3"}]
    assert store.changes(U, 2).entries == [lines[2]]


def test_torn_last_changelog_line_is_ignored_then_cut_off(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"humans": {"h1": {}}})
    with open(path(data_dir, "changelog"), "ab") as fh:
        fh.write(b'{"version":2,"timestamp":"2026-05-1')
    reader = JSONFileRepositoryStore(location=data_dir)
    assert reader.changes(U, 0).pending == 1
    push(reader, {"humans": {"h2": {}}}, cv=1)
    assert [orjson.loads(line)["version"] for line in changelog_lines(data_dir)] == [1, 2]


def test_a_worker_never_serves_a_copy_another_worker_replaced(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    other_worker = JSONFileRepositoryStore(location=data_dir)
    push(store, {"humans": {"h1": {}}})
    assert other_worker.load(U).version == 1  # now cached in the other worker
    push(store, {"humans": {"h2": {}}}, cv=1)  # a journal line
    assert other_worker.load(U).version == 2
    result = push(other_worker, {"humans": {"h3": {}}}, cv=2)
    assert result.version == 3
    assert list(store.load(U).data["humans"]) == ["h1", "h2", "h3"]
    push(store, {"notes": {f"n{i}": {"text": "x" * 1000} for i in range(1500)}}, cv=3)  # a new snapshot
    assert other_worker.summary(U).version == 4
    ops(other_worker, {"action": "delete", "store": "humans", "entity_id": "h1"})
    assert list(store.load(U).data["humans"]) == ["h2", "h3"]
    store.replace(U, dump_of(Repository(version=9, data={"humans": {"z": {}}})), [])
    assert other_worker.pull_bytes(U) == body(9, {"humans": {"z": {}}})


def test_store_names_and_ids_never_become_paths(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"../../etc/passwd": {"../x": {}}, "__proto__": {"constructor": {}}})
    assert names(data_dir) == ["<stamp>.idx", f"changelog_{U}.jsonl", f"repo_{U}.json", f"repo_{U}.lock"]
    push(store, {"/tmp/x": {"../../y": {}}, "repo_x.json": {"\\..\\z": {}}}, cv=1)
    ops(store, {"action": "delete", "store": "../../etc/passwd", "entity_id": "../x"})
    assert names(data_dir) == [
        "<stamp>.idx",
        f"changelog_{U}.jsonl",
        f"repo_{U}.journal",
        f"repo_{U}.json",
        f"repo_{U}.lock",
    ]
    assert list(store.load(U).data) == ["../../etc/passwd", "__proto__", "/tmp/x", "repo_x.json"]


def test_user_ids_that_are_not_ids_are_refused(store: JSONFileRepositoryStore) -> None:
    with pytest.raises(ValueError, match="not a user id"):
        store.pull_bytes("../tokens")


def test_token_file_holds_digests_not_tokens(data_dir: Path) -> None:
    token = "5f0e4c1e-2f7a-4c6b-9d1e-2b3c4d5e6f70"
    now = datetime.now(UTC)
    tokens = JSONFileTokenStore(location=data_dir)
    tokens.add(
        TokenRecord(
            digest=token_digest(token), user_id="u", created=now, last_used=now, expires=now + timedelta(hours=1)
        )
    )
    raw = (data_dir / "tokens.json").read_bytes()
    assert token.encode() not in raw
    assert token_digest(token).encode() in raw
