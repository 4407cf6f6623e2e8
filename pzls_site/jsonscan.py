"""JSON text read bracket by bracket, without recursion, whatever its depth.

Shared by ``sync.depth`` (stored records) and ``query.values`` (JSON from a
remote database). Pure: imports nothing from Django.

Between two brackets outside a string, ``SKIP`` steps over everything at C
speed, strings whole (a bracket inside one is text); only the brackets
themselves are looked at in Python. The structure of valid JSON is all the
readers rely on: they find where containers begin and end, and leave checking
everything else to a parser.
"""

from __future__ import annotations

import re

# Everything up to the next bracket outside a string: text, and whole strings.
SKIP = re.compile(rb'(?s)[^"\[\]{}]*+(?:"(?:[^"\\]++|\\.)*+"[^"\[\]{}]*+)*+')
OPEN = frozenset(b"[{")
CLOSE = frozenset(b"]}")

# What stands in a piece for a container cut out of it (see ``pieces``).
PLACEHOLDER = b"0"


def pieces(text: bytes | bytearray | memoryview, levels: int) -> list[bytes] | None:
    """``text`` cut into pieces that each nest at most ``levels`` deep; None when its brackets do not match up.

    Every container that begins ``levels`` levels inside the piece around it
    (at depth ``levels + 1``, ``2 * levels + 1``, ...) is cut out, leaving
    ``0`` in its place, and is a piece of its own, its own deep containers
    cut out in turn. The outermost piece comes last. ``text`` is valid JSON
    exactly when every piece is (a placeholder is a value wherever a
    container was one), so a parser limited in depth can check text of any
    depth piece by piece. One pass; each byte lands in one piece.
    """
    view = memoryview(text).cast("B")
    skip = SKIP.match
    cut: list[bytes] = []
    # The parts of each piece still open around the current one, outermost first.
    around: list[list[bytes | memoryview]] = []
    parts: list[bytes | memoryview] = []
    depth = pos = copied = 0
    end = len(view)
    while True:
        pos = skip(view, pos).end()  # type: ignore[union-attr]  # the pattern matches the empty string
        if pos >= end:
            break
        char = view[pos]
        if char in OPEN:
            depth += 1
            if depth > levels and (depth - 1) % levels == 0:
                parts += (view[copied:pos], PLACEHOLDER)
                around.append(parts)
                parts, copied = [], pos
        elif char in CLOSE:
            if not depth:
                return None
            if depth > levels and (depth - 1) % levels == 0:
                parts.append(view[copied : pos + 1])
                cut.append(b"".join(parts))
                parts, copied = around.pop(), pos + 1
            depth -= 1
        else:  # a string that never ends
            return None
        pos += 1
    if depth:
        return None
    parts.append(view[copied:])
    cut.append(b"".join(parts))
    return cut
