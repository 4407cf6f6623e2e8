"""The pure rules of a push, shared by every repository backend.

``validate_stores`` checks a push body's shape (all or nothing: the first
offence is reported and nothing is written). ``plan_merge`` compares incoming
records with stored ones as JSON values: key order does not matter, ``true``
is not ``1``, and ``1`` equals ``1.0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

STORE_NAME_MAX = 64
RECORD_ID_MAX = 256

Stores = dict[str, dict[str, dict[str, Any]]]


class InvalidStores(ValueError):
    """The push body's ``stores`` is not an object of objects of objects."""


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 for ch in text)


def validate_stores(stores: object) -> Stores:
    """Return ``stores`` unchanged if it is a valid push; raise InvalidStores naming the offender."""
    if not isinstance(stores, dict):
        raise InvalidStores("stores must be an object mapping store names to objects of records")
    for name, records in stores.items():
        if not 1 <= len(name) <= STORE_NAME_MAX:
            raise InvalidStores(f"Store name {name[:80]!r} must be 1 to {STORE_NAME_MAX} characters")
        if _has_control(name):
            raise InvalidStores(f"Store name {name!r} contains control characters")
        if not isinstance(records, dict):
            raise InvalidStores(f"Store {name!r} must be an object mapping record ids to records")
        for record_id, record in records.items():
            if not 1 <= len(record_id) <= RECORD_ID_MAX:
                raise InvalidStores(
                    f"Record id {record_id[:80]!r} in store {name!r} must be 1 to {RECORD_ID_MAX} characters"
                )
            if _has_control(record_id):
                raise InvalidStores(f"Record id {record_id!r} in store {name!r} contains control characters")
            if not isinstance(record, dict):
                raise InvalidStores(f"Record {record_id!r} in store {name!r} must be a JSON object")
    return stores


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _strict_equal(a: Any, b: Any) -> bool:
    """JSON equality: like Python's, except that booleans never equal numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b))
    return a == b


def json_equal(a: Any, b: Any) -> bool:
    """Whether two parsed JSON values are the same JSON value."""
    if a != b:
        return False
    # Python's == already ignores key order; it only errs in calling True == 1.
    # The canonical bytes settle almost every case at C speed; they differ for
    # 1 vs 1.0, which the exact walk then decides.
    return _canonical(a) == _canonical(b) or _strict_equal(a, b)


@dataclass
class MergePlan:
    """What a push changes: ids added and modified, and each touched store's new contents."""

    added: list[dict[str, str]] = field(default_factory=list)
    modified: list[dict[str, str]] = field(default_factory=list)
    new_stores: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.modified)


def plan_merge(current: Mapping[str, Mapping[str, Any]], incoming: Stores) -> MergePlan:
    """Merge ``incoming`` over ``current`` without mutating either.

    Touched stores are copied (records themselves are shared, never mutated),
    so a failed write leaves the caller's copy as it was. New ids go to the end
    of their store, so pulls keep first-insertion order.
    """
    plan = MergePlan()
    for name, records in incoming.items():
        existing = current.get(name, {})
        updated: dict[str, Any] | None = None
        for record_id, record in records.items():
            old = existing.get(record_id)
            if old is None:
                plan.added.append({"store": name, "id": record_id})
            elif json_equal(old, record):
                continue
            else:
                plan.modified.append({"store": name, "id": record_id})
            if updated is None:
                updated = dict(existing)
            updated[record_id] = record
        if updated is not None:
            plan.new_stores[name] = updated
    return plan
