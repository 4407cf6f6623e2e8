"""The record model of the second edition (PROTOCOL.md §7), and the one planner of every change.

Every record of a repository has a version (1 when created, +1 per accepted
change), the repository version of its last change (its ``seq``) and a place
in the repository's change order (its ``position``: a counter that rises by
one per record change, which is what a cursor names). A delete leaves a
tombstone: the id with its version and seq, no text.

The service plans each change (a full push, an ops batch, a per-record write
or delete) here, against a :class:`Snapshot` of the repository that a
backend gives, into one :class:`ChangeSet`; the backend commits that change
set under its lock and assigns the positions. No backend decides a version,
a conflict, a skip or a changelog entry.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import orjson

from sync.merge import MergePlan, RawStores, RecordRef, StoredStore, plan_merge, records_equal, refs_json

CREATE, UPDATE, DELETE = "c", "u", "d"
ACTION_NAMES = {CREATE: "create", UPDATE: "update", DELETE: "delete"}


class RecordState(NamedTuple):
    """What the index knows of one record or tombstone."""

    version: int
    seq: int
    deleted: bool


@dataclass
class StoreWrite:
    """The changes of one store in a change set, in the order they were made (columns, not objects).

    ``texts[i]`` is the record's new JSON text, or None for a delete;
    ``actions`` holds one of CREATE, UPDATE, DELETE per record. A CREATE of
    an id the store holds live (deleted and created again in one ops batch)
    puts the record at the end of its store, as any revived tombstone.
    """

    store: str
    ids: list[str] = field(default_factory=list)
    texts: list[msgspec.Raw | None] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def add(self, record_id: str, text: msgspec.Raw | None, version: int, action: str) -> None:
        self.ids.append(record_id)
        self.texts.append(text)
        self.versions.append(version)
        self.actions.append(action)


@dataclass
class AuditContext:
    """Who makes a change set, for the audit log."""

    user_id: str
    username: str
    ip: str | None = None


@dataclass
class ChangeSet:
    """One commit: the repository's new version and every record it changes, with its changelog entry.

    The backend gives the changes positions in order (``writes`` in order,
    records in each write's order), after the snapshot's last one. A store
    may have several writes (an ops batch that goes back and forth between
    stores); a record appears at most once in a change set.
    """

    version: int
    timestamp: str
    writes: list[StoreWrite]
    entry: dict[str, Any]
    audit: AuditContext | None = None
    # The record changes as the audit log lists them, when not one per write (an ops batch: one per op
    # applied, in order, with the version each made), as (store, id, version, action).
    audit_changes: list[tuple[str, str, int, str]] | None = None

    def count(self) -> int:
        return sum(len(w.ids) for w in self.writes)


@dataclass(frozen=True)
class Summary:
    """Counts of a repository that the index keeps current."""

    version: int
    position: int
    epoch: str


class Snapshot:
    """A consistent view of one repository for planning, read by a backend.

    A snapshot from ``BaseRepositoryStore.locked`` stays current for as long
    as the lock is held; one from ``reading`` may be overtaken, which
    ``locked`` then tells by ``version`` and ``epoch``.
    """

    version: int = 0
    # The last position given to a change, and the name of this history of the repository.
    position: int = 0
    epoch: str = ""

    def states(self, store: str, ids: Iterable[str]) -> dict[str, RecordState]:
        """The states (live or tombstone) of those of ``ids`` the store knows."""
        raise NotImplementedError

    def texts(self, store: str, ids: Iterable[str]) -> dict[str, bytes]:
        """The stored texts of those of ``ids`` that are live records."""
        raise NotImplementedError

    def tombstoned(self, store: str, ids: Collection[str]) -> set[str]:
        """Those of ``ids`` that are tombstones in the store (cheap when there are none)."""
        raise NotImplementedError

    def stored_for(self, incoming: RawStores) -> Mapping[str, StoredStore]:
        """What ``sync.merge.plan_merge`` needs to merge ``incoming``: per store, the live texts.

        Each store maps every live id of ``incoming`` that the store holds to
        its stored text, or to a text equal to it as JSON (a backend that
        keeps digests may give the pushed text where the digests agree); a
        store may also give more ids, or its pieces (see ``StoredStore``).
        """
        raise NotImplementedError


# --- planning ---------------------------------------------------------------------------


@dataclass
class PushOutcome:
    change_set: ChangeSet | None
    version: int
    added: int
    modified: int
    skipped: int


def plan_push(
    snapshot: Snapshot,
    incoming: RawStores,
    *,
    timestamp: str,
    client_version: int | None,
    audit: AuditContext | None,
) -> PushOutcome:
    """A full push (§7.1): merge, never delete, never bring a tombstone back (counted as skipped)."""
    skipped = 0
    filtered: RawStores = {}
    for name, records in incoming.items():
        dead = snapshot.tombstoned(name, records.keys())
        if dead:
            skipped += len(dead)
        filtered[name] = {rid: text for rid, text in records.items() if rid not in dead} if dead else records
    plan = plan_merge(snapshot.stored_for(filtered), filtered)
    if not plan.changed:
        return PushOutcome(None, snapshot.version, 0, 0, skipped)
    version = snapshot.version + 1
    writes = _push_writes(snapshot, filtered, plan)
    entry = {
        "version": version,
        "timestamp": timestamp,
        "clientVersion": client_version,
        "added": refs_json(plan.new_ids),
        "modified": refs_json(plan.modified_ids),
        "action": "push",
    }
    change_set = ChangeSet(version=version, timestamp=timestamp, writes=writes, entry=entry, audit=audit)
    return PushOutcome(change_set, version, plan.added_count, plan.modified_count, skipped)


def _push_writes(snapshot: Snapshot, incoming: RawStores, plan: MergePlan) -> list[StoreWrite]:
    """The store writes of a merge plan: added records at version 1, modified ones one above theirs."""
    writes: list[StoreWrite] = []
    for name, records in incoming.items():
        new_ids, changed_ids = plan.new_ids.get(name, []), plan.modified_ids.get(name, [])
        if not new_ids and not changed_ids:
            continue
        write = StoreWrite(name)
        if new_ids and not changed_ids:
            write.ids.extend(new_ids)
            write.texts.extend(records.values() if len(new_ids) == len(records) else map(records.__getitem__, new_ids))
            write.versions.extend([1] * len(new_ids))
            write.actions.extend([CREATE] * len(new_ids))
        else:  # in the push's order, which the cursor keeps
            states = snapshot.states(name, changed_ids)
            new = set(new_ids)
            for rid in (rid for rid in records if rid in new or rid in states) if new else changed_ids:
                state = states.get(rid)
                write.add(
                    rid, records[rid], 1 if state is None else state.version + 1, CREATE if state is None else UPDATE
                )
        writes.append(write)
    return writes


@dataclass
class Op:
    """One validated op of ``POST /api/sync/ops`` (see sync.ops for the decoding)."""

    action: str  # "create", "update" or "delete"
    store: str
    record_id: str
    data: msgspec.Raw | None
    expected: int | None


@dataclass
class OpsOutcome:
    change_set: ChangeSet | None
    version: int
    results: list[dict[str, Any]]


class _Pending:
    """Records as the ops before the current one left them: (state, text) per (store, id)."""

    def __init__(self, snapshot: Snapshot, ops: list[Op]) -> None:
        self.snapshot = snapshot
        wanted: dict[str, set[str]] = {}
        for op in ops:
            wanted.setdefault(op.store, set()).add(op.record_id)
        self.states: dict[tuple[str, str], RecordState | None] = {}
        self.texts: dict[tuple[str, str], bytes | msgspec.Raw | None] = {}
        for store, ids in wanted.items():
            states = snapshot.states(store, ids)
            live = [rid for rid, state in states.items() if not state.deleted]
            texts = snapshot.texts(store, live) if live else {}
            for rid in ids:
                self.states[store, rid] = states.get(rid)
                self.texts[store, rid] = texts.get(rid)


def plan_ops(
    snapshot: Snapshot, ops: list[Op], *, timestamp: str, audit: AuditContext | None, action: str = "ops"
) -> OpsOutcome:
    """Apply ``ops`` in order, each seeing the ones before it (§7.2), into one change set."""
    pending = _Pending(snapshot, ops)
    was_live = {key: state is not None and not state.deleted for key, state in pending.states.items()}
    version = snapshot.version + 1
    results: list[dict[str, Any]] = []
    # The final text and version of each changed record, in the order of each record's first change: the
    # order new records join their stores in, and the cursor's order within the batch.
    final: dict[tuple[str, str], tuple[bytes | msgspec.Raw | None, int]] = {}
    changes: list[tuple[str, str, int, str]] = []
    deleted_here: set[tuple[str, str]] = set()
    for op in ops:
        key = (op.store, op.record_id)
        state, text = pending.states[key], pending.texts[key]
        current = 0 if state is None else state.version
        live = state is not None and not state.deleted
        base = {"entity_id": op.record_id, "id": op.record_id, "store": op.store}
        if op.expected is not None and op.expected != current:
            results.append(_conflict(base, op.action, current, text if live else None))
            continue
        if op.action == "delete":
            if not live:
                results.append({"ok": True, **base, "action": "delete", "version": current})
                continue
            new_text, kind = None, DELETE
            deleted_here.add(key)
        elif live:
            if op.action == "create":
                results.append(_conflict(base, op.action, current, text))
                continue
            assert op.data is not None and text is not None
            if records_equal(msgspec.Raw(text), op.data, op.store, op.record_id):
                results.append({"ok": True, **base, "action": "update", "version": current})
                continue
            new_text, kind = op.data, UPDATE
        else:
            new_text, kind = op.data, CREATE
        pending.states[key] = RecordState(current + 1, version, new_text is None)
        pending.texts[key] = new_text
        final[key] = (new_text, current + 1)
        changes.append((op.store, op.record_id, current + 1, kind))
        results.append({"ok": True, **base, "action": ACTION_NAMES[kind], "version": current + 1})
    if not final:
        return OpsOutcome(None, snapshot.version, results)
    kinds = {key: _net_kind(was_live[key], text is not None) for key, (text, _) in final.items()}
    # A record deleted and created again in the batch is, as a whole, updated; but it was revived from
    # a tombstone, so it takes a new place at the end of its store: its write is a CREATE.
    revived = {key for key, kind in kinds.items() if kind == UPDATE and key in deleted_here}
    change_set = _ops_change_set(final, kinds, version, timestamp, audit, action, revived)
    change_set.audit_changes = changes
    return OpsOutcome(change_set, version, results)


def _net_kind(live_before: bool, live_after: bool) -> str:
    """What a batch did to a record as a whole: it created, updated or deleted it (a new tombstone is a delete)."""
    if live_after:
        return UPDATE if live_before else CREATE
    return DELETE


def _conflict(
    base: dict[str, Any], action: str, server_version: int, text: bytes | msgspec.Raw | None
) -> dict[str, Any]:
    return {
        "ok": False,
        "conflict": True,
        **base,
        "action": action,
        "serverVersion": server_version,
        "serverData": None if text is None else orjson.Fragment(bytes(text)),
    }


def _ops_change_set(
    final: dict[tuple[str, str], tuple[bytes | msgspec.Raw | None, int]],
    kinds: dict[tuple[str, str], str],
    version: int,
    timestamp: str,
    audit: AuditContext | None,
    action: str,
    revived: set[tuple[str, str]],
) -> ChangeSet:
    writes: list[StoreWrite] = []  # a run of writes per store, in the order of the changes
    refs: dict[str, list[RecordRef]] = {CREATE: [], UPDATE: [], DELETE: []}
    for (store, rid), (text, record_version) in final.items():
        if not writes or writes[-1].store != store:
            writes.append(StoreWrite(store))
        write = writes[-1]
        kind = kinds[store, rid]
        write.add(
            rid,
            None if text is None else msgspec.Raw(text),
            record_version,
            CREATE if (store, rid) in revived else kind,
        )
        refs[kind].append(RecordRef(store, rid))
    entry = {
        "version": version,
        "timestamp": timestamp,
        "clientVersion": None,
        "added": refs[CREATE],
        "modified": refs[UPDATE],
        "deleted": refs[DELETE],
        "action": action,
    }
    return ChangeSet(version=version, timestamp=timestamp, writes=writes, entry=entry, audit=audit)
