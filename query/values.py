"""Turn the values a database driver returns into JSON-safe ones (PROTOCOL.md §5).

Pure: imports nothing from Django or a driver. The rules, chosen so that a
JavaScript client reads every value without losing precision:

- integers as numbers while JavaScript can hold them exactly
  (|n| <= 2^53 - 1, ``Number.MAX_SAFE_INTEGER``), as decimal strings beyond;
- decimals as strings (``"12.50"``: a float would round them);
- floats as numbers; NaN and the infinities, which JSON cannot carry, as null;
- dates as ``YYYY-MM-DD``; times as ``HH:MM:SS[.ffffff][+HH:MM]``; timestamps
  without a time zone as ``YYYY-MM-DDTHH:MM:SS[.ffffff]``, with one in UTC as
  ``...Z``; durations as ISO 8601 (``P1DT2H3M4.5S``) (for values a driver
  hands over as Python objects);
- binary as standard base64; UUIDs and network addresses as strings;
- arrays and sets as their items, each converted by these rules.

JSON the server sends as text (PostgreSQL ``json`` and ``jsonb``, MySQL
``JSON``) is turned by :func:`json_text` into the bytes orjson writes for the
parsed value with its items converted by these rules (so integers beyond
2^53 - 1 as strings, numbers beyond a double as null), handed on as an
``orjson.Fragment`` and spliced into the answer as it is, at any depth:
orjson reads 1024 levels and writes 254, Python's json and any recursive
conversion stop near 1000, and text beyond what orjson does is rewritten
token by token instead, without recursion. That way also keeps what Python
values cannot hold: repeated keys (PostgreSQL ``json`` keeps them) and a
lone surrogate's escape.

The runner has the drivers hand over dates, times, intervals and decimals as
the server's own ISO 8601 / decimal text instead (exact, and it can hold
``infinity``, BC dates, months in an interval, MySQL TIME beyond 24 hours and
zero dates); strings pass through unchanged.

``RowsJSON`` then encodes the converted rows with orjson, the encoder the API
answers with, a batch at a time, so the answer's size is known while the rows
are still being read (``PZLS_QUERY_MAX_BYTES``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import orjson

from pzls_site.jsonscan import pieces

MAX_SAFE_INTEGER = 2**53 - 1
_MAX_SAFE_DIGITS = str(MAX_SAFE_INTEGER)


def _integer(value: int) -> int | str:
    value = int(value)
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)


def _float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _binary(value: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _datetime(value: dt.datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        return value.isoformat()
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat() + "Z"


def duration_iso(value: dt.timedelta) -> str:
    """An ISO 8601 duration: ``P2DT3H4M5.5S``, ``-PT1S``, ``PT0S``."""
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    days, micros = divmod(micros, 86_400_000_000)
    hours, micros = divmod(micros, 3_600_000_000)
    minutes, micros = divmod(micros, 60_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    out = f"{sign}P{days}D" if days else f"{sign}P"
    clock = ""
    if hours:
        clock += f"{hours}H"
    if minutes:
        clock += f"{minutes}M"
    if micros:
        clock += f"{seconds}.{micros:06d}".rstrip("0") + "S"
    elif seconds:
        clock += f"{seconds}S"
    if clock:
        out += "T" + clock
    elif not days:
        out += "T0S"
    return out


def _sequence(value: Iterable[Any]) -> list[Any]:
    return [json_safe(item) for item in value]


def _mapping(value: dict[Any, Any]) -> dict[str, Any]:
    return {str(key): json_safe(item) for key, item in value.items()}


def _set(value: set[Any] | frozenset[Any]) -> list[Any]:
    return sorted((json_safe(item) for item in value), key=lambda item: (str(type(item)), str(item)))


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    int: _integer,
    float: _float,
    Decimal: str,
    bytes: _binary,
    bytearray: _binary,
    memoryview: _binary,
    dt.datetime: _datetime,
    dt.date: dt.date.isoformat,
    dt.time: dt.time.isoformat,
    dt.timedelta: duration_iso,
    uuid.UUID: str,
    list: _sequence,
    tuple: _sequence,
    dict: _mapping,
    set: _set,
    frozenset: _set,
}


def json_safe(value: Any) -> Any:
    """One value, converted by the rules in the module docstring."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is orjson.Fragment:
        return value
    if kind is int:
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    converter = _CONVERTERS.get(kind)
    if converter is not None:
        return converter(value)
    # Subclasses (a driver's own str, int or datetime types) by their base.
    for base, converter in _CONVERTERS.items():
        if isinstance(value, base):
            return converter(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    # Anything else a driver may hand over (network addresses, ranges, ...)
    # has a readable text form; an object the client cannot read is worse.
    return str(value)


_PASS_THROUGH = frozenset({str, bool, type(None), orjson.Fragment})


# --- JSON text -------------------------------------------------------------

# Text the stdlib parser checks in one call has at most this many brackets;
# deeper text is checked piece by piece (pzls_site.jsonscan.pieces), each
# piece nesting at most this deep: well inside orjson's 1024 levels and
# Python's recursion limit.
_PIECE_LEVELS = 200
# Without a run of 16 digits, every integer in a JSON text is safe: orjson's
# parser reads it exactly (it reads integers past 64 bits as floats).
_LONG_DIGITS = re.compile(r"[0-9]{16}")
# A JSON string, escapes included; split() keeps it as one item.
_STRING = re.compile(r'("(?:[^"\\]++|\\.)*+")', re.DOTALL)
# Outside strings, the numbers json_safe may write otherwise: -0, integers of
# 16 digits or more, numbers with a fraction or an exponent. A safe integer
# is not even matched: a search for the first character is what costs least.
_NUMBER = re.compile(
    r"[-0-9](?:(?<=-)0(?![.eE0-9])|[0-9]{15,}+(?![.eE])|[0-9]*+(?:\.[0-9]++(?:[eE][+-]?+[0-9]++)?+|[eE][+-]?+[0-9]++))"
)


def _ignore(text: str) -> None:
    return None


def _refuse(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def _python_parses(text: str | bytes) -> bool:
    # orjson refuses some valid JSON: a lone surrogate's escape ("\ud800"), a
    # number beyond a double (1e400). Python's parser takes both; only its
    # NaN and Infinity are not JSON. Numbers are not even converted: Python
    # refuses integers of more than 4300 digits, which JSON allows.
    try:
        json.loads(text, parse_int=_ignore, parse_float=_ignore, parse_constant=_refuse)
        return True
    except (ValueError, RecursionError):
        return False


def _parses(piece: bytes) -> bool:
    try:
        orjson.loads(piece)
        return True
    except orjson.JSONDecodeError:
        return _python_parses(piece)


def is_json(text: str) -> bool:
    """Whether ``text`` is one JSON value (RFC 8259), at any depth, checked without recursion."""
    try:
        orjson.loads(text)
        return True
    except orjson.JSONDecodeError:
        pass
    if text.count("[") + text.count("{") <= _PIECE_LEVELS:
        return _python_parses(text)
    cut = pieces(text.encode(), _PIECE_LEVELS)
    return cut is not None and all(map(_parses, cut))


def _number(match: re.Match[str]) -> str:
    """A number of a JSON text, as ``json_safe`` turns out its value and orjson writes that."""
    token = match.group()
    if "." in token or "e" in token or "E" in token:
        number = float(token)
        return orjson.dumps(number).decode() if math.isfinite(number) else "null"
    digits = token.lstrip("-")
    if len(digits) < len(_MAX_SAFE_DIGITS) or (len(digits) == len(_MAX_SAFE_DIGITS) and digits <= _MAX_SAFE_DIGITS):
        return "0" if token == "-0" else token
    # A JSON integer already is its decimal text: no int(), which stops at 4300 digits.
    return f'"{token}"'


def _string(token: str) -> str:
    """A string of a JSON text as orjson writes it, or as it is if orjson cannot write it (a lone surrogate)."""
    if "\\" not in token:
        return token  # orjson would write the same
    try:
        return orjson.dumps(json.loads(token)).decode()
    except orjson.JSONEncodeError:
        return token


def _compact(text: str) -> str:
    """Valid JSON ``text`` as ``json_text`` answers it, read token by token at C speed, without recursion."""
    parts = _STRING.split(text)  # the strings at odd places, the text between them at even ones
    # The text between strings, as one: NUL, which valid JSON never holds
    # unescaped, marks where each string was. Its whitespace is JSON's own
    # (valid JSON has no other there) and goes.
    between = "".join("\0".join(parts[0::2]).split())
    parts[0::2] = _NUMBER.sub(_number, between).split("\0")
    parts[1::2] = map(_string, parts[1::2])
    return "".join(parts)


def json_text(text: str) -> orjson.Fragment | str:
    """A JSON value the server sent as text, as a piece of the answer (see the module docstring).

    The same bytes as parsing the text with Python and writing ``json_safe``
    of it with orjson, for text of any depth. Most text takes one orjson
    parse and write; text deeper than orjson goes, or with integers it
    cannot read exactly, is checked (:func:`is_json`) and rewritten token
    by token, keeping what cannot be parsed into Python without loss:
    repeated keys and a lone surrogate's escape. Text that is not JSON (no
    real server sends it) is answered as the string it is: spliced in, it
    would break the answer around it.

    The fragment must stay near the top of what orjson writes (orjson 3.13
    corrupts memory writing a Fragment more than about 72 levels down): in
    a row it is 3 levels down, in a PostgreSQL array at most 9.
    """
    if not _LONG_DIGITS.search(text):
        try:
            return orjson.Fragment(orjson.dumps(orjson.loads(text)))
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass  # deeper than orjson reads or writes, not JSON, or JSON orjson cannot read
    if not is_json(text):
        return text
    return orjson.Fragment(_compact(text))


def rows_as_objects(fields: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows as objects keyed by column name, in column order, with JSON-safe values.

    When two columns share a name the object has one key, holding the later
    column's value (as node-postgres and mysql2 do); ``fields`` still lists both.
    """
    # The common values (text, NULL, booleans, safe integers) are checked
    # inline: a function call per value is most of the cost of 100,000 values.
    convert, passing, low, high, inf = json_safe, _PASS_THROUGH, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER, math.inf
    return [
        dict(
            zip(
                fields,
                [
                    value
                    if (kind := type(value)) in passing
                    or (kind is int and low <= value <= high)
                    or (kind is float and -inf < value < inf)  # false for NaN
                    else convert(value)
                    for value in row
                ],
                strict=True,
            )
        )
        for row in rows
    ]


class RowsJSON:
    """The ``rows`` of an answer as one compact JSON array, built a batch of rows at a time.

    ``size`` is the exact length in bytes of ``json()``: the brackets, each
    row's object and the commas between them, as orjson writes them. The
    rows kept are always the first ones of the result: past ``max_rows``
    rows, or from the first row that would take ``size`` over ``max_bytes``
    (even the very first), nothing more is kept and ``truncated`` is true.

    A batch is encoded with one ``orjson.dumps``; only a batch that does not
    fit whole is encoded again row by row, to find where to cut it.
    """

    def __init__(self, fields: Sequence[str], *, max_rows: int, max_bytes: int) -> None:
        self.fields = list(fields)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.count = 0
        self.size = 2  # "[]"
        self.truncated = False
        self._parts: list[bytes | memoryview] = []

    def add(self, batch: Sequence[Sequence[Any]]) -> None:
        """Convert and keep the rows of ``batch`` that fit under both caps."""
        if self.truncated:
            return
        room = self.max_rows - self.count
        if len(batch) > room:
            batch = batch[:room]
            self.truncated = True
        if not batch:
            return
        rows = rows_as_objects(self.fields, batch)
        encoded = orjson.dumps(rows)
        # The batch's rows without its brackets, after a comma when rows came before.
        grown = len(encoded) - 2 + (1 if self.count else 0)
        if self.size + grown <= self.max_bytes:
            self._parts.append(memoryview(encoded)[1:-1])
            self.size += grown
            self.count += len(rows)
            return
        for row in rows:
            item = orjson.dumps(row)
            grown = len(item) + (1 if self.count else 0)
            if self.size + grown > self.max_bytes:
                self.truncated = True
                return
            self._parts.append(item)
            self.size += grown
            self.count += 1

    def json(self) -> bytes:
        return b"[" + b",".join(self._parts) + b"]"
