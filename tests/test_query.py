"""POST /api/query (PROTOCOL.md §5) against the real PostgreSQL and MariaDB servers.

Each test creates and drops its own uniquely named tables, so parallel runs do
not clash. A server that cannot be reached skips these tests on a laptop and
fails them in CI (CI=true): there they must run.

``PZLS_TEST_POSTGRES_URL`` and ``PZLS_TEST_MYSQL_URL`` name a superuser, which
sets up tables and checks what a query did; the queries themselves run as
``pzls_reader``, an ordinary user created (idempotently) on first use, since
superusers are refused by default.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import MySQLdb
import orjson
import psycopg2
import pytest
from django.test import override_settings

from query import hosts, runner, services
from query.connstring import parse_connection_string
from tests.helpers import Api, unavailable

PG_ADMIN_URL = os.environ.get("PZLS_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
MY_ADMIN_URL = os.environ.get("PZLS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
ADMIN_URLS = {"pg": PG_ADMIN_URL, "my": MY_ADMIN_URL}
READER = "pzls_reader"
READER_PASSWORD = "pzls-reader-test"
# MySQL matches the most specific host first; these keep an anonymous ''@'localhost' from shadowing '%'.
READER_HOSTS = ("%", "localhost", "127.0.0.1", "::1")
SUPERUSER_REFUSED = (
    "Connecting as a database superuser is not allowed (set PZLS_QUERY_ALLOW_SUPERUSER=true to allow it)"
)


def pg_connect() -> Any:
    spec = parse_connection_string(PG_ADMIN_URL)
    conn = psycopg2.connect(
        host=spec.host, port=spec.port, user=spec.user, password=spec.password, dbname=spec.database, connect_timeout=5
    )
    conn.autocommit = True
    return conn


def my_connect() -> Any:
    spec = parse_connection_string(MY_ADMIN_URL)
    return MySQLdb.connect(
        host=spec.host,
        port=spec.port,
        user=spec.user,
        password=spec.password,
        database=spec.database,
        connect_timeout=5,
        autocommit=True,
    )


_readers_ready: set[str] = set()


def _ensure_reader(kind: str, conn: Any) -> None:
    """Create or reset ``pzls_reader``: a login with no server-wide privileges.

    On PostgreSQL it gets privileges on each test table (``Server.table``); on
    MariaDB all privileges on the test database, so that the read-only
    session, not a missing grant, is what stops a write.
    """
    if kind in _readers_ready:
        return
    cursor = conn.cursor()
    try:
        if kind == "pg":
            # Runs on one server may overlap: one at a time changes the role.
            cursor.execute("SELECT pg_advisory_lock(hashtext('pzls_reader'))")
            try:
                cursor.execute(f"DO $$ BEGIN CREATE ROLE {READER}; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
                cursor.execute(
                    f"ALTER ROLE {READER} WITH LOGIN NOSUPERUSER NOREPLICATION NOCREATEDB NOCREATEROLE "
                    f"PASSWORD '{READER_PASSWORD}'"
                )
            finally:
                cursor.execute("SELECT pg_advisory_unlock(hashtext('pzls_reader'))")
        else:
            database = parse_connection_string(MY_ADMIN_URL).database
            for host in READER_HOSTS:
                account = f"'{READER}'@'{host}'"
                cursor.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{READER_PASSWORD}'")
                cursor.execute(f"ALTER USER {account} IDENTIFIED BY '{READER_PASSWORD}'")
                cursor.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO {account}")
    finally:
        cursor.close()
    _readers_ready.add(kind)


def reader_url(kind: str) -> str:
    return url_with(ADMIN_URLS[kind], user=READER, password=READER_PASSWORD)


class Server:
    """A direct connection to one test server, to set up tables and check what a query did.

    ``url`` is the reader's connection string that the queries use, ``admin_url`` the superuser's.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.admin_url = ADMIN_URLS[kind]
        self.url = reader_url(kind)
        try:
            self.conn = pg_connect() if kind == "pg" else my_connect()
        except Exception as exc:
            unavailable(f"{'PostgreSQL' if kind == 'pg' else 'MariaDB'} is not reachable: {exc}")
        _ensure_reader(kind, self.conn)
        self.tables: list[str] = []

    def run(self, sql: str) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def table(self, columns: str, rows: str | None = None) -> str:
        name = f"pzls_q_{uuid.uuid4().hex[:12]}"
        self.run(f"CREATE TABLE {name} ({columns})")
        self.tables.append(name)
        if self.kind == "pg":
            self.run(f"GRANT ALL ON {name} TO {READER}")
        if rows:
            self.run(f"INSERT INTO {name} VALUES {rows}")
        return name

    def exists(self, name: str) -> bool:
        if self.kind == "pg":
            return bool(self.run(f"SELECT 1 FROM pg_class WHERE relname = '{name}'"))
        return bool(self.run(f"SELECT 1 FROM information_schema.TABLES WHERE TABLE_NAME = '{name}'"))

    def running(self, marker: str) -> list[tuple[Any, ...]]:
        """Statements containing ``marker`` still running on the server (other than this check)."""
        if self.kind == "pg":
            return self.run(
                "SELECT pid, state, query FROM pg_stat_activity "
                f"WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
            )
        return self.run(
            "SELECT ID, COMMAND, INFO FROM information_schema.PROCESSLIST "
            f"WHERE INFO LIKE '%{marker}%' AND ID <> CONNECTION_ID()"
        )

    def wait_gone(self, marker: str, seconds: float = 5) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + seconds
        while True:
            left = self.running(marker)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def close(self) -> None:
        for name in self.tables:
            self.run(f"DROP TABLE IF EXISTS {name}")
        self.conn.close()


@pytest.fixture
def pg() -> Iterator[Server]:
    server = Server("pg")
    yield server
    server.close()


@pytest.fixture
def my() -> Iterator[Server]:
    server = Server("my")
    yield server
    server.close()


@pytest.fixture(params=[pytest.param("pg", marks=pytest.mark.postgres), pytest.param("my", marks=pytest.mark.mariadb)])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Each server in turn, or the one a test names (``parametrize(..., indirect=["server"])``)."""
    srv = Server(request.param)
    yield srv
    srv.close()


def query(api: Any, url: str, sql: str) -> Any:
    return api.post("/api/query", {"connectionString": url, "query": sql})


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    """What ``action()`` returned, and how many seconds it took."""
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started


def assert_ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True
    assert isinstance(body.pop("elapsedMs"), int)
    return body


def assert_failed(response: Any, status: int, error: str) -> None:
    assert response.status_code == status, response.content
    assert response.json() == {"success": False, "error": error}


def url_with(
    url: str,
    *,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> str:
    spec = parse_connection_string(url)
    scheme = "postgres" if spec.engine == "postgresql" else "mysql"
    user = spec.user if user is None else user
    password = spec.password if password is None else password
    auth = f"{user}:{password}@" if password else f"{user}@"
    host = host or (f"[{spec.host}]" if ":" in spec.host else spec.host)
    return f"{scheme}://{auth}{host}:{port or spec.port}/{spec.database if database is None else database}"


# --- the answer ----------------------------------------------------------


def test_select_answer(admin_api: Any, server: Server) -> None:
    table = server.table("id INT, name VARCHAR(20)", "(2, 'beta'), (1, 'alpha')")
    body = assert_ok(query(admin_api, server.url, f"SELECT id, name FROM {table} ORDER BY id"))
    assert body == {
        "success": True,
        "rows": [{"id": 1, "name": "alpha"}, {"id": 2, "name": "beta"}],
        "rowCount": 2,
        "fields": ["id", "name"],
        "truncated": False,
    }


def test_trailing_slash_and_trailing_semicolon(admin_api: Any, server: Server) -> None:
    response = admin_api.post("/api/query/", {"connectionString": server.url, "query": "SELECT 1 AS one;"})
    assert assert_ok(response)["rows"] == [{"one": 1}]


def test_empty_result_keeps_the_fields(admin_api: Any, server: Server) -> None:
    table = server.table("id INT, name VARCHAR(20)")
    body = assert_ok(query(admin_api, server.url, f"SELECT name, id FROM {table}"))
    assert body == {"success": True, "rows": [], "rowCount": 0, "fields": ["name", "id"], "truncated": False}


@pytest.mark.postgres
def test_postgres_values(admin_api: Any, pg: Server) -> None:
    sql = """
        SELECT 7::int2 AS small, 2147483647 AS int4, 9007199254740991::int8 AS max_safe,
               9007199254740992::int8 AS past_safe, (-9223372036854775808)::int8 AS min_int8,
               12.50::numeric(10,2) AS num, 'NaN'::numeric AS num_nan, 123456789012345678901234567890.5 AS big_num,
               1.5::float8 AS f8, 0.25::float4 AS f4, 'NaN'::float8 AS f_nan, '-Infinity'::float8 AS f_inf,
               true AS yes, false AS no, 'héllo ☃'::text AS txt, '\\x00ff10'::bytea AS bin,
               '2024-02-29'::date AS d, 'infinity'::date AS d_inf, '13:14:15.5'::time AS t,
               '13:14:15+02'::timetz AS ttz, '2024-02-29 13:14:15.123456'::timestamp AS ts,
               '2024-02-29 13:14:15.123+02'::timestamptz AS tstz, '-infinity'::timestamp AS ts_inf,
               '1 year 2 mons 3 days 04:05:06.5'::interval AS iv,
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id,
               '{"a": [1, 2.5, null, 12345678901234567890], "b": "x"}'::json AS js,
               '{"k": true}'::jsonb AS jsb, ARRAY[1, 2, 3] AS arr, ARRAY['a', NULL] AS arr_text,
               '{{1.5,2},{3,4}}'::numeric[] AS arr_num, ARRAY['2024-01-01'::date] AS arr_date,
               NULL::int AS nothing, int4range(1, 5) AS rng, '192.168.0.1/24'::inet AS net
    """
    body = assert_ok(query(admin_api, pg.url, sql))
    assert body["rows"] == [
        {
            "small": 7,
            "int4": 2147483647,
            "max_safe": 9007199254740991,
            "past_safe": "9007199254740992",
            "min_int8": "-9223372036854775808",
            "num": "12.50",
            "num_nan": "NaN",
            "big_num": "123456789012345678901234567890.5",
            "f8": 1.5,
            "f4": 0.25,
            "f_nan": None,
            "f_inf": None,
            "yes": True,
            "no": False,
            "txt": "héllo ☃",
            "bin": "AP8Q",
            "d": "2024-02-29",
            "d_inf": "infinity",
            "t": "13:14:15.5",
            "ttz": "13:14:15+02",
            "ts": "2024-02-29T13:14:15.123456",
            "tstz": "2024-02-29T11:14:15.123Z",
            "ts_inf": "-infinity",
            "iv": "P1Y2M3DT4H5M6.5S",
            "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "js": {"a": [1, 2.5, None, "12345678901234567890"], "b": "x"},
            "jsb": {"k": True},
            "arr": [1, 2, 3],
            "arr_text": ["a", None],
            "arr_num": [["1.5", "2"], ["3", "4"]],
            "arr_date": ["2024-01-01"],
            "nothing": None,
            "rng": "[1,5)",
            "net": "192.168.0.1/24",
        }
    ]


@pytest.mark.mariadb
def test_mariadb_values(admin_api: Any, my: Server) -> None:
    table = my.table(
        "ti TINYINT, i INT, bi BIGINT, past BIGINT, ubi BIGINT UNSIGNED, dec_ DECIMAL(10,2), f FLOAT, d DOUBLE, "
        "b BOOLEAN, v VARCHAR(20), tx TEXT, bl BLOB, vb VARBINARY(4), dt DATE, tm TIME(1), tlong TIME, "
        "dtm DATETIME(6), ts TIMESTAMP(6) NULL, u UUID, j JSON, bits BIT(9), y YEAR, e ENUM('x','y'), "
        "s SET('a','b'), n INT",
        "(-5, 2147483647, 9007199254740991, 9007199254740992, 18446744073709551615, 12.50, 0.25, 1.5, "
        "TRUE, 'héllo ☃', 'long text', x'00ff10', x'0102', '2024-02-29', '13:14:15.5', '-838:59:59', "
        "'2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.123456', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
        "'{\"k\": [1, 2]}', b'100000001', 2024, 'y', 'a,b', NULL)",
    )
    # TIMESTAMP values are stored relative to the session's zone; the runner reads in UTC.
    my.run(f"UPDATE {table} SET ts = CONVERT_TZ('2024-02-29 13:14:15.123456', '+00:00', @@session.time_zone)")
    body = assert_ok(query(admin_api, my.url, f"SELECT * FROM {table}"))
    assert body["rows"] == [
        {
            "ti": -5,
            "i": 2147483647,
            "bi": 9007199254740991,
            "past": "9007199254740992",
            "ubi": "18446744073709551615",
            "dec_": "12.50",
            "f": 0.25,
            "d": 1.5,
            "b": 1,  # BOOLEAN is TINYINT(1) in MySQL and MariaDB
            "v": "héllo ☃",
            "tx": "long text",
            "bl": "AP8Q",
            "vb": "AQI=",
            "dt": "2024-02-29",
            "tm": "13:14:15.5",
            "tlong": "-838:59:59",
            "dtm": "2024-02-29T13:14:15.123456",
            "ts": "2024-02-29T13:14:15.123456",
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "j": '{"k": [1, 2]}',  # MariaDB's JSON is LONGTEXT: the server reports text
            "bits": 257,
            "y": 2024,
            "e": "y",
            "s": "a,b",
            "n": None,
        }
    ]
    assert body["fields"] == list(body["rows"][0])


# --- values nested deeper than any parser or encoder goes ------------------

DEEP = "DEEP"


def deep_answer(response: Any, text: str, count: int = 1) -> dict[str, Any]:
    """The answer, with each of the ``count`` copies of the JSON ``text`` in it read as the string DEEP.

    The answer holds ``text`` byte for byte (compact, as the server's value
    turns out under the rules of PROTOCOL.md §5); the rest of it is read as
    usual. The test client's ``json()`` stops at Python's recursion limit.
    """
    assert response.status_code == 200, response.content[:300]
    content = response.content
    assert content.count(text.encode()) == count
    body = orjson.loads(content.replace(text.encode(), orjson.dumps(DEEP)))
    assert body["success"] is True
    assert isinstance(body.pop("elapsedMs"), int)
    return body


def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["json", "jsonb"])
# 253: with the rows array and the row around it, past the 254 levels orjson
# writes; 300: past them alone; 1100: past the 1024 orjson reads and Python's
# recursion limit (the stdlib json psycopg2 parses with); 5000 and 10000:
# PostgreSQL's own limit is near 15000.
@pytest.mark.parametrize("depth", [253, 300, 1100, 5000, 10000])
def test_postgres_json_comes_back_whole_at_any_depth(admin_api: Any, pg: Server, kind: str, depth: int) -> None:
    sql = f"SELECT 1 AS n, (repeat('[', {depth}) || repeat(']', {depth}))::{kind} AS j"
    body = deep_answer(query(admin_api, pg.url, sql), nested(depth))
    assert body == {
        "success": True,
        "rows": [{"n": 1, "j": DEEP}],
        "rowCount": 1,
        "fields": ["n", "j"],
        "truncated": False,
    }


@pytest.mark.postgres
def test_deep_json_keeps_the_rules_of_json_safe_values(admin_api: Any, pg: Server) -> None:
    # Deep inside, as in a shallow value: integers past 2^53 - 1 as strings,
    # numbers past a double as null, -0 as 0, floats as numbers, strings as
    # orjson writes them (brackets and quotes in them are text), whitespace
    # dropped. Only what a Python value cannot hold stays as the server wrote
    # it: a lone surrogate's escape, repeated keys.
    inner = r'12345678901234567890, 1e400, -0, 1.5, 2E3, "x \" [ {", "\u00e9", "\u00e9\ud800", {"k" : "v", "k": "w"}, true, null'
    sql = f"SELECT ('{{\"a\": ' || repeat('[ ', 2000) || $${inner}$$ || repeat(' ]', 2000) || '}}')::json AS j"
    expected = (
        '{"a":'
        + nested(
            2000, r'"12345678901234567890",null,0,1.5,2000.0,"x \" [ {","é","\u00e9\ud800",{"k":"v","k":"w"},true,null'
        )
        + "}"
    )
    body = deep_answer(query(admin_api, pg.url, sql), expected)
    assert body["rows"] == [{"j": DEEP}]
    # jsonb keeps one of each key and writes 1e400 as the integer it is (and takes no lone surrogate).
    sql = sql.replace("::json", "::jsonb").replace(r"\ud800", "")
    expected = (
        '{"a":'
        + nested(2000, '"12345678901234567890","1' + "0" * 400 + '",0,1.5,2000,"x \\" [ {","é","é",{"k":"w"},true,null')
        + "}"
    )
    assert deep_answer(query(admin_api, pg.url, sql), expected)["rows"] == [{"j": DEEP}]


@pytest.mark.postgres
def test_shallow_json_is_compact_and_follows_the_same_rules(admin_api: Any, pg: Server) -> None:
    sql = r"""SELECT '{"a" : [ 1, 12345678901234567890, 1e400, -0 ], "s": "\u00e9\ud800"}'::json AS j,
                     '[ 1,  2 ]'::json AS compact"""
    response = query(admin_api, pg.url, sql)
    assert response.status_code == 200, response.content
    # The lone surrogate's escape is sent as the server wrote it (orjson cannot write it as a character).
    assert (
        b'"rows":[{"j":{"a":[1,"12345678901234567890",null,0],"s":"\\u00e9\\ud800"},"compact":[1,2]}]'
        in response.content
    )
    assert assert_ok(response)["rows"] == [
        {"j": {"a": [1, "12345678901234567890", None, 0], "s": "é\ud800"}, "compact": [1, 2]}
    ]


@pytest.mark.postgres
def test_arrays_of_deep_json_and_the_deepest_arrays(admin_api: Any, pg: Server) -> None:
    sql = """SELECT ARRAY[(repeat('[', 3000) || repeat(']', 3000))::json, '{"b": 2}', NULL] AS js,
                     ARRAY[(repeat('[', 3000) || repeat(']', 3000))::jsonb] AS jsb,
                     '{{{{{{1}}}}}}'::int[] AS six_dims"""
    body = deep_answer(query(admin_api, pg.url, sql), nested(3000), count=2)
    assert body["rows"] == [{"js": [DEEP, {"b": 2}, None], "jsb": [DEEP], "six_dims": [[[[[[1]]]]]]}]


@pytest.mark.postgres
def test_byte_cap_counts_deep_values_exactly(admin_api: Any, pg: Server) -> None:
    # Each row is {"n":1,"j":[[...]]}: 12 bytes and 4000 of brackets (n < 10); three rows and two commas make 12040 bytes.
    sql = "SELECT n, (repeat('[', 2000) || repeat(']', 2000))::jsonb AS j FROM generate_series(1, 10) AS n ORDER BY n"
    for cap, kept in [(12040, 3), (12039, 2)]:
        with override_settings(PZLS_QUERY_MAX_BYTES=cap):
            response = query(admin_api, pg.url, sql)
        body = deep_answer(response, nested(2000), count=kept)
        assert (body["rows"], body["rowCount"], body["truncated"]) == (
            [{"n": n, "j": DEEP} for n in range(1, kept + 1)],
            kept,
            True,
        )
        rows = response.content[response.content.index(b'"rows":') + 7 : response.content.index(b',"rowCount"')]
        assert len(rows) == 2 + kept * 4012 + kept - 1


@pytest.mark.mariadb
def test_mariadb_deep_json(admin_api: Any, my: Server) -> None:
    # MariaDB's JSON functions read at most 31 levels ("Limit of 32 ... is
    # reached"): deeper, they answer NULL, with a warning.
    sql = "SELECT JSON_EXTRACT(CONCAT(REPEAT('[', {depth}), REPEAT(']', {depth})), '$') AS j"
    assert assert_ok(query(admin_api, my.url, sql.format(depth=31)))["rows"] == [{"j": nested(31)}]
    assert assert_ok(query(admin_api, my.url, sql.format(depth=3000)))["rows"] == [{"j": None}]
    # A JSON column (LONGTEXT checked by JSON_VALID) holds 31 levels, a text column any depth; both are text.
    table = my.table("j JSON, t LONGTEXT", f"('{nested(31)}', '{nested(3000)}')")
    body = assert_ok(query(admin_api, my.url, f"SELECT j, t FROM {table}"))
    assert body["rows"] == [{"j": nested(31), "t": nested(3000)}]


# --- role policy ---------------------------------------------------------


@pytest.mark.postgres
def test_analyst_is_refused_by_default(analyst_api: Any, pg: Server) -> None:
    response = query(analyst_api, pg.url, "SELECT 1")
    assert_failed(response, 403, "Running queries is not allowed for the analyst role")


@pytest.mark.postgres
def test_roles_setting_lets_analysts_query(analyst_api: Any, pg: Server) -> None:
    with override_settings(PZLS_QUERY_ROLES=["admin", "analyst"]):
        body = assert_ok(query(analyst_api, pg.url, "SELECT 1 AS one"))
    assert body["rows"] == [{"one": 1}]


def test_missing_token_is_the_generic_401(api: Any) -> None:
    response = query(api, PG_ADMIN_URL, "SELECT 1")
    assert response.status_code == 401
    assert response.json() == {"error": "Authentication required"}
    assert response["WWW-Authenticate"] == "Bearer"


def test_a_token_less_call_runs_as_the_anonymous_account(admin_api: Any, pg: Server) -> None:
    """PZLS_ANONYMOUS_USER: Pazator's pipelines send no token; the query runs as that account."""
    pg_port = parse_connection_string(pg.url).port
    table = pg.table("id INT, name VARCHAR(20)", "(1, 'alpha')")
    with override_settings(PZLS_ANONYMOUS_USER="Admin", PZLS_QUERY_ALLOWED_HOSTS=[f"127.0.0.1:{pg_port}"]):
        body = assert_ok(query(Api(), url_with(pg.url, host="127.0.0.1"), f"SELECT name FROM {table}"))
        assert body["rows"] == [{"name": "alpha"}]
        # A bad token is the bearer rules' 401, never the anonymous account.
        response = admin_api.post(
            "/api/query",
            {"connectionString": pg.url, "query": "SELECT 1"},
            token="00000000-0000-4000-8000-000000000000",
        )
        assert response.status_code == 401 and response.json() == {"error": "Invalid or expired token"}


# --- request validation --------------------------------------------------


@pytest.mark.parametrize(
    "body, error",
    [
        ({"query": "SELECT 1"}, "connectionString is required"),
        ({"connectionString": PG_ADMIN_URL}, "query is required and must be a non-empty string"),
        ({"connectionString": PG_ADMIN_URL, "query": "  "}, "query is required and must be a non-empty string"),
        ({"connectionString": PG_ADMIN_URL, "query": 5}, "query is required and must be a non-empty string"),
        ({"connectionString": 5, "query": "SELECT 1"}, "connectionString must be a non-empty string"),
        ({"connectionString": PG_ADMIN_URL, "query": "SELECT '\x00'"}, "query must not contain NUL characters"),
        ([1, 2], "Request body must be a JSON object"),
    ],
)
def test_bad_request_bodies(admin_api: Any, body: Any, error: str) -> None:
    assert_failed(admin_api.post("/api/query", body), 400, error)


def test_wrong_method(admin_api: Any) -> None:
    response = admin_api.get("/api/query")
    assert response.status_code == 405
    assert response.json() == {"error": "Method not allowed"}


# --- host allow-list -----------------------------------------------------


@pytest.mark.postgres
@pytest.mark.mariadb
def test_allowed_hosts_by_name_address_network_and_port(admin_api: Any, pg: Server, my: Server) -> None:
    pg_port = parse_connection_string(pg.url).port
    pg_local = url_with(pg.url, host="localhost")
    with override_settings(PZLS_QUERY_ALLOWED_HOSTS=["db.example.com"]):
        assert_failed(
            query(admin_api, pg_local, "SELECT 1"),
            403,
            f"Host localhost port {pg_port} is not in PZLS_QUERY_ALLOWED_HOSTS",
        )
    with override_settings(PZLS_QUERY_ALLOWED_HOSTS=["localhost"]):
        assert assert_ok(query(admin_api, pg_local, "SELECT 1 AS one"))["rows"] == [{"one": 1}]
    with override_settings(PZLS_QUERY_ALLOWED_HOSTS=[f"127.0.0.1:{pg_port}"]):
        # The address pattern matches what "localhost" resolves to; the port must match too.
        assert assert_ok(query(admin_api, pg_local, "SELECT 1 AS one"))["rows"] == [{"one": 1}]
        my_port = parse_connection_string(my.url).port
        assert_failed(
            query(admin_api, url_with(my.url, host="127.0.0.1"), "SELECT 1"),
            403,
            f"Host 127.0.0.1 port {my_port} is not in PZLS_QUERY_ALLOWED_HOSTS",
        )
    with override_settings(PZLS_QUERY_ALLOWED_HOSTS=["10.0.0.0/8", "127.0.0.0/8"]):
        assert assert_ok(query(admin_api, my.url, "SELECT 1 AS one"))["rows"] == [{"one": 1}]


@pytest.mark.postgres
def test_allow_list_checks_the_address_that_is_connected_to(admin_api: Any, pg: Server, monkeypatch: Any) -> None:
    # A name that resolves to an allowed address once and elsewhere later
    # (DNS rebinding) still connects to the address that was checked.
    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 5432))]])
    real = socket.getaddrinfo

    def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            return next(answers, [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.255.255.1", 5432))])
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with override_settings(PZLS_QUERY_ALLOWED_HOSTS=["127.0.0.1"]):
        body = assert_ok(query(admin_api, url_with(pg.url, host="rebind.test"), "SELECT inet_server_addr()::text AS a"))
    assert body["rows"] == [{"a": "127.0.0.1/32"}]


# --- the server's own database -------------------------------------------


def _own(kind: str, url: str) -> dict[str, Any]:
    spec = parse_connection_string(url)
    return {
        "ENGINE": "django.db.backends.postgresql" if kind == "pg" else "django.db.backends.mysql",
        "NAME": spec.database,
        "USER": spec.user,
        "PASSWORD": spec.password,
        "HOST": spec.host,
        "PORT": str(spec.port),
    }


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_own_postgres_database_is_refused_under_every_local_name(admin_api: Any, pg: Server) -> None:
    spec = parse_connection_string(pg.url)
    if not hosts.is_local(hosts.canonical(hosts.resolve(spec.host, spec.port, timeout=5)[0])):
        pytest.skip("the aliases below only reach a PostgreSQL on this machine")
    with override_settings(DATABASES={"default": _own("pg", pg.url)}):
        for host in ["127.0.0.1", "localhost", "127.0.0.2", "[::1]", "0.0.0.0", "[::ffff:127.0.0.1]"]:
            response = query(admin_api, url_with(pg.url, host=host), "SELECT 1")
            assert_failed(response, 403, "Queries on PZLS's own database are not allowed")
        # Another database on the same server is a different database.
        body = assert_ok(query(admin_api, url_with(pg.url, database="postgres"), "SELECT current_database() AS db"))
        assert body["rows"] == [{"db": "postgres"}]


@pytest.mark.mariadb
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_own_mariadb_server_is_refused_whatever_the_database(admin_api: Any, my: Server) -> None:
    with override_settings(DATABASES={"default": _own("my", my.url)}):
        for host, database in [("127.0.0.1", "test"), ("localhost", "information_schema"), ("127.0.0.3", "")]:
            response = query(admin_api, url_with(my.url, host=host, database=database), "SELECT 1")
            assert_failed(response, 403, "Queries on PZLS's own database are not allowed")


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_own_database_is_recognised_behind_an_alias_the_address_check_misses(
    admin_api: Any, server: Server, monkeypatch: Any
) -> None:
    # A port forward or the machine's public address reach the same server
    # under an address that is not loopback; the server's identity gives it away.
    monkeypatch.setattr(hosts.OwnDatabase, "is_target", lambda self, **kwargs: False)
    services._identity_cache.clear()
    try:
        with override_settings(DATABASES={"default": _own(server.kind, server.url)}):
            assert_failed(
                query(admin_api, server.url, "SELECT 1"), 403, "Queries on PZLS's own database are not allowed"
            )
            if server.kind == "pg":
                body = assert_ok(query(admin_api, url_with(server.url, database="postgres"), "SELECT 1 AS one"))
                assert body["rows"] == [{"one": 1}]
    finally:
        services._identity_cache.clear()


# --- read-only sessions --------------------------------------------------

READ_ONLY_ERRORS = {
    "pg": "Refused in a read-only session: cannot execute {verb} in a read-only transaction (SQLSTATE 25006)",
    "my": "Refused in a read-only session: Cannot execute statement in a READ ONLY transaction (error 1792)",
}


@pytest.mark.parametrize(
    "template, verb",
    [
        ("INSERT INTO {t} VALUES (3, 'gamma')", "INSERT"),
        ("UPDATE {t} SET name = 'changed'", "UPDATE"),
        ("DELETE FROM {t}", "DELETE"),
        ("CREATE TABLE {t}_new (id INT)", "CREATE TABLE"),
        ("DROP TABLE {t}", "DROP TABLE"),
    ],
)
def test_writes_fail_in_read_only_sessions(admin_api: Any, server: Server, template: str, verb: str) -> None:
    table = server.table("id INT, name VARCHAR(20)", "(1, 'alpha'), (2, 'beta')")
    response = query(admin_api, server.url, template.format(t=table))
    assert_failed(response, 400, READ_ONLY_ERRORS[server.kind].format(verb=verb))
    assert server.run(f"SELECT id, name FROM {table} ORDER BY id") == [(1, "alpha"), (2, "beta")]
    assert not server.exists(f"{table}_new")


@pytest.mark.postgres
@pytest.mark.parametrize(
    "escape",
    [
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET default_transaction_read_only = off",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "COMMIT",
        "SET TRANSACTION READ WRITE",
    ],
)
def test_postgres_read_only_cannot_be_lifted_from_a_statement(admin_api: Any, pg: Server, escape: str) -> None:
    table = pg.table("id INT", "(1)")
    assert query(admin_api, pg.url, escape).status_code == 200
    assert_failed(
        query(admin_api, pg.url, f"INSERT INTO {table} VALUES (2)"), 400, READ_ONLY_ERRORS["pg"].format(verb="INSERT")
    )
    assert_failed(
        query(admin_api, pg.url, f"WITH w AS (INSERT INTO {table} VALUES (3) RETURNING id) SELECT * FROM w"),
        400,
        READ_ONLY_ERRORS["pg"].format(verb="SELECT"),  # PostgreSQL names the outer statement
    )
    assert pg.run(f"SELECT id FROM {table}") == [(1,)]


@pytest.mark.mariadb
def test_mariadb_read_only_cannot_be_lifted_from_a_statement(admin_api: Any, my: Server) -> None:
    table = my.table("id INT", "(1)")
    # On MariaDB this runs the DDL outside the read-only transaction: refused before it is sent.
    for sql in [
        f"SET STATEMENT tx_read_only=0 FOR CREATE TABLE {table}_new (id INT)",
        f"/*!SET STATEMENT tx_read_only=0 FOR*/ CREATE TABLE {table}_new (id INT)",
    ]:
        assert_failed(query(admin_api, my.url, sql), 400, "SET STATEMENT ... FOR is not allowed in a read-only session")
    assert_failed(
        query(admin_api, my.url, f"SELECT * FROM {table} INTO OUTFILE '/tmp/{table}.out'"),
        400,
        "SELECT ... INTO OUTFILE/DUMPFILE writes a file on the database server; not allowed in a read-only session",
    )
    for escape in ["SET SESSION TRANSACTION READ WRITE", "SET SESSION tx_read_only = 0", "COMMIT"]:
        assert query(admin_api, my.url, escape).status_code == 200
        assert_failed(query(admin_api, my.url, f"INSERT INTO {table} VALUES (2)"), 400, READ_ONLY_ERRORS["my"])
    assert_failed(
        query(admin_api, my.url, f"EXECUTE IMMEDIATE 'CREATE TABLE {table}_new (id INT)'"), 400, READ_ONLY_ERRORS["my"]
    )
    assert my.run(f"SELECT id FROM {table}") == [(1,)]
    assert not my.exists(f"{table}_new")


def test_writes_work_when_read_only_is_off(admin_api: Any, server: Server) -> None:
    table = server.table("id INT, name VARCHAR(20)", "(1, 'alpha')")
    with override_settings(PZLS_QUERY_READ_ONLY=False):
        body = assert_ok(query(admin_api, server.url, f"INSERT INTO {table} VALUES (2, 'beta'), (3, 'gamma')"))
        assert body == {"success": True, "rows": [], "rowCount": 2, "fields": [], "truncated": False}
        body = assert_ok(query(admin_api, server.url, f"UPDATE {table} SET name = 'x' WHERE id > 1"))
        assert body["rowCount"] == 2
    assert server.run(f"SELECT id, name FROM {table} ORDER BY id") == [(1, "alpha"), (2, "x"), (3, "x")]


@pytest.mark.mariadb
def test_local_infile_is_never_sent(admin_api: Any, my: Server) -> None:
    table = my.table("line TEXT")
    with override_settings(PZLS_QUERY_READ_ONLY=False):
        response = query(admin_api, my.url, f"LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {table}")
    assert response.status_code == 400
    assert response.json()["error"].startswith("SQL error: The used command is not allowed")
    assert my.run(f"SELECT COUNT(*) FROM {table}") == [(0,)]


# --- superusers ----------------------------------------------------------


class Accounts:
    """Logins and roles made for one test, with random names and passwords, dropped after it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.made: list[str] = []

    def role(self, attributes: str = "", *, member_of: tuple[str, ...] = ()) -> str:
        """A role that cannot log in; PostgreSQL only."""
        name = f"pzls_q_{uuid.uuid4().hex[:10]}"
        self.server.run(f"CREATE ROLE {name} NOLOGIN {attributes}")
        self.made.append(name)
        for group in member_of:
            self.server.run(f"GRANT {group} TO {name}")
        return name

    def pg_login(self, attributes: str = "", *, member_of: tuple[str, ...] = ()) -> tuple[str, str]:
        """(name, connection string) of a PostgreSQL login."""
        name, password = f"pzls_q_{uuid.uuid4().hex[:10]}", secrets.token_hex(12)
        self.server.run(f"CREATE ROLE {name} LOGIN {attributes} PASSWORD '{password}'")
        self.made.append(name)
        for group in member_of:
            self.server.run(f"GRANT {group} TO {name}")
        return name, url_with(self.server.admin_url, user=name, password=password)

    def my_role(self, *grants: str) -> str:
        """A MariaDB role; each grant is a GRANT statement with ``{to}`` for the role."""
        name = f"pzls_q_{uuid.uuid4().hex[:10]}"
        self.server.run(f"CREATE ROLE {name}")
        self.made.append(name)
        for grant in grants:
            self.server.run(grant.format(to=f"`{name}`"))
        return name

    def my_login(self, *grants: str, default_role: str | None = None) -> tuple[str, str]:
        """(name, connection string) of a MariaDB user who may read the test database; each
        grant is a GRANT statement with ``{to}``."""
        name, password = f"pzls_q_{uuid.uuid4().hex[:10]}", secrets.token_hex(12)
        database = parse_connection_string(self.server.admin_url).database
        for host in READER_HOSTS:
            account = f"'{name}'@'{host}'"
            self.server.run(f"CREATE USER {account} IDENTIFIED BY '{password}'")
            self.made.append(account)
            for grant in (f"GRANT SELECT ON `{database}`.* TO {{to}}", *grants):
                self.server.run(grant.format(to=account))
            if default_role:
                self.server.run(f"SET DEFAULT ROLE {default_role} FOR {account}")
        return name, url_with(self.server.admin_url, user=name, password=password)

    def drop(self) -> None:
        for name in reversed(self.made):
            if self.server.kind == "pg":
                self.server.run(f"DROP OWNED BY {name}")  # and the privileges granted to it
                self.server.run(f"DROP ROLE {name}")
            elif "@" in name:
                self.server.run(f"DROP USER IF EXISTS {name}")
            else:
                self.server.run(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
def pg_accounts(pg: Server) -> Iterator[Accounts]:
    accounts = Accounts(pg)
    yield accounts
    accounts.drop()


@pytest.fixture
def my_accounts(my: Server) -> Iterator[Accounts]:
    accounts = Accounts(my)
    yield accounts
    accounts.drop()


def refused(user: str, reasons: str) -> str:
    return f'{SUPERUSER_REFUSED}: user "{user}" {reasons}'


def test_superusers_are_refused_before_the_statement_runs(admin_api: Any, server: Server) -> None:
    user = parse_connection_string(server.admin_url).user
    sleep = "pg_sleep(3)" if server.kind == "pg" else "SLEEP(3)"
    started = time.monotonic()
    response = query(admin_api, server.admin_url, f"SELECT {sleep}")
    assert time.monotonic() - started < 2
    assert response.status_code == 403, response.content
    reason = "is a superuser" if server.kind == "pg" else "has ALL PRIVILEGES on *.*"
    assert response.json() == {"success": False, "error": refused(user, reason)}
    # The reader, an ordinary user, queries the same server.
    assert assert_ok(query(admin_api, server.url, "SELECT 1 AS one"))["rows"] == [{"one": 1}]


def test_allow_superuser_lets_a_superuser_read_server_files(admin_api: Any, pg: Server) -> None:
    sql = "SELECT pg_read_file('PG_VERSION') AS v"
    assert query(admin_api, pg.admin_url, sql).status_code == 403
    with override_settings(PZLS_QUERY_ALLOW_SUPERUSER=True):
        body = assert_ok(query(admin_api, pg.admin_url, sql))
    # What a read-only session does not stop: reading a file of the database server.
    assert body["rows"][0]["v"].strip().isdigit()


@pytest.mark.parametrize(
    "server_role", ["pg_read_server_files", "pg_write_server_files", "pg_execute_server_program", "pg_signal_backend"]
)
def test_postgres_members_of_server_roles_are_refused(admin_api: Any, pg_accounts: Accounts, server_role: str) -> None:
    direct, direct_url = pg_accounts.pg_login(member_of=(server_role,))
    # Through a group, and without inheriting its privileges: SET ROLE still reaches them.
    group = pg_accounts.role(member_of=(server_role,))
    nested, nested_url = pg_accounts.pg_login("NOINHERIT", member_of=(group,))
    for user, url in [(direct, direct_url), (nested, nested_url)]:
        response = query(admin_api, url, "SELECT 1")
        assert response.status_code == 403, response.content
        assert response.json()["error"] == refused(user, f"is a member of {server_role}")
        with override_settings(PZLS_QUERY_ALLOW_SUPERUSER=True):
            assert assert_ok(query(admin_api, url, "SELECT 1 AS one"))["rows"] == [{"one": 1}]


def test_postgres_member_of_pg_read_server_files_could_read_files(
    admin_api: Any, pg: Server, pg_accounts: Accounts
) -> None:
    user, url = pg_accounts.pg_login(member_of=("pg_read_server_files",))
    # A common grant next to the role; alone it only reaches the data directory.
    pg.run(f"GRANT EXECUTE ON FUNCTION pg_read_file(text) TO {user}")
    sql = "SELECT length(pg_read_file('/etc/passwd')) > 0 AS read"
    assert query(admin_api, url, sql).json()["error"] == refused(user, "is a member of pg_read_server_files")
    with override_settings(PZLS_QUERY_ALLOW_SUPERUSER=True):
        assert assert_ok(query(admin_api, url, sql))["rows"] == [{"read": True}]


def test_postgres_user_who_can_become_a_superuser_is_refused(admin_api: Any, pg: Server, pg_accounts: Accounts) -> None:
    superuser = pg_accounts.role("SUPERUSER")
    user, url = pg_accounts.pg_login(member_of=(superuser,))
    # One statement, in a read-only transaction, becomes the superuser and reads
    # a server file (through a query planned after the role changed).
    sql = (
        f"SELECT set_config('role', '{superuser}', false) AS r, "
        "query_to_xml('SELECT pg_read_file(''PG_VERSION'') AS v', false, false, '')::text AS x"
    )
    response = query(admin_api, url, sql)
    assert response.status_code == 403, response.content
    assert response.json()["error"] == refused(user, f'can become the superuser "{superuser}"')
    with override_settings(PZLS_QUERY_ALLOW_SUPERUSER=True):
        body = assert_ok(query(admin_api, url, sql))
    assert body["rows"][0]["r"] == superuser
    assert "<v>" + pg.run("SELECT pg_read_file('PG_VERSION')")[0][0] + "</v>" in body["rows"][0]["x"]


def test_postgres_replication_is_refused(admin_api: Any, pg_accounts: Accounts) -> None:
    # A replication slot made in a read-only transaction outlives it, and holds WAL on the server.
    user, url = pg_accounts.pg_login("REPLICATION")
    assert query(admin_api, url, "SELECT 1").json()["error"] == refused(user, "has REPLICATION")
    group = pg_accounts.role("REPLICATION")
    user, url = pg_accounts.pg_login(member_of=(group,))
    assert query(admin_api, url, "SELECT 1").json()["error"] == refused(
        user, f'can become "{group}", which has REPLICATION'
    )


def test_postgres_createrole_is_refused(admin_api: Any, pg_accounts: Accounts) -> None:
    # CREATEROLE may grant itself pg_execute_server_program, and with writes allowed run programs on the server.
    user, url = pg_accounts.pg_login("CREATEROLE")
    assert query(admin_api, url, "SELECT 1").json()["error"] == refused(user, "has CREATEROLE")
    group = pg_accounts.role("CREATEROLE")
    user, url = pg_accounts.pg_login(member_of=(group,))
    assert query(admin_api, url, "SELECT 1").json()["error"] == refused(
        user, f'can become "{group}", which has CREATEROLE'
    )


def test_postgres_refusal_names_every_reason(admin_api: Any, pg_accounts: Accounts) -> None:
    superuser = pg_accounts.role("SUPERUSER")
    user, url = pg_accounts.pg_login(member_of=(superuser, "pg_signal_backend", "pg_read_server_files"))
    assert query(admin_api, url, "SELECT 1").json()["error"] == refused(
        user, f'can become the superuser "{superuser}" and is a member of pg_read_server_files, pg_signal_backend'
    )


def test_postgres_roles_that_only_read_are_allowed(admin_api: Any, pg_accounts: Accounts) -> None:
    _, url = pg_accounts.pg_login("CREATEDB", member_of=("pg_monitor", "pg_read_all_data"))
    assert assert_ok(query(admin_api, url, "SELECT 1 AS one"))["rows"] == [{"one": 1}]


@pytest.mark.parametrize(
    "privileges, reason",
    [
        ("FILE", "has FILE on *.*"),  # LOAD_FILE() reads the server's files
        ("SUPER", "has SUPER on *.*"),
        ("RELOAD, SHUTDOWN", "has RELOAD, SHUTDOWN on *.*"),
        ("CONNECTION ADMIN", "has CONNECTION ADMIN on *.*"),
        ("SELECT, FILE", "has FILE on *.*"),
        ("ALL PRIVILEGES", "has ALL PRIVILEGES on *.*"),
    ],
)
def test_mariadb_server_privileges_are_refused(
    admin_api: Any, my_accounts: Accounts, privileges: str, reason: str
) -> None:
    user, url = my_accounts.my_login(f"GRANT {privileges} ON *.* TO {{to}}")
    response = query(admin_api, url, "SELECT 1")
    assert response.status_code == 403, response.content
    assert response.json()["error"] == refused(user, reason)
    with override_settings(PZLS_QUERY_ALLOW_SUPERUSER=True):
        assert assert_ok(query(admin_api, url, "SELECT 1 AS one"))["rows"] == [{"one": 1}]


def test_mariadb_roles_that_hold_server_privileges_are_refused(
    admin_api: Any, my: Server, my_accounts: Accounts
) -> None:
    database = parse_connection_string(my.admin_url).database
    files = my_accounts.my_role("GRANT FILE ON *.* TO {to}")
    # A role the user has not enabled: a procedure the statement calls can SET ROLE.
    user, url = my_accounts.my_login(f"GRANT {files} TO {{to}}")
    assert query(admin_api, url, "SELECT 1").json()["error"] == refused(
        user, f'can take on the role "{files}", which has FILE on *.*'
    )
    # Through a role granted to the role, and as the default role.
    outer = my_accounts.my_role(f"GRANT {files} TO {{to}}", f"GRANT SELECT ON `{database}`.* TO {{to}}")
    for default in [None, outer]:
        user, url = my_accounts.my_login(f"GRANT {outer} TO {{to}}", default_role=default)
        assert query(admin_api, url, "SELECT 1").json()["error"] == refused(
            user, f'can take on the role "{outer}", which has FILE on *.*'
        )


def test_mariadb_users_with_data_privileges_keep_their_default_role(
    admin_api: Any, my: Server, my_accounts: Accounts
) -> None:
    database = parse_connection_string(my.admin_url).database
    reader_role = my_accounts.my_role(f"GRANT SELECT ON `{database}`.* TO {{to}}")
    other = my_accounts.my_role(f"GRANT SELECT ON `{database}`.* TO {{to}}")
    _, url = my_accounts.my_login(
        "GRANT SELECT, PROCESS, SHOW DATABASES ON *.* TO {to}",
        f"GRANT {reader_role} TO {{to}}",
        f"GRANT {other} TO {{to}}",
        default_role=reader_role,
    )
    body = assert_ok(query(admin_api, url, "SELECT CURRENT_ROLE() AS r"))
    assert body["rows"] == [{"r": reader_role}]


# --- one statement per request -------------------------------------------


def test_several_statements_are_refused(admin_api: Any, server: Server) -> None:
    table = server.table("id INT", "(1)")
    response = query(admin_api, server.url, f"SELECT 1; DROP TABLE {table}")
    assert_failed(response, 400, "The query contains 2 statements; send one statement per request")
    assert server.exists(table)


@pytest.mark.postgres
@pytest.mark.mariadb
def test_statement_splitting_follows_each_dialect(admin_api: Any, pg: Server, my: Server) -> None:
    # PostgreSQL: a backslash does not escape a quote, so this is two statements.
    response = query(admin_api, pg.url, "SELECT 'a\\'; SELECT 2")
    assert_failed(response, 400, "The query contains 2 statements; send one statement per request")
    body = assert_ok(query(admin_api, pg.url, "SELECT $x$a'; b$x$ AS v"))
    assert body["rows"] == [{"v": "a'; b"}]
    # MySQL: it does, so this is one string.
    body = assert_ok(query(admin_api, my.url, "SELECT 'a\\'; SELECT 2' AS v"))
    assert body["rows"] == [{"v": "a'; SELECT 2"}]


# --- timeouts ------------------------------------------------------------


@pytest.mark.parametrize(
    "server, sql",
    [
        pytest.param("pg", "SELECT pg_sleep(60), '{marker}'", marks=pytest.mark.postgres),
        # Lifts the server-side limit for itself: the watchdog cancels it.
        pytest.param(
            "pg",
            "SELECT set_config('statement_timeout', '0', false), pg_sleep(60), '{marker}'",
            marks=pytest.mark.postgres,
        ),
        pytest.param("my", "SELECT SLEEP(60), '{marker}'", marks=pytest.mark.mariadb),
    ],
    indirect=["server"],
)
def test_statement_timeout(admin_api: Any, server: Server, sql: str) -> None:
    marker = f"pzls_timeout_{uuid.uuid4().hex[:10]}"
    with override_settings(PZLS_QUERY_TIMEOUT_S=1):
        response, elapsed = timed(lambda: query(admin_api, server.url, sql.format(marker=marker)))
    assert_failed(response, 400, "Query exceeded the time limit of 1 s and was cancelled")
    assert elapsed < 5
    assert server.wait_gone(marker) == []


@pytest.mark.mariadb
def test_mariadb_timeout_that_lifts_its_own_limit(admin_api: Any, my: Server) -> None:
    marker = f"pzls_timeout_{uuid.uuid4().hex[:10]}"
    with override_settings(PZLS_QUERY_TIMEOUT_S=1, PZLS_QUERY_READ_ONLY=False):
        response, elapsed = timed(
            lambda: query(admin_api, my.url, f"SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(60), '{marker}'")
        )
    assert_failed(response, 400, "Query exceeded the time limit of 1 s and was cancelled")
    assert elapsed < 5
    assert my.wait_gone(marker) == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("kind, label", [("pg", "PostgreSQL"), ("my", "MySQL/MariaDB")])
def test_connect_timeout(admin_api: Any, silent_port: int, kind: str, label: str) -> None:
    with override_settings(PZLS_QUERY_CONNECT_TIMEOUT_S=2):
        response, elapsed = timed(
            lambda: query(admin_api, url_with(ADMIN_URLS[kind], host="127.0.0.1", port=silent_port), "SELECT 1")
        )
    assert_failed(response, 400, f"Could not connect to {label} at 127.0.0.1:{silent_port}: no answer within 2 s")
    assert elapsed < 3.5


# --- row cap -------------------------------------------------------------


@pytest.mark.parametrize(
    "server, sql",
    [
        # In the select list, generate_series streams (in FROM it would be materialised first).
        pytest.param("pg", "SELECT generate_series(1, 200000000) AS n, '{marker}' AS m", marks=pytest.mark.postgres),
        pytest.param("my", "SELECT seq AS n, '{marker}' AS m FROM seq_1_to_200000000", marks=pytest.mark.mariadb),
        # An explicit LIMIT overrides sql_select_limit: the rest is killed.
        pytest.param(
            "my",
            "SELECT seq AS n, '{marker}' AS m FROM seq_1_to_200000000 LIMIT 200000000",
            marks=pytest.mark.mariadb,
        ),
    ],
    indirect=["server"],
)
def test_row_cap_stops_without_fetching_the_rest(admin_api: Any, server: Server, sql: str) -> None:
    marker = f"pzls_cap_{uuid.uuid4().hex[:10]}"
    with override_settings(PZLS_QUERY_MAX_ROWS=5):
        response, elapsed = timed(lambda: query(admin_api, server.url, sql.format(marker=marker)))
    assert assert_ok(response) == {
        "success": True,
        "rows": [{"n": n, "m": marker} for n in range(1, 6)],
        "rowCount": 5,
        "fields": ["n", "m"],
        "truncated": True,
    }
    # Reading 200 million rows takes minutes.
    assert elapsed < 5
    assert server.wait_gone(marker) == []


def test_exactly_the_cap_is_not_truncated(admin_api: Any, server: Server) -> None:
    table = server.table("id INT", "(1), (2), (3)")
    with override_settings(PZLS_QUERY_MAX_ROWS=3):
        body = assert_ok(query(admin_api, server.url, f"SELECT id FROM {table} ORDER BY id"))
    assert (body["rowCount"], body["truncated"]) == (3, False)
    with override_settings(PZLS_QUERY_MAX_ROWS=2):
        body = assert_ok(query(admin_api, server.url, f"SELECT id FROM {table} ORDER BY id"))
    assert (body["rows"], body["rowCount"], body["truncated"]) == ([{"id": 1}, {"id": 2}], 2, True)


# --- byte cap ------------------------------------------------------------

# n, and a text of `width` x's, for n = 1..rows.
WIDE_ROWS = {
    "pg": "SELECT n, repeat('x', {width}) AS s FROM generate_series(1, {rows}) AS n ORDER BY n",
    "my": "SELECT seq AS n, REPEAT('x', {width}) AS s FROM seq_1_to_{rows}",
}


def wide(n: int, width: int) -> dict[str, Any]:
    return {"n": n, "s": "x" * width}


def assert_cut_before(rows: list[Any], next_row: Any, cap: int) -> None:
    """The rows, as the answer writes them, fit in ``cap`` bytes; with the next row they would not."""
    assert len(orjson.dumps(rows)) <= cap
    assert len(orjson.dumps([*rows, next_row])) > cap


def test_byte_cap_keeps_the_rows_that_fit(admin_api: Any, server: Server) -> None:
    # Each row is {"n":1,"s":"x...x"}: 104 bytes with 90 x's; nine of them and
    # their brackets and commas make 946 bytes.
    with override_settings(PZLS_QUERY_MAX_BYTES=1000):
        body = assert_ok(query(admin_api, server.url, WIDE_ROWS[server.kind].format(width=90, rows=1000)))
    assert body == {
        "success": True,
        "rows": [wide(n, 90) for n in range(1, 10)],
        "rowCount": 9,
        "fields": ["n", "s"],
        "truncated": True,
    }
    assert len(orjson.dumps(body["rows"])) == 946
    assert_cut_before(body["rows"], wide(10, 90), 1000)


def test_a_result_exactly_at_the_byte_cap_is_not_truncated(admin_api: Any, server: Server) -> None:
    sql = WIDE_ROWS[server.kind].format(width=90, rows=9)
    with override_settings(PZLS_QUERY_MAX_BYTES=946):
        body = assert_ok(query(admin_api, server.url, sql))
    assert (body["rows"], body["rowCount"], body["truncated"]) == ([wide(n, 90) for n in range(1, 10)], 9, False)
    with override_settings(PZLS_QUERY_MAX_BYTES=945):
        body = assert_ok(query(admin_api, server.url, sql))
    assert (body["rows"], body["rowCount"], body["truncated"]) == ([wide(n, 90) for n in range(1, 9)], 8, True)
    # Under the default cap nothing is cut.
    body = assert_ok(query(admin_api, server.url, WIDE_ROWS[server.kind].format(width=1000, rows=2000)))
    assert (body["rowCount"], body["truncated"]) == (2000, False)


def test_a_row_larger_than_the_byte_cap(admin_api: Any, server: Server) -> None:
    repeat = "repeat" if server.kind == "pg" else "REPEAT"
    with override_settings(PZLS_QUERY_MAX_BYTES=1000):
        body = assert_ok(query(admin_api, server.url, f"SELECT {repeat}('x', 2000) AS s"))
    # The first row does not fit: no rows, and the answer says it was cut.
    assert body == {"success": True, "rows": [], "rowCount": 0, "fields": ["s"], "truncated": True}
    # A large row in the middle ends the answer there, though later rows would fit:
    # the rows are always the first ones of the result.
    sql = {
        "pg": "SELECT n, repeat('x', CASE WHEN n = 3 THEN 5000 ELSE 10 END) AS s FROM generate_series(1, 10) n",
        "my": "SELECT seq AS n, REPEAT('x', IF(seq = 3, 5000, 10)) AS s FROM seq_1_to_10",
    }[server.kind]
    with override_settings(PZLS_QUERY_MAX_BYTES=1000):
        body = assert_ok(query(admin_api, server.url, sql))
    assert (body["rows"], body["rowCount"], body["truncated"]) == ([wide(1, 10), wide(2, 10)], 2, True)


@pytest.mark.parametrize(
    "kind, sql",
    [
        ("pg", "SELECT generate_series(1, 200000000) AS n, '{marker}' AS m, repeat('x', 1000) AS s"),
        ("my", "SELECT seq AS n, '{marker}' AS m, REPEAT('x', 1000) AS s FROM seq_1_to_200000000"),
        ("my", "SELECT seq AS n, '{marker}' AS m, REPEAT('x', 1000) AS s FROM seq_1_to_200000000 LIMIT 200000000"),
    ],
)
def test_byte_cap_stops_without_fetching_the_rest(admin_api: Any, kind: str, sql: str) -> None:
    srv = Server(kind)
    marker = f"pzls_bytes_{uuid.uuid4().hex[:10]}"
    cap = 1024 * 1024
    try:
        # 200 GB of rows, and no row cap to stop them.
        with override_settings(PZLS_QUERY_MAX_BYTES=cap, PZLS_QUERY_MAX_ROWS=10**9):
            started = time.monotonic()
            body = assert_ok(query(admin_api, srv.url, sql.format(marker=marker)))
            elapsed = time.monotonic() - started
        count = body["rowCount"]
        expected = [{"n": n, "m": marker, "s": "x" * 1000} for n in range(1, count + 2)]
        assert (body["fields"], body["truncated"]) == (["n", "m", "s"], True)
        assert count > 900 and body["rows"] == expected[:count]
        assert_cut_before(body["rows"], expected[count], cap)
        assert elapsed < 5
        assert srv.wait_gone(marker) == []
    finally:
        srv.close()


def test_byte_cap_bounds_statements_without_a_cursor(admin_api: Any, pg: Server) -> None:
    # SHOW cannot sit behind DECLARE: its rows arrive whole, and the answer is cut all the same.
    full = assert_ok(query(admin_api, pg.url, "SHOW ALL"))
    assert full["truncated"] is False and full["rowCount"] > 100
    with override_settings(PZLS_QUERY_MAX_BYTES=5000):
        body = assert_ok(query(admin_api, pg.url, "SHOW ALL"))
    count = body["rowCount"]
    assert body["truncated"] is True and 0 < count < full["rowCount"]
    assert body["rows"] == full["rows"][:count]
    assert_cut_before(body["rows"], full["rows"][count], 5000)


# --- errors: 400 with a useful message, never the password ---------------


@pytest.mark.postgres
@pytest.mark.mariadb
def test_errors_are_400_and_never_show_the_password(
    admin_api: Any, pg: Server, my: Server, closed_port: int, caplog: Any, capfd: Any
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    missing_db = f"nodb_{uuid.uuid4().hex[:8]}"
    missing_role = f"norole_{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.DEBUG)
    pg_spec, my_spec = parse_connection_string(pg.url), parse_connection_string(my.url)
    pg_at = f"Could not connect to PostgreSQL at {pg_spec.host}:{pg_spec.port}"
    my_at = f"Could not connect to MySQL/MariaDB at {my_spec.host}:{my_spec.port}"
    # (url, sql, the error); below, a part of it
    exact = [
        (
            url_with(pg.url, host="127.0.0.1", port=closed_port, password=secret),
            "SELECT 1",
            f"Could not connect to PostgreSQL at 127.0.0.1:{closed_port}: connection refused",
        ),
        (
            url_with(my.url, host="127.0.0.1", port=closed_port, password=secret),
            "SELECT 1",
            f"Could not connect to MySQL/MariaDB at 127.0.0.1:{closed_port}: connection refused",
        ),
        (
            url_with(pg.url, user=missing_role, password=secret),
            "SELECT 1",
            f'{pg_at}: user "{missing_role}" does not exist',
        ),
        # The login failure says which user, never which password.
        (url_with(my.url, password=secret), "SELECT 1", f'{my_at}: the server refused the login of user "{READER}"'),
        (
            url_with(pg.url, database=missing_db, password=secret),
            "SELECT 1",
            f'{pg_at}: database "{missing_db}" does not exist',
        ),
        # MariaDB tells a user without privileges on a database only that it may not use it.
        (
            url_with(my.url, database=missing_db),
            "SELECT 1",
            f'{my_at}: user "{READER}" may not use database "{missing_db}"',
        ),
        (
            url_with(my.admin_url, database=missing_db),
            "SELECT 1",
            f'{my_at}: database "{missing_db}" does not exist',
        ),
    ]
    partial = [
        (f"sqlite://u:{secret}@h/db", "SELECT 1", "Unsupported database scheme 'sqlite'"),
        (
            f"postgres://u:{secret}@h:port/db",
            "SELECT 1",
            "connectionString is not a valid URL (check the host and port)",
        ),
        (f"postgres://u:{secret}@no-such-host.invalid/db", "SELECT 1", "Could not resolve host 'no-such-host.invalid'"),
        (url_with(pg.url, password=secret), "SELEC 1", 'SQL error: syntax error at or near "SELEC" (SQLSTATE 42601)'),
        (url_with(my.url), "SELEC 1", "SQL error: You have an error in your SQL syntax"),
        (
            url_with(pg.url, password=secret),
            f"SELECT * FROM no_such_table_{uuid.uuid4().hex[:6]}",
            "SQL error: relation",
        ),
    ]
    for cases, whole in [(exact, True), (partial, False)]:
        for url, sql, expected in cases:
            response = query(admin_api, url, sql)
            assert response.status_code == 400, (url.replace(secret, "***"), response.content)
            body = response.json()
            assert set(body) == {"success", "error"} and body["success"] is False
            assert body["error"] == expected if whole else expected in body["error"], body["error"]
            assert secret not in body["error"]
    logged = caplog.text + "".join(capfd.readouterr())
    assert "Query by admin on" in caplog.text
    assert secret not in logged


# --- connection failures: our words, never the other end's ----------------

BANNER = b"SECRETBANNER"
SSH_BANNER = b"SSH-2.0-OpenSSH_9.9 " + BANNER + b"\r\n"
HTTP_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\nServer: " + BANNER + b"\r\nContent-Length: 25\r\n\r\n<html>" + BANNER + b"</html>"
)
# Words of the banners above; none may come back in an answer.
BANNER_WORDS = ("SECRETBANNER", "SSH", "OpenSSH", "HTTP", "html", "Server:", "Bad Request")


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _ssh(conn: socket.socket) -> None:
    conn.sendall(SSH_BANNER)


def _ssh_then_wait(conn: socket.socket) -> None:
    conn.sendall(SSH_BANNER)
    while conn.recv(4096):
        pass


def _http(conn: socket.socket) -> None:
    conn.settimeout(0.3)  # PostgreSQL's client speaks first, MySQL's waits
    try:
        conn.recv(4096)
    except TimeoutError:
        pass
    conn.sendall(HTTP_REPLY)


def _garbage(conn: socket.socket) -> None:
    noise = random.Random(13)
    conn.sendall(noise.randbytes(200) + BANNER + noise.randbytes(100))


def _close(conn: socket.socket) -> None:
    pass


def _pg_error(code: bytes, message: bytes) -> Callable[[socket.socket], None]:
    """Speaks PostgreSQL's protocol up to an ErrorResponse carrying ``message``."""

    def answer(conn: socket.socket) -> None:
        while True:
            length = int.from_bytes(_recv_exact(conn, 4), "big")
            body = _recv_exact(conn, length - 4)
            if length == 8 and int.from_bytes(body, "big") in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                conn.sendall(b"N")
                continue
            break
        fields = b"SFATAL\0VFATAL\0C" + code + b"\0M" + message + b"\0\0"
        conn.sendall(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)

    return answer


def _my_packet(sequence: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload


def _my_error(code: int, message: bytes) -> Callable[[socket.socket], None]:
    """An error packet in place of MySQL's greeting, as a server that refuses a host sends."""

    def answer(conn: socket.socket) -> None:
        conn.sendall(_my_packet(0, b"\xff" + code.to_bytes(2, "little") + message))

    return answer


def _my_auth_switch(conn: socket.socket) -> None:
    """A MySQL greeting with the banner as server version, then a switch to an authentication plugin named by it."""
    caps = 0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x80000  # long password, db, 4.1, transactions, secure, plugin auth
    greeting = (
        b"\x0a5.5.5-10.11.0-MariaDB " + BANNER + b"\0" + (7).to_bytes(4, "little") + b"abcdefgh\0"
        + (caps & 0xFFFF).to_bytes(2, "little") + b"\x2d" + (2).to_bytes(2, "little")
        + (caps >> 16).to_bytes(2, "little") + b"\x15" + bytes(10) + b"ijklmnopqrst\0mysql_native_password\0"
    )  # fmt: skip
    conn.sendall(_my_packet(0, greeting))
    head = _recv_exact(conn, 4)
    _recv_exact(conn, int.from_bytes(head[:3], "little"))
    conn.sendall(_my_packet(head[3] + 1, b"\xfe" + BANNER + b"\0" + b"0123456789abcdefghij\0"))
    conn.recv(4096)


class FakeServer:
    """Something on a loopback port that is not the database a connection string names."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                self.answer(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


LABELS = {"pg": "PostgreSQL", "my": "MySQL/MariaDB"}


@pytest.mark.parametrize(
    "kind, answer, problem",
    [
        ("pg", _ssh, runner.NOT_POSTGRESQL),
        ("pg", _ssh_then_wait, runner.no_answer(2)),
        ("pg", _http, runner.NOT_POSTGRESQL),
        ("pg", _garbage, runner.NOT_POSTGRESQL),
        ("pg", _close, runner.NOT_POSTGRESQL),
        ("pg", _pg_error(b"28P01", b'password authentication failed for user "' + BANNER + b'"'), "login"),
        ("pg", _pg_error(b"3D000", b'database "' + BANNER + b'" does not exist'), "database"),
        ("pg", _pg_error(b"XX000", BANNER), runner.SERVER_REFUSED),
        ("my", _ssh, runner.NOT_MYSQL),
        ("my", _ssh_then_wait, runner.NOT_MYSQL),
        ("my", _http, runner.NOT_MYSQL),
        ("my", _garbage, runner.NOT_MYSQL),
        ("my", _close, runner.NOT_MYSQL),
        ("my", _my_error(1045, b"Access denied for user '" + BANNER + b"'"), "login"),
        ("my", _my_error(1049, b"Unknown database '" + BANNER + b"'"), "database"),
        ("my", _my_error(1130, b"Host '" + BANNER + b"' is not allowed to connect"), runner.SERVER_REFUSED),
        ("my", _my_auth_switch, runner.NOT_MYSQL),
    ],
)
def test_connection_errors_never_echo_what_the_other_end_sent(
    admin_api: Any, kind: str, answer: Callable[[socket.socket], None], problem: str, caplog: Any
) -> None:
    fake = FakeServer(answer)
    scheme = "postgres" if kind == "pg" else "mysql"
    try:
        with override_settings(PZLS_QUERY_CONNECT_TIMEOUT_S=2):
            response = query(admin_api, f"{scheme}://someone:pw@127.0.0.1:{fake.port}/sales", "SELECT 1")
    finally:
        fake.close()
    problem = {
        "login": 'the server refused the login of user "someone"',
        "database": 'database "sales" does not exist',
    }.get(problem, problem)
    assert_failed(response, 400, f"Could not connect to {LABELS[kind]} at 127.0.0.1:{fake.port}: {problem}")
    error = response.json()["error"]
    assert error.isascii() and error.isprintable()
    assert not [word for word in BANNER_WORDS if word.lower() in error.lower()]
    assert "SECRETBANNER" not in caplog.text


@pytest.mark.postgres
def test_timeout_error_is_400_with_the_limit(admin_api: Any, pg: Server) -> None:
    with override_settings(PZLS_QUERY_TIMEOUT_S=0.5):
        response = query(admin_api, pg.url, "SELECT pg_sleep(10)")
    assert_failed(response, 400, "Query exceeded the time limit of 0.5 s and was cancelled")


@pytest.mark.postgres
def test_copy_is_refused(admin_api: Any, pg: Server) -> None:
    assert_failed(
        query(admin_api, pg.url, "COPY (SELECT 1) TO PROGRAM 'true'"), 400, "COPY is not supported here; use SELECT"
    )


def test_a_server_that_ignores_the_cancel_cannot_hold_the_worker(
    admin_api: Any, server: Server, monkeypatch: Any
) -> None:
    from query import runner

    engine_run = runner._PostgresRun if server.kind == "pg" else runner._MySQLRun
    original = engine_run.prepare

    def prepare_without_server_limit(self: Any, conn: Any) -> None:
        original(self, conn)
        cursor = conn.cursor()
        cursor.execute("SET statement_timeout = 0" if server.kind == "pg" else "SET SESSION max_statement_time = 0")
        cursor.close()

    monkeypatch.setattr(engine_run, "prepare", prepare_without_server_limit)
    monkeypatch.setattr(engine_run, "cancel", lambda self, conn: None)
    marker = f"pzls_hard_{uuid.uuid4().hex[:10]}"
    sleep = "pg_sleep(30)" if server.kind == "pg" else "SLEEP(30)"
    try:
        with override_settings(PZLS_QUERY_TIMEOUT_S=1):
            response, elapsed = timed(lambda: query(admin_api, server.url, f"SELECT {sleep}, '{marker}'"))
        assert_failed(response, 400, "Query exceeded the time limit of 1 s and was cancelled")
        assert elapsed < 1 + runner.WATCHDOG_GRACE_S + runner.HARD_STOP_AFTER_S + 2
    finally:
        for row in server.running(marker):
            server.run(f"SELECT pg_terminate_backend({row[0]})" if server.kind == "pg" else f"KILL {row[0]}")
