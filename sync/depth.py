"""How deeply stored JSON may nest, measured without recursion, and stored JSON read whatever its depth.

Depth counts containers: an object or an array is one level, a scalar is
none. ``{}`` and ``{"a": 1}`` nest 1 level, ``{"a": [1]}`` 2, and
``{"a": "[[["}`` 1 (brackets in a string are text). A record may nest at
most MAX_DEPTH levels, itself included; ``sync.merge`` refuses a deeper one
on every way in (push, legacy import, restore), so every later operation
stays far inside what each parser and serializer handles:

- msgspec (decode and encode) and Python's own ``==`` stop at Python's
  recursion limit, about 1000 levels less the stack in use (about 75 frames
  in a request); a pull body or a push nests a record 3 levels down.
- orjson reads 1024 levels and writes 254 (:func:`dumps` writes the same
  bytes at any depth, in parts); simdjson reads 1024.

512 is twice the 256 levels asked of the server at least, and leaves room
below every one of those limits. Repositories written before the limit, or by hand, may hold deeper records.
Reading them never fails for that: :func:`decode_repository` and
:func:`decode_members` split stored text into record texts at any depth,
and :func:`parse_repository` keeps a record it cannot parse as its text (an
``orjson.Fragment``, which resolution skips and a serializer writes as it is).
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import orjson
import simdjson

from pzls_site.jsonscan import CLOSE, OPEN, SKIP

MAX_DEPTH = 512

# simdjson refuses a document nesting deeper than this. It counts a scalar as
# a level of its own, so its count of a text is the text's depth, or one
# more when a scalar sits in one of the deepest containers.
SIMDJSON_DEPTH = 1024
# Texts simdjson checks with the thread's own parser, whose buffers last as
# long as the thread; a larger text gets a parser of its own for the once.
_SHARED_PARSER_MAX = 1 << 20

_SPACE = frozenset(b" \t\n\r")

_local = threading.local()


def simdjson_padding(levels: int) -> tuple[bytes, bytes]:
    """Arrays to wrap a text in so that simdjson refuses it exactly when its count for the text passes ``levels``."""
    pad = SIMDJSON_DEPTH - levels
    return b"[" * pad, b"]" * pad


_PADDING = {levels: simdjson_padding(levels) for levels in (MAX_DEPTH, MAX_DEPTH + 1)}


def _simdjson_at_most(text: bytes | bytearray | memoryview | msgspec.Raw, levels: int) -> bool | None:
    """Whether simdjson counts ``text`` at most ``levels`` deep; None when it refuses the text for another reason."""
    opening, closing = _PADDING.get(levels) or simdjson_padding(levels)
    padded = b"".join((opening, text, closing))
    if len(padded) <= _SHARED_PARSER_MAX:
        parser = getattr(_local, "parser", None)
        if parser is None:
            parser = _local.parser = simdjson.Parser()
    else:
        parser = simdjson.Parser()
    try:
        parser.parse(padded)
    except RuntimeError as exc:
        return False if str(exc).startswith("DEPTH_ERROR") else None
    except ValueError:  # invalid JSON, UnicodeDecodeError included
        return None
    return True


def _deepest_path(view: memoryview, limit: int) -> list[int] | None:
    """Offsets of the containers around the first one nested deeper than ``limit``; None when none is.

    Reads the text bracket by bracket, strings skipped whole, without
    recursion; the structure of valid JSON is all it relies on.
    """
    skip = SKIP.match
    stack: list[int] = []
    pos, end = 0, len(view)
    while True:
        pos = skip(view, pos).end()  # type: ignore[union-attr]  # the pattern matches the empty string
        if pos >= end:
            return None
        char = view[pos]
        if char in OPEN:
            stack.append(pos)
            if len(stack) > limit:
                return stack
        elif char in CLOSE:
            if stack:
                stack.pop()
        else:  # a string that never ends: nothing after it is structure
            return None
        pos += 1


def _key_before(view: memoryview, pos: int) -> str | None:
    """The member name before the value at ``pos`` (``"name": value``); None for an array element."""
    i = pos - 1
    while i >= 0 and view[i] in _SPACE:
        i -= 1
    if i < 0 or view[i] != 0x3A:  # ':'
        return None
    i -= 1
    while i >= 0 and view[i] in _SPACE:
        i -= 1
    if i < 0 or view[i] != 0x22:  # '"'
        return None
    end = i
    text = view.obj if isinstance(view.obj, (bytes, bytearray)) and len(view.obj) == len(view) else bytes(view)
    start = end
    while True:
        start = text.rfind(b'"', 0, start)
        if start < 0:
            return None
        backslashes = 0
        while start - backslashes > 0 and text[start - backslashes - 1] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            break
    try:
        return msgspec.json.decode(text[start : end + 1], type=str)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None


def too_deep(
    text: bytes | bytearray | memoryview | msgspec.Raw,
    limit: int = MAX_DEPTH,
    *,
    names: int = 0,
    probe: bool = True,
) -> list[str | None] | None:
    """None when no part of ``text`` nests deeper than ``limit`` levels, else the way to the first part that does.

    The way is the member names of the outermost ``names`` containers on it
    (None for an array element), counted from the second: for a push body
    and ``names=3``, ``["stores", store name, record id]``. Exact for valid
    JSON. Counting brackets settles most texts, simdjson most others, both
    at C speed (unless ``probe`` is false, for a text already known to be
    deep); the rest, and the names, are found by reading the brackets.
    """
    if len(text) < 2 * (limit + 1):  # too short to hold limit + 1 pairs of brackets
        return None
    data = text if isinstance(text, (bytes, bytearray)) else bytes(text)
    if data.count(b"[") + data.count(b"{") <= limit:  # too few containers, strings' brackets counted too
        return None
    if probe and limit + 1 < SIMDJSON_DEPTH:
        verdict = _simdjson_at_most(text, limit)
        if verdict:
            return None
        if not names and verdict is False and _simdjson_at_most(text, limit + 1) is False:
            return []  # simdjson's count is at most one more than the depth
    view = memoryview(text).cast("B")
    path = _deepest_path(view, limit)
    if path is None:
        return None
    return [_key_before(view, pos) for pos in path[1 : names + 1]]


# --- writing JSON at any depth ----------------------------------------------------------

# orjson refuses to write values nested deeper than 254 levels; ``dumps``
# writes the parts of a deeper value this many levels high first. Small,
# because orjson 3.13 corrupts memory writing a Fragment inside more than
# about 72 levels (tests/test_depth.py holds it to this).
_PART_LEVELS = 32


def dumps(value: Any) -> bytes:
    """``orjson.dumps(value)``, the same bytes, for values nested however deep."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        parted = _parted(value)
        if parted is value:
            raise
        return orjson.dumps(parted)


def _parted(value: Any) -> Any:
    """``value`` rebuilt with every container _PART_LEVELS high written as an ``orjson.Fragment``, without recursion.

    Containers are rebuilt bottom up; one whose height reaches _PART_LEVELS
    is written by orjson and stands in its parent as its own text, so no
    part orjson writes nests deeper than that. Each part's text is copied
    once more by every part around it: a few dozen times at most for the
    1024 levels parsed JSON can have. Values other than dicts and lists are
    left as they are.
    """
    if not isinstance(value, (dict, list)):
        return value
    # A frame per open container: its remaining items, its rebuilt copy, its height so far, its key in its parent.
    frames: list[list[Any]] = []

    def enter(container: dict[Any, Any] | list[Any], key: Any) -> None:
        if isinstance(container, dict):
            frames.append([iter(container.items()), {}, 0, key])
        else:
            frames.append([enumerate(container), [], 0, key])

    enter(value, None)
    while True:
        frame = frames[-1]
        rebuilt = frame[1]
        for key, child in frame[0]:
            if isinstance(child, (dict, list)):
                enter(child, key)
                break
            if isinstance(rebuilt, dict):
                rebuilt[key] = child
            else:
                rebuilt.append(child)
        else:
            frames.pop()
            height = frame[2] + 1
            part: Any = rebuilt
            if height >= _PART_LEVELS:
                part, height = orjson.Fragment(orjson.dumps(rebuilt)), 0
            if not frames:
                return part
            parent = frames[-1]
            if isinstance(parent[1], dict):
                parent[1][frame[3]] = part
            else:
                parent[1].append(part)
            parent[2] = max(parent[2], height)


# --- stored JSON, whatever its depth ---------------------------------------------------


class _StoredRepository(msgspec.Struct):
    version: int
    data: dict[str, dict[str, msgspec.Raw]]


_repository_decoder = msgspec.json.Decoder(_StoredRepository)
_members_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
RawStores = dict[str, dict[str, msgspec.Raw]]


def _skeleton(text: bytes | bytearray | memoryview, level: int) -> tuple[bytes, list[memoryview]]:
    """``text`` with each container at ``level`` replaced by ``[n]``, and those containers' texts (n is the index)."""
    view = memoryview(text).cast("B")
    skip = SKIP.match
    parts: list[bytes | memoryview] = []
    spans: list[memoryview] = []
    depth = pos = start = copied = 0
    end = len(view)
    while True:
        pos = skip(view, pos).end()  # type: ignore[union-attr]
        if pos >= end:
            break
        char = view[pos]
        if char in OPEN:
            depth += 1
            if depth == level:
                start = pos
        elif char in CLOSE:
            if depth == level:
                parts += (view[copied:start], b"[%d]" % len(spans))
                spans.append(view[start : pos + 1])
                copied = pos + 1
            depth -= 1
        else:
            break
        pos += 1
    parts.append(view[copied:])
    return b"".join(parts), spans


def _restore(records: dict[str, msgspec.Raw], spans: list[memoryview]) -> dict[str, msgspec.Raw]:
    """Put the texts ``_skeleton`` took out back in; every record that was a container is a ``[n]``."""
    for record_id, raw in records.items():
        text = bytes(raw)
        if text.startswith(b"["):
            records[record_id] = msgspec.Raw(bytes(spans[int(text[1:-1])]))
    return records


def decode_repository(text: bytes | bytearray | memoryview) -> tuple[int, RawStores]:
    """The version and record texts of ``{"version": N, "data": {store: {id: record}}}``, at any depth.

    msgspec's errors (DecodeError, ValidationError) mean the text is not a repository.
    """
    try:
        doc = _repository_decoder.decode(text)
    except RecursionError:  # a record deeper than msgspec follows: split around it
        skeleton, spans = _skeleton(text, 4)
        doc = _repository_decoder.decode(skeleton)
        for records in doc.data.values():
            _restore(records, spans)
    return doc.version, doc.data


def decode_members(text: bytes | bytearray | memoryview) -> dict[str, msgspec.Raw]:
    """The member texts of a JSON object ``{id: record, ...}``, at any depth (msgspec's errors as for a repository)."""
    try:
        return _members_decoder.decode(text)
    except RecursionError:
        skeleton, spans = _skeleton(text, 2)
        return _restore(_members_decoder.decode(skeleton), spans)


def parse_repository(text: bytes | bytearray | memoryview) -> tuple[int, dict[str, dict[str, Any]]]:
    """The parsed version and stores of a pull body, at any depth.

    A record too deep to parse is kept as its text, an ``orjson.Fragment``.
    Raises ValueError (msgspec's errors among them) when the text is not a repository.
    """
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        version, stored = decode_repository(text)
        return version, {name: {rid: _parsed(raw) for rid, raw in records.items()} for name, records in stored.items()}
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ValueError("not a repository")
    return int(doc["version"]), doc["data"]


def _parsed(raw: msgspec.Raw) -> Any:
    try:
        return orjson.loads(memoryview(raw))
    except orjson.JSONDecodeError:
        return orjson.Fragment(bytes(raw))
