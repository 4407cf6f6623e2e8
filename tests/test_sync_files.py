"""What the JSON-file repository and token stores promise beyond the contract: the
on-disk layout, crash recovery, atomic writes, and caching by file identity."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from accounts.backends.base import TokenRecord
from accounts.backends.json_file import JSONFileTokenStore
from accounts.services import token_digest
from sync.backends.base import Repository
from sync.backends.json_file import _RECORDS_PER_PIECE as PIECE
from sync.backends.json_file import JSONFileRepositoryStore
from sync.services import dump_of
from tests.helpers import store_push

U = "33333333-3333-4333-8333-333333333333"
TS = "2026-05-17T10:04:05.123Z"


@pytest.fixture
def store(data_dir: Path) -> JSONFileRepositoryStore:
    return JSONFileRepositoryStore(location=data_dir)


def push(store: JSONFileRepositoryStore, stores: dict, cv: int | None = 0):
    return store_push(store, U, stores, client_version=cv, timestamp=TS)


def changelog_lines(data_dir: Path) -> list[bytes]:
    return (data_dir / f"changelog_{U}.jsonl").read_bytes().splitlines()


STAMP_LINE = re.compile(rb'\{"stamp":"[0-9a-f]{32}"\}\n')


def repository_body(path: Path) -> bytes:
    """The pull body in a repository file, after its stamp line (which must be there)."""
    raw = path.read_bytes()
    stamp = STAMP_LINE.match(raw)
    assert stamp is not None, raw[:80]
    return raw[stamp.end() :]


def test_repository_file_is_a_stamp_line_then_exactly_the_pull_body(
    store: JSONFileRepositoryStore, data_dir: Path
) -> None:
    push(store, {"humans": {"h1": {"name": "A"}}})
    body = repository_body(data_dir / f"repo_{U}.json")
    assert body == b'{"version":1,"data":{"humans":{"h1":{"name":"A"}}}}'
    assert store.pull_bytes(U) == body
    first = (data_dir / f"repo_{U}.json").read_bytes()[:45]
    push(store, {"humans": {"h2": {}}})
    assert (data_dir / f"repo_{U}.json").read_bytes()[:45] != first  # a new stamp with every write


@pytest.mark.parametrize("sizes", [[0], [1], [PIECE], [PIECE + 1, 0, 3], [5000, 2 * PIECE]])
def test_large_repositories_are_written_piece_by_piece_to_the_same_bytes(
    store: JSONFileRepositoryStore, data_dir: Path, sizes: list[int]
) -> None:
    stores = {
        f"s{n}": {f"r{i}": {"i": i, "name": 'Zoë \u2028 "q"'} for i in range(size)} for n, size in enumerate(sizes)
    }
    store.replace(U, dump_of(Repository(version=1, data=stores)), [])  # keeps empty stores, which a push never adds
    expected = b'{"version":1,"data":' + orjson.dumps(stores) + b"}"
    assert repository_body(data_dir / f"repo_{U}.json") == expected
    push(store, {"s0": {"new": {"a": 1}}})
    stores["s0"]["new"] = {"a": 1}
    assert store.pull_bytes(U) == b'{"version":2,"data":' + orjson.dumps(stores) + b"}"


def test_no_temporary_files_are_left(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    for n in range(5):
        push(store, {"humans": {f"h{n}": {}}})
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == [f"changelog_{U}.jsonl", f"repo_{U}.json", f"repo_{U}.lock", f"repo_{U}.meta.json"]


def test_leftover_changelog_line_of_a_crashed_push_is_ignored_then_replaced(
    store: JSONFileRepositoryStore, data_dir: Path
) -> None:
    push(store, {"humans": {"h1": {}}})
    # A push that crashed after its changelog line but before the repository file.
    crashed = {
        "version": 2,
        "timestamp": TS,
        "clientVersion": 1,
        "added": [{"store": "humans", "id": "ghost"}],
        "modified": [],
        "action": "push",
    }
    with open(data_dir / f"changelog_{U}.jsonl", "ab") as fh:
        fh.write(orjson.dumps(crashed) + b"\n")
    reader = JSONFileRepositoryStore(location=data_dir)
    page = reader.changes(U, 0)
    assert page.current_version == 1 and page.pending == 1
    assert reader.summary(U).total_syncs == 1
    push(reader, {"humans": {"h2": {}}}, cv=1)
    lines = [orjson.loads(line) for line in changelog_lines(data_dir)]
    assert [e["version"] for e in lines] == [1, 2]
    assert lines[1]["added"] == [{"store": "humans", "id": "h2"}]


def test_torn_last_line_is_ignored_then_cut_off(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"humans": {"h1": {}}})
    with open(data_dir / f"changelog_{U}.jsonl", "ab") as fh:
        fh.write(b'{"version":2,"timestamp":"2026-05-1')
    reader = JSONFileRepositoryStore(location=data_dir)
    assert reader.changes(U, 0).pending == 1
    push(reader, {"humans": {"h2": {}}})
    assert [orjson.loads(line)["version"] for line in changelog_lines(data_dir)] == [1, 2]


def test_a_worker_never_serves_a_copy_another_worker_replaced(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    other_worker = JSONFileRepositoryStore(location=data_dir)
    push(store, {"humans": {"h1": {}}})
    assert other_worker.load(U).version == 1  # now cached in the other worker
    push(store, {"humans": {"h2": {}}})
    assert other_worker.load(U).version == 2
    result = push(other_worker, {"humans": {"h3": {}}}, cv=2)
    assert result.version == 3
    assert list(store.load(U).data["humans"]) == ["h1", "h2", "h3"]


def test_stale_or_missing_summary_is_rebuilt(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"humans": {"h1": {}, "h2": {}}})
    push(store, {"tags": {"t1": {}}})
    expected = store.summary(U)
    (data_dir / f"repo_{U}.meta.json").unlink()
    assert JSONFileRepositoryStore(location=data_dir).summary(U) == expected
    (data_dir / f"repo_{U}.meta.json").write_bytes(b'{"version":1,"stores":9}')
    assert JSONFileRepositoryStore(location=data_dir).summary(U) == expected
    assert (expected.records, expected.stores, expected.total_syncs) == (3, 2, 2)


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


@pytest.mark.parametrize("sidecar", ["current", "missing", "of another file", "not fitting its file", "garbage"])
def test_a_re_push_merges_the_same_whatever_the_sidecar_says(
    store: JSONFileRepositoryStore, data_dir: Path, sidecar: str
) -> None:
    # The sidecar says where a repository file's pieces lie; a push reads the
    # stored repository through it only when it names that very file.
    stores = big_repository()
    push(store, stores)
    meta_path = data_dir / f"repo_{U}.meta.json"
    meta = orjson.loads(meta_path.read_bytes())
    assert meta["file"][1] == (data_dir / f"repo_{U}.json").stat().st_size
    assert meta["file"][3].encode() in (data_dir / f"repo_{U}.json").read_bytes()[:45]  # the file's stamp
    assert [len(spans) for spans in meta["layout"].values()] == [-(-5000 // PIECE), 1]
    if sidecar == "missing":
        meta_path.unlink()
    elif sidecar == "of another file":
        meta["file"][0] += 1
        meta["layout"]["humans"] = [[0, 10]]
        meta_path.write_bytes(orjson.dumps(meta))
    elif sidecar == "not fitting its file":
        meta["layout"]["humans"][1][0] += 3  # a piece that starts inside a record
        meta_path.write_bytes(orjson.dumps(meta))
    elif sidecar == "garbage":
        meta_path.write_bytes(b"[1,2")
    pushed, result = expected_after_re_push(stores)
    outcome = push(store, pushed, cv=1)
    assert (outcome.version, outcome.added, outcome.modified) == (2, 2, 3)
    assert store.pull_bytes(U) == b'{"version":2,"data":' + orjson.dumps(result) + b"}"
    summary = JSONFileRepositoryStore(location=data_dir).summary(U)
    assert (summary.records, summary.stores, summary.total_syncs) == (5012, 3, 2)
    # And the next push reads through the sidecar this one wrote.
    assert push(store, {"tags": {"t0": {"i": -1}}}, cv=2).modified == 1
    result["tags"]["t0"] = {"i": -1}
    assert store.pull_bytes(U) == b'{"version":3,"data":' + orjson.dumps(result) + b"}"


def test_a_noop_push_does_not_rewrite_the_repository_file(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"humans": {"h1": {"a": 1}}})
    before = os.stat(data_dir / f"repo_{U}.json")
    push(store, {"humans": {"h1": {"a": 1}}})
    after = os.stat(data_dir / f"repo_{U}.json")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_store_names_and_ids_never_become_paths(store: JSONFileRepositoryStore, data_dir: Path) -> None:
    push(store, {"../../etc/passwd": {"../x": {}}, "__proto__": {"constructor": {}}})
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == [f"changelog_{U}.jsonl", f"repo_{U}.json", f"repo_{U}.lock", f"repo_{U}.meta.json"]
    assert list(store.load(U).data) == ["../../etc/passwd", "__proto__"]


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
