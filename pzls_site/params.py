"""Numeric query parameters, read one strict way on every endpoint (PROTOCOL.md §1).

Python's ``int()`` and ``float()`` are too lenient for a protocol: they take
white space around the number, ``_`` between digits, the digits of every
script (``'١٢'`` is 12), ``inf`` and ``nan``; and ``int()`` refuses a string
of more than 4300 digits with ValueError. Here a number is written in ASCII
only (see ``parse_number``) and is read exactly, at any length, without ever
building a huge integer: what a parameter needs (its whole part up to a cap,
whether it lies in [0, 1]) is decided from the digits and the exponent.

A parameter given more than once (``?since=1&since=2``) is not a number: a
strict reader does not guess which one the client meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.http import QueryDict

from pzls_site.exceptions import BadRequest

# An optional sign, digits with an optional fraction (at least one digit in
# all), an optional exponent. [0-9], not \d, which matches any script's digits.
_NUMBER = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?)([0-9]+))?")
# An exponent with more digits than this is beyond anything a parameter can
# mean; it is saturated rather than converted (int() refuses 4300 digits).
_EXPONENT_DIGITS_MAX = 18
_INFINITY = ("inf", "infinity")


@dataclass(frozen=True)
class Number:
    """An exact decimal: ``(-1 if negative else 1) * int(digits) * 10**exponent``.

    ``digits`` has no leading or trailing zeros (it is ``""`` for zero), so
    ``len(digits) + exponent`` is the number of digits before the point.
    """

    negative: bool
    digits: str
    exponent: int

    @property
    def is_zero(self) -> bool:
        return not self.digits

    def whole_part(self, cap: int) -> int:
        """The whole part of the magnitude, or ``cap`` when that is larger."""
        places = len(self.digits) + self.exponent
        if self.is_zero or places <= 0:
            return 0
        if places > len(str(cap)):
            return cap
        whole = self.digits[:places] if self.exponent < 0 else self.digits + "0" * self.exponent
        return min(int(whole), cap)

    def in_unit_interval(self) -> bool:
        """Whether the exact value lies in [0, 1] (``-0`` is 0)."""
        if self.is_zero:
            return True
        if self.negative:
            return False
        places = len(self.digits) + self.exponent
        return places <= 0 or (self.digits == "1" and self.exponent == 0)


def parse_number(text: str, *, signed: bool) -> Number | None:
    """A number written in ASCII decimal notation, or None.

    Accepted: digits with an optional fraction and an optional exponent,
    ``7``, ``1.7``, ``.5``, ``5.``, ``5e2``, ``1E-400``, any number of digits;
    a leading ``+`` or ``-`` only when ``signed``. Nothing else: no white
    space, no ``_``, no other script's digits, no ``0x``, ``inf`` or ``nan``.
    """
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    sign, whole, fraction, exponent_sign, exponent_digits = match.groups()
    fraction = fraction or ""
    if not whole and not fraction:
        return None
    if sign and not signed:
        return None
    exponent = 0
    if exponent_digits is not None:
        exponent_digits = exponent_digits.lstrip("0")
        if len(exponent_digits) > _EXPONENT_DIGITS_MAX:
            exponent = 10**_EXPONENT_DIGITS_MAX
        else:
            exponent = int(exponent_digits or "0")
        if exponent_sign == "-":
            exponent = -exponent
    significant = (whole + fraction).lstrip("0")
    stripped = significant.rstrip("0")
    exponent += len(significant) - len(stripped) - len(fraction)
    return Number(negative=sign == "-", digits=stripped, exponent=exponent if stripped else 0)


def _only_value(query: QueryDict, name: str) -> tuple[bool, str | None]:
    """(given, text): given is False when the parameter is absent; text is None when it is repeated."""
    values = query.getlist(name)
    if not values:
        return False, None
    return True, values[0] if len(values) == 1 else None


@dataclass(frozen=True)
class Version:
    """A version-like parameter (``since``) as the client wrote it.

    ``whole`` is the whole part of its value, at most the cap; ``plain`` says
    it was written as ASCII digits only; ``fraction`` that the value lies
    strictly above ``whole`` (``3.5``).
    """

    whole: int
    plain: bool
    fraction: bool = False

    def resolved(self, current: int) -> int:
        """The ``since`` to use against a repository at version ``current``.

        Plain digits are the number they spell, at any length. A value written
        any other way (``1.5``, ``5e2``, ``1e400``, ``Infinity``) counts only
        when it lies above ``current`` (then it means no changes); otherwise it
        is not a version and means 0, as anything that is not a number does.
        """
        if self.plain or self.whole > current or (self.whole == current and self.fraction):
            return self.whole
        return 0


_NOT_A_VERSION = Version(whole=0, plain=True)


def version(query: QueryDict, name: str, *, cap: int) -> Version:
    """A version-like parameter (``since``); absent, empty, repeated, signed or not a number: 0.

    ``Infinity`` (or ``inf``, in any letter case) and a value above ``cap``
    however written (``1e400``, 10,000 digits) have the whole part ``cap``.
    """
    given, text = _only_value(query, name)
    if not given or text is None:
        return _NOT_A_VERSION
    if text.isascii() and text.lower() in _INFINITY:
        return Version(whole=cap, plain=False)
    number = parse_number(text, signed=False)
    if number is None:
        return _NOT_A_VERSION
    whole = number.whole_part(cap)
    places = len(number.digits) + number.exponent
    return Version(
        whole=whole,
        plain=text.isdigit(),
        fraction=whole < cap and not number.is_zero and len(number.digits) > max(places, 0),
    )


def unit_fraction(query: QueryDict, name: str, *, default: float) -> float | int | None:
    """A parameter in [0, 1] (``threshold``): ``default`` when absent, None when not such a number.

    A signed decimal whose exact value lies in [0, 1] (``0.6``, ``.5``,
    ``1e-1``, ``-0``, ``1e-400``) is read as the nearest double, as JavaScript
    reads it, and a whole value comes back as an int (``1``, not ``1.0``), as
    JavaScript prints it. Empty, repeated, out of range or not a number: None.
    """
    given, text = _only_value(query, name)
    if not given:
        return default
    if text is None:
        return None
    number = parse_number(text, signed=True)
    if number is None or not number.in_unit_interval():
        return None
    value = float(text)  # the grammar above is a subset of float()'s, and within [0, 1] it is finite
    return int(value) if value.is_integer() else value


def _digits(text: str | None) -> bool:
    return text is not None and text.isascii() and text.isdigit()


def count(query: QueryDict, name: str, *, default: int, cap: int) -> int:
    """A page size (``limit``): ``default`` when absent; ASCII digits >= 1, read as ``cap`` above it; else 400."""
    given, text = _only_value(query, name)
    if not given:
        return default
    if not _digits(text) or int(text.lstrip("0")[:20] or "0") == 0:  # type: ignore[union-attr]
        raise BadRequest(f"{name} must be a whole number of at least 1")
    assert text is not None
    digits = text.lstrip("0")
    return cap if len(digits) > 19 else min(int(digits), cap)


def position(query: QueryDict, name: str) -> int:
    """A seq-like parameter (the audit log's ``since``): 0 when absent or empty; ASCII digits; else 400."""
    given, text = _only_value(query, name)
    if not given or text == "":
        return 0
    if not _digits(text):
        raise BadRequest(f"{name} must be a whole number")
    assert text is not None
    digits = text.lstrip("0") or "0"
    return 2**63 - 1 if len(digits) > 18 else int(digits)


_TRUE, _FALSE = ("1", "true"), ("0", "false", "")


def flag(query: QueryDict, name: str) -> bool:
    """A yes/no parameter (``deleted``): absent, empty, ``0``, ``false``: no; ``1``, ``true``: yes; anything else 400.

    Exactly these spellings: no other letter case, no white space, not
    given twice (a strict reader does not guess).
    """
    given, text = _only_value(query, name)
    if not given:
        return False
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadRequest(f"{name} must be 1, true, 0 or false")
