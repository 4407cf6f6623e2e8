"""Cursors of ``GET /api/sync/cursor`` (§7.4): opaque strings that name a place in a repository's change order.

A cursor holds the repository's epoch (the name of its history, new with
every import or restore) and a position, with a check so that a string the
server never issued is told apart. The check is not a secret: a cursor only
names a place, and a client that forges one can only ask for a place it
could ask for anyway. A cursor of another epoch, or from beyond the
repository's last position (a restored older copy), means from the
beginning, so no cursor ever issued is refused and none misses a change.
"""

from __future__ import annotations

import hashlib
import re

_PREFIX = "c1"
_FORM = re.compile(r"^c1\.([0-9a-f]{1,32})\.([0-9a-z]{1,13})\.([0-9a-f]{8})$")


class InvalidCursor(ValueError):
    pass


def _check(epoch: str, position: int) -> str:
    return hashlib.sha256(f"pzls-cursor:{epoch}:{position}".encode()).hexdigest()[:8]


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def encode(epoch: str, position: int) -> str:
    return f"{_PREFIX}.{epoch}.{_base36(position)}.{_check(epoch, position)}"


def decode(text: str) -> tuple[str, int]:
    """(epoch, position) of a cursor this server issued; InvalidCursor for anything else."""
    match = _FORM.match(text)
    if match is None:
        raise InvalidCursor(text)
    epoch, position = match.group(1), int(match.group(2), 36)
    if match.group(3) != _check(epoch, position):
        raise InvalidCursor(text)
    return epoch, position


def resume(text: str | None, *, epoch: str, position: int) -> int:
    """The position to read after, for a cursor asked of a repository at (``epoch``, ``position``)."""
    if not text:
        return 0
    cursor_epoch, cursor_position = decode(text)
    if cursor_epoch != epoch or cursor_position > position:
        return 0
    return cursor_position
