"""The pure parts of remote SQL: connection strings, statement splitting, values, host patterns,
and the runner's words for failed connections and its reading of privileges."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import random
import uuid
from collections.abc import Sequence
from decimal import Decimal

import MySQLdb
import orjson
import pytest
from MySQLdb.constants import FIELD_TYPE

from pzls_site.jsonscan import pieces
from query import hosts, runner
from query.connstring import ConnectionStringError, parse_connection_string
from query.statements import StatementError, single_statement
from query.values import RowsJSON, duration_iso, is_json, json_safe, json_text, rows_as_objects

# --- connection strings --------------------------------------------------


@pytest.mark.parametrize(
    "url, engine, port",
    [
        ("postgres://u:p@db.example.com/sales", "postgresql", 5432),
        ("postgresql://u:p@db.example.com:6543/sales", "postgresql", 6543),
        ("mysql://u:p@db.example.com/sales", "mysql", 3306),
        ("MariaDB://u:p@db.example.com:3307/sales", "mysql", 3307),
    ],
)
def test_schemes_and_default_ports(url: str, engine: str, port: int) -> None:
    spec = parse_connection_string(url)
    assert (spec.engine, spec.host, spec.port, spec.user, spec.password, spec.database) == (
        engine,
        "db.example.com",
        port,
        "u",
        "p",
        "sales",
    )


def test_percent_encoded_user_password_and_database() -> None:
    spec = parse_connection_string("postgres://al%40ice:p%40ss%3Aw%2Fo%23rd%25@DB.Example.com:5432/my%20db")
    assert spec.user == "al@ice"
    assert spec.password == "p@ss:w/o#rd%"
    assert spec.host == "db.example.com"
    assert spec.database == "my db"


def test_ipv6_host() -> None:
    spec = parse_connection_string("mysql://root@[::1]:3306/test")
    assert (spec.host, spec.port) == ("::1", 3306)
    assert spec.label == "mysql://[::1]:3306/test"


def test_password_is_not_in_repr_or_label() -> None:
    spec = parse_connection_string("postgres://u:hunter2secret@h/db")
    assert "hunter2secret" not in repr(spec)
    assert "hunter2secret" not in spec.label


@pytest.mark.parametrize(
    "url, options",
    [
        ("postgres://u@h/db?sslmode=require", {"sslmode": "require"}),
        ("postgres://u@h/db?ssl=true", {"sslmode": "require"}),
        ("postgres://u@h/db?application_name=pipeline", {"application_name": "pipeline"}),
        ("mysql://u@h/db?charset=utf8mb4", {"charset": "utf8mb4"}),
        ("mysql://u@h/db?ssl-mode=required", {"ssl_mode": "REQUIRED"}),
        ("mysql://u@h/db?sslmode=verify-full", {"ssl_mode": "VERIFY_IDENTITY"}),
        ("mariadb://u@h/db?ssl=0", {"ssl_mode": "DISABLED"}),
    ],
)
def test_supported_options(url: str, options: dict[str, str]) -> None:
    assert parse_connection_string(url).options == options


@pytest.mark.parametrize(
    "url, message",
    [
        ("", "connectionString must be a non-empty string"),
        (
            "sqlite:///tmp/x.db",
            "Unsupported database scheme 'sqlite': use postgres://, postgresql://, mysql:// or mariadb://",
        ),
        (
            "mongodb://u:p@h/db",
            "Unsupported database scheme 'mongodb': use postgres://, postgresql://, mysql:// or mariadb://",
        ),
        ("just some text", "connectionString must be a URL such as postgres://user:password@host:5432/database"),
        ("postgres://u:p@h:notaport/db", "connectionString is not a valid URL (check the host and port)"),
        ("postgres://u:p@h:70000/db", "connectionString is not a valid URL (check the host and port)"),
        ("postgres://u:p@[::1/db", "connectionString is not a valid URL (check the host and port)"),
        ("postgres://u:p@/db", "connectionString has no host"),
        ("postgres://u:p@h/a/b", "connectionString's path must be a single database name"),
        ("postgres://u:p@h/d\tb", "connectionString must not contain control characters"),
        ("postgres://u:p%0A@h/db", "connectionString must not contain control characters"),
        (
            "postgres://u@h/db?hostaddr=10.0.0.1",
            "Unsupported connection option 'hostaddr' for PostgreSQL (supported: sslmode, ssl, application_name)",
        ),
        (
            "postgres://u@h/db?options=-c%20default_transaction_read_only%3Doff",
            "Unsupported connection option 'options' for PostgreSQL (supported: sslmode, ssl, application_name)",
        ),
        (
            "mysql://u@h/db?read_default_file=/etc/my.cnf",
            "Unsupported connection option 'read_default_file' for MySQL/MariaDB"
            " (supported: charset, ssl-mode, ssl_mode, sslmode, ssl)",
        ),
        (
            "postgres://u@h/db?sslmode=maybe",
            "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        ("postgres://u@h/db?sslmode=require&sslmode=disable", "Connection option 'sslmode' is given twice"),
        ("mysql://u@h/db?charset=utf8;drop", "charset must be a character set name such as utf8mb4"),
    ],
)
def test_bad_connection_strings(url: str, message: str) -> None:
    with pytest.raises(ConnectionStringError) as info:
        parse_connection_string(url)
    assert str(info.value) == message


def test_bad_port_message_does_not_quote_the_password() -> None:
    with pytest.raises(ConnectionStringError) as info:
        parse_connection_string("postgres://u:topsecret42@h:99999/db")
    assert "topsecret42" not in str(info.value)


# --- one statement per request -------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
@pytest.mark.parametrize(
    "sql, sent",
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT 1;", "SELECT 1"),
        ("  SELECT 1 ;  \n", "SELECT 1"),
        ("SELECT 1; -- done\n", "SELECT 1"),
        ("SELECT 1; /* done */ ;", "SELECT 1"),
        ("SELECT ';' AS semi", "SELECT ';' AS semi"),
        ("SELECT 'it''s; fine'", "SELECT 'it''s; fine'"),
        ('SELECT 1 AS "a;b"', 'SELECT 1 AS "a;b"'),
        ("SELECT 1 /* ; */", "SELECT 1 /* ; */"),
        ("SELECT 1 -- ; DROP TABLE t", "SELECT 1 -- ; DROP TABLE t"),
    ],
)
def test_one_statement_is_accepted(dialect: str, sql: str, sent: str) -> None:
    assert single_statement(sql, dialect=dialect).text == sent


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
@pytest.mark.parametrize(
    "sql",
    ["SELECT 1; SELECT 2", "SELECT 1;DELETE FROM t;", "SELECT ';'; SELECT 2", "/* a */ SELECT 1 ; UPDATE t SET a = 1"],
)
def test_several_statements_are_refused(dialect: str, sql: str) -> None:
    with pytest.raises(StatementError) as info:
        single_statement(sql, dialect=dialect)
    assert str(info.value) == "The query contains 2 statements; send one statement per request"


def test_postgres_quoting() -> None:
    # With standard_conforming_strings a backslash does not escape the quote...
    with pytest.raises(StatementError):
        single_statement(r"SELECT 'a\'; DELETE FROM t", dialect="postgresql")
    # ... except in E'' strings.
    assert single_statement(r"SELECT E'a\'; b'", dialect="postgresql").text == r"SELECT E'a\'; b'"
    assert single_statement("SELECT $$a; b$$", dialect="postgresql").text == "SELECT $$a; b$$"
    assert single_statement("SELECT $fn$ ; $$ ; $fn$", dialect="postgresql").text == "SELECT $fn$ ; $$ ; $fn$"
    assert single_statement("SELECT 1 /* outer /* inner ; */ still ; */", dialect="postgresql").words == ("SELECT",)
    assert single_statement("SELECT a$b$ FROM t", dialect="postgresql").words == ("SELECT", "A$B$", "FROM", "T")
    with pytest.raises(StatementError):
        # "1" then a dollar quote, as PostgreSQL reads it: the ';' is inside it.
        single_statement("SELECT 1$x$; DELETE FROM t", dialect="postgresql")
    with pytest.raises(StatementError) as info:
        single_statement("SELECT $q$ unterminated", dialect="postgresql")
    assert str(info.value) == "The query has an unterminated dollar-quoted string"


def test_mysql_quoting() -> None:
    # A backslash escapes the quote in MySQL, so this is one statement.
    assert single_statement(r"SELECT 'a\'; DELETE FROM t'", dialect="mysql").words == ("SELECT",)
    assert single_statement("SELECT `a;b` FROM t # ; comment", dialect="mysql").words == ("SELECT", "FROM", "T")
    # "--" without a space is two minus signs in MySQL.
    with pytest.raises(StatementError):
        single_statement("SELECT 1 --1; DELETE FROM t", dialect="mysql")
    # The server executes /*! ... */: its words count, its ';' splits.
    assert single_statement("/*!SET STATEMENT x=1 FOR*/ CREATE TABLE t (i int)", dialect="mysql").words[:2] == (
        "SET",
        "STATEMENT",
    )
    with pytest.raises(StatementError):
        single_statement("SELECT 1 /*! ; DELETE FROM t */", dialect="mysql")


@pytest.mark.parametrize("sql", ["", "   ", ";", " ; ; ", "-- nothing\n", "/* nothing */"])
def test_empty_query(sql: str) -> None:
    with pytest.raises(StatementError) as info:
        single_statement(sql, dialect="postgresql")
    assert str(info.value) == "The query is empty"


@pytest.mark.parametrize(
    "sql, what", [("SELECT 'abc", "string"), ('SELECT "abc', "quoted identifier"), ("SELECT /* x", "comment")]
)
def test_unterminated(sql: str, what: str) -> None:
    with pytest.raises(StatementError) as info:
        single_statement(sql, dialect="mysql")
    assert str(info.value) == f"The query has an unterminated {what}"


def test_statement_words_classify() -> None:
    statement = single_statement("(SELECT 1) UNION (SELECT 2)", dialect="postgresql")
    assert statement.first == "SELECT"
    assert single_statement("select 1 into outfile '/x'", dialect="mysql").contains("INTO", "OUTFILE")
    assert not single_statement("select 'into outfile'", dialect="mysql").contains("INTO", "OUTFILE")


# --- JSON-safe values ----------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (True, True),
        ("text", "text"),
        (2**53 - 1, 2**53 - 1),
        (-(2**53 - 1), -(2**53 - 1)),
        (2**53, "9007199254740992"),
        (-(2**63), "-9223372036854775808"),
        (2**64 - 1, "18446744073709551615"),
        (Decimal("12.50"), "12.50"),
        (Decimal("NaN"), "NaN"),
        (1.5, 1.5),
        (float("nan"), None),
        (float("inf"), None),
        (float("-inf"), None),
        (b"\x00\xff", base64.b64encode(b"\x00\xff").decode()),
        (memoryview(b"abc"), "YWJj"),
        (dt.date(2024, 2, 29), "2024-02-29"),
        (dt.time(13, 14, 15, 500000), "13:14:15.500000"),
        (dt.datetime(2024, 2, 29, 13, 14, 15, 123456), "2024-02-29T13:14:15.123456"),
        (dt.datetime(2024, 2, 29, 13, 14, 15, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2024-02-29T11:14:15Z"),
        (dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=500000), "P1DT2H3M4.5S"),
        (uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ({"a": [1, 2**60, float("nan")], "b": None}, {"a": [1, str(2**60), None], "b": None}),
        ([Decimal("1.5"), None, [1, 2]], ["1.5", None, [1, 2]]),
        ({"b", "a"}, ["a", "b"]),
        (ipaddress.ip_address("10.0.0.1"), "10.0.0.1"),
    ],
)
def test_json_safe(value: object, expected: object) -> None:
    assert json_safe(value) == expected


@pytest.mark.parametrize(
    "delta, text",
    [
        (dt.timedelta(0), "PT0S"),
        (dt.timedelta(seconds=-1), "-PT1S"),
        (dt.timedelta(days=2), "P2D"),
        (dt.timedelta(hours=838, minutes=59, seconds=59), "P34DT22H59M59S"),
        (dt.timedelta(microseconds=1), "PT0.000001S"),
    ],
)
def test_duration_iso(delta: dt.timedelta, text: str) -> None:
    assert duration_iso(delta) == text


def test_rows_as_objects_converts_what_the_fast_path_must_not_pass() -> None:
    rows = rows_as_objects(
        ["nan", "inf", "big", "neg", "ok", "dec"],
        [(float("nan"), float("-inf"), 2**53, -(2**53), 2.5, Decimal("1.10"))],
    )
    assert rows == [
        {"nan": None, "inf": None, "big": "9007199254740992", "neg": "-9007199254740992", "ok": 2.5, "dec": "1.10"}
    ]


def test_rows_as_objects_keeps_column_order() -> None:
    rows = rows_as_objects(["b", "a"], [(1, Decimal("2.0")), (None, None)])
    assert rows == [{"b": 1, "a": "2.0"}, {"b": None, "a": None}]
    assert list(rows[0]) == ["b", "a"]


# --- JSON text from the server ---------------------------------------------


def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize(
    "text, written",
    [
        ('{"a" : [ 1 , 2.5, null ],\n\t"b": "x" }', '{"a":[1,2.5,null],"b":"x"}'),
        ("9007199254740991", "9007199254740991"),
        ("-9007199254740991", "-9007199254740991"),
        ("9007199254740992", '"9007199254740992"'),
        ("[-9007199254740992, 12345678901234567890]", '["-9007199254740992","12345678901234567890"]'),
        ("123456789012345678901234567890", '"123456789012345678901234567890"'),  # orjson reads it as a float
        ("[1e400, -1E400, 1e-400, 1e5, 2E3, 1.5e300]", "[null,null,0.0,100000.0,2000.0,1.5e+300]"),
        ("[1e-400, 1e5, 2E3, 1.5e300]", "[0.0,100000.0,2000.0,1.5e+300]"),
        ("[-0, -0.0, 0, 10, -0.5, -0e1]", "[0,-0.0,0,10,-0.5,-0.0]"),
        ("[1.50, 2.0, 0.1000000000000000055511151231257827]", "[1.5,2.0,0.1]"),
        ("[1.50, 2.0]", "[1.5,2.0]"),
        ("1" * 400 + ".5", "null"),
        (
            r'["\u00e9", "a \" [ { 12345678901234567890 1e400 -0", "\\", "\/", "\u0001", "\t\u2028", "ü"]',
            '["é","a \\" [ { 12345678901234567890 1e400 -0","\\\\","/","\\u0001","\\t\u2028","ü"]',
        ),
        ('{"k": {"l": []}, "m": {}}', '{"k":{"l":[]},"m":{}}'),
        ('"text"', '"text"'),
        ("true", "true"),
    ],
)
def test_json_text_is_the_json_safe_value_at_any_depth(text: str, written: str) -> None:
    # The bytes orjson writes for json_safe of the parsed text, as the runner
    # answered before; the same inside 300 levels, past what orjson writes.
    assert written == orjson.dumps(json_safe(json.loads(text))).decode()
    for wrap in (0, 300):
        value = json_text(nested(wrap, text))
        assert isinstance(value, orjson.Fragment)
        assert orjson.dumps(value).decode() == nested(wrap, written)


def test_json_text_integers_past_what_python_reads() -> None:
    # More than the 4300 digits int() reads: still a JSON integer, answered as its digits.
    for wrap in (0, 300):
        assert orjson.dumps(json_text(nested(wrap, "9" * 5000))) == nested(wrap, '"' + "9" * 5000 + '"').encode()


def test_json_text_keeps_what_python_values_cannot_hold() -> None:
    # A lone surrogate's escape, which orjson cannot write, stays as the server wrote it.
    for wrap in (0, 300):
        value = json_text(nested(wrap, r'["\u00e9\ud800", "\ud800 \" "]'))
        assert orjson.dumps(value).decode() == nested(wrap, r'["\u00e9\ud800","\ud800 \" "]')
    # Repeated keys: a dict keeps one (the last value, where the first was); text deeper than orjson goes, all.
    assert orjson.dumps(json_text('{"k": 1, "j": 0, "k": 2}')) == b'{"k":2,"j":0}'
    assert orjson.dumps(json_text(nested(300, '{"k": 1, "k": 2}'))) == nested(300, '{"k":1,"k":2}').encode()


def test_json_text_at_any_depth() -> None:
    text = '{"a": ' + nested(50_000, ' 12345678901234567890, 1e400, "]", {"k": [ -0 ]} ') + "}"
    written = '{"a":' + nested(50_000, '"12345678901234567890",null,"]",{"k":[0]}') + "}"
    value = json_text(text)
    assert isinstance(value, orjson.Fragment)
    assert orjson.dumps([{"j": value}]) == b'[{"j":' + written.encode() + b"}]"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "[1,]",
        "[1",
        "[]]",
        "[1 2]",  # removing the space would make it [12]
        "tru e",
        '{"a" 1}',
        '"open',
        '"control \x01"',
        r'"\x"',
        "NaN",
        "[Infinity]",
        "01",
        "[1] [2]",
        nested(3000, "1,"),  # wrong only deep inside
        nested(3000)[:-1],
        nested(3000)[:-1] + "}",
        nested(2999, '{"a": 1') + "]" * 2999,
    ],
)
def test_text_that_is_not_json_is_answered_as_a_string(text: str) -> None:
    assert not is_json(text)
    assert json_text(text) == text


def test_mysql_json_column_at_any_depth() -> None:
    # mysqlclient hands the converter the column's bytes (MySQL's JSON type; MariaDB's is text).
    assert runner._MYSQL_CONV[FIELD_TYPE.JSON] is runner._mysql_json
    value = runner._mysql_json(nested(5000, "18446744073709551615").encode())
    assert orjson.dumps(value) == nested(5000, '"18446744073709551615"').encode()
    assert orjson.dumps(runner._mysql_json(b'{"a": [1, 2]}')) == b'{"a":[1,2]}'


def test_rows_json_counts_deep_json_exactly() -> None:
    deep = json_text(nested(3000))
    rows = [(1, deep), (2, json_text("[1, 2]")), (3, deep)]
    row_size = len(b'{"n":1,"j":}') + 6000
    out = RowsJSON(["n", "j"], max_rows=10, max_bytes=10**9)
    out.add(rows)
    assert (
        out.json()
        == b'[{"n":1,"j":' + nested(3000).encode() + b'},{"n":2,"j":[1,2]},{"n":3,"j":' + nested(3000).encode() + b"}]"
    )
    assert out.size == len(out.json())
    # {"n":2,"j":[1,2]} is 17 bytes; a comma before each row but the first.
    for cap, kept in [
        (1 + row_size, 0),
        (2 + row_size, 1),
        (2 + row_size + 1 + 17, 2),
        (2 + row_size + 1 + 17 + row_size, 2),
        (2 + row_size + 1 + 17 + 1 + row_size, 3),
    ]:
        for batch in (1, 3):
            out = RowsJSON(["n", "j"], max_rows=10, max_bytes=cap)
            for start in range(0, 3, batch):
                out.add(rows[start : start + batch])
            assert (out.count, out.truncated, out.size) == (kept, kept < 3, len(out.json()))
    # A PostgreSQL json[]: fragments one level further down.
    assert orjson.dumps(rows_as_objects(["a"], [([deep, None],)])) == b'[{"a":[' + nested(3000).encode() + b",null]}]"


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _reference_is_json(text: str) -> bool:
    try:
        json.loads(text, parse_constant=_not_json)
    except ValueError:
        return False
    return True


def test_pieces_check_exactly_what_a_parser_checks() -> None:
    # Random short texts, valid and not, cut at small depths: the text is JSON
    # exactly when every piece is, each piece nests at most that deep, and
    # each cut leaves one byte ("0") for the container it took out.
    tokens = ["[", "]", "{", "}", ",", ":", "1", "-0", '"a"', '"[{"', '"\\"]"', '"', " ", "true", "[]", "{}", '"k":']
    rng = random.Random(20260501)
    seen = {True: 0, False: 0}
    for _ in range(20_000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 14)))
        valid = _reference_is_json(text)
        seen[valid] += 1
        for levels in (1, 2, 3):
            cut = pieces(text.encode(), levels)
            assert (cut is not None and all(_reference_is_json(piece.decode()) for piece in cut)) == valid, (
                text,
                levels,
                cut,
            )
            if cut is not None and valid:
                assert sum(map(len, cut)) == len(text.encode()) + len(cut) - 1
                assert all(json_depth(json.loads(piece)) <= levels for piece in cut), (text, levels, cut)
    assert seen[True] > 500 and seen[False] > 500


def json_depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(json_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(json_depth, value), default=0)
    return 0


# --- rows as JSON under the caps ------------------------------------------

# Rows of many JSON shapes and sizes: escapes, multi-byte text (counted in
# bytes), NULLs, numbers, values converted on the way.
MIXED_ROWS = [
    (n, text, value)
    for n, (text, value) in enumerate(
        [
            ("plain", 1),
            ('quote " and backslash \\', None),
            ("tab\tnewline\ncontrol\x01", 2.5),
            ("héllo ☃ 😀" * 7, Decimal("12.50")),
            ("", 2**60),
            ("x" * 300, float("nan")),
            ("ünïcödé" * 40, b"\x00\xff"),
            ("y", dt.date(2024, 2, 29)),
        ]
        * 3
    )
]
FIELDS = ["n", "text", "value"]


def _build(rows: Sequence[tuple[object, ...]], batch: int, **caps: int) -> RowsJSON:
    out = RowsJSON(FIELDS, **caps)
    for start in range(0, len(rows), batch):
        out.add(rows[start : start + batch])
    return out


def test_rows_json_is_the_json_of_the_rows() -> None:
    out = _build(MIXED_ROWS, 5, max_rows=1000, max_bytes=10**9)
    assert out.json() == orjson.dumps(rows_as_objects(FIELDS, MIXED_ROWS))
    assert (out.count, out.size, out.truncated) == (len(MIXED_ROWS), len(out.json()), False)
    empty = RowsJSON(FIELDS, max_rows=10, max_bytes=10)
    assert (empty.json(), empty.size, empty.truncated) == (b"[]", 2, False)


def test_rows_json_keeps_the_longest_prefix_that_fits_every_cap() -> None:
    full = orjson.dumps(rows_as_objects(FIELDS, MIXED_ROWS))
    prefix_sizes = [len(orjson.dumps(rows_as_objects(FIELDS, MIXED_ROWS[:k]))) for k in range(len(MIXED_ROWS) + 1)]
    for cap in sorted(
        {1, 2, 3, *prefix_sizes, *(size - 1 for size in prefix_sizes), *(size + 1 for size in prefix_sizes)}
    ):
        fits = max(k for k, size in enumerate(prefix_sizes) if size <= cap) if cap >= 2 else 0
        for batch in (1, 4, len(MIXED_ROWS)):  # how the rows arrive does not matter
            out = _build(MIXED_ROWS, batch, max_rows=1000, max_bytes=cap)
            assert out.count == fits, (cap, batch)
            assert out.json() == orjson.dumps(rows_as_objects(FIELDS, MIXED_ROWS[:fits]))
            assert out.size == len(out.json()) <= max(cap, 2)
            assert out.truncated == (fits < len(MIXED_ROWS))
    assert len(full) == prefix_sizes[-1]


def test_rows_json_row_cap_and_byte_cap_together() -> None:
    out = _build(MIXED_ROWS, 4, max_rows=3, max_bytes=10**9)
    assert (out.count, out.truncated) == (3, True)
    assert out.json() == orjson.dumps(rows_as_objects(FIELDS, MIXED_ROWS[:3]))
    exactly = _build(MIXED_ROWS[:3], 4, max_rows=3, max_bytes=10**9)
    assert (exactly.count, exactly.truncated) == (3, False)
    # Whichever cap comes first cuts; nothing is added once cut.
    out = _build(MIXED_ROWS, 2, max_rows=20, max_bytes=len(orjson.dumps(rows_as_objects(FIELDS, MIXED_ROWS[:2]))))
    assert (out.count, out.truncated) == (2, True)
    out.add(MIXED_ROWS[:1])
    assert out.count == 2


# --- connection failures in our words ---------------------------------------

PG_SPEC = parse_connection_string("postgres://alice:pw@db.example.com/sales")
MY_SPEC = parse_connection_string("mysql://alice:pw@db.example.com/sales")
AT = 'connection to server at "10.0.0.5", port 5432 failed: '


@pytest.mark.parametrize(
    "message, problem",
    [
        (
            AT + "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n",
            "connection refused",
        ),
        (AT + "timeout expired\n", "no answer within 10 s"),
        (AT + "No route to host\n", "network unreachable"),
        (AT + "Network is unreachable\n", "network unreachable"),
        (AT + "received invalid response to SSL negotiation: S\n", runner.NOT_POSTGRESQL),
        (
            AT
            + "SSL SYSCALL error: EOF detected\n"
            + AT
            + "expected authentication request from server, but received S\n",
            runner.NOT_POSTGRESQL,
        ),
        (
            AT + "server closed the connection unexpectedly\n\tThis probably means the server terminated\n",
            runner.NOT_POSTGRESQL,
        ),
        (AT + "SECRETBANNER\n", runner.NOT_POSTGRESQL),
        (
            AT + 'FATAL:  password authentication failed for user "SECRETBANNER"\n',
            'the server refused the login of user "alice"',
        ),
        (
            AT + "FATAL:  Ident authentication failed for user SECRETBANNER\n",
            'the server refused the login of user "alice"',
        ),
        (
            AT + 'FATAL:  no pg_hba.conf entry for host "1.2.3.4", user "SECRETBANNER", database "x", SSL off\n',
            'the server refused the login of user "alice"',
        ),
        (AT + "fe_sendauth: no password supplied\n", 'the server refused the login of user "alice"'),
        (AT + 'FATAL:  role "SECRETBANNER" does not exist\n', 'user "alice" does not exist'),
        (AT + 'FATAL:  database "SECRETBANNER" does not exist\n', 'database "sales" does not exist'),
        (AT + "FATAL:  sorry, too many clients already SECRETBANNER\n", runner.SERVER_REFUSED),
        (AT + "server does not support SSL, but SSL was required\n", runner.NO_TLS),
        (AT + "SSL error: certificate verify failed SECRETBANNER\n", runner.TLS_UNVERIFIED),
        (AT + "SSL error: wrong version number SECRETBANNER\n", runner.TLS_FAILED),
    ],
)
def test_postgres_connect_problems(message: str, problem: str) -> None:
    assert runner.pg_connect_problem(message, PG_SPEC, timeout_s=10) == problem


@pytest.mark.parametrize(
    "code, message, problem",
    [
        (
            1045,
            "Access denied for user 'SECRETBANNER'@'10.0.0.9' (using password: YES)",
            'the server refused the login of user "alice"',
        ),
        (
            1044,
            "Access denied for user 'alice'@'%' to database 'SECRETBANNER'",
            'user "alice" may not use database "sales"',
        ),
        (1049, "Unknown database 'SECRETBANNER'", 'database "sales" does not exist'),
        (2002, "Can't connect to server on '10.0.0.5' (115)", "connection refused"),
        (2003, "Can't connect to MySQL server on '10.0.0.5:3306' (111)", "connection refused"),
        (2003, "Can't connect to MySQL server on '10.0.0.5:3306' (110)", "no answer within 10 s"),
        (2003, "Can't connect to MySQL server on '10.0.0.5:3306' (113)", "network unreachable"),
        (
            2013,
            "Lost connection to server at 'handshake: reading initial communication packet', system error: 110",
            "no answer within 10 s",
        ),
        (
            2013,
            "Lost connection to server at 'handshake: reading initial communication packet', system error: 11",
            runner.NOT_MYSQL,
        ),
        (
            2013,
            "Plugin SECRETBANNER could not be loaded: SECRETBANNER.so: cannot open shared object file",
            runner.NOT_MYSQL,
        ),
        (2006, "Server has gone away SECRETBANNER", runner.NOT_MYSQL),
        (2027, "Malformed packet SECRETBANNER", runner.NOT_MYSQL),
        (2026, "SSL connection error: SECRETBANNER", runner.TLS_FAILED),
        (1130, "Host 'SECRETBANNER' is not allowed to connect to this MariaDB server", runner.SERVER_REFUSED),
        (1040, "Too many connections SECRETBANNER", runner.SERVER_REFUSED),
    ],
)
def test_mysql_connect_problems(code: int, message: str, problem: str) -> None:
    exc = MySQLdb.OperationalError(code, message)
    assert runner.mysql_connect_problem(exc, MY_SPEC, timeout_s=10) == problem


# --- reading privileges ---------------------------------------------------


@pytest.mark.parametrize(
    "held, reasons",
    [
        ([], []),
        # A superuser is a member of every role: only that is said.
        (
            [("postgres", True, True, False, False), ("pg_read_server_files", False, False, False, False)],
            ["is a superuser"],
        ),
        ([("admins", False, True, False, False)], ['can become the superuser "admins"']),
        ([("alice", True, False, True, False)], ["has REPLICATION"]),
        ([("replicas", False, False, True, False)], ['can become "replicas", which has REPLICATION']),
        ([("alice", True, False, False, True)], ["has CREATEROLE"]),
        ([("managers", False, False, False, True)], ['can become "managers", which has CREATEROLE']),
        ([("alice", True, False, True, True)], ["has REPLICATION", "has CREATEROLE"]),
        (
            [("pg_read_server_files", False, False, False, False), ("pg_signal_backend", False, False, False, False)],
            ["is a member of pg_read_server_files, pg_signal_backend"],
        ),
        (
            [("alice", True, False, True, False), ("pg_execute_server_program", False, False, False, False)],
            ["has REPLICATION", "is a member of pg_execute_server_program"],
        ),
    ],
)
def test_postgres_powers(held: list[tuple[str, bool, bool, bool, bool]], reasons: list[str]) -> None:
    assert runner.pg_powers(held) == reasons


@pytest.mark.parametrize(
    "lines, refused",
    [
        (["GRANT USAGE ON *.* TO `alice`@`%`", "GRANT ALL PRIVILEGES ON `sales`.* TO `alice`@`%`"], []),
        (["GRANT SELECT, PROCESS, SHOW DATABASES, REPLICATION CLIENT ON *.* TO `alice`@`%`"], []),
        (["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"], ["ALL PRIVILEGES"]),
        (
            ["GRANT SELECT, RELOAD, SHUTDOWN, FILE ON *.* TO `alice`@`%` IDENTIFIED BY PASSWORD '*AB'"],
            ["RELOAD", "SHUTDOWN", "FILE"],
        ),
        (["GRANT READ_ONLY ADMIN, CONNECTION ADMIN ON *.* TO `alice`@`%`"], ["READ_ONLY ADMIN", "CONNECTION ADMIN"]),
        # MySQL 8 lists dynamic privileges without spaces; unknown ones are refused too.
        (
            ["GRANT SELECT ON *.* TO `alice`@`%`", "GRANT BACKUP_ADMIN,SYSTEM_VARIABLES_ADMIN ON *.* TO `alice`@`%`"],
            ["BACKUP_ADMIN", "SYSTEM_VARIABLES_ADMIN"],
        ),
        (["GRANT FILE ON *.* TO `a`@`%`", "GRANT FILE ON *.* TO `b`"], ["FILE"]),
        # A name that looks like a global grant is still a name.
        (
            ["GRANT SELECT ON `sales`.* TO `x ON *.* TO`@`%`", "GRANT SELECT (`FILE ON *.* TO`) ON `s`.`t` TO `a`@`%`"],
            [],
        ),
        (["GRANT `files` TO `alice`@`%`", "SET DEFAULT ROLE `files` FOR `alice`@`%`"], []),
    ],
)
def test_mysql_server_privileges(lines: list[str], refused: list[str]) -> None:
    assert runner.mysql_server_privileges(lines) == refused


@pytest.mark.parametrize(
    "line, roles",
    [
        ("GRANT `files` TO `alice`@`%`", [("files",)]),
        ("GRANT `files`,`we``ird` TO `alice`@`%` WITH ADMIN OPTION", [("files",), ("we`ird",)]),
        ("GRANT `r1`@`%`,`r2`@`localhost` TO `alice`@`%`", [("r1", "%"), ("r2", "localhost")]),
        ("GRANT 'old' TO 'alice'@'%'", [("old",)]),
        ("GRANT SELECT ON *.* TO `alice`@`%`", []),
        ("GRANT USAGE ON *.* TO `files`", []),
    ],
)
def test_mysql_granted_roles(line: str, roles: list[tuple[str, ...]]) -> None:
    assert runner.mysql_granted_roles(line) == roles


# --- host patterns -------------------------------------------------------


def _allowed(patterns: list[str], name: str, port: int, addresses: list[str]) -> list[str]:
    return hosts.allowed_addresses(name=name, port=port, addresses=addresses, patterns=hosts.parse_patterns(patterns))


def test_host_patterns() -> None:
    assert _allowed(["db.example.com"], "db.example.com", 5432, ["10.0.0.5"]) == ["10.0.0.5"]
    assert _allowed(["db.example.com:5432"], "db.example.com", 5433, ["10.0.0.5"]) == []
    assert _allowed(["*.corp.example"], "pg.corp.example", 5432, ["10.0.0.5"]) == ["10.0.0.5"]
    assert _allowed(["*.corp.example"], "corp.example", 5432, ["10.0.0.5"]) == []
    # Network patterns look at the resolved addresses, whatever the name.
    assert _allowed(["10.0.0.0/8"], "anything.example", 3306, ["10.1.2.3", "192.168.1.1"]) == ["10.1.2.3"]
    assert _allowed(["127.0.0.1:5432"], "localhost", 5432, ["127.0.0.1"]) == ["127.0.0.1"]
    assert _allowed(["[::1]:5432"], "localhost", 5432, ["::1", "127.0.0.1"]) == ["::1"]
    assert _allowed(["[fd00::/8]"], "v6.example", 5432, ["fd12::1"]) == ["fd12::1"]


@pytest.mark.parametrize("pattern", ["host:port", "host:0", "[::1", "[::1]x", ":5432"])
def test_bad_host_patterns(pattern: str) -> None:
    with pytest.raises(hosts.HostError):
        hosts.parse_pattern(pattern)


def test_resolve_literal_and_mapped_addresses() -> None:
    assert hosts.resolve("::ffff:127.0.0.1", 5432, timeout=1) == ["127.0.0.1"]
    assert hosts.resolve("localhost", 5432, timeout=5)[0] in ("127.0.0.1", "::1")
    with pytest.raises(hosts.HostError) as info:
        hosts.resolve("no-such-host.invalid", 5432, timeout=5)
    assert str(info.value) == "Could not resolve host 'no-such-host.invalid'"


def test_own_database_on_loopback_matches_every_local_alias() -> None:
    own = hosts.OwnDatabase.from_settings(engine="postgresql", host="localhost", port=5432, database="pzls", timeout=1)
    for address in ["127.0.0.1", "127.0.0.2", "::1", "0.0.0.0", "::"]:
        assert own.is_target(port=5432, database="pzls", addresses=[address])
    assert not own.is_target(port=5432, database="other", addresses=["127.0.0.1"])
    assert not own.is_target(port=5433, database="pzls", addresses=["127.0.0.1"])
    assert not own.is_target(port=5432, database="pzls", addresses=["10.9.9.9"])
    remote = hosts.OwnDatabase.from_settings(engine="mysql", host="10.9.9.9", port=3306, database=None, timeout=1)
    assert remote.is_target(port=3306, database="any", addresses=["10.9.9.9"])
    assert not remote.is_target(port=3306, database="any", addresses=["127.0.0.1"])


# --- settings checks -----------------------------------------------------


def test_settings_check_refuses_bad_patterns_and_unknown_roles() -> None:
    from pzls_site import env

    assert env.parse_host_patterns("PZLS_QUERY_ALLOWED_HOSTS", "db.example.com, *") == ["db.example.com", "*"]
    with pytest.raises(env.EnvError, match=r"Host pattern 'host:port' has an invalid port"):
        env.parse_host_patterns("PZLS_QUERY_ALLOWED_HOSTS", "db.example.com,host:port")
    assert env.parse_roles("PZLS_QUERY_ROLES", "admin,analyst") == ["admin", "analyst"]
    with pytest.raises(env.EnvError, match=r"unknown role 'root'"):
        env.parse_roles("PZLS_QUERY_ROLES", "admin,root")
