"""The pure rules of a push, shared by every repository backend.

A push body is decoded without turning records into Python objects: each
record stays the exact JSON text the client sent (a ``msgspec.Raw``), which is
what a store keeps and what a pull sends back. Only records whose text
differs from the stored text are parsed (one at a time), which validates them
and tells a real modification from the same value written differently. That
keeps a re-push of a whole repository cheap in time and memory.

Validation is all or nothing: the first offence is reported, naming the store
and the record id, and nothing is written. Records compare as JSON values: key
order does not matter, ``true`` is not ``1``, and ``1`` equals ``1.0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import msgspec
import orjson

STORE_NAME_MAX = 64
RECORD_ID_MAX = 256

RawRecord = msgspec.Raw
RawStores = dict[str, dict[str, msgspec.Raw]]
Stores = dict[str, dict[str, dict[str, Any]]]

_RAW_OBJECT = dict[str, msgspec.Raw]
_RAW_STORES = dict[str, dict[str, msgspec.Raw]]
_CONTROL = re.compile("[\x00-\x1f]")
_PUSH_KEYS = ("stores", "data")


class InvalidStores(ValueError):
    """The push is not an object of stores, each an object of records, each a JSON object."""


class MalformedBody(ValueError):
    """The body is not JSON (the message says where)."""


@dataclass(frozen=True)
class PushBody:
    stores: RawStores
    client_version: int | None


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def check_store_name(name: str) -> None:
    if not 1 <= len(name) <= STORE_NAME_MAX:
        raise InvalidStores(f"Store name {name[:80]!r} must be 1 to {STORE_NAME_MAX} characters")
    if _has_control(name):
        raise InvalidStores(f"Store name {name!r} contains control characters")


def check_record_id(name: str, record_id: str) -> None:
    if not 1 <= len(record_id) <= RECORD_ID_MAX:
        raise InvalidStores(f"Record id {record_id[:80]!r} in store {name!r} must be 1 to {RECORD_ID_MAX} characters")
    if _has_control(record_id):
        raise InvalidStores(f"Record id {record_id!r} in store {name!r} contains control characters")


def validate_stores(stores: object) -> Stores:
    """Check already parsed stores (legacy files, backups); return them unchanged."""
    if not isinstance(stores, dict):
        raise InvalidStores("stores must be an object mapping store names to objects of records")
    for name, records in stores.items():
        check_store_name(name)
        if not isinstance(records, dict):
            raise InvalidStores(f"Store {name!r} must be an object mapping record ids to records")
        for record_id, record in records.items():
            check_record_id(name, record_id)
            if not isinstance(record, dict):
                raise InvalidStores(f"Record {record_id!r} in store {name!r} must be a JSON object")
    return stores


def encode_stores(stores: Stores) -> RawStores:
    """Parsed stores as a store takes them: each record as compact JSON text."""
    return {name: {rid: msgspec.Raw(orjson.dumps(rec)) for rid, rec in records.items()} for name, records in stores.items()}


def _explain_shape(stores_raw: msgspec.Raw) -> None:
    """Raise InvalidStores naming the first store that is not an object of records (the slow path)."""
    stores = _decode_object(stores_raw, "stores must be an object mapping store names to objects of records")
    for name, records_raw in stores.items():
        check_store_name(name)
        _decode_object(records_raw, f"Store {name!r} must be an object mapping record ids to records")


def _decode_object(raw: bytes | msgspec.Raw, what: str) -> dict[str, msgspec.Raw]:
    try:
        return msgspec.json.decode(raw, type=_RAW_OBJECT)
    except msgspec.ValidationError:
        raise InvalidStores(what) from None
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"invalid UTF-8: {exc.reason}") from None


def parse_record(raw: msgspec.Raw, name: str = "", record_id: str = "") -> Any:
    """The parsed value of a text; MalformedBody (naming the record) if it is not JSON orjson accepts.

    The scanner that split the body checks syntax only, so this is where a
    record's strings (UTF-8) and numbers (a double must hold them) are checked.
    With a ``record_id`` the value must also be a JSON object (InvalidStores).
    """
    try:
        value = orjson.loads(memoryview(raw))
    except orjson.JSONDecodeError as exc:
        where = f"record {record_id!r} in store {name!r}: " if record_id else ""
        raise MalformedBody(f"{where}{exc}") from None
    if record_id and not isinstance(value, dict):
        raise InvalidStores(f"Record {record_id!r} in store {name!r} must be a JSON object")
    return value


def _client_version(raw: msgspec.Raw | None) -> int | None:
    if raw is None:
        return None
    value = parse_record(raw)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or value > 2**63 - 1
        or int(value) != value
    ):
        raise InvalidStores("clientVersion must be a whole number >= 0 or null")
    return int(value)


def decode_push(body: bytes) -> PushBody:
    """Decode and validate a push body ``{clientVersion, stores}`` (or the older ``data`` key).

    Raises MalformedBody when the body is not JSON and InvalidStores when its
    shape is wrong; both name what is wrong. The scanner checks syntax and the
    UTF-8 of the names it decodes; new names and record texts are checked by
    ``plan_merge``, and every other field of the body is parsed here.
    """
    try:
        top = msgspec.json.decode(body, type=_RAW_OBJECT)
    except msgspec.ValidationError:
        raise InvalidStores("Request body must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(str(exc)) from None
    except RecursionError:
        raise MalformedBody("nesting too deep") from None
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"invalid UTF-8: {exc.reason}") from None
    for key, value in top.items():
        if key not in _PUSH_KEYS:
            parse_record(value)  # ignored, but the body must still be valid JSON
    has_stores, has_data = "stores" in top, "data" in top
    if not has_stores and not has_data:
        raise InvalidStores("No data provided")
    if has_stores and has_data:
        raise InvalidStores("Send stores or data, not both")
    client_version = _client_version(top.get("clientVersion"))
    stores_raw = top["stores"] if has_stores else top["data"]
    try:
        decoded: RawStores = msgspec.json.decode(stores_raw, type=_RAW_STORES)
    except msgspec.ValidationError:
        _explain_shape(stores_raw)
        raise InvalidStores("stores must be an object of objects of records") from None
    except UnicodeDecodeError as exc:  # a store name or record id that is not UTF-8
        raise MalformedBody(f"invalid UTF-8: {exc.reason}") from None
    # Store names and record ids are checked by plan_merge when they are new:
    # those already stored were checked when they were added.
    return PushBody(stores=decoded, client_version=client_version)


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


def records_equal(a: msgspec.Raw, b: msgspec.Raw, name: str = "", record_id: str = "") -> bool:
    """Whether stored record text ``a`` and pushed text ``b`` hold the same JSON value (same text first, then parsed)."""
    return a == b or json_equal(parse_record(a), parse_record(b, name, record_id))


@dataclass
class MergePlan:
    """What a push changes: ids added and modified, and each touched store's new contents."""

    added: list[dict[str, str]] = field(default_factory=list)
    modified: list[dict[str, str]] = field(default_factory=list)
    new_stores: dict[str, dict[str, msgspec.Raw]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.modified)


def plan_merge(current: Mapping[str, Mapping[str, msgspec.Raw]], incoming: RawStores) -> MergePlan:
    """Merge ``incoming`` over ``current`` without mutating either.

    Every pushed record that is not the stored text byte for byte is parsed,
    which validates it (a record that is not a valid JSON object raises
    MalformedBody or InvalidStores before the caller has written anything),
    and so are the names of new stores and ids. Touched stores are copied
    (records are shared, never mutated). New ids go to the end of their store
    and new stores after the existing ones, so pulls keep first-insertion order.
    """
    plan = MergePlan()
    for name, records in incoming.items():
        existing = current.get(name)
        if existing is None:
            check_store_name(name)
            existing = {}
        elif existing == records:
            continue  # the whole store unchanged, compared in C
        get = existing.get
        # The records whose text differs from the stored one (or that are new):
        # usually a small part of a re-push, found without a Python-level loop body.
        differing = [record_id for record_id, record in records.items() if get(record_id) != record]
        if not differing:
            continue
        updated: dict[str, msgspec.Raw] | None = None
        for record_id in differing:
            record = records[record_id]
            old = get(record_id)
            if old is None:
                check_record_id(name, record_id)
                parse_record(record, name, record_id)
                plan.added.append({"store": name, "id": record_id})
            elif records_equal(old, record, name, record_id):
                continue  # the same value written differently
            else:
                plan.modified.append({"store": name, "id": record_id})
            if updated is None:
                updated = dict(existing)
            updated[record_id] = record
        if updated is not None:
            plan.new_stores[name] = updated
    return plan
