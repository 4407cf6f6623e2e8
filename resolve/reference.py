"""The reference scorer: entity resolution exactly as the original JavaScript server computes it.

This module follows PROTOCOL.md §4 literally and compares every pair, so it is
slow (quadratic, in pure Python) and obviously right. It is the definition the
fast engine (``resolve.engine``) is tested against, and the engine calls
:func:`score_pair` and :func:`name_similarity` from here to confirm candidates,
so there is exactly one implementation of the scoring rules.

JavaScript semantics reproduced here:

- lengths and positions of names in UTF-16 code units (:func:`utf16_units`);
- Jaro-Winkler with ``t / 2`` transpositions and the prefix bonus always on;
- property order of the stores (array-index keys first, numerically);
- strict equality (``===``) for ``birthDate``/``nationality``/``workplace``,
  ``Array.prototype.includes`` for tags, ``join`` for the shared-tag reason;
- ``toFixed(0)`` rounding of the exact binary value, additions on doubles in
  the original's order, and a stable sort by score.

Pure Python: nothing here imports Django.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

# The original sends at most this many matches; ``count`` still counts all of them.
MAX_RESULTS = 200

# Store name -> entity type, in the order the original lists them.
ENTITY_STORES = (("humans", "human"), ("others", "other"))

# Score points per rule (the original's constants).
NAME_WEIGHT = 40
NAME_MIN_SIMILARITY = 0.8
BIRTH_DATE_POINTS = 20
NATIONALITY_POINTS = 10
WORKPLACE_POINTS = 10
TAG_POINTS = 5

_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_MAX_ARRAY_INDEX = 4294967294  # 2**32 - 2: the largest canonical array index in JavaScript


class Entity(NamedTuple):
    """One record of ``humans`` or ``others`` as the original sees it."""

    id: Any
    name: Any
    type: str
    record: dict[str, Any]

    @property
    def has_name(self) -> bool:
        """A name takes part only when it is a non-empty string."""
        return isinstance(self.name, str) and self.name != ""

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": self.type}


# --- JavaScript semantics ----------------------------------------------------


def is_array_index(key: str) -> bool:
    """True for keys JavaScript orders as integers: "0", "17", not "01", "-1" or "1.0"."""
    return (
        key[:1].isdigit()
        and len(key) <= 10
        and _ARRAY_INDEX.fullmatch(key) is not None
        and int(key) <= _MAX_ARRAY_INDEX
    )


def js_key_order(store: Mapping[str, Any]) -> list[str]:
    """The keys of a parsed JSON object in JavaScript property order.

    Array-index keys come first in ascending numeric order, then the other
    keys in insertion order (which a Python dict keeps).
    """
    indices = [key for key in store if is_array_index(key)]
    if not indices:
        return list(store)
    indices.sort(key=int)
    return indices + [key for key in store if not is_array_index(key)]


def utf16_units(text: str) -> str:
    """``text`` with every character outside the BMP split into its two surrogates.

    JavaScript strings are sequences of UTF-16 code units, so a name with an
    emoji is one unit longer per emoji than Python's ``len`` says. Each unit
    becomes one Python character (lone surrogates are legal in a ``str``), and
    then lengths, indexing and equality agree with JavaScript's.
    """
    if text.isascii() or max(text) <= "\uffff":
        return text
    units = text.encode("utf-16-le", "surrogatepass")
    return "".join(chr(int.from_bytes(units[k : k + 2], "little")) for k in range(0, len(units), 2))


def js_number_string(value: float | int) -> str:
    """A number as JavaScript's ``String(x)`` writes it (ECMAScript Number::toString).

    Python's ``repr`` of a float gives the same shortest round-trip digits; only
    the layout differs (JavaScript switches to exponent form below 1e-6 and
    from 1e21 on, and writes ``1e+21``, not ``1e+21`` with a mantissa ``1.0``).
    """
    x = float(value)
    if x == 0:
        return "0"  # -0 too
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    sign = "-" if x < 0 else ""
    mantissa, _, exponent = repr(abs(x)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    raw = int_part + frac_part
    significant = raw.lstrip("0")
    # JavaScript's n: the value is 0.<digits> x 10**point.
    point = len(int_part) + (int(exponent) if exponent else 0) - (len(raw) - len(significant))
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= point <= 21:
        body = digits + "0" * (point - k)
    elif 0 < point <= 21:
        body = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        body = "0." + "0" * (-point) + digits
    else:
        exp = point - 1
        body = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if exp >= 0 else "-") + str(abs(exp))
    return sign + body


def js_join_item(value: Any) -> str:
    """One tag as ``Array.prototype.join`` writes it (only matchable tags get here)."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return js_number_string(value)
    return value


def strict_key(value: Any) -> tuple | None:
    """A hashable key that two values share exactly when JavaScript's ``===`` holds.

    Strings, numbers (``2`` and ``2.0`` alike, big integers as the doubles
    JavaScript parses them to), booleans and null have keys; arrays and objects
    return None because two parsed JSON objects are never the same object.
    """
    if value is None:
        return ("null",)
    if value is True or value is False:
        return ("bool", value)
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, (int, float)):
        return ("num", float(value) + 0.0)  # + 0.0 folds -0.0 into 0.0, as === does
    return None


def truthy_key(value: Any) -> tuple | None:
    """The ``===`` key of a field the original tests as ``a.f && a.f === b.f``.

    Falsy values (missing, null, false, 0, "") never count, nor do arrays and
    objects, which are truthy but equal to nothing else.
    """
    if value is None or value is False or value == "" or (isinstance(value, (int, float)) and value == 0):
        return None
    return strict_key(value)


def to_fixed_0(value: float) -> str:
    """``value.toFixed(0)`` for 0 <= value < 1e21: the exact binary value rounded half up."""
    return str(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- scoring -------------------------------------------------------------------


def jaro(a: str, b: str) -> float:
    """The original's Jaro similarity of two UTF-16 unit strings (see :func:`utf16_units`)."""
    if a == b:
        return 1.0
    la, lb = len(a), len(b)
    if la == 0 or lb == 0:
        return 0.0
    window = max(la, lb) // 2 - 1
    b_matched = [False] * lb
    a_chars: list[str] = []
    for i in range(la):
        ch = a[i]
        lo = i - window if i > window else 0
        hi = min(lb, i + window + 1)
        # The first not yet matched position of b inside the window that holds ch.
        j = b.find(ch, lo, hi)
        while j != -1 and b_matched[j]:
            j = b.find(ch, j + 1, hi)
        if j != -1:
            b_matched[j] = True
            a_chars.append(ch)
    m = len(a_chars)
    if m == 0:
        return 0.0
    b_chars = [b[j] for j in range(lb) if b_matched[j]]
    # Transpositions: matched characters of a and b, taken in order, that differ.
    t = sum(1 for x, y in zip(a_chars, b_chars, strict=True) if x != y)
    return (m / la + m / lb + (m - t / 2) / m) / 3


def jaro_winkler(a: str, b: str) -> float:
    """The original's Jaro-Winkler: the prefix bonus applies whatever the Jaro value."""
    if a == b:
        return 1.0
    j = jaro(a, b)
    p = 0
    for k in range(min(4, len(a), len(b))):
        if a[k] != b[k]:
            break
        p += 1
    return j + p * 0.1 * (1 - j)


def name_similarity(a: str, b: str) -> float:
    """``nameSim`` of two raw names (Python strings), counted in UTF-16 units as JavaScript does."""
    return jaro_winkler(utf16_units(a), utf16_units(b))


def shared_tags(first: Any, second: Any) -> list[Any]:
    """``first.filter(t => second.includes(t))`` when both are arrays, else nothing."""
    if not isinstance(first, list) or not isinstance(second, list):
        return []
    present = {key for key in map(strict_key, second) if key is not None}
    return [item for item in first if (key := strict_key(item)) is not None and key in present]


def score_pair(a: Entity, b: Entity) -> tuple[float, list[str]]:
    """The raw score (a double, before dividing by 100) and the reasons for one pair, a before b."""
    score = 0.0
    reasons: list[str] = []
    sim = name_similarity(a.name, b.name)
    if sim > NAME_MIN_SIMILARITY:
        score += sim * NAME_WEIGHT
        reasons.append(f"Name similarity: {to_fixed_0(sim * 100)}%")
    ra, rb = a.record, b.record
    for field, points, reason in (
        ("birthDate", BIRTH_DATE_POINTS, "Same birth date"),
        ("nationality", NATIONALITY_POINTS, "Same nationality"),
        ("workplace", WORKPLACE_POINTS, "Same workplace"),
    ):
        key = truthy_key(ra.get(field))
        if key is not None and key == truthy_key(rb.get(field)):
            score += points
            reasons.append(reason)
    common = shared_tags(ra.get("tags"), rb.get("tags"))
    if common:
        score += len(common) * TAG_POINTS
        reasons.append("Shared tags: " + ", ".join(js_join_item(item) for item in common))
    return score, reasons


def final_score(score: float) -> float | int:
    """``Math.min(score / 100, 1)``; a full score is the integer 1, which JSON writes as ``1``."""
    s = score / 100
    return 1 if s >= 1 else s


def match_entry(a: Entity, b: Entity, s: float | int, reasons: list[str]) -> dict[str, Any]:
    return {"entity1": a.summary(), "entity2": b.summary(), "score": s, "reasons": reasons}


def entities_of(data: Mapping[str, Any]) -> list[Entity]:
    """Every record of ``humans`` then ``others``, each store in JavaScript property order.

    An entity's id is its record's ``id``, or the record's key when the record
    has no ``id`` (missing or null). Stores that are missing or not objects
    contribute nothing. Parsed JSON only: stores and records are dicts.
    """
    entities: list[Entity] = []
    for store_name, entity_type in ENTITY_STORES:
        store = data.get(store_name)
        if not isinstance(store, dict):
            continue
        for key in js_key_order(store):
            record = store[key]
            if not isinstance(record, dict):
                continue
            record_id = record.get("id")
            entities.append(
                Entity(
                    id=key if record_id is None else record_id, name=record.get("name"), type=entity_type, record=record
                )
            )
    return entities


def resolve_reference(data: Mapping[str, Any], threshold: float) -> tuple[int, list[dict[str, Any]]]:
    """All matches at ``threshold`` by comparing every pair: (count, the best MAX_RESULTS entries)."""
    entities = [e for e in entities_of(data) if e.has_name]
    matches: list[dict[str, Any]] = []
    for i, a in enumerate(entities):
        for b in entities[i + 1 :]:
            score, reasons = score_pair(a, b)
            if score > 0:
                s = final_score(score)
                if s >= threshold:
                    matches.append(match_entry(a, b, s, reasons))
    matches.sort(key=lambda entry: -entry["score"])  # stable, like V8's Array.prototype.sort
    return len(matches), matches[:MAX_RESULTS]
