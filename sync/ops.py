"""Decoding the bodies of record writes: an ops batch (§7.2) and a per-record PUT (§7.3).

Validation is all or nothing and names the op's index: the first offence is
a 400 and nothing is applied. A record's text stays the exact JSON the
client sent (``msgspec.Raw``), checked by the push's rules
(``sync.merge.parse_record``: a JSON object, UTF-8, numbers a double holds,
at most ``sync.depth.MAX_DEPTH`` levels).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sync.merge import InvalidStores, MalformedBody, check_record_id, check_store_name, nesting_error, parse_record
from sync.records import Op

MAX_OPS = 1000
ACTIONS = ("create", "update", "delete")

_RAW_OBJECT = dict[str, msgspec.Raw]


class InvalidOps(ValueError):
    """The body or an op is not what §7.2 allows (the message says which op and why)."""


def _decode_object(text: bytes | bytearray | msgspec.Raw, what: str) -> dict[str, msgspec.Raw]:
    try:
        return msgspec.json.decode(text, type=_RAW_OBJECT)
    except msgspec.ValidationError:
        raise InvalidOps(f"{what} must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"invalid UTF-8: {exc.reason}") from None


def _scalar(raw: msgspec.Raw) -> Any:
    """A field that must be a scalar: parsed (a container comes back as a marker that no check accepts)."""
    text = bytes(raw).lstrip()
    if text[:1] in (b"{", b"["):
        return _CONTAINER
    return parse_record(raw)


_CONTAINER = object()


def _string(raw: msgspec.Raw | None, where: str, name: str) -> str:
    value = None if raw is None else _scalar(raw)
    if not isinstance(value, str):
        raise InvalidOps(f"{where}: {name} must be a string")
    return value


def _expected(raw: msgspec.Raw | None, where: str) -> int | None:
    if raw is None:
        return None
    value = _scalar(raw)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or int(value) != value:
        raise InvalidOps(f"{where}: expectedVersion must be a whole number >= 0")
    if value > 2**63 - 1:
        raise InvalidOps(f"{where}: expectedVersion is too large")
    return int(value)


def record_text(raw: msgspec.Raw, store: str, record_id: str, where: str = "") -> msgspec.Raw:
    """A record as pushed: a JSON object within the depth limit (MalformedBody or InvalidOps)."""
    prefix = f"{where}: " if where else ""
    try:
        parse_record(raw, store, record_id)
    except InvalidStores:
        raise InvalidOps(f"{prefix}data must be a JSON object") from None
    except MalformedBody as exc:
        raise MalformedBody(f"{prefix}{exc}") from None
    return msgspec.Raw(bytes(raw).strip())


def check_names(store: str, record_id: str, where: str = "") -> None:
    """A store name and record id by the push's rules, as InvalidOps."""
    prefix = f"{where}: " if where else ""
    try:
        check_store_name(store)
        check_record_id(store, record_id)
    except InvalidStores as exc:
        raise InvalidOps(f"{prefix}{exc}") from None


def decode_ops(body: bytes | bytearray) -> list[Op]:
    """The ops of a ``POST /api/sync/ops`` body, validated; InvalidOps or MalformedBody naming the first offence."""
    try:
        top = _decode_object(body, "Request body")
    except RecursionError:
        raise nesting_error(body, ("operations",)) from None
    raw_ops = top.get("operations")
    if raw_ops is None:
        raise InvalidOps("operations is required: a list of 1 to 1000 ops")
    try:
        items = msgspec.json.decode(raw_ops, type=list[msgspec.Raw])
    except msgspec.ValidationError:
        raise InvalidOps("operations must be a list of ops") from None
    if not 1 <= len(items) <= MAX_OPS:
        raise InvalidOps(f"operations must hold 1 to {MAX_OPS} ops, not {len(items)}")
    ops: list[Op] = []
    for index, item in enumerate(items):
        where = f"operations[{index}]"
        try:
            fields = msgspec.json.decode(item, type=_RAW_OBJECT)
        except msgspec.ValidationError:
            raise InvalidOps(f"{where} must be a JSON object") from None
        except RecursionError:
            raise MalformedBody(f"{where}: nesting too deep") from None
        action = _string(fields.get("action"), where, "action")
        if action not in ACTIONS:
            raise InvalidOps(f"{where}: action must be create, update or delete")
        store = _string(fields.get("store"), where, "store")
        id_raw = fields.get("entity_id") if "entity_id" in fields else fields.get("id")
        record_id = _string(id_raw, where, "entity_id")
        check_names(store, record_id, where)
        expected = _expected(fields.get("expectedVersion"), where)
        data = None
        if action != "delete":
            raw = fields.get("data")
            if raw is None:
                raise InvalidOps(f"{where}: data is required for {action}")
            data = record_text(raw, store, record_id, where)
        ops.append(Op(action=action, store=store, record_id=record_id, data=data, expected=expected))
    return ops


def decode_record(body: bytes | bytearray, store: str, record_id: str) -> msgspec.Raw:
    """The body of a per-record PUT: one record (a JSON object)."""
    try:
        msgspec.json.decode(body)
    except RecursionError:
        raise MalformedBody("nesting too deep") from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"invalid UTF-8: {exc.reason}") from None
    return record_text(msgspec.Raw(bytes(body)), store, record_id)
