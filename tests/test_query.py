"""POST /api/query (PROTOCOL.md §5) against the real PostgreSQL and MariaDB servers.

Each test creates and drops its own uniquely named tables, so parallel runs do
not clash. A server that cannot be reached skips these tests on a laptop and
fails them in CI (CI=true): there they must run.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import MySQLdb
import psycopg2
import pytest
from django.test import override_settings

from query import hosts, services
from query.connstring import parse_connection_string
from tests.conftest import Api

PG_URL = os.environ.get("PZLS_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("PZLS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
URLS = {"pg": PG_URL, "my": MY_URL}
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message + " (CI=true: the query tests must run)")
    pytest.skip(message)


def pg_connect() -> Any:
    spec = parse_connection_string(PG_URL)
    conn = psycopg2.connect(
        host=spec.host, port=spec.port, user=spec.user, password=spec.password, dbname=spec.database, connect_timeout=5
    )
    conn.autocommit = True
    return conn


def my_connect() -> Any:
    spec = parse_connection_string(MY_URL)
    return MySQLdb.connect(
        host=spec.host,
        port=spec.port,
        user=spec.user,
        password=spec.password,
        database=spec.database,
        connect_timeout=5,
        autocommit=True,
    )


class Server:
    """A direct connection to one test server, to set up tables and check what a query did."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = URLS[kind]
        try:
            self.conn = pg_connect() if kind == "pg" else my_connect()
        except Exception as exc:
            _unavailable("PostgreSQL" if kind == "pg" else "MariaDB", exc)
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


@pytest.fixture(params=["pg", "my"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(request.param)
    yield srv
    srv.close()


def query(api: Any, url: str, sql: str) -> Any:
    return api.post("/api/query", {"connectionString": url, "query": sql})


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


# --- role policy ---------------------------------------------------------


def test_analyst_is_refused_by_default(analyst_api: Any, pg: Server) -> None:
    response = query(analyst_api, pg.url, "SELECT 1")
    assert_failed(response, 403, "Running queries is not allowed for the analyst role")


def test_roles_setting_lets_analysts_query(analyst_api: Any, pg: Server) -> None:
    with override_settings(PZLS_QUERY_ROLES=["admin", "analyst"]):
        body = assert_ok(query(analyst_api, pg.url, "SELECT 1 AS one"))
    assert body["rows"] == [{"one": 1}]


def test_missing_token_is_the_generic_401(api: Any) -> None:
    response = query(api, PG_URL, "SELECT 1")
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
        ({"connectionString": PG_URL}, "query is required and must be a non-empty string"),
        ({"connectionString": PG_URL, "query": "  "}, "query is required and must be a non-empty string"),
        ({"connectionString": PG_URL, "query": 5}, "query is required and must be a non-empty string"),
        ({"connectionString": 5, "query": "SELECT 1"}, "connectionString must be a non-empty string"),
        ({"connectionString": PG_URL, "query": "SELECT '\x00'"}, "query must not contain NUL characters"),
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


def test_local_infile_is_never_sent(admin_api: Any, my: Server) -> None:
    table = my.table("line TEXT")
    with override_settings(PZLS_QUERY_READ_ONLY=False):
        response = query(admin_api, my.url, f"LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {table}")
    assert response.status_code == 400
    assert response.json()["error"].startswith("SQL error: The used command is not allowed")
    assert my.run(f"SELECT COUNT(*) FROM {table}") == [(0,)]


# --- one statement per request -------------------------------------------


def test_several_statements_are_refused(admin_api: Any, server: Server) -> None:
    table = server.table("id INT", "(1)")
    response = query(admin_api, server.url, f"SELECT 1; DROP TABLE {table}")
    assert_failed(response, 400, "The query contains 2 statements; send one statement per request")
    assert server.exists(table)


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
    "kind, sql",
    [
        ("pg", "SELECT pg_sleep(60), '{marker}'"),
        # Lifts the server-side limit for itself: the watchdog cancels it.
        ("pg", "SELECT set_config('statement_timeout', '0', false), pg_sleep(60), '{marker}'"),
        ("my", "SELECT SLEEP(60), '{marker}'"),
    ],
)
def test_statement_timeout(admin_api: Any, kind: str, sql: str) -> None:
    srv = Server(kind)
    marker = f"pzls_timeout_{uuid.uuid4().hex[:10]}"
    try:
        with override_settings(PZLS_QUERY_TIMEOUT_S=1):
            started = time.monotonic()
            response = query(admin_api, srv.url, sql.format(marker=marker))
            elapsed = time.monotonic() - started
        assert_failed(response, 400, "Query exceeded the time limit of 1 s and was cancelled")
        assert elapsed < 5
        assert srv.wait_gone(marker) == []
    finally:
        srv.close()


def test_mariadb_timeout_that_lifts_its_own_limit(admin_api: Any, my: Server) -> None:
    marker = f"pzls_timeout_{uuid.uuid4().hex[:10]}"
    with override_settings(PZLS_QUERY_TIMEOUT_S=1, PZLS_QUERY_READ_ONLY=False):
        started = time.monotonic()
        response = query(admin_api, my.url, f"SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(60), '{marker}'")
        elapsed = time.monotonic() - started
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
        started = time.monotonic()
        response = query(admin_api, url_with(URLS[kind], host="127.0.0.1", port=silent_port), "SELECT 1")
        elapsed = time.monotonic() - started
    assert_failed(response, 400, f"Could not connect to {label} at 127.0.0.1:{silent_port}: no answer within 2 s")
    assert elapsed < 3.5


# --- row cap -------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, sql",
    [
        # In the select list, generate_series streams (in FROM it would be materialised first).
        ("pg", "SELECT generate_series(1, 200000000) AS n, '{marker}' AS m"),
        ("my", "SELECT seq AS n, '{marker}' AS m FROM seq_1_to_200000000"),
        # An explicit LIMIT overrides sql_select_limit: the rest is killed.
        ("my", "SELECT seq AS n, '{marker}' AS m FROM seq_1_to_200000000 LIMIT 200000000"),
    ],
)
def test_row_cap_stops_without_fetching_the_rest(admin_api: Any, kind: str, sql: str) -> None:
    srv = Server(kind)
    marker = f"pzls_cap_{uuid.uuid4().hex[:10]}"
    try:
        with override_settings(PZLS_QUERY_MAX_ROWS=5):
            started = time.monotonic()
            body = assert_ok(query(admin_api, srv.url, sql.format(marker=marker)))
            elapsed = time.monotonic() - started
        assert body == {
            "success": True,
            "rows": [{"n": n, "m": marker} for n in range(1, 6)],
            "rowCount": 5,
            "fields": ["n", "m"],
            "truncated": True,
        }
        # Reading 200 million rows takes minutes.
        assert elapsed < 5
        assert srv.wait_gone(marker) == []
    finally:
        srv.close()


def test_exactly_the_cap_is_not_truncated(admin_api: Any, server: Server) -> None:
    table = server.table("id INT", "(1), (2), (3)")
    with override_settings(PZLS_QUERY_MAX_ROWS=3):
        body = assert_ok(query(admin_api, server.url, f"SELECT id FROM {table} ORDER BY id"))
    assert (body["rowCount"], body["truncated"]) == (3, False)
    with override_settings(PZLS_QUERY_MAX_ROWS=2):
        body = assert_ok(query(admin_api, server.url, f"SELECT id FROM {table} ORDER BY id"))
    assert (body["rows"], body["rowCount"], body["truncated"]) == ([{"id": 1}, {"id": 2}], 2, True)


# --- errors: 400 with a useful message, never the password ---------------


def test_errors_are_400_and_never_show_the_password(
    admin_api: Any, pg: Server, my: Server, closed_port: int, caplog: Any, capfd: Any
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    missing_db = f"nodb_{uuid.uuid4().hex[:8]}"
    missing_role = f"norole_{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.DEBUG)
    pg_port = parse_connection_string(pg.url).port
    cases = [
        (f"sqlite://u:{secret}@h/db", "SELECT 1", "Unsupported database scheme 'sqlite'"),
        (
            f"postgres://u:{secret}@h:port/db",
            "SELECT 1",
            "connectionString is not a valid URL (check the host and port)",
        ),
        (f"postgres://u:{secret}@no-such-host.invalid/db", "SELECT 1", "Could not resolve host 'no-such-host.invalid'"),
        (
            url_with(pg.url, host="127.0.0.1", port=closed_port, password=secret),
            "SELECT 1",
            f"Could not connect to PostgreSQL at 127.0.0.1:{closed_port}: ",
        ),
        (
            url_with(my.url, host="127.0.0.1", port=closed_port, password=secret),
            "SELECT 1",
            f"Could not connect to MySQL/MariaDB at 127.0.0.1:{closed_port}: Can't connect to server on '127.0.0.1'",
        ),
        (
            url_with(pg.url, user=missing_role, password=secret),
            "SELECT 1",
            f"Could not connect to PostgreSQL at {parse_connection_string(pg.url).host}:{pg_port}: "
            f'connection to server at "127.0.0.1", port {pg_port} failed: role "{missing_role}" does not exist',
        ),
        (url_with(my.url, password=secret), "SELECT 1", "Could not connect to MySQL/MariaDB at "),
        (
            url_with(pg.url, database=missing_db, password=secret),
            "SELECT 1",
            f'database "{missing_db}" does not exist',
        ),
        (url_with(my.url, database=missing_db), "SELECT 1", f"Unknown database '{missing_db}' (error 1049)"),
        (url_with(pg.url, password=secret), "SELEC 1", 'SQL error: syntax error at or near "SELEC" (SQLSTATE 42601)'),
        (url_with(my.url), "SELEC 1", "SQL error: You have an error in your SQL syntax"),
        (
            url_with(pg.url, password=secret),
            f"SELECT * FROM no_such_table_{uuid.uuid4().hex[:6]}",
            "SQL error: relation",
        ),
    ]
    for url, sql, expected in cases:
        response = query(admin_api, url, sql)
        assert response.status_code == 400, (url.replace(secret, "***"), response.content)
        body = response.json()
        assert set(body) == {"success", "error"} and body["success"] is False
        assert expected in body["error"], body["error"]
        assert secret not in body["error"]
    # The MariaDB login failure says which user, never which password.
    assert "Access denied for user" in query(admin_api, url_with(my.url, password=secret), "SELECT 1").json()["error"]
    logged = caplog.text + "".join(capfd.readouterr())
    assert "Query by admin on" in caplog.text
    assert secret not in logged


def test_timeout_error_is_400_with_the_limit(admin_api: Any, pg: Server) -> None:
    with override_settings(PZLS_QUERY_TIMEOUT_S=0.5):
        response = query(admin_api, pg.url, "SELECT pg_sleep(10)")
    assert_failed(response, 400, "Query exceeded the time limit of 0.5 s and was cancelled")


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
            started = time.monotonic()
            response = query(admin_api, server.url, f"SELECT {sleep}, '{marker}'")
            elapsed = time.monotonic() - started
        assert_failed(response, 400, "Query exceeded the time limit of 1 s and was cancelled")
        assert elapsed < 1 + runner.WATCHDOG_GRACE_S + runner.HARD_STOP_AFTER_S + 2
    finally:
        for row in server.running(marker):
            server.run(f"SELECT pg_terminate_backend({row[0]})" if server.kind == "pg" else f"KILL {row[0]}")
