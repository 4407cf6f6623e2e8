"""Record-level sync (PROTOCOL-v2 §7 and the issue-14 decisions) against a model, in random interleavings.

A Hypothesis state machine drives one fresh account per example through full
pushes (deleted ids included), ops batches (create, update and delete, with
no, the right or a wrong expectedVersion), per-record PUT and DELETE (If-Match
in every spelling, ``*``, If-None-Match), tombstone purges and cursor walks
(from the start and from cursors saved earlier, with and without tombstones,
one store or all, various limits, single pages in between other writes). The
model below is §7 written plainly: records with a version, the repository
version (``seq``) and place of their last change, and a tombstone flag. Every
answer is compared with it: push counts, op results, versions, pulls and their
order, each cursor page (contents, order of last change, hasMore, latestSeq),
stores, the changelog and the caller's audit log.

Where the protocol leaves a choice open the model accepts either answer: the
place in the store order of a store that a purge emptied completely, and
whether a store without live records appears in a pull.
"""

from __future__ import annotations

import io
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from django.core.management import call_command
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from testkit.client import ok, record_path
from tests.helpers import Api

pytestmark = pytest.mark.storage

STORES = ["humans", "tags", "cases"]
IDS = ["a", "b", "c", "d", "e/f ü"]  # the last needs encoding in a record URL
VALUES: list[dict[str, Any]] = [
    {},
    {"n": 1},
    {"n": 1.0},  # equal to the one before
    {"n": True},  # not equal to {"n": 1}
    {"n": "1"},
    {"a": 1, "b": [1, 2]},
    {"b": [1.0, 2], "a": 1},  # equal to the one before
    {"name": "Ann", "x": None},
]
ENTITY_KEYS = {"store", "id", "version", "seq", "data"}
RECORD_ACTIONS = {"create", "update", "delete"}
START = (-1, -1)
END = 10**9
USERS = itertools.count()
Entry = tuple[str, str, str, int]  # an audit entry: action, store, id, version

keys = st.tuples(st.sampled_from(STORES), st.sampled_from(IDS))
values = st.sampled_from(VALUES)
expectations = st.sampled_from(["absent", "null", "right", "wrong", "zero"])
limits = st.sampled_from([None, 1, 2, 3, 7])
deleted_flags = st.sampled_from([None, "1", "true", "0", "false"])
store_filters = st.one_of(st.none(), st.sampled_from([*STORES, "never-used"]))


def same(a: Any, b: Any) -> bool:
    """JSON equality as the server compares records: key order ignored, 1 == 1.0, true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def check(got: Any, want: Any, what: str) -> None:
    assert same(got, want), f"{what}:\n  server: {got!r}\n  model:  {want!r}"


@dataclass
class Rec:
    version: int
    seq: int
    place: int  # order within the request that made the last change
    data: dict[str, Any] | None  # None: a tombstone

    @property
    def position(self) -> tuple[int, int]:
        return (self.seq, self.place)


@dataclass
class Saved:
    cursor: str
    position: tuple[int, int]
    deleted: str | None
    store: str | None


@dataclass
class Model:
    """§7, plainly."""

    version: int = 0
    recs: dict[tuple[str, str], Rec] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)  # live ids of each store, in pull order
    stores: list[str] = field(default_factory=list)  # first-insertion order
    unplaced: set[str] = field(default_factory=set)  # emptied by a purge: their place in the order is open
    changelog: list[int] = field(default_factory=list)
    # per changing request: its audit entries one per op, and one per record (the ops of a record folded together)
    audit: list[tuple[list[Entry], list[Entry]]] = field(default_factory=list)
    # the request being applied
    place: int = 0
    group: list[Entry] = field(default_factory=list)
    live_before: dict[tuple[str, str], bool] = field(default_factory=dict)
    first_place: dict[tuple[str, str], int] = field(default_factory=dict)

    def begin(self) -> None:
        self.place, self.group, self.live_before, self.first_place = 0, [], {}, {}

    def end(self) -> None:
        if self.group:
            self.version += 1
            self.changelog.append(self.version)
            folded = []
            for key, was_live in self.live_before.items():
                rec = self.recs[key]
                action = "delete" if rec.data is None else "update" if was_live else "create"
                folded.append((action, key[0], key[1], rec.version))
            self.audit.append((self.group, folded))

    def state(self, key: tuple[str, str]) -> tuple[int, bool, dict[str, Any] | None]:
        """(current version, live, data) with version 0 for an id never seen (or purged)."""
        rec = self.recs.get(key)
        if rec is None:
            return 0, False, None
        return rec.version, rec.data is not None, rec.data

    def _touch(self, rec: Rec, action: str, key: tuple[str, str], was_live: bool) -> int:
        # Within one request a record takes the place of its first change (PROTOCOL.md §7.4).
        if key not in self.first_place:
            self.first_place[key] = self.place
            self.place += 1
        rec.place = self.first_place[key]
        self.live_before.setdefault(key, was_live)
        rec.seq = self.version + 1
        self.group.append((action, key[0], key[1], rec.version))
        return rec.version

    def create(self, key: tuple[str, str], data: dict[str, Any]) -> int:
        current, live, _ = self.state(key)
        assert not live
        rec = self.recs[key] = Rec(current + 1, 0, 0, data)
        self.order.setdefault(key[0], []).append(key[1])
        if key[0] not in self.stores:
            self.stores.append(key[0])
        return self._touch(rec, "create", key, False)

    def update(self, key: tuple[str, str], data: dict[str, Any]) -> int:
        rec = self.recs[key]
        assert rec.data is not None
        if same(rec.data, data):
            return rec.version
        rec.version += 1
        rec.data = data
        return self._touch(rec, "update", key, True)

    def remove(self, key: tuple[str, str]) -> int:
        rec = self.recs[key]
        assert rec.data is not None
        rec.version += 1
        rec.data = None
        self.order[key[0]].remove(key[1])
        return self._touch(rec, "delete", key, True)

    def write(self, key: tuple[str, str], data: dict[str, Any]) -> int:
        """Create or replace."""
        return self.update(key, data) if self.state(key)[1] else self.create(key, data)

    # --- requests

    def push(self, body: dict[str, dict[str, dict[str, Any]]]) -> dict[str, int]:
        counts = {"added": 0, "modified": 0, "skipped": 0}
        self.begin()
        for store, records in body.items():
            for rid, data in records.items():
                key = (store, rid)
                rec = self.recs.get(key)
                if rec is None:
                    self.create(key, data)
                    counts["added"] += 1
                elif rec.data is None:
                    counts["skipped"] += 1
                elif not same(rec.data, data):
                    self.update(key, data)
                    counts["modified"] += 1
        self.end()
        return {"version": self.version, **counts}

    def op(self, action: str, key: tuple[str, str], data: dict[str, Any], expected: int | None) -> dict[str, Any]:
        current, live, stored = self.state(key)
        names = {"entity_id": key[1], "id": key[1], "store": key[0]}
        if (expected is not None and expected != current) or (action == "create" and live):
            return {
                "ok": False, "conflict": True, **names, "action": action,
                "serverVersion": current, "serverData": stored,
            }  # fmt: skip
        if action == "delete":
            return {"ok": True, **names, "action": "delete", "version": self.remove(key) if live else current}
        if live:
            return {"ok": True, **names, "action": "update", "version": self.update(key, data)}
        return {"ok": True, **names, "action": "create", "version": self.create(key, data)}

    def purge(self) -> int:
        gone = [key for key, rec in self.recs.items() if rec.data is None]
        for key in gone:
            del self.recs[key]
        for store in self.stores:
            if not any(key[0] == store for key in self.recs):
                self.unplaced.add(store)
        return len(gone)

    def page(
        self, position: tuple[int, int], deleted: bool, store: str | None, limit: int | None
    ) -> tuple[list[tuple[tuple[str, str], Rec]], bool, tuple[int, int]]:
        """A cursor page: the records, hasMore, and the position after it."""
        size = 500 if limit is None else min(limit, 5000)
        found = sorted(
            (
                (key, rec)
                for key, rec in self.recs.items()
                if rec.position > position and (deleted or rec.data is not None) and (store is None or key[0] == store)
            ),
            key=lambda item: item[1].position,
        )
        taken = found[:size]
        after = taken[-1][1].position if taken else (self.version, END)
        return taken, len(found) > size, after

    def live_count(self, store: str) -> int:
        return len(self.order.get(store, []))


def expected_entity(key: tuple[str, str], rec: Rec) -> dict[str, Any]:
    body: dict[str, Any] = {"store": key[0], "id": key[1], "version": rec.version, "seq": rec.seq, "data": rec.data}
    if rec.data is None:
        body["deleted"] = True
    return body


class RecordSync(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.api = Api()
        self.username = f"prop{next(USERS)}"
        self.api.register(self.username, "secret1")
        self.model = Model()
        self.saved: list[Saved] = []
        self.audit_entries: list[dict[str, Any]] = []

    # --- writes

    @initialize(
        body=st.dictionaries(st.sampled_from(STORES), st.dictionaries(st.sampled_from(IDS), values, max_size=5))
    )
    def first_push(self, body: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.push(body)

    @rule(body=st.dictionaries(st.sampled_from(STORES), st.dictionaries(st.sampled_from(IDS), values, max_size=5)))
    def push(self, body: dict[str, dict[str, dict[str, Any]]]) -> None:
        # Stores in the repository's own order, new ones after: "store order" then the push's record order
        # mean the same thing then.
        known = self.model.stores
        ordered = dict(sorted(body.items(), key=lambda item: known.index(item[0]) if item[0] in known else len(known)))
        want = self.model.push(ordered)
        got = self.api.push(ordered)
        # skipped is left out of an answer when it is 0, so a first-edition answer stays as it was
        assert "skipped" not in got or got["skipped"] > 0, got
        check({k: got.get(k, 0) for k in ("version", "added", "modified", "skipped")}, want, f"push {ordered}")

    @precondition(lambda self: any(rec.data is None for rec in self.model.recs.values()))
    @rule(data=st.data())
    def push_deleted_ids(self, data: st.DataObject) -> None:
        """Another device pushes everything it has, records deleted here included."""
        body: dict[str, dict[str, dict[str, Any]]] = {}
        for key in sorted(self.model.recs, key=lambda k: (self.model.stores.index(k[0]), k[1])):
            body.setdefault(key[0], {})[key[1]] = data.draw(values)
        self.push(body)

    @rule(
        specs=st.lists(
            st.tuples(
                st.sampled_from(["create", "update", "delete"]),
                keys,
                values,
                expectations,
                st.booleans(),
                st.integers(1, 2),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def ops(self, specs: list[tuple[str, tuple[str, str], dict[str, Any], str, bool, int]]) -> None:
        operations, want = [], []
        self.model.begin()
        for action, key, value, expectation, use_id, off in specs:
            current = self.model.state(key)[0]
            expected = {"absent": None, "null": None, "right": current, "wrong": current + off, "zero": 0}[expectation]
            body: dict[str, Any] = {"action": action, "store": key[0], ("id" if use_id else "entity_id"): key[1]}
            if action != "delete":
                body["data"] = value
            if expectation != "absent":
                body["expectedVersion"] = expected
            operations.append(body)
            want.append(self.model.op(action, key, value, expected))
        self.model.end()
        got = self.api.ops(operations)
        applied = sum(1 for result in want if result["ok"])
        expected_answer = {
            "version": self.model.version, "applied": applied, "conflicts": len(want) - applied, "results": want,
        }  # fmt: skip
        check(got, expected_answer, f"ops {operations}")

    @rule(
        key=keys,
        value=values,
        mode=st.sampled_from(["none", "quoted", "weak", "bare", "list", "wrong", "star", "none-match"]),
    )
    def put(self, key: tuple[str, str], value: dict[str, Any], mode: str) -> None:
        current, live, stored = self.model.state(key)
        if not live and mode in ("quoted", "weak", "bare", "list"):
            mode = "none"  # If-Match of a missing record's version: left to test_records_api.py
        headers: dict[str, Any] = {
            "none": {},
            "quoted": {"HTTP_IF_MATCH": f'"{current}"'},
            "weak": {"HTTP_IF_MATCH": f'W/"{current}"'},
            "bare": {"HTTP_IF_MATCH": f"{current}"},
            "list": {"HTTP_IF_MATCH": f'"{current + 7}", "{current}"'},
            "wrong": {"HTTP_IF_MATCH": f'"{current + 1}"'},
            "star": {"HTTP_IF_MATCH": "*"},
            "none-match": {"HTTP_IF_NONE_MATCH": "*"},
        }[mode]
        refused = mode == "wrong" or (mode == "star" and not live) or (mode == "none-match" and live)
        response = self.api.put(record_path(*key), value, **headers)
        what = f"PUT {key} {value} {headers}"
        if refused:
            assert response.status_code == 412, (what, response.status_code, response.content)
            want = {"error": "Precondition failed", "serverVersion": current, "serverData": stored}
            check(ok_any(response), want, what)
            return
        self.model.begin()
        version = self.model.write(key, value)
        self.model.end()
        check(ok(response), {"store": key[0], "id": key[1], "version": version}, what)
        assert response["ETag"] == f'"{version}"', (what, response["ETag"])

    @rule(key=keys, mode=st.sampled_from(["none", "quoted", "weak", "bare", "wrong", "star"]))
    def delete(self, key: tuple[str, str], mode: str) -> None:
        current, live, stored = self.model.state(key)
        headers = {
            "none": {},
            "quoted": {"HTTP_IF_MATCH": f'"{current}"'},
            "weak": {"HTTP_IF_MATCH": f'W/"{current}"'},
            "bare": {"HTTP_IF_MATCH": f"{current}"},
            "wrong": {"HTTP_IF_MATCH": f'"{current + 1}"'},
            "star": {"HTTP_IF_MATCH": "*"},
        }[mode]
        response = self.api.delete(record_path(*key), **headers)
        what = f"DELETE {key} {headers}"
        if mode == "wrong" or (mode == "star" and not live):
            assert response.status_code == 412, (what, response.status_code, response.content)
            want = {"error": "Precondition failed", "serverVersion": current, "serverData": stored}
            check(ok_any(response), want, what)
            return
        self.model.begin()
        version = self.model.remove(key) if live else current
        self.model.end()
        check(ok(response), {"store": key[0], "id": key[1], "version": version}, what)

    @rule(for_user=st.booleans())
    def purge(self, for_user: bool) -> None:
        time.sleep(0.005)  # every delete so far is strictly older than now
        out = io.StringIO()
        call_command(
            "purge_tombstones", "--older-than", "0", *(["--user", self.username] if for_user else []), stdout=out
        )
        purged = self.model.purge()
        if for_user:
            numbers = re.findall(r"\d+", out.getvalue())
            assert numbers and int(numbers[0]) == purged, (out.getvalue(), purged)

    # --- reads

    def read_page(self, start: Saved | None, limit: int | None) -> Saved:
        """One cursor page from ``start`` (None: the beginning), checked against the model."""
        cursor, position = (start.cursor, start.position) if start else (None, START)
        deleted, store = (start.deleted, start.store) if start else (None, None)
        return self._page(cursor, position, deleted, store, limit)

    def _page(
        self, cursor: str | None, position: tuple[int, int], deleted: str | None, store: str | None, limit: int | None
    ) -> Saved:
        with_tombstones = deleted in ("1", "true")
        taken, more, after = self.model.page(position, with_tombstones, store, limit)
        page = self.api.cursor(cursor, limit=limit, store=store, deleted=deleted)
        what = f"cursor page after {position} (deleted={deleted}, store={store}, limit={limit})"
        assert set(page) == {"entities", "nextCursor", "hasMore", "latestSeq"}, (what, page)
        for entity in page["entities"]:
            if entity.get("deleted", False):
                assert set(entity) == ENTITY_KEYS | {"deleted"} and entity["deleted"] is True, (what, entity)
            else:
                assert set(entity) - {"deleted"} == ENTITY_KEYS, (what, entity)
                assert with_tombstones or "deleted" not in entity, (what, entity)
        got = [{k: v for k, v in e.items() if k != "deleted" or v} for e in page["entities"]]
        check(got, [expected_entity(key, rec) for key, rec in taken], what)
        assert page["hasMore"] is more, (what, page["hasMore"], more)
        assert page["latestSeq"] == self.model.version, (what, page["latestSeq"], self.model.version)
        assert isinstance(page["nextCursor"], str) and page["nextCursor"], (what, page)
        return Saved(page["nextCursor"], after, deleted, store)

    def save(self, saved: Saved) -> None:
        self.saved = [*self.saved[-4:], saved]

    @rule(deleted=deleted_flags, store=store_filters, limit=limits, empty=st.booleans())
    def walk_from_the_start(self, deleted: str | None, store: str | None, limit: int | None, empty: bool) -> None:
        saved = self._page("" if empty else None, START, deleted, store, limit)
        self.save(saved)
        self.walk_on(saved, limit)

    @precondition(lambda self: self.saved)
    @rule(data=st.data(), limit=limits)
    def walk_from_a_saved_cursor(self, data: st.DataObject, limit: int | None) -> None:
        self.walk_on(data.draw(st.sampled_from(self.saved)), limit)

    @precondition(lambda self: self.saved)
    @rule(data=st.data(), limit=limits)
    def one_page_from_a_saved_cursor(self, data: st.DataObject, limit: int | None) -> None:
        """A walk that others' writes interrupt: the rest of it comes in later steps."""
        self.save(self.read_page(data.draw(st.sampled_from(self.saved)), limit))

    @rule(deleted=deleted_flags, store=store_filters, limit=limits)
    def one_page_from_the_start(self, deleted: str | None, store: str | None, limit: int | None) -> None:
        self.save(self._page(None, START, deleted, store, limit))

    def walk_on(self, saved: Saved, limit: int | None) -> None:
        for _ in range(200):
            more = self.model.page(saved.position, saved.deleted in ("1", "true"), saved.store, limit)[1]
            saved = self.read_page(saved, limit)
            if not more:
                self.save(saved)
                return
        raise AssertionError("the walk never ended")

    @invariant()
    def the_audit_log_agrees(self) -> None:
        """The caller's audit entries: one per record change, each request's together, in request order."""
        while True:
            since = self.audit_entries[-1]["seq"] if self.audit_entries else 0
            page = self.api.op_log(since=since, limit=1000)
            assert page["count"] == len(page["ops"])
            assert all(e["seq"] > since for e in page["ops"]), (since, page)
            self.audit_entries += page["ops"]
            if len(page["ops"]) < 1000:
                break
        entries = self.audit_entries
        assert {e["username"] for e in entries} <= {self.username}
        seqs = [e["seq"] for e in entries]
        assert seqs == sorted(set(seqs)), seqs
        got = [
            (e["action"], e["store"], e["entity_id"], e["version"]) for e in entries if e["action"] in RECORD_ACTIONS
        ]
        # §8.5 says one entry per record change; whether two ops on one record in one batch are two changes
        # or one is open (test_records_api.py asserts one per op), so either is accepted here, per request.
        start = 0
        for per_op, folded in self.model.audit:  # within one request the order is the server's
            for group in (per_op, folded):
                if sorted(got[start : start + len(group)]) == sorted(group):
                    start += len(group)
                    break
            else:
                raise AssertionError(f"audit log from entry {start}: {got[start:]} != {per_op} or {folded}")
        assert start == len(got), (got, self.model.audit)

    # --- after every step

    def check_store_order(self, listed: list[str], what: str) -> None:
        placed = [s for s in listed if s not in self.model.unplaced]
        assert placed == [s for s in self.model.stores if s in placed], (what, listed, self.model.stores)
        assert set(listed) <= set(self.model.stores), (what, listed, self.model.stores)

    @invariant()
    def pull_and_stores_agree(self) -> None:
        model = self.model
        pulled = self.api.pull()
        assert pulled["version"] == model.version
        for store, records in pulled["data"].items():
            assert list(records) == model.order.get(store, []), ("pull order", store, list(records), model.order)
            for rid, data in records.items():
                check(data, model.recs[(store, rid)].data, f"pulled {store}/{rid}")
        assert {s for s, r in pulled["data"].items() if r} == {s for s in model.stores if model.live_count(s)}
        self.check_store_order(list(pulled["data"]), "pull")

        summary = self.api.sync_stores()
        assert summary["latestSeq"] == model.version
        listed = [item["store"] for item in summary["stores"]]
        assert len(listed) == len(set(listed)), summary
        for item in summary["stores"]:
            assert item["count"] == model.live_count(item["store"]), (summary, model.order)
        assert summary["total"] == sum(model.live_count(s) for s in model.stores)
        must = {key[0] for key in model.recs}  # live records or tombstones: listed, with 0 if none is live
        assert must <= set(listed), (summary, must)
        self.check_store_order(listed, "stores")

        page = self.api.changes(since=0)
        assert (page["currentVersion"], page["pendingChanges"]) == (model.version, len(model.changelog))
        assert [c["version"] for c in page["changes"]] == model.changelog[-50:]


def ok_any(response: Any) -> Any:
    """The parsed JSON body of an answer of any status."""
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    return orjson.loads(response.content)


def test_record_sync_follows_the_model() -> None:
    run_state_machine_as_test(
        RecordSync,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
