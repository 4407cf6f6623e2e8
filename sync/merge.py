"""The pure rules of a push, shared by every repository backend.

A push body is decoded without turning records into Python objects: each
record stays the exact JSON text the client sent (a ``msgspec.Raw``), which is
what a store keeps and what a pull sends back. Only records whose text
differs from the stored text are checked: new records in batches by simdjson
(which validates without building Python objects), changed ones parsed one
at a time, which also tells a real modification from the same value written
differently. That keeps a push cheap in time and memory.

Every check has a fast path for the common case, valid input, and falls back
to the exact one-by-one path whenever the fast path cannot vouch for the
input; the exact path finds the first offence and words its error. So the
fast paths never change what is accepted or what an error says.

Validation is all or nothing: the first offence is reported, naming the store
and the record id, and nothing is written. Records compare as JSON values: key
order does not matter, ``true`` is not ``1``, and ``1`` equals ``1.0``.

No JSON value a push carries may nest deeper than ``sync.depth.MAX_DEPTH``
levels, a record counting as its own first level: a record past it is
refused as malformed, naming it, on every way in (the batch check, the exact
path, a changed record, imports through ``check_depths``), so nothing stored
can take a parser or serializer past its own limit later.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from operator import itemgetter
from typing import Any, Protocol, runtime_checkable

import msgspec
import orjson
import simdjson

from sync.depth import MAX_DEPTH, dumps, simdjson_padding, too_deep

STORE_NAME_MAX = 64
RECORD_ID_MAX = 256

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
    return {name: {rid: msgspec.Raw(dumps(rec)) for rid, rec in records.items()} for name, records in stores.items()}


def _too_deep(name: str, record_id: str) -> MalformedBody:
    return MalformedBody(f"record {record_id!r} in store {name!r}: nesting too deep (limit {MAX_DEPTH} levels)")


_NESTING_TOO_DEEP = f"nesting too deep (limit {MAX_DEPTH} levels)"


def check_depths(stores: RawStores) -> None:
    """Raise MalformedBody naming the first record nesting deeper than MAX_DEPTH (imports: a push's rule)."""
    for name, records in stores.items():
        for record_id, raw in records.items():
            if too_deep(raw) is not None:
                raise _too_deep(name, record_id)


def nesting_error(text: bytes | bytearray, stores_path: tuple[str, ...]) -> MalformedBody:
    """The error for a document that nests too deeply, naming the record when that is what does.

    ``stores_path`` is where the stores lie in the document (``("stores",)``
    in a push); records are the members two levels below.
    """
    above = len(stores_path) + 2
    names = too_deep(text, MAX_DEPTH + above, names=above, probe=False)
    if not names or None in names[-2:]:
        return MalformedBody(_NESTING_TOO_DEEP)
    if tuple(names[:-2]) == stores_path or (stores_path == ("stores",) and names[0] in _PUSH_KEYS):
        return _too_deep(str(names[-2]), str(names[-1]))
    return MalformedBody(_NESTING_TOO_DEEP)


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
    """The parsed value of a pushed text; MalformedBody (naming the record) if it is not JSON orjson accepts.

    The scanner that split the body checks syntax only, so this is where a
    record's strings (UTF-8), numbers (a double must hold them) and depth
    (MAX_DEPTH levels) are checked. With a ``record_id`` the value must also
    be a JSON object (InvalidStores).
    """
    if too_deep(raw) is not None:
        raise _too_deep(name, record_id) if record_id else MalformedBody(_NESTING_TOO_DEEP)
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


class _PushShape(msgspec.Struct, forbid_unknown_fields=True):
    """The push body as clients send it, for decoding it in one pass."""

    stores: RawStores | msgspec.UnsetType = msgspec.UNSET
    data: RawStores | msgspec.UnsetType = msgspec.UNSET
    clientVersion: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_push_decoder = msgspec.json.Decoder(_PushShape)


def decode_push(body: bytes | bytearray) -> PushBody:
    """Decode and validate a push body ``{clientVersion, stores}`` (or the older ``data`` key).

    Raises MalformedBody when the body is not JSON and InvalidStores when its
    shape is wrong; both name what is wrong. The scanner checks syntax and the
    UTF-8 of the names it decodes; new names and record texts are checked by
    ``plan_merge``, and every other field of the body is parsed here.

    A body of exactly the expected shape is decoded in one pass; anything
    else (other fields, both keys or neither, any error) takes the exact path.
    """
    try:
        shape = _push_decoder.decode(body)
    except RecursionError:  # deeper than msgspec follows, so deeper than any record may be
        raise nesting_error(body, ("stores",)) from None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return _decode_push_exact(body)
    stores = shape.stores if shape.data is msgspec.UNSET else shape.data
    if stores is msgspec.UNSET or (shape.stores is not msgspec.UNSET and shape.data is not msgspec.UNSET):
        return _decode_push_exact(body)
    raw_version = None if shape.clientVersion is msgspec.UNSET else shape.clientVersion
    return PushBody(stores=stores, client_version=_client_version(raw_version))


def _decode_push_exact(body: bytes | bytearray) -> PushBody:
    """``decode_push`` for any body, two passes: the top level, then the stores, each error worded."""
    try:
        top = msgspec.json.decode(body, type=_RAW_OBJECT)
    except msgspec.ValidationError:
        raise InvalidStores("Request body must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(str(exc)) from None
    except RecursionError:
        raise nesting_error(body, ("stores",)) from None
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


_canonical_encoder = msgspec.json.Encoder(order="sorted")


def _canonical(value: Any) -> bytes:
    # msgspec, not orjson: orjson writes 254 levels at most, and records nest up to MAX_DEPTH.
    return _canonical_encoder.encode(value)


def _strict_equal(a: Any, b: Any) -> bool:
    """JSON equality: like Python's, except that booleans never equal numbers (a loop, not recursion)."""
    pairs = [(a, b)]
    while pairs:
        a, b = pairs.pop()
        if isinstance(a, bool) or isinstance(b, bool):
            if type(a) is not type(b) or a != b:
                return False
        elif isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                return False
            pairs.extend((a[k], b[k]) for k in a)
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            pairs.extend(zip(a, b, strict=True))
        elif a != b:
            return False
    return True


def json_equal(a: Any, b: Any) -> bool:
    """Whether two parsed JSON values are the same JSON value."""
    if a != b:
        return False
    # Python's == already ignores key order; it only errs in calling True == 1.
    # The canonical bytes settle almost every case at C speed; they differ for
    # 1 vs 1.0, which the exact walk then decides.
    return _canonical(a) == _canonical(b) or _strict_equal(a, b)


def records_equal(a: msgspec.Raw, b: msgspec.Raw, name: str = "", record_id: str = "", *, valid: bool = False) -> bool:
    """Whether stored record text ``a`` and pushed text ``b`` hold the same JSON value (same text first, then parsed).

    ``b`` is validated (MalformedBody, InvalidStores) unless ``valid`` says
    ``_records_valid`` already vouched for it. A stored text that no longer
    parses, such as one nesting deeper than orjson reads (written before
    MAX_DEPTH), equals no valid record: the push replaces it.
    """
    if a == b:
        return True
    pushed = orjson.loads(memoryview(b)) if valid else parse_record(b, name, record_id)
    try:
        stored = orjson.loads(memoryview(a))
    except orjson.JSONDecodeError:
        return False
    return json_equal(stored, pushed)


class RecordRef(msgspec.Struct, frozen=True, gc=False):
    """A record named in a changelog entry; msgspec writes it as ``{"store": ..., "id": ...}``.

    A fifth of a dict's memory and a third of its making time, which counts
    when a first push lists every one of its records.
    """

    store: str
    id: str


@dataclass
class MergePlan:
    """What a push changes: per store, the ids it adds and those it modifies, in the push's order."""

    new_ids: dict[str, list[str]] = field(default_factory=dict)
    modified_ids: dict[str, list[str]] = field(default_factory=dict)

    def _add(self, kind: dict[str, list[str]], name: str, ids: Iterable[str]) -> None:
        listed = kind.get(name)
        if listed is None:
            listed = kind[name] = []
        listed.extend(ids)

    @property
    def added(self) -> list[RecordRef]:
        return [RecordRef(name, rid) for name, ids in self.new_ids.items() for rid in ids]

    @property
    def modified(self) -> list[RecordRef]:
        return [RecordRef(name, rid) for name, ids in self.modified_ids.items() for rid in ids]

    @property
    def added_count(self) -> int:
        return sum(map(len, self.new_ids.values()))

    @property
    def modified_count(self) -> int:
        return sum(map(len, self.modified_ids.values()))

    @property
    def changed(self) -> bool:
        return any(self.new_ids.values()) or any(self.modified_ids.values())


def refs_json(per_store: Mapping[str, list[str]]) -> msgspec.Raw:
    """``[{"store": s, "id": i}, ...]`` for every id of every store, in order, as JSON text (C speed).

    Each store's ids are written as one JSON array and split at its element
    boundaries: an unescaped ``","`` occurs in such a text only between elements.
    """
    parts: list[bytes] = []
    for name, ids in per_store.items():
        if not ids:
            continue
        head = b'{"store":' + _ref_encoder.encode(name) + b',"id":"'
        array = _ref_encoder.encode(ids)
        parts.append(head + array[2:-2].replace(b'","', b'"},' + head) + b'"}')
    return msgspec.Raw(b"[" + b",".join(parts) + b"]")


_ref_encoder = msgspec.json.Encoder()


@runtime_checkable
class ComparingStore(Protocol):
    """A stored store that compares pushed texts with its own where they lie (no decoding of the store)."""

    def compare(self, records: Mapping[str, msgspec.Raw]) -> tuple[list[str], dict[str, msgspec.Raw]]:
        """The pushed ids it lacks (in push order), and its texts of those whose text differs."""
        ...


# A stored store as plan_merge reads it: all its records at once, or its
# records piece by piece (an iterable of mappings that can be iterated once
# per plan), so a large repository need not be in memory whole.
StoredStore = Mapping[str, msgspec.Raw] | Iterable[Mapping[str, msgspec.Raw]] | ComparingStore


def plan_merge(current: Mapping[str, StoredStore], incoming: RawStores) -> MergePlan:
    """What merging ``incoming`` over ``current`` changes; neither is modified.

    Every pushed record that is not the stored text byte for byte is
    validated (a record that is not a valid JSON object raises MalformedBody
    or InvalidStores before the caller has written anything), and so are the
    names of new stores and ids. A backend puts new ids at the end of their
    store and new stores after the existing ones, so pulls keep
    first-insertion order.
    """
    plan = MergePlan()
    for name, records in incoming.items():
        existing = current.get(name)
        if existing is None:
            check_store_name(name)
            new_ids, changed = list(records), {}
        elif isinstance(existing, Mapping):
            if existing == records:
                continue  # the whole store unchanged, compared in C
            get = existing.get
            # The records whose text differs from the stored one (or that are new):
            # usually a small part of a re-push, found without a Python-level loop body.
            differing = [record_id for record_id, record in records.items() if get(record_id) != record]
            new_ids = [record_id for record_id in differing if record_id not in existing]
            changed = {record_id: existing[record_id] for record_id in differing if record_id in existing}
        elif isinstance(existing, ComparingStore):
            new_ids, changed = existing.compare(records)
        else:
            new_ids, changed = _compare_pieces(existing, records)
        if not new_ids and not changed:
            continue
        new_texts = list(records.values()) if existing is None else [records[record_id] for record_id in new_ids]
        if not (_ids_valid(new_ids) and _records_valid(new_texts)):
            # Something new is wrong (or simdjson could not vouch for it): the
            # exact path finds the first offence in the store's order.
            _merge_store_exact(plan, name, new_ids, changed, records)
            continue
        if new_ids:
            plan._add(plan.new_ids, name, new_ids)
        if changed:  # in the push's order, as the exact path lists them
            # Texts long enough to nest too deeply are checked in batches,
            # which costs less than checking each one's depth on its own.
            long = [records[record_id] for record_id in changed if len(records[record_id]) > _SHALLOW]
            long_valid = _records_valid(long)
            modified = [
                record_id
                for record_id, record in records.items()
                if record_id in changed
                and not records_equal(
                    changed[record_id], record, name, record_id, valid=long_valid and len(record) > _SHALLOW
                )
            ]
            if modified:
                plan._add(plan.modified_ids, name, modified)
    return plan


def _compare_pieces(
    pieces: Iterable[Mapping[str, msgspec.Raw]], records: Mapping[str, msgspec.Raw]
) -> tuple[list[str], dict[str, msgspec.Raw]]:
    """The pushed ids a stored store lacks, and the stored texts of those whose text differs.

    The stored texts are copied, so no piece outlives its turn. The ids
    found are only counted: a push that adds nothing (most re-pushes) never
    builds a set of them; one that adds reads the pieces once more to find
    which ids are new, trading a second read for the memory of that set.
    """
    found = 0
    changed: dict[str, msgspec.Raw] = {}
    pushed = records.keys()
    for piece in pieces:
        common = piece.keys() & pushed
        found += len(common)
        for record_id in [record_id for record_id in common if piece[record_id] != records[record_id]]:
            changed[record_id] = msgspec.Raw(bytes(piece[record_id]))
    if found == len(records):
        return [], changed
    missing = set(pushed)
    for piece in pieces:
        missing -= piece.keys()
    return [record_id for record_id in records if record_id in missing], changed


def _merge_store_exact(
    plan: MergePlan,
    name: str,
    new_ids: list[str],
    changed: Mapping[str, msgspec.Raw],
    records: Mapping[str, msgspec.Raw],
) -> None:
    """One store of ``plan_merge``, record by record in the push's order, raising at the first offence.

    ``changed`` holds the stored text of every pushed id whose text differs.
    """
    fresh = set(new_ids)
    for record_id, record in records.items():
        if record_id in fresh:
            check_record_id(name, record_id)
            parse_record(record, name, record_id)
            plan._add(plan.new_ids, name, (record_id,))
        elif record_id in changed and not records_equal(changed[record_id], record, name, record_id):
            plan._add(plan.modified_ids, name, (record_id,))


def _ids_valid(ids: list[str]) -> bool:
    """Whether every id passes ``check_record_id`` (checked all at once)."""
    if not ids:
        return True
    return min(map(len, ids)) >= 1 and max(map(len, ids)) <= RECORD_ID_MAX and not _has_control("".join(ids))


# Records are validated by simdjson in batches of this many, one array text
# each: enough that a call costs little per record, few enough that a batch
# (about 64 KB of typical records) and the parser's buffers (a few times the
# batch, kept per thread) stay small. A batch over _BATCH_MAX bytes (big
# records) is left to the exact path and orjson. The array sits inside
# enough others that simdjson's own depth limit refuses any record it counts
# deeper than MAX_DEPTH (it counts a scalar as a level, so a record exactly
# MAX_DEPTH deep may be refused too and is then measured on the exact path).
_BATCH_RECORDS = 128
_BATCH_MAX = 1 << 20
_BATCH_OPEN, _BATCH_CLOSE = simdjson_padding(MAX_DEPTH)
# A text this long or shorter cannot hold MAX_DEPTH + 1 pairs of brackets.
_SHALLOW = 2 * MAX_DEPTH + 1
_OPEN_BRACE = ord("{")
_local = threading.local()


def _parser() -> simdjson.Parser:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def _records_valid(raws: list[msgspec.Raw]) -> bool:
    """Whether every text is a JSON object that orjson accepts; False when that is not shown.

    simdjson validates syntax, UTF-8, numbers (finite doubles, 64-bit
    integers) and depth without building Python objects. What it accepts orjson
    accepts (tests/test_sync_merge.py checks that property); what it refuses,
    such as integers beyond 64 bits, which orjson reads as doubles, is left
    to the exact path. Each batch is one array text ``[r1,r2,...]`` (padded,
    see _BATCH_OPEN); that every element is an object is read off the first
    byte of each.
    """
    parser = _parser()
    for start in range(0, len(raws), _BATCH_RECORDS):
        batch = raws[start : start + _BATCH_RECORDS]
        lengths = list(map(len, batch))
        if sum(lengths) > _BATCH_MAX:
            return False
        text = _BATCH_OPEN + b",".join(batch) + _BATCH_CLOSE
        # Where each record starts in the text: after the opening and after each earlier record and its comma.
        firsts = itemgetter(*accumulate(map((1).__add__, lengths[:-1]), initial=len(_BATCH_OPEN)))(text)
        if isinstance(firsts, int):  # a batch of one record
            firsts = (firsts,)
        if firsts.count(_OPEN_BRACE) != len(firsts):
            return False
        try:
            parser.parse(text)
        except (ValueError, RuntimeError):  # RuntimeError: too deep, or an integer beyond 64 bits
            return False
    return True
