"""The audit log (PROTOCOL.md §8.5): one entry per record change and per account event, server-wide.

Entries live in Django's database (``sync.models.AuditBatch``) whichever
storage holds the repositories: the database storage writes a change set's
batch in the transaction that commits the change set; the file storage keeps
the batch's payload in the commit it writes and inserts it after, and any
worker that later reads that commit inserts it if it is still missing (the
batch's unique name makes that idempotent). A batch is numbered under the
``AuditCounter`` row's lock, which is held to the end of the transaction,
so seqs rise in commit order across processes and servers.

A change set's payload is compact JSON, ``[[store, [ids], [versions],
"actions"], ...]`` (``actions`` one letter per record, see ``sync.records``),
written once per change set and expanded into entries on read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any

import msgspec
from django.db import IntegrityError, connections, router, transaction

from sync.models import AuditBatch, AuditCounter
from sync.records import ACTION_NAMES, ChangeSet

PAGE_DEFAULT = 200
PAGE_MAX = 1000

_encoder = msgspec.json.Encoder()
_Payload = list[tuple[str, list[str], list[int], str]]
_decoder = msgspec.json.Decoder(_Payload)


@dataclass(frozen=True)
class PendingBatch:
    """A change set's audit batch as a store keeps it until it is in the log."""

    user_id: str
    username: str
    ip: str | None
    timestamp: str
    epoch: str
    version: int
    count: int
    payload: bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "userId": self.user_id,
            "username": self.username,
            "ip": self.ip,
            "timestamp": self.timestamp,
            "epoch": self.epoch,
            "version": self.version,
            "count": self.count,
            "payload": msgspec.Raw(self.payload),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PendingBatch:
        return cls(
            user_id=doc["userId"],
            username=doc["username"],
            ip=doc["ip"],
            timestamp=doc["timestamp"],
            epoch=doc["epoch"],
            version=doc["version"],
            count=doc["count"],
            payload=bytes(doc["payload"])
            if isinstance(doc["payload"], msgspec.Raw)
            else _encoder.encode(doc["payload"]),
        )


def pending_batch(change_set: ChangeSet, *, user_id: str, epoch: str) -> PendingBatch | None:
    """The audit batch of ``change_set`` (None when it names no one to log: a command's restore)."""
    if change_set.audit is None:
        return None
    if change_set.audit_changes is not None:
        groups: list[tuple[str, list[str], list[int], str]] = []
        for name, run in groupby(change_set.audit_changes, key=itemgetter(0)):
            listed = list(run)
            groups.append((name, [c[1] for c in listed], [c[2] for c in listed], "".join(c[3] for c in listed)))
        payload = _encoder.encode(groups)
        count = len(change_set.audit_changes)
    else:
        payload = _encoder.encode(
            [(w.store, w.ids, w.versions, "".join(w.actions)) for w in change_set.writes if w.ids]
        )
        count = change_set.count()
    return PendingBatch(
        user_id=user_id,
        username=change_set.audit.username,
        ip=change_set.audit.ip,
        timestamp=change_set.timestamp,
        epoch=epoch,
        version=change_set.version,
        count=count,
        payload=payload,
    )


def _allocate(count: int, using: str) -> int:
    """The first of ``count`` new seqs; the counter row stays locked to the end of the caller's transaction."""
    counter = AuditCounter.objects.using(using).select_for_update().filter(pk=1).first()
    if counter is None:
        AuditCounter.objects.using(using).get_or_create(pk=1, defaults={"next": 1})
        counter = AuditCounter.objects.using(using).select_for_update().get(pk=1)
    first = counter.next
    AuditCounter.objects.using(using).filter(pk=1).update(next=first + count)
    return first


def insert(batch: PendingBatch, *, using: str | None = None) -> None:
    """Add a change set's batch to the log; a batch already there (by its name) is left as it is.

    Inside a transaction (the database storage's commit) it joins it; the
    counter's lock is then held until that transaction ends, so call it last.
    """
    alias = using or router.db_for_write(AuditBatch)
    connection = connections[alias]
    if connection.in_atomic_block:
        _insert(batch, alias)
        return
    try:
        with transaction.atomic(using=alias):
            _insert(batch, alias)
    except IntegrityError:
        if not recorded(batch.user_id, batch.epoch, batch.version, using=alias):
            raise


def _insert(batch: PendingBatch, alias: str) -> None:
    first = _allocate(batch.count, alias)
    AuditBatch.objects.using(alias).create(
        seq=first,
        end=first + batch.count,
        timestamp=batch.timestamp,
        user_id=batch.user_id,
        username=batch.username,
        action="records",
        ip=batch.ip,
        epoch=batch.epoch,
        repository_version=batch.version,
        payload=batch.payload.decode(),
    )


def recorded(user_id: str, epoch: str, version: int, *, using: str | None = None) -> bool:
    """Whether the batch of this user's change set (by epoch and version) is in the log."""
    alias = using or router.db_for_read(AuditBatch)
    return AuditBatch.objects.using(alias).filter(user_id=user_id, epoch=epoch, repository_version=version).exists()


def event(
    *,
    user_id: str,
    username: str,
    action: str,
    timestamp: str,
    ip: str | None = None,
    target_user_id: str | None = None,
    target_username: str | None = None,
) -> None:
    """Log one account event (register, login, ...): an entry with no store and no record."""
    alias = router.db_for_write(AuditBatch)
    with transaction.atomic(using=alias):
        first = _allocate(1, alias)
        AuditBatch.objects.using(alias).create(
            seq=first,
            end=first + 1,
            timestamp=timestamp,
            user_id=user_id,
            username=username,
            action=action,
            ip=ip,
            target_user_id=target_user_id,
            target_username=target_username,
        )


@dataclass(frozen=True)
class AuditPage:
    entries: list[dict[str, Any]]
    latest: int


def latest_seq() -> int:
    last = AuditBatch.objects.order_by("-seq").values_list("end", flat=True).first()
    return 0 if last is None else last - 1


def read(*, since: int, limit: int, user_id: str | None = None) -> AuditPage:
    """Entries with seq > ``since``, ascending, at most ``limit`` (only ``user_id``'s acts when given)."""
    latest = latest_seq()
    batches = AuditBatch.objects.filter(end__gt=since + 1).order_by("seq")
    if user_id is not None:
        batches = batches.filter(user_id=user_id)
    entries: list[dict[str, Any]] = []
    for batch in batches.iterator(chunk_size=50):
        for entry in _expand(batch, since):
            entries.append(entry)
            if len(entries) >= limit:
                return AuditPage(entries, latest)
    return AuditPage(entries, latest)


def _expand(batch: AuditBatch, since: int) -> Iterator[dict[str, Any]]:
    common = {
        "timestamp": batch.timestamp,
        "username": batch.username,
        "userId": batch.user_id,
        "targetUsername": batch.target_username,
        "targetUserId": batch.target_user_id,
        "ip": batch.ip,
    }
    if batch.action != "records":
        if batch.seq > since:
            yield {
                "seq": batch.seq,
                **common,
                "action": batch.action,
                "store": None,
                "entity_id": None,
                "version": None,
            }
        return
    seq = batch.seq
    for store, ids, versions, actions in _decoder.decode(batch.payload):
        if seq + len(ids) <= since + 1:
            seq += len(ids)
            continue
        for record_id, version, action in zip(ids, versions, actions, strict=True):
            if seq > since:
                yield {
                    "seq": seq,
                    **common,
                    "action": ACTION_NAMES[action],
                    "store": store,
                    "entity_id": record_id,
                    "version": version,
                }
            seq += 1
