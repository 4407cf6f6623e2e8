"""One SQL statement per request: a scanner that knows each dialect's quoting.

Pure: imports nothing from Django or a driver. Splitting on ``;`` is only
safe with the server's own idea of where strings and comments end, and the
two dialects differ exactly where it matters:

- PostgreSQL (with ``standard_conforming_strings=on``, which the runner sets
  for the session): ``'...'`` has no backslash escapes, ``E'...'`` does;
  ``$tag$...$tag$`` dollar quoting; ``/* */`` comments nest; ``"..."`` is an
  identifier. So ``SELECT 'a\\'; DELETE FROM t`` is two statements there.
- MySQL/MariaDB: backslash escapes in ``'...'`` and ``"..."``; ``#`` and
  ``-- `` (dash dash space) comments; `` `...` `` identifiers; and
  ``/*! ... */`` comments whose content the server executes, so the scanner
  reads them as code.

``single_statement`` returns the one statement with the terminating ``;``
and anything after it removed, so what reaches the server is only that
statement. On MySQL the runner also switches multi-statements off at the
protocol level, so a scanner mistake there still cannot run two statements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

POSTGRESQL = "postgresql"
MYSQL = "mysql"

_PG_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_MYSQL_EXECUTABLE_COMMENT = re.compile(r"/\*M?!\d*")
_WORD_START = re.compile(r"[A-Za-z_\x80-\U0010ffff]")


class StatementError(ValueError):
    """The text is not exactly one statement; the message says why."""


@dataclass(frozen=True)
class Statement:
    """One statement as it will be sent, and its words outside strings and comments (upper case).

    ``words`` lets the caller classify the statement (``SELECT`` or not) and
    spot constructs it refuses, such as MySQL's ``SET STATEMENT ... FOR``.
    """

    text: str
    words: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.words[0] if self.words else ""

    def contains(self, *sequence: str) -> bool:
        """Do ``sequence``'s words occur one after the other in the statement?"""
        n = len(sequence)
        return any(self.words[i : i + n] == sequence for i in range(len(self.words) - n + 1))


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ch == "$" or ord(ch) >= 0x80


class _Scanner:
    def __init__(self, sql: str, dialect: str) -> None:
        self.sql = sql
        self.dialect = dialect
        self.n = len(sql)
        # (start, end) of each statement's text and its words.
        self.pieces: list[tuple[int, int, list[str]]] = []
        self.in_executable_comment = False

    def fail(self, what: str) -> None:
        raise StatementError(f"The query has an unterminated {what}")

    def scan(self) -> list[tuple[int, int, list[str]]]:
        sql, n = self.sql, self.n
        i = 0
        start = 0
        words: list[str] = []
        has_code = False
        while i < n:
            ch = sql[i]
            nxt = sql[i + 1] if i + 1 < n else ""
            if ch == ";":
                if has_code:
                    self.pieces.append((start, i, words))
                start, words, has_code = i + 1, [], False
                i += 1
                continue
            if ch.isspace():
                i += 1
                continue
            comment_end = self.comment(i, ch, nxt)
            if comment_end is not None:
                i = comment_end
                continue
            has_code = True
            if ch == "'":
                i = self.quoted(i, "'", backslash=self.dialect == MYSQL)
            elif ch == '"':
                i = self.quoted(i, '"', backslash=self.dialect == MYSQL)
            elif ch == "`" and self.dialect == MYSQL:
                i = self.quoted(i, "`", backslash=False)
            elif ch == "$" and self.dialect == POSTGRESQL:
                i = self.dollar(i)
            elif ch.isdigit():
                # A number: in PostgreSQL "1$a$" is the number 1 and then a
                # dollar quote, so '$' must not extend a number there.
                j = i + 1
                while j < n and (sql[j].isalnum() or sql[j] in "._" or (sql[j] == "$" and self.dialect == MYSQL)):
                    j += 1
                i = j
            elif _WORD_START.match(ch):
                j = i + 1
                while j < n and _is_word_char(sql[j]):
                    j += 1
                word = sql[i:j]
                if j < n and sql[j] == "'" and self.dialect == POSTGRESQL and word in ("E", "e"):
                    i = self.quoted(j, "'", backslash=True)
                else:
                    i = j
                words.append(word.upper())
            else:
                i += 1
        if self.in_executable_comment:
            self.fail("comment")
        if has_code:
            self.pieces.append((start, n, words))
        return self.pieces

    def comment(self, i: int, ch: str, nxt: str) -> int | None:
        """The index after a comment starting at ``i``, or None if none starts there."""
        sql, n = self.sql, self.n
        if ch == "-" and nxt == "-":
            if self.dialect == MYSQL:
                after = sql[i + 2] if i + 2 < n else ""
                # MySQL needs whitespace (or a control character) after "--".
                if after and not (after.isspace() or ord(after) < 0x20):
                    return None
            end = sql.find("\n", i)
            return n if end < 0 else end + 1
        if ch == "#" and self.dialect == MYSQL:
            end = sql.find("\n", i)
            return n if end < 0 else end + 1
        if ch == "*" and nxt == "/" and self.in_executable_comment:
            self.in_executable_comment = False
            return i + 2
        if ch == "/" and nxt == "*":
            if self.dialect == MYSQL:
                match = _MYSQL_EXECUTABLE_COMMENT.match(sql, i)
                if match:
                    if self.in_executable_comment:
                        raise StatementError("The query nests executable comments")
                    # The server runs what is inside: scan it as code.
                    self.in_executable_comment = True
                    return match.end()
                end = sql.find("*/", i + 2)
                if end < 0:
                    self.fail("comment")
                return end + 2
            depth, j = 1, i + 2
            while depth:
                if j >= n - 1:
                    self.fail("comment")
                pair = sql[j : j + 2]
                if pair == "/*":
                    depth, j = depth + 1, j + 2
                elif pair == "*/":
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            return j
        return None

    def quoted(self, i: int, quote: str, *, backslash: bool) -> int:
        sql, n = self.sql, self.n
        j = i + 1
        while j < n:
            ch = sql[j]
            if backslash and ch == "\\":
                j += 2
                continue
            if ch == quote:
                if j + 1 < n and sql[j + 1] == quote:
                    j += 2
                    continue
                return j + 1
            j += 1
        self.fail("quoted identifier" if quote != "'" else "string")
        return n

    def dollar(self, i: int) -> int:
        sql, n = self.sql, self.n
        if i + 1 < n and sql[i + 1].isdigit():
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            return j
        match = _PG_DOLLAR_TAG.match(sql, i)
        if not match:
            return i + 1
        tag = match.group(0)
        end = sql.find(tag, match.end())
        if end < 0:
            self.fail("dollar-quoted string")
        return end + len(tag)


def single_statement(sql: str, *, dialect: str) -> Statement:
    """The one statement in ``sql``; ``StatementError`` for none, several or an unterminated quote.

    A trailing ``;`` (and comments or blank space around it) is fine.
    """
    if dialect not in (POSTGRESQL, MYSQL):
        raise ValueError(f"unknown dialect {dialect!r}")
    pieces = _Scanner(sql, dialect).scan()
    if not pieces:
        raise StatementError("The query is empty")
    if len(pieces) > 1:
        raise StatementError(f"The query contains {len(pieces)} statements; send one statement per request")
    start, end, words = pieces[0]
    return Statement(text=sql[start:end].strip(), words=tuple(words))
