"""The record-level store contract (PROTOCOL.md §7), run against every repository backend.

Changes are planned here as the service plans them (``sync.records``), and
committed through ``with store.locked(user) as snapshot: snapshot.commit(change_set)``;
what the tests read back goes through the contract only: snapshots, pulls,
cursors, store counts, summaries, dumps and the audit log.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import orjson
import pytest
from django.test import override_settings

from sync import audit
from sync.backends import BaseRepositoryStore, get_repository_store, repository_stores
from sync.backends.base import EMPTY_PULL, EMPTY_SUMMARY, CursorEntry, RecordDump
from sync.merge import ComparingStore, StoredStore, encode_stores
from sync.records import AuditContext, Op, OpsOutcome, PushOutcome, RecordState, plan_ops, plan_push
from tests.backends import REPOSITORY_BACKENDS
from tests.helpers import in_threads

pytestmark = pytest.mark.storage

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
TS = "2026-05-17T10:04:05.123Z"


@pytest.fixture(params=REPOSITORY_BACKENDS)
def store(request: pytest.FixtureRequest, data_dir) -> Iterator[BaseRepositoryStore]:
    with override_settings(PZLS_SYNC_STORE={"BACKEND": request.param, "OPTIONS": {"location": str(data_dir)}}):
        instance = get_repository_store()
        assert f"{type(instance).__module__}.{type(instance).__name__}" == request.param
        yield instance


def fresh(store: BaseRepositoryStore) -> BaseRepositoryStore:
    """A second instance over the same storage, as another worker process would have."""
    repository_stores.reset()
    other = get_repository_store()
    assert other is not store
    return other


def who(user: str) -> AuditContext:
    return AuditContext(user_id=user, username=f"user-{user[:4]}", ip="203.0.113.7")


def push(
    store: BaseRepositoryStore, stores: dict, user: str = U1, client_version: int | None = 0, ts: str = TS
) -> PushOutcome:
    with store.locked(user) as snapshot:
        outcome = plan_push(
            snapshot, encode_stores(stores), timestamp=ts, client_version=client_version, audit=who(user)
        )
        if outcome.change_set is not None:
            snapshot.commit(outcome.change_set)
    return outcome


def op(action: str, rid: str, data: dict | None = None, *, store: str = "humans", expected: int | None = None) -> Op:
    text = None if data is None else msgspec.Raw(orjson.dumps(data))
    return Op(action=action, store=store, record_id=rid, data=text, expected=expected)


def ops(store: BaseRepositoryStore, *batch: Op, user: str = U1, ts: str = TS) -> OpsOutcome:
    with store.locked(user) as snapshot:
        outcome = plan_ops(snapshot, list(batch), timestamp=ts, audit=who(user))
        if outcome.change_set is not None:
            snapshot.commit(outcome.change_set)
    return outcome


def pulled(store: BaseRepositoryStore, user: str = U1) -> dict:
    return orjson.loads(store.pull_bytes(user))


def states(store: BaseRepositoryStore, name: str, ids: list[str], user: str = U1) -> dict[str, RecordState]:
    with store.reading(user) as snapshot:
        return snapshot.states(name, ids)


def walk(backend: BaseRepositoryStore, user: str = U1, *, after: int = 0, limit: int = 500, **filters: Any) -> list:
    """Every entity from ``after`` on, page by page, as (store, id, version, seq, data or None)."""
    filters = {"store": None, "deleted": False, **filters}
    out: list[tuple[str, str, int, int, Any]] = []
    positions: list[int] = []
    while True:
        page = backend.cursor(user, after=after, limit=limit, **filters)
        assert len(page.entries) <= limit
        for entry in page.entries:
            out.append((entry.store, entry.id, entry.version, entry.seq, _data(entry)))
            positions.append(entry.position)
        if not page.has_more:
            assert page.position >= (positions[-1] if positions else 0)
            break
        assert page.entries
        after = page.entries[-1].position
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    return out


def seen(stored: StoredStore, records: Mapping[str, msgspec.Raw]) -> dict[str, bytes]:
    """What a stored store, in any form ``stored_for`` may give, holds for the pushed ``records``."""
    if isinstance(stored, Mapping):
        return {key: bytes(stored[key]) for key in records if key in stored}
    if isinstance(stored, ComparingStore):
        missing, differing = stored.compare(records)
        return {key: bytes(differing.get(key, text)) for key, text in records.items() if key not in missing}
    texts = {key: text for piece in stored for key, text in piece.items()}
    return {key: bytes(texts[key]) for key in records if key in texts}


def _data(entry: CursorEntry) -> Any:
    return None if entry.text is None else orjson.loads(entry.text)


def consistent(store: BaseRepositoryStore, user: str = U1) -> dict:
    """Check that the pull, the summary, the store counts and the cursor agree; the pull's data."""
    doc = pulled(store, user)
    summary = store.summary(user)
    assert summary.version == doc["version"]
    assert summary.data_size_bytes == len(store.pull_bytes(user))
    assert summary.stores == len(doc["data"])
    assert summary.records == sum(len(records) for records in doc["data"].values())
    version, counts = store.store_counts(user)
    assert version == doc["version"]
    assert counts == [(name, len(records)) for name, records in doc["data"].items()]
    live = {(name, rid): data for name, rid, _, _, data in walk(store, user)}
    assert live == {(name, rid): data for name, records in doc["data"].items() for rid, data in records.items()}
    return doc["data"]


def audit_entries(user: str = U1) -> list[tuple[str, str, str, int]]:
    page = audit.read(since=0, limit=1000, user_id=user)
    seqs = [entry["seq"] for entry in page.entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    return [(entry["action"], entry["store"], entry["entity_id"], entry["version"]) for entry in page.entries]


# --- versions and seqs ---------------------------------------------------------------------


def test_a_first_push_makes_every_record_version_one_in_push_order(store: BaseRepositoryStore) -> None:
    outcome = push(store, {"humans": {"h2": {"n": 2}, "h1": {"n": 1}}, "tags": {"t": {}}})
    assert (outcome.version, outcome.added, outcome.modified, outcome.skipped) == (1, 3, 0, 0)
    assert states(store, "humans", ["h1", "h2", "nope"]) == {
        "h1": RecordState(1, 1, False),
        "h2": RecordState(1, 1, False),
    }
    assert walk(store) == [
        ("humans", "h2", 1, 1, {"n": 2}),
        ("humans", "h1", 1, 1, {"n": 1}),
        ("tags", "t", 1, 1, {}),
    ]
    page = store.cursor(U1, after=0, limit=10, store=None, deleted=False)
    assert (page.version, page.position, page.has_more) == (1, 3, False)
    assert page.epoch and page.epoch == fresh(store).cursor(U1, after=0, limit=1, store=None, deleted=False).epoch
    with store.reading(U1) as snapshot:
        assert (snapshot.version, snapshot.position, snapshot.epoch) == (1, 3, page.epoch)
    assert audit_entries() == [
        ("create", "humans", "h2", 1),
        ("create", "humans", "h1", 1),
        ("create", "tags", "t", 1),
    ]
    consistent(store)


def test_a_change_raises_the_record_version_and_moves_it_last_in_the_cursor(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1}, "b": {"n": 1}, "c": {"n": 1}}})
    outcome = push(store, {"humans": {"a": {"n": 1}, "b": {"n": 2}, "d": {}}}, client_version=1)
    assert (outcome.version, outcome.added, outcome.modified) == (2, 1, 1)
    assert states(store, "humans", ["a", "b", "c", "d"]) == {
        "a": RecordState(1, 1, False),
        "b": RecordState(2, 2, False),
        "c": RecordState(1, 1, False),
        "d": RecordState(1, 2, False),
    }
    # The cursor: order of last change (within a push, the push's record order).
    assert [(rid, version, seq) for _, rid, version, seq, _ in walk(store)] == [
        ("a", 1, 1),
        ("c", 1, 1),
        ("b", 2, 2),
        ("d", 1, 2),
    ]
    # The pull: a modified record keeps its place.
    assert list(consistent(store)["humans"]) == ["a", "b", "c", "d"]
    assert audit_entries()[3:] == [("update", "humans", "b", 2), ("create", "humans", "d", 1)]


def test_an_unchanged_push_changes_no_version(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1, "m": [1, 2.0]}}})
    tag, position = store.pull_tag(U1), store.cursor(U1, after=0, limit=1, store=None, deleted=False).position
    outcome = push(store, {"humans": {"a": {"m": [1.0, 2], "n": 1}}})
    assert (outcome.change_set, outcome.version, outcome.added, outcome.modified) == (None, 1, 0, 0)
    assert store.pull_tag(U1) == tag
    assert store.cursor(U1, after=0, limit=1, store=None, deleted=False).position == position
    assert states(store, "humans", ["a"]) == {"a": RecordState(1, 1, False)}
    assert store.changes(U1, 0).pending == 1


def test_stored_for_gives_the_live_texts_of_the_pushed_ids(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}})
    ops(store, op("delete", "c"))
    incoming = encode_stores({"humans": {"a": {"n": 1}, "b": {"n": 9}, "c": {"n": 3}, "z": {}}, "new": {"x": {}}})
    with store.reading(U1) as snapshot:
        stored = {name: seen(texts, incoming[name]) for name, texts in snapshot.stored_for(incoming).items()}
        assert snapshot.tombstoned("humans", ["a", "b", "c", "z"]) == {"c"}
        assert snapshot.tombstoned("new", ["x"]) == set()
        assert snapshot.texts("humans", ["a", "c", "z"]) == {"a": b'{"n":1}'}
    humans = stored["humans"]
    assert {key: orjson.loads(text) for key, text in humans.items() if key in incoming["humans"]} == {
        "a": {"n": 1},
        "b": {"n": 2},
    }
    assert "new" not in stored or not stored["new"]


# --- tombstones ------------------------------------------------------------------------------


def test_a_delete_leaves_a_tombstone_out_of_pulls_and_counts(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1}, "b": {"n": 2}}, "tags": {"t": {}}})
    outcome = ops(store, op("delete", "a"), op("delete", "t", store="tags"))
    assert outcome.version == 2
    assert [r["version"] for r in outcome.results] == [2, 2]
    assert states(store, "humans", ["a", "b"]) == {"a": RecordState(2, 2, True), "b": RecordState(1, 1, False)}
    # A store whose records are all deleted stays, with no records.
    assert consistent(store) == {"humans": {"b": {"n": 2}}, "tags": {}}
    assert store.store_counts(U1) == (2, [("humans", 1), ("tags", 0)])
    assert walk(store, deleted=True)[-2:] == [("humans", "a", 2, 2, None), ("tags", "t", 2, 2, None)]
    assert ("humans", "a", 2, 2, None) not in walk(store)
    assert store.changes(U1, 1).entries == [
        {
            "version": 2,
            "timestamp": TS,
            "clientVersion": None,
            "added": [],
            "modified": [],
            "deleted": [{"store": "humans", "id": "a"}, {"store": "tags", "id": "t"}],
            "action": "ops",
        }
    ]
    assert audit_entries()[3:] == [("delete", "humans", "a", 2), ("delete", "tags", "t", 2)]


def test_a_push_skips_tombstones(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1}, "b": {"n": 2}}})
    ops(store, op("delete", "a"))
    outcome = push(store, {"humans": {"a": {"n": 5}, "b": {"n": 2}, "c": {}}}, client_version=2)
    assert (outcome.version, outcome.added, outcome.modified, outcome.skipped) == (3, 1, 0, 1)
    assert states(store, "humans", ["a"]) == {"a": RecordState(2, 2, True)}
    assert consistent(store) == {"humans": {"b": {"n": 2}, "c": {}}}
    only_skipped = push(store, {"humans": {"a": {"n": 6}}})
    assert (only_skipped.change_set, only_skipped.version, only_skipped.skipped) == (None, 3, 1)


def test_a_revived_tombstone_continues_its_version_and_goes_last(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1}, "b": {"n": 2}}})
    ops(store, op("update", "a", {"n": 2}))
    ops(store, op("delete", "a"))
    outcome = ops(store, op("create", "a", {"n": 4}, expected=3))
    assert outcome.results[0] == {
        "ok": True,
        "entity_id": "a",
        "id": "a",
        "store": "humans",
        "action": "create",
        "version": 4,
    }
    assert states(store, "humans", ["a"]) == {"a": RecordState(4, 4, False)}
    assert list(consistent(store)["humans"].items()) == [("b", {"n": 2}), ("a", {"n": 4})]
    assert audit_entries()[2:] == [
        ("update", "humans", "a", 2),
        ("delete", "humans", "a", 3),
        ("create", "humans", "a", 4),
    ]


def test_a_record_made_and_deleted_in_one_batch_is_a_tombstone(store: BaseRepositoryStore) -> None:
    outcome = ops(
        store, op("create", "a", {"n": 1}), op("update", "a", {"n": 2}), op("delete", "a"), op("create", "b", {})
    )
    assert [r["version"] for r in outcome.results] == [1, 2, 3, 1]
    assert states(store, "humans", ["a", "b"]) == {"a": RecordState(3, 1, True), "b": RecordState(1, 1, False)}
    assert consistent(store) == {"humans": {"b": {}}}
    # One entry per op applied, with the version it made.
    assert audit_entries() == [
        ("create", "humans", "a", 1),
        ("update", "humans", "a", 2),
        ("delete", "humans", "a", 3),
        ("create", "humans", "b", 1),
    ]
    again = ops(store, op("create", "a", {"n": 9}), op("update", "a", {"n": 10}))
    assert [r["version"] for r in again.results] == [4, 5]
    assert consistent(store) == {"humans": {"b": {}, "a": {"n": 10}}}


def test_a_record_deleted_and_created_again_in_one_batch_goes_last(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": "Zoë"}, "b": {}, "c": {}}})
    outcome = ops(store, op("delete", "a"), op("create", "a", {"n": "日本"}))
    assert [r["version"] for r in outcome.results] == [2, 3]
    assert states(store, "humans", ["a"]) == {"a": RecordState(3, 2, False)}
    assert list(consistent(store)["humans"].items()) == [("b", {}), ("c", {}), ("a", {"n": "日本"})]


def test_a_batch_going_back_and_forth_between_stores(store: BaseRepositoryStore) -> None:
    push(store, {"s": {"old": {}}, "t": {"gone": {"n": 1}}})
    ops(
        store,
        op("create", "x", {"n": 1}, store="s"),
        op("create", "y", {}, store="t"),
        op("update", "old", {"n": 2}, store="s"),
        op("delete", "gone", store="t"),
        op("create", "z", {}, store="u"),
        op("create", "w", {}, store="s"),
        op("delete", "z", store="u"),
    )
    assert consistent(store) == {"s": {"old": {"n": 2}, "x": {"n": 1}, "w": {}}, "t": {"y": {}}, "u": {}}
    assert store.store_counts(U1) == (2, [("s", 3), ("t", 1), ("u", 0)])
    assert [(name, rid) for name, rid, *_ in walk(store, deleted=True)] == [
        ("s", "x"),
        ("t", "y"),
        ("s", "old"),
        ("t", "gone"),
        ("u", "z"),  # created before w, deleted after it: a record takes the place of its first change
        ("s", "w"),
    ]


def test_a_batch_that_changes_nothing_keeps_the_version(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1}}})
    tag = store.pull_tag(U1)
    outcome = ops(
        store,
        op("update", "a", {"n": 1}),
        op("delete", "never"),
        op("update", "a", {"n": 2}, expected=5),
        op("create", "a", {"n": 3}),
    )
    assert outcome.change_set is None and outcome.version == 1
    assert [r["ok"] for r in outcome.results] == [True, True, False, False]
    assert outcome.results[2]["serverVersion"] == 1
    assert orjson.loads(orjson.dumps(outcome.results[3]["serverData"])) == {"n": 1}
    assert store.pull_tag(U1) == tag and store.changes(U1, 0).pending == 1
    assert states(store, "humans", ["never"]) == {}


# --- atomicity and the lock -------------------------------------------------------------------


class Boom(Exception):
    pass


def plan_then_fail(store: BaseRepositoryStore) -> None:
    with store.locked(U1) as snapshot:
        outcome = plan_ops(
            snapshot,
            [op("update", "a", {"n": 2}), op("create", "b", {}), op("create", "x", {}, store="new")],
            timestamp=TS,
            audit=who(U1),
        )
        assert outcome.change_set is not None
        raise Boom


def test_an_exception_inside_locked_leaves_nothing(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1}}})
    before = (store.pull_bytes(U1), store.summary(U1), store.changes(U1, 0), audit_entries(), store.dump(U1))
    with pytest.raises(Boom):
        plan_then_fail(store)
    other = fresh(store)
    after = (other.pull_bytes(U1), other.summary(U1), other.changes(U1, 0), audit_entries(), other.dump(U1))
    assert after == before
    assert other.cursor(U1, after=0, limit=10, store=None, deleted=True).position == 1
    assert push(other, {"humans": {"b": {}}}).version == 2


def test_a_refused_or_empty_first_write_leaves_no_repository(store: BaseRepositoryStore) -> None:
    def refuse() -> None:
        raise Boom

    with pytest.raises(Boom):
        with store.locked(U1, allowed=refuse):
            pytest.fail("allowed() refused: the body must not run")
    with store.reading(U1) as early, store.locked(U1) as snapshot:
        # Nothing landed in between: a plan made on the first still holds on the second.
        assert (snapshot.version, snapshot.epoch) == (early.version, early.epoch) and snapshot.version == 0
    with pytest.raises(Boom):
        with store.locked(U1) as snapshot:
            raise Boom
    for instance in (store, fresh(store)):
        assert instance.pull_tag(U1) == instance.pull_tag(U2)
        assert instance.pull_bytes(U1) == EMPTY_PULL
        assert instance.summary(U1) == EMPTY_SUMMARY
        assert instance.store_counts(U1) == (0, [])
        assert instance.dump(U1) == RecordDump(version=0, stores={}, tombstones={})
    assert audit_entries() == []


def test_allowed_is_asked_under_the_lock_before_the_body(store: BaseRepositoryStore) -> None:
    calls: list[str] = []
    with store.locked(U1, allowed=lambda: calls.append("allowed")) as snapshot:
        calls.append("body")
        outcome = plan_ops(snapshot, [op("create", "a", {})], timestamp=TS, audit=who(U1))
        assert outcome.change_set is not None
        snapshot.commit(outcome.change_set)
    assert calls == ["allowed", "body"]
    assert consistent(store) == {"humans": {"a": {}}}


# Transactional for every backend: the threads' connections commit (the audit log is in the database).
@pytest.mark.django_db(transaction=True)
def test_concurrent_commits_are_serialised(store: BaseRepositoryStore) -> None:
    versions: list[int] = []
    lock = threading.Lock()

    def writer(worker: int) -> None:
        for n in range(8):
            if n % 2:
                outcome: PushOutcome | OpsOutcome = push(store, {"humans": {f"w{worker}-{n}": {"n": n}}})
            else:
                outcome = ops(store, op("create", f"w{worker}-{n}", {"n": n}), op("delete", f"w{worker}-{n - 2}"))
            with lock:
                versions.append(outcome.version)

    in_threads(6, writer)
    assert sorted(versions) == list(range(1, 49))
    other = fresh(store)
    data = consistent(other)
    assert len(data["humans"]) == 6 * 4 + 6  # the odd ones, and each worker's last even one
    entities = walk(other, deleted=True)
    assert len(entities) == 48  # one entity per id: each worker's 8, live or tombstones
    assert max(seq for *_, seq, _ in entities) == 48
    page = other.cursor(U1, after=0, limit=1, store=None, deleted=True)
    assert page.version == 48
    assert len(audit_entries()) == 6 * 4 + 6 * 4 + 6 * 3


# --- cursors -----------------------------------------------------------------------------------


def test_a_cursor_walks_in_position_order_with_filters(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {f"h{n}": {"n": n} for n in range(7)}, "tags": {f"t{n}": {} for n in range(3)}})
    ops(store, op("delete", "h1"), op("update", "h2", {"n": 20}), op("create", "t9", {}, store="tags"))
    everything = walk(store, deleted=True, limit=3)
    assert [(name, rid) for name, rid, *_ in everything] == [
        ("humans", "h0"),
        *[("humans", f"h{n}") for n in range(3, 7)],
        *[("tags", f"t{n}") for n in range(3)],
        ("humans", "h1"),
        ("humans", "h2"),
        ("tags", "t9"),
    ]
    assert everything[-3:] == [
        ("humans", "h1", 2, 2, None),
        ("humans", "h2", 2, 2, {"n": 20}),
        ("tags", "t9", 1, 2, {}),
    ]
    assert walk(store, limit=2) == [entity for entity in everything if entity[4] is not None]
    assert walk(store, store="tags", deleted=True) == [entity for entity in everything if entity[0] == "tags"]
    assert walk(store, store="nope", deleted=True) == []
    # From the last position of the first push on: only what changed after it.
    first = store.cursor(U1, after=0, limit=10, store=None, deleted=True)
    assert first.has_more and [e.id for e in first.entries][:2] == ["h0", "h3"]
    middle = next(e.position for e in first.entries if e.id == "t2")
    assert [rid for _, rid, *_ in walk(store, after=middle, deleted=True)] == ["h1", "h2", "t9"]
    end = store.cursor(U1, after=10**15, limit=5, store=None, deleted=True)
    assert (end.entries, end.has_more, end.version) == ([], False, 2)
    assert end.position == store.cursor(U1, after=0, limit=100, store=None, deleted=True).entries[-1].position


def test_a_cursor_page_has_exactly_its_limit(store: BaseRepositoryStore) -> None:
    push(store, {"s": {f"r{n:03d}": {"n": n} for n in range(25)}})
    page = store.cursor(U1, after=0, limit=25, store=None, deleted=False)
    assert len(page.entries) == 25 and not page.has_more
    page = store.cursor(U1, after=0, limit=24, store=None, deleted=False)
    assert len(page.entries) == 24 and page.has_more
    rest = store.cursor(U1, after=page.entries[-1].position, limit=24, store=None, deleted=False)
    assert [e.id for e in rest.entries] == ["r024"] and not rest.has_more


def test_a_cursor_of_nobody_is_empty(store: BaseRepositoryStore) -> None:
    page = store.cursor(U2, after=0, limit=10, store=None, deleted=True)
    assert (page.entries, page.has_more, page.version, page.position) == ([], False, 0, 0)


def test_cursor_texts_come_back_byte_for_byte(store: BaseRepositoryStore) -> None:
    texts = {
        "tabs": b'{\t"a" :\t1}',
        "lines": b'{\n  "a": [1,\r\n 2]\n}',
        'back\\slash "id"': b'{"path":"C:\\\\dir\\\\file","nl":"a\\nb","u":"\\u005c"}',
        "plain": b'{"name":"Zo\xc3\xab"}',
    }
    with store.locked(U1) as snapshot:
        outcome = plan_push(
            snapshot,
            {"s": {rid: msgspec.Raw(text) for rid, text in texts.items()}},
            timestamp=TS,
            client_version=None,
            audit=None,
        )
        assert outcome.change_set is not None
        snapshot.commit(outcome.change_set)
    page = fresh(store).cursor(U1, after=0, limit=10, store=None, deleted=False)
    assert {entry.id: entry.text for entry in page.entries} == texts
    assert audit_entries() == []  # a change set naming no one is not audited
    consistent(store)


# --- counts, purge, dump and replace -----------------------------------------------------------------


def test_store_counts_are_live_records_in_pull_order(store: BaseRepositoryStore) -> None:
    assert store.store_counts(U1) == (0, [])
    push(store, {"b": {"x": {}, "y": {}}, "a": {"z": {}}})
    ops(store, op("delete", "x", store="b"), op("create", "q", {}, store="c"))
    assert store.store_counts(U1) == (2, [("b", 1), ("a", 1), ("c", 1)])
    assert fresh(store).store_counts(U1) == (2, [("b", 1), ("a", 1), ("c", 1)])


def test_purge_removes_old_tombstones_and_changes_no_version(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {}, "b": {}, "c": {}}})
    ops(store, op("delete", "a"))
    ops(store, op("delete", "b"))
    pull = store.pull_bytes(U1)
    assert store.purge(U1, through_seq=2) == 1
    assert store.purge(U1, through_seq=2) == 0
    assert store.summary(U1).version == 3 and store.pull_bytes(U1) == pull
    assert states(store, "humans", ["a", "b"]) == {"b": RecordState(2, 3, True)}
    assert [rid for _, rid, *_ in walk(store, deleted=True)] == ["c", "b"]
    # A purged id is as never seen.
    outcome = ops(store, op("create", "a", {"again": True}, expected=0))
    assert outcome.results[0]["version"] == 1
    assert store.purge(U1, through_seq=10**6) == 1
    assert consistent(store) == {"humans": {"c": {}, "a": {"again": True}}}
    assert store.purge(U2, through_seq=10**6) == 0


def test_dump_and_replace_round_trip_as_a_new_history(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}, "gone": {"g": {}}})
    ops(store, op("delete", "b"), op("delete", "g", store="gone"), op("update", "a", {"n": 10}))
    push(store, {"humans": {"d": {"n": 4}}, "tags": {"t": {}}}, client_version=2)
    dump = store.dump(U1)
    assert dump.version == 3
    assert {
        name: [(rid, orjson.loads(bytes(text)), v, s) for rid, text, v, s in rows] for name, rows in dump.stores.items()
    } == {
        "humans": [("a", {"n": 10}, 2, 2), ("c", {"n": 3}, 1, 1), ("d", {"n": 4}, 1, 3)],
        "gone": [],
        "tags": [("t", {}, 1, 3)],
    }
    assert dump.tombstones == {"humans": [("b", 2, 2)], "gone": [("g", 2, 2)]}
    old_epoch = store.cursor(U1, after=0, limit=1, store=None, deleted=False).epoch

    store.replace(U2, dump, store.changelog(U1))
    other = fresh(store)
    assert other.dump(U2) == dump
    assert other.pull_bytes(U2) == store.pull_bytes(U1).replace(b'"version":3', b'"version":3')
    assert other.changelog(U2) == store.changelog(U1)
    assert states(other, "humans", ["a", "b"], user=U2) == {"a": RecordState(2, 2, False), "b": RecordState(2, 2, True)}
    consistent(other, U2)
    # Every entity once, numbered from the start of a new history (in an order of the backend's choosing).
    page = other.cursor(U2, after=0, limit=100, store=None, deleted=True)
    assert sorted((e.id, e.seq) for e in page.entries) == [("a", 2), ("b", 2), ("c", 1), ("d", 3), ("g", 2), ("t", 3)]
    assert [e.position for e in page.entries] == [1, 2, 3, 4, 5, 6]
    assert page.position == 6 and page.version == 3
    assert page.epoch and page.epoch != old_epoch

    # Replacing a repository in place starts a new history too.
    store.replace(U1, RecordDump(version=7, stores={"x": [("r", msgspec.Raw(b'{"k":1}'), 3, 7)]}, tombstones={}), [])
    page = store.cursor(U1, after=0, limit=10, store=None, deleted=True)
    assert [(e.id, e.version, e.seq, e.position) for e in page.entries] == [("r", 3, 7, 1)]
    assert page.epoch not in (old_epoch, "")
    assert consistent(store) == {"x": {"r": {"k": 1}}}
    assert store.summary(U1).total_syncs == 0 and store.changes(U1, 0).pending == 0
    outcome = ops(store, op("update", "r", {"k": 2}, store="x"))
    assert outcome.version == 8 and outcome.results[0]["version"] == 4
    assert store.cursor(U1, after=1, limit=10, store=None, deleted=True).entries[0].position == 2


def test_delete_forgets_everything(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"a": {}}})
    ops(store, op("delete", "a"))
    epoch = store.cursor(U1, after=0, limit=1, store=None, deleted=True).epoch
    store.delete(U1)
    store.delete(U1)
    assert store.pull_bytes(U1) == EMPTY_PULL and store.summary(U1) == EMPTY_SUMMARY
    assert store.cursor(U1, after=0, limit=10, store=None, deleted=True).entries == []
    assert store.dump(U1) == RecordDump(version=0, stores={}, tombstones={})
    assert push(store, {"humans": {"a": {}}}).version == 1
    assert states(store, "humans", ["a"]) == {"a": RecordState(1, 1, False)}
    assert store.cursor(U1, after=0, limit=1, store=None, deleted=True).epoch != epoch


def test_a_change_set_planned_on_another_snapshot_commits_the_same(store: BaseRepositoryStore) -> None:
    # The service plans a push without the lock, and commits that plan under it when nothing landed meanwhile.
    push(store, {"humans": {"a": {"n": "Zoë"}, "b": {"n": "日本"}, "c": {}}, "tags": {"t": {}}})
    ops(store, op("delete", "c"))
    with store.reading(U1) as early:
        planned = plan_push(
            early,
            encode_stores({"humans": {"a": {"n": "Zoë Ü"}, "c": {"x": 1}, "d": {"n": "ñ"}}, "new": {"x": {}}}),
            timestamp=TS,
            client_version=2,
            audit=who(U1),
        )
        seen = (early.version, early.epoch)
    assert (planned.added, planned.modified, planned.skipped) == (2, 1, 1)
    with store.locked(U1) as current:
        assert (current.version, current.epoch) == seen
        assert planned.change_set is not None
        current.commit(planned.change_set)
    assert consistent(store) == {
        "humans": {"a": {"n": "Zoë Ü"}, "b": {"n": "日本"}, "d": {"n": "ñ"}},
        "tags": {"t": {}},
        "new": {"x": {}},
    }
    with store.reading(U1) as early:
        batch = plan_ops(early, [op("delete", "b"), op("create", "c", {"back": "é"})], timestamp=TS, audit=who(U1))
    with store.locked(U1) as current:
        assert batch.change_set is not None and batch.change_set.version == current.version + 1
        current.commit(batch.change_set)
    assert consistent(store) == {
        "humans": {"a": {"n": "Zoë Ü"}, "d": {"n": "ñ"}, "c": {"back": "é"}},
        "tags": {"t": {}},
        "new": {"x": {}},
    }
    assert states(store, "humans", ["b", "c"]) == {"b": RecordState(2, 4, True), "c": RecordState(3, 4, False)}
