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
- JSON values, arrays and sets as their items, each converted by these rules.

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
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1


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
    if value is None or kind is str or kind is bool:
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


_PASS_THROUGH = frozenset({str, bool, type(None)})


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
