"""Run one statement on a remote PostgreSQL (psycopg2) or MySQL/MariaDB (mysqlclient) server.

Imports nothing from Django: the caller (``query.services``) passes the
policy in. Every call opens its own connection to an address the caller has
already checked, and closes it on every path. The guards, and why each is
done this way:

- Read-only: PostgreSQL sessions get ``default_transaction_read_only`` and
  the statement runs in a transaction that is rolled back. MySQL/MariaDB
  sessions get ``SET SESSION TRANSACTION READ ONLY`` as well as a ``START
  TRANSACTION READ ONLY`` transaction: DDL commits implicitly and would
  otherwise run outside the read-only transaction.
- One statement: besides the scanner in ``query.statements``, MySQL's
  multi-statement protocol flag is switched off, so the server itself refuses
  ``SELECT 1; DROP TABLE t``.
- Timeouts: the server's own limit (``statement_timeout``,
  ``max_statement_time`` / ``max_execution_time``), and a watchdog thread
  that cancels the statement from outside a moment later (``PQcancel``, or
  ``KILL QUERY`` on a second connection), because a statement can lift the
  server-side limit for itself (``SET STATEMENT max_statement_time=0 FOR ...``).
- Row and byte caps: rows come through a server-side cursor (PostgreSQL
  ``DECLARE``) or an unbuffered result (MySQL ``SSCursor``, with
  ``sql_select_limit``), in batches that are converted and encoded as JSON
  as they arrive (``query.values.RowsJSON``). Reading stops at
  ``max_rows + 1`` rows or at the first row that takes the JSON past
  ``max_bytes``; the rest is never fetched (the transaction's end drops
  PostgreSQL's cursor, MySQL's statement is killed).
- Superusers: a read-only session does not stop a PostgreSQL superuser's
  ``pg_read_file``, ``pg_terminate_backend`` or ``pg_reload_conf``, nor a
  MySQL ``FILE`` holder's ``LOAD_FILE``, nor ``SET GLOBAL`` or ``SHUTDOWN``.
  Unless the policy allows it, the session's privileges are read before the
  statement runs and a user holding (or able to take on) such power is refused.
- Nothing on the PZLS host is reachable from the connection string: no
  ``LOAD DATA LOCAL INFILE`` (a hostile server can ask for any local file on
  any query), no ``~/.pgpass`` or ``~/.my.cnf``.
- Driver errors are turned into ``QueryFailed`` here, with the password
  scrubbed and the driver exception not chained, so no log line or answer
  can carry it.
- A failed connection is reported in fixed words of ours (refused, timed
  out, login refused, no such database, not a database server...), chosen
  from the driver's error but never quoting it: until the login succeeds,
  whatever answered may be any service, and its reply (a banner) must not
  come back to the caller. Errors after the login, from a server the user
  may query, keep the server's message.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import MySQLdb
import MySQLdb.cursors
import psycopg2
import psycopg2.errors
import psycopg2.extensions as pgext
from MySQLdb.constants import FIELD_TYPE
from MySQLdb.converters import conversions as mysql_conversions

from query.connstring import ENGINE_LABELS, MYSQL, POSTGRESQL, ConnectionSpec
from query.exceptions import QueryFailed, QueryForbidden, QueryTimeout
from query.statements import Statement
from query.values import RowsJSON, json_text

logger = logging.getLogger("pzls.query")

# Seconds after the server-side limit at which the watchdog cancels from outside.
WATCHDOG_GRACE_S = 0.5
# Seconds after that cancel at which the watchdog cuts the connection's socket.
HARD_STOP_AFTER_S = 3.0

# libpq reads ~/.pgpass when no password is given; pointing passfile at a path
# that cannot exist keeps the PZLS user's stored passwords out of reach.
_NO_PASSFILE = "/nonexistent/pzls-query-no-passfile"

# Statements PostgreSQL can run behind DECLARE ... CURSOR (a server-side cursor).
_PG_CURSOR_KEYWORDS = {"SELECT", "WITH", "VALUES", "TABLE"}

# Rows are fetched in batches: a small first one, then as many as the rest of
# the byte cap holds at the average size of the rows so far (at most
# FETCH_MAX_ROWS), so that a result of large rows is not read far past the cap.
FETCH_FIRST_ROWS = 50
FETCH_MAX_ROWS = 2000

SUPERUSER_REFUSED = (
    "Connecting as a database superuser is not allowed (set PZLS_QUERY_ALLOW_SUPERUSER=true to allow it)"
)


@dataclass(frozen=True)
class QueryPolicy:
    """The limits of one query, from settings."""

    read_only: bool
    timeout_s: float
    connect_timeout_s: float
    max_rows: int
    max_bytes: int
    allow_superuser: bool


@dataclass(frozen=True)
class QueryResult:
    """The answer of PROTOCOL.md §5; ``rows_json`` is its ``rows``, already encoded as a JSON array."""

    fields: list[str]
    rows_json: bytes
    row_count: int
    truncated: bool
    elapsed_ms: int


# What an engine's execute() hands back: the fields, the rows kept, and the
# row count (the rows kept, or the rows a write affected).
Fetched = tuple[list[str], RowsJSON, int]


ServerIdentity = tuple[Any, ...]


def scrub(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` masked."""
    return text.replace(secret, "***") if secret else text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Watchdog:
    """Cancels the session's statement if it is still running after ``seconds``.

    If the server ignores the cancel (or is not a real database server at
    all), the socket is shut down ``HARD_STOP_AFTER_S`` later, so that no
    server can hold a PZLS worker past its limit.
    """

    def __init__(self, seconds: float, cancel: Callable[[], None], fileno: int) -> None:
        self.fired = False
        self._cancel = cancel
        self._fileno = fileno
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._hard: threading.Timer | None = None

    def _fire(self) -> None:
        self.fired = True
        try:
            self._cancel()
        except Exception as exc:  # the hard stop below still ends it
            logger.warning("Could not cancel a timed-out query: %s", type(exc).__name__)
        self._hard = threading.Timer(HARD_STOP_AFTER_S, self._stop)
        self._hard.daemon = True
        self._hard.start()

    def _stop(self) -> None:
        logger.warning("A timed-out query ignored its cancel; closing its connection")
        try:
            # A duplicate of the driver's descriptor: shutting it down wakes the
            # driver's blocked read, while the driver still owns (and closes) its own.
            with socket.socket(fileno=os.dup(self._fileno)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
        self._timer.join(timeout=30)
        if self._hard is not None:
            self._hard.cancel()
            self._hard.join(timeout=30)


def run_query(
    *,
    spec: ConnectionSpec,
    addresses: Sequence[str],
    statement: Statement,
    policy: QueryPolicy,
    forbidden_identity: ServerIdentity | None = None,
) -> QueryResult:
    """Run ``statement`` on the server at one of ``addresses`` under ``policy``.

    ``forbidden_identity`` is the identity of PZLS's own database server
    (``identity_sql``); a connection that turns out to reach it is closed
    before the statement runs, whatever address it went through.
    """
    runner = _PostgresRun if spec.engine == POSTGRESQL else _MySQLRun
    started = time.monotonic()
    try:
        fields, rows, row_count = runner(spec, addresses, statement, policy, forbidden_identity).run()
    except (QueryFailed, QueryForbidden) as exc:
        exc.message = scrub(exc.message, spec.password)
        raise
    elapsed_ms = round((time.monotonic() - started) * 1000)
    return QueryResult(
        fields=fields, rows_json=rows.json(), row_count=row_count, truncated=rows.truncated, elapsed_ms=elapsed_ms
    )


class _Run:
    """One query on one engine: connect, set the session up, execute, fetch, close."""

    def __init__(
        self,
        spec: ConnectionSpec,
        addresses: Sequence[str],
        statement: Statement,
        policy: QueryPolicy,
        forbidden_identity: ServerIdentity | None,
    ) -> None:
        self.spec = spec
        self.addresses = list(addresses)
        self.statement = statement
        self.policy = policy
        self.forbidden_identity = forbidden_identity
        self.label = f"{ENGINE_LABELS[spec.engine]} at {_host_port(spec.host, spec.port)}"

    def run(self) -> Fetched:
        conn = self.connect()
        # One watchdog for everything after the connect: a server that stalls
        # the identity check or the session set-up is cut off too.
        self.watchdog = _Watchdog(self.policy.timeout_s + WATCHDOG_GRACE_S, lambda: self.cancel(conn), conn.fileno())
        try:
            with self.watchdog:
                self.check_identity(conn)
                if not self.policy.allow_superuser:
                    self.check_privileges(conn)
                self.prepare(conn)
                self.started = time.monotonic()
                result = self.execute(conn)
            if self.watchdog.fired:
                raise self.timeout_error()
            return result
        finally:
            try:
                conn.close()
            except Exception:  # the connection is being dropped either way
                pass

    def connect(self) -> Any:
        deadline = time.monotonic() + self.policy.connect_timeout_s
        last_error: Exception | None = None
        for address in self.addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return self.open(address, max(1, math.ceil(remaining)))
            except Exception as exc:
                if not self.is_network_error(exc):
                    raise QueryFailed(self.connect_message(exc)) from None
                last_error = exc
        if last_error is None:
            raise QueryFailed(f"Could not connect to {self.label} within {self.policy.connect_timeout_s:g} s") from None
        raise QueryFailed(self.connect_message(last_error)) from None

    def check_identity(self, conn: Any) -> None:
        if self.forbidden_identity is None:
            return
        if self.identity(conn) == self.forbidden_identity:
            raise QueryForbidden("Queries on PZLS's own database are not allowed")

    def check_privileges(self, conn: Any) -> None:
        reasons = self.superuser_powers(conn)
        if reasons:
            raise QueryForbidden(f'{SUPERUSER_REFUSED}: user "{self.spec.user}" ' + " and ".join(reasons))

    def rows(self, fields: list[str]) -> RowsJSON:
        return RowsJSON(fields, max_rows=self.policy.max_rows, max_bytes=self.policy.max_bytes)

    def collect(self, cursor: Any) -> tuple[RowsJSON, bool]:
        """Read rows with ``cursor.fetchmany`` until a cap is reached or the result ends.

        Returns the rows kept and whether the result was read to its end. The
        row past ``max_rows`` shows that the result is longer; asking for one
        more than that lets a short read show that it ended there.
        """
        rows: RowsJSON | None = None
        read = 0
        while True:
            want = FETCH_FIRST_ROWS
            if rows is not None and rows.count:
                average = (rows.size - 2) / rows.count
                want = min(FETCH_MAX_ROWS, int((rows.max_bytes - rows.size) / average) + 1)
            want = max(1, min(want, self.policy.max_rows + 2 - read))
            batch = cursor.fetchmany(want)
            if rows is None:
                # A PostgreSQL server-side cursor describes its columns at the first FETCH.
                rows = self.rows([column[0] for column in cursor.description or ()])
            read += len(batch)
            rows.add(batch)
            ended = len(batch) < want
            if rows.truncated or ended:
                return rows, ended

    def timeout_error(self) -> QueryTimeout:
        return QueryTimeout(f"Query exceeded the time limit of {self.policy.timeout_s:g} s and was cancelled")

    def failure(self, message: str) -> QueryFailed:
        """``message`` as the error, unless the watchdog's cancel is what caused it."""
        return self.timeout_error() if self.watchdog.fired else QueryFailed(message)

    # Engine-specific parts.
    def open(self, address: str, connect_timeout: int) -> Any:
        raise NotImplementedError

    def cancel(self, conn: Any) -> None:
        """Stop the statement running on ``conn``, from another thread."""
        raise NotImplementedError

    def is_network_error(self, exc: Exception) -> bool:
        raise NotImplementedError

    def connect_message(self, exc: Exception) -> str:
        raise NotImplementedError

    def identity(self, conn: Any) -> ServerIdentity | None:
        raise NotImplementedError

    def superuser_powers(self, conn: Any) -> list[str]:
        """What the session's user holds, or can take on, that a read-only session does not contain."""
        raise NotImplementedError

    def prepare(self, conn: Any) -> None:
        raise NotImplementedError

    def execute(self, conn: Any) -> Fetched:
        raise NotImplementedError


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- Failed connections, in our words (see the module docstring) ---------


def login_refused(user: str) -> str:
    return f'the server refused the login of user "{user}"'


def no_database(database: str) -> str:
    return f'database "{database}" does not exist'


def no_answer(timeout_s: float) -> str:
    return f"no answer within {timeout_s:g} s"


CONNECTION_REFUSED = "connection refused"
UNREACHABLE = "network unreachable"
SERVER_REFUSED = "the server refused the connection"
TLS_FAILED = "the TLS handshake failed"
TLS_UNVERIFIED = "the server's TLS certificate could not be verified"
NO_TLS = "the server does not support TLS, which the sslmode requires"
NOT_POSTGRESQL = "not a PostgreSQL server, or it closed the connection"
NOT_MYSQL = "not a MySQL/MariaDB server, or it closed the connection"


# --- PostgreSQL ----------------------------------------------------------


def _pg_text(value: str | None, cursor: Any) -> str | None:
    return value


def _pg_json(value: str | None, cursor: Any) -> Any:
    # The server's text, checked and handed on whole (query.values.json_text):
    # psycopg2's own caster parses it with Python's json, which stops near 1000 levels.
    return value if value is None else json_text(value)


def _pg_timestamp(value: str | None, cursor: Any) -> str | None:
    # "2024-02-29 13:14:15.5" -> "2024-02-29T13:14:15.5"; infinity and BC stay as the server wrote them.
    if value is None or value[-1] == "y" or value.endswith(" BC"):
        return value
    return value.replace(" ", "T", 1)


def _pg_timestamptz(value: str | None, cursor: Any) -> str | None:
    # The session's TimeZone is UTC, so the server writes "+00": ISO 8601's "Z".
    if value is None or value[-1] == "y" or value.endswith(" BC"):
        return value
    value = value.replace(" ", "T", 1)
    return value[:-3] + "Z" if value.endswith("+00") else value


def _pg_types() -> list[Any]:
    """Type casters for the date, time, interval, numeric, range and JSON types: the server's text.

    With DateStyle=ISO, IntervalStyle=iso_8601 and TimeZone=UTC that text
    already is ISO 8601, exact to the server's precision, and it also holds
    what Python's types cannot: 'infinity' (psycopg2 would answer
    9999-12-31), BC dates, months in an interval (a timedelta turns "1 mon"
    into 30 days), NaN numerics. It is also faster than building Python
    objects only to print them again. JSON stays text too (``_pg_json``).
    """
    casters = [
        ((1082,), (1182,), "DATE", _pg_text),
        ((1083,), (1183,), "TIME", _pg_text),
        ((1266,), (1270,), "TIMETZ", _pg_text),
        ((1114,), (1115,), "TIMESTAMP", _pg_timestamp),
        ((1184,), (1185,), "TIMESTAMPTZ", _pg_timestamptz),
        ((1186,), (1187,), "INTERVAL", _pg_text),
        ((1700,), (1231,), "NUMERIC", _pg_text),
        ((3904, 3926, 3906, 3908, 3910, 3912), (3905, 3927, 3907, 3909, 3911, 3913), "RANGE", _pg_text),
        ((4451, 4536, 4532, 4533, 4534, 4535), (6150, 6157, 6151, 6152, 6153, 6155), "MULTIRANGE", _pg_text),
        ((114, 3802), (199, 3807), "JSON", _pg_json),
    ]
    types = []
    for oids, array_oids, name, caster in casters:
        # psycopg2 hands a caster the server's text (str) or None; its stubs also allow bytes,
        # which only its binary casters get. Checking every value for bytes would cost a call each.
        scalar = pgext.new_type(oids, f"PZLS_{name}", cast(Callable[[str | bytes | None, Any], Any], caster))
        types += [scalar, pgext.new_array_type(array_oids, f"PZLS_{name}ARRAY", scalar)]
    return types


_PG_TYPES = _pg_types()


class _PostgresRun(_Run):
    def open(self, address: str, connect_timeout: int) -> Any:
        options = self.spec.options
        conn = psycopg2.connect(
            # host names the server for TLS verification; hostaddr is where we
            # actually connect: the address the policy checked.
            host=self.spec.host,
            hostaddr=address,
            port=self.spec.port,
            user=self.spec.user,
            password=self.spec.password,
            dbname=self.spec.database or self.spec.user,
            connect_timeout=connect_timeout,
            passfile=_NO_PASSFILE,
            sslmode=options.get("sslmode", "prefer"),
            application_name=options.get("application_name", "pzls-query"),
        )
        for caster in _PG_TYPES:
            pgext.register_type(caster, conn)
        # Set-up and the identity check run outside a transaction; execute()
        # opens the one the statement runs in.
        conn.autocommit = True
        return conn

    def cancel(self, conn: Any) -> None:
        conn.cancel()

    def is_network_error(self, exc: Exception) -> bool:
        # libpq reports a server's refusal (bad password, unknown database) as FATAL.
        return isinstance(exc, psycopg2.OperationalError) and "FATAL" not in str(exc)

    def connect_message(self, exc: Exception) -> str:
        if not isinstance(exc, psycopg2.OperationalError):
            return f"Could not connect to {self.label}: {type(exc).__name__}"
        problem = pg_connect_problem(str(exc), self.spec, timeout_s=self.policy.connect_timeout_s)
        return f"Could not connect to {self.label}: {problem}"

    def identity(self, conn: Any) -> ServerIdentity | None:
        try:
            with conn.cursor() as cursor:
                cursor.execute(identity_sql(POSTGRESQL))
                return identity_from_row(POSTGRESQL, cursor.fetchone())
        except psycopg2.Error as exc:
            raise self.failure(f"Could not read from {self.label}: {_pg_message(exc)}") from None

    def superuser_powers(self, conn: Any) -> list[str]:
        try:
            with conn.cursor() as cursor:
                cursor.execute(_PG_POWERS_SQL, (list(_PG_SERVER_ROLES),))
                held = cursor.fetchall()
        except psycopg2.Error as exc:
            raise self.failure(
                f"Could not read the privileges of the user on {self.label}: {_pg_message(exc)}"
            ) from None
        return pg_powers(held)

    def prepare(self, conn: Any) -> None:
        timeout_ms = max(1, int(self.policy.timeout_s * 1000))
        settings = [
            f"statement_timeout = {timeout_ms}",
            f"lock_timeout = {timeout_ms}",
            f"idle_in_transaction_session_timeout = {timeout_ms + 60_000}",
            "TimeZone = 'UTC'",
            "DateStyle = 'ISO, MDY'",
            "IntervalStyle = 'iso_8601'",
            # query.statements scans strings by this rule.
            "standard_conforming_strings = on",
            f"default_transaction_read_only = {'on' if self.policy.read_only else 'off'}",
        ]
        try:
            with conn.cursor() as cursor:
                cursor.execute("".join(f"SET {item};" for item in settings))
        except psycopg2.Error as exc:
            raise self.failure(f"Could not prepare the session on {self.label}: {_pg_message(exc)}") from None

    def execute(self, conn: Any) -> Fetched:
        cursor_keyword = self.statement.first in _PG_CURSOR_KEYWORDS
        # Writes outside a transaction only when the policy allows writes:
        # VACUUM and friends cannot run inside one.
        conn.autocommit = not cursor_keyword and not self.policy.read_only
        try:
            if cursor_keyword:
                try:
                    result = self._fetch_from_cursor(conn)
                except psycopg2.errors.FeatureNotSupported:
                    if self.statement.first != "WITH":
                        raise
                    # A WITH holding INSERT/UPDATE/DELETE cannot sit behind
                    # DECLARE; run it as it is (read-only still applies).
                    conn.rollback()
                    result = self._fetch_plain(conn)
            else:
                result = self._fetch_plain(conn)
            if not conn.autocommit:
                if self.policy.read_only:
                    conn.rollback()
                else:
                    conn.commit()
        except psycopg2.Error as exc:
            if exc.pgcode == "57014":
                raise self.timeout_error() from None
            if exc.pgcode == "25006":
                raise self.failure(f"Refused in a read-only session: {_pg_message(exc)}") from None
            raise self.failure(f"SQL error: {_pg_message(exc)}") from None
        return result

    def _fetch_from_cursor(self, conn: Any) -> Fetched:
        cursor = conn.cursor(name="pzls_query", scrollable=False, withhold=False)
        cursor.execute(self.statement.text)
        # Each fetchmany is one FETCH; closing the transaction (rollback or
        # commit, then close) drops the portal: rows past a cap are never produced.
        rows, _ = self.collect(cursor)
        return rows.fields, rows, rows.count

    def _fetch_plain(self, conn: Any) -> Fetched:
        # libpq has received the whole result here; the caps still bound the answer.
        cursor = conn.cursor()
        cursor.execute(self.statement.text)
        if cursor.description is None:
            return [], self.rows([]), max(cursor.rowcount, 0)
        rows, _ = self.collect(cursor)
        return rows.fields, rows, rows.count


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    message = primary or _one_line(str(exc)) or type(exc).__name__
    code = getattr(exc, "pgcode", None)
    return f"{message} (SQLSTATE {code})" if code else message


# libpq's words, lower-cased. FATAL marks an error the other end sent in
# PostgreSQL's protocol; everything else libpq wrote itself.
_PG_LOGIN_FAILURES = ("authentication failed", "pg_hba.conf")
_PG_NO_ROLE = re.compile(r'fatal:\s+role ".*" does not exist')
_PG_NO_DATABASE = re.compile(r'fatal:\s+database ".*" does not exist')
_PG_NOT_POSTGRESQL = (
    "server closed the connection unexpectedly",
    "received invalid response to ssl negotiation",
    "expected authentication request from server",
    "unexpected message from server",
    "invalid message",
    "lost synchronization with server",
)


def pg_connect_problem(message: str, spec: ConnectionSpec, *, timeout_s: float) -> str:
    """Why libpq could not connect, in our words; ``message`` is read, never quoted."""
    text = message.lower()
    if "fatal:" in text:
        if _PG_NO_ROLE.search(text):
            return f'user "{spec.user}" does not exist'
        if _PG_NO_DATABASE.search(text):
            return no_database(spec.database or spec.user)
        if any(words in text for words in _PG_LOGIN_FAILURES):
            return login_refused(spec.user)
        return SERVER_REFUSED
    if "no password supplied" in text:
        return login_refused(spec.user)
    if "timeout expired" in text:
        return no_answer(timeout_s)
    if "connection refused" in text:
        return CONNECTION_REFUSED
    if "no route to host" in text or "is unreachable" in text:
        return UNREACHABLE
    if any(words in text for words in _PG_NOT_POSTGRESQL):
        return NOT_POSTGRESQL
    if "server does not support ssl" in text:
        return NO_TLS
    if "certificate" in text:
        return TLS_UNVERIFIED
    if "ssl" in text:
        return TLS_FAILED
    return NOT_POSTGRESQL


# Roles whose members act on the database server itself: files, programs, other sessions.
_PG_SERVER_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_signal_backend", "pg_write_server_files")

# Every role the session's user is, or may become (SET ROLE works in a
# read-only transaction, even from set_config('role', ...) inside a SELECT),
# that is a superuser, has REPLICATION (replication slots outlive a read-only
# transaction) or CREATEROLE (it may grant itself _PG_SERVER_ROLES, and with
# writes allowed run programs on the server), or is one of _PG_SERVER_ROLES.
# The user's own row comes first.
_PG_POWERS_SQL = """
SELECT r.rolname, r.rolname = current_user, r.rolsuper, r.rolreplication, r.rolcreaterole
FROM pg_roles r
WHERE pg_has_role(current_user, r.oid, 'MEMBER')
  AND (r.rolsuper OR r.rolreplication OR r.rolcreaterole OR r.rolname = ANY(%s))
ORDER BY r.rolname = current_user DESC, r.rolname
"""


def pg_powers(held: Sequence[Sequence[Any]]) -> list[str]:
    """Why a PostgreSQL user is refused, from the rows of ``_PG_POWERS_SQL``; empty when it is not."""
    reasons: list[str] = []
    members: list[str] = []
    for name, is_self, superuser, replication, createrole in held:
        if is_self and superuser:
            return ["is a superuser"]  # and so a member of every role
        if superuser:
            reasons.append(f'can become the superuser "{name}"')
            continue
        for held_power, label in ((replication, "REPLICATION"), (createrole, "CREATEROLE")):
            if held_power:
                reasons.append(f"has {label}" if is_self else f'can become "{name}", which has {label}')
        if name in _PG_SERVER_ROLES:
            members.append(name)
    if members:
        reasons.append(f"is a member of {', '.join(members)}")
    return reasons


# --- MySQL / MariaDB -----------------------------------------------------


def _mysql_text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _mysql_datetime(value: bytes | str) -> str:
    # The server's own text, made ISO 8601: also keeps zero dates
    # ("0000-00-00 00:00:00"), which Python's datetime cannot hold.
    return _mysql_text(value).replace(" ", "T", 1)


def _mysql_bit(value: bytes | str) -> int:
    data = value.encode("latin-1") if isinstance(value, str) else value
    return int.from_bytes(data, "big")


def _mysql_json(value: bytes | str) -> Any:
    # MySQL's JSON type (MariaDB's JSON is text): handed on whole, as PostgreSQL's json.
    return json_text(_mysql_text(value))


_MYSQL_CONV = dict(mysql_conversions)
_MYSQL_CONV.update(
    {
        FIELD_TYPE.DATE: _mysql_text,
        # TIME is a duration up to ±838:59:59; its text is the clearest form.
        FIELD_TYPE.TIME: _mysql_text,
        FIELD_TYPE.DATETIME: _mysql_datetime,
        FIELD_TYPE.TIMESTAMP: _mysql_datetime,
        # The exact decimal text, without a detour through Decimal.
        FIELD_TYPE.DECIMAL: _mysql_text,
        FIELD_TYPE.NEWDECIMAL: _mysql_text,
        FIELD_TYPE.BIT: _mysql_bit,
        FIELD_TYPE.JSON: _mysql_json,
    }
)

# Client errors that mean "nothing answered at this address": try the next one.
_MYSQL_NETWORK_ERRORS = {2002, 2003, 2005, 2006, 2013}
_MYSQL_TIMEOUT_ERRORS = {1969, 3024}
_MYSQL_READ_ONLY_ERRORS = {1792, 1290}
_MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1


# Global privileges whose statements a read-only session stops, or that only
# read: a user holding any other on *.* (SUPER or ALL PRIVILEGES, FILE's
# LOAD_FILE, SHUTDOWN, RELOAD's FLUSH, the administration privileges split
# from SUPER, MySQL 8's dynamic ones) is refused unless the policy allows it.
_MYSQL_DATA_PRIVILEGES = frozenset(
    {
        "USAGE",
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE",
        "DROP",
        "REFERENCES",
        "INDEX",
        "ALTER",
        "CREATE TEMPORARY TABLES",
        "LOCK TABLES",
        "EXECUTE",
        "CREATE VIEW",
        "SHOW VIEW",
        "CREATE ROUTINE",
        "ALTER ROUTINE",
        "EVENT",
        "TRIGGER",
        "DELETE HISTORY",
        "CREATE TABLESPACE",
        "CREATE USER",
        "GRANT OPTION",
        "SHOW DATABASES",
        "PROCESS",
        "REPLICATION CLIENT",
        "REPLICATION SLAVE",
        "BINLOG MONITOR",
        "SLAVE MONITOR",
        "REPLICA MONITOR",
    }
)
_MYSQL_GLOBAL_GRANT = re.compile(r"GRANT ([A-Z_ ,]+?) ON \*\.\* TO ")
# A quoted name as SHOW GRANTS writes it: `name` or 'name', quotes inside doubled.
_MYSQL_NAME = r"(?:`(?:[^`]|``)*`|'(?:[^']|'')*')"
_MYSQL_ROLE = re.compile(rf"({_MYSQL_NAME})(?:@({_MYSQL_NAME}))?")
_MYSQL_ROLE_GRANT = re.compile(rf"GRANT ({_MYSQL_ROLE.pattern}(?:\s*,\s*{_MYSQL_ROLE.pattern})*) TO ")


def mysql_server_privileges(lines: Sequence[str]) -> list[str]:
    """The global privileges in SHOW GRANTS ``lines`` that are not data privileges, in order."""
    found: list[str] = []
    for line in lines:
        match = _MYSQL_GLOBAL_GRANT.match(line)
        for item in match.group(1).split(",") if match else ():
            name = " ".join(item.split())
            if name not in _MYSQL_DATA_PRIVILEGES and name not in found:
                found.append(name)
    return found


def mysql_granted_roles(line: str) -> list[tuple[str, ...]]:
    """The roles a SHOW GRANTS line grants (``GRANT `r` TO ...``), each as (name,) or (name, host)."""
    match = _MYSQL_ROLE_GRANT.match(line)
    if not match:
        return []
    return [tuple(_mysql_unquote(part) for part in parts if part) for parts in _MYSQL_ROLE.findall(match.group(1))]


def _mysql_unquote(name: str) -> str:
    quote = name[0]
    return name[1:-1].replace(quote * 2, quote)


def _mysql_quote(*parts: str) -> str:
    """``name`` or ``name``@``host``, quoted as identifiers."""
    return "@".join("`" + part.replace("`", "``") + "`" for part in parts)


def _mysql_code(exc: Exception) -> int | None:
    args = exc.args
    return args[0] if args and isinstance(args[0], int) else None


def _mysql_message(exc: Exception) -> str:
    args = exc.args
    code = _mysql_code(exc)
    if code is not None and len(args) > 1:
        return f"{_one_line(args[1])} (error {code})"
    return _one_line(str(exc)) or type(exc).__name__


def mysql_connect_problem(exc: Exception, spec: ConnectionSpec, *, timeout_s: float) -> str:
    """Why mysqlclient could not connect, in our words, chosen by the error's number.

    The message is read only for the system error the client library itself
    appends (``... (111)``, ``system error: 110``); it is never quoted.
    """
    code = _mysql_code(exc)
    message = str(exc.args[1]) if len(exc.args) > 1 else ""
    number = re.search(r"(?:\((\d+)\)|system error: (\d+))\s*$", message)
    system_error = int(number.group(1) or number.group(2)) if number else None
    if code == 1045:
        return login_refused(spec.user)
    if code == 1044:
        return f'user "{spec.user}" may not use database "{spec.database}"'
    if code == 1049:
        return no_database(spec.database)
    if code in (2002, 2003, 2013) and system_error == errno.ETIMEDOUT:
        return no_answer(timeout_s)
    if code in (2002, 2003):
        return UNREACHABLE if system_error in (errno.EHOSTUNREACH, errno.ENETUNREACH) else CONNECTION_REFUSED
    if code == 2026:
        return TLS_FAILED
    if code is not None and code < 2000:
        return SERVER_REFUSED  # the server's own error, such as 1040 (too many connections) or 1130 (host not allowed)
    return NOT_MYSQL


class _MySQLRun(_Run):
    def connect_kwargs(self, address: str, connect_timeout: int) -> dict[str, Any]:
        options = self.spec.options
        kwargs: dict[str, Any] = {
            "host": address,
            "port": self.spec.port,
            "user": self.spec.user,
            "password": self.spec.password,
            "connect_timeout": connect_timeout,
            # Socket-level backstop behind the watchdog.
            "read_timeout": math.ceil(self.policy.timeout_s + WATCHDOG_GRACE_S) + 5,
            "write_timeout": math.ceil(self.policy.timeout_s + WATCHDOG_GRACE_S) + 5,
            "charset": options.get("charset", "utf8mb4"),
            "use_unicode": True,
            "conv": _MYSQL_CONV,
            "local_infile": 0,
            "autocommit": False,
        }
        if self.spec.database:
            kwargs["database"] = self.spec.database
        if "ssl_mode" in options:
            kwargs["ssl_mode"] = options["ssl_mode"]
        return kwargs

    def open(self, address: str, connect_timeout: int) -> Any:
        kwargs = self.connect_kwargs(address, connect_timeout)
        conn = MySQLdb.connect(**kwargs)
        self.address = address
        self.thread_id = conn.thread_id()
        try:
            conn.set_server_option(_MYSQL_OPTION_MULTI_STATEMENTS_OFF)
        except Exception:
            conn.close()
            raise
        return conn

    def is_network_error(self, exc: Exception) -> bool:
        return isinstance(exc, MySQLdb.OperationalError) and _mysql_code(exc) in _MYSQL_NETWORK_ERRORS

    def connect_message(self, exc: Exception) -> str:
        if not isinstance(exc, MySQLdb.Error):
            return f"Could not connect to {self.label}: {type(exc).__name__}"
        problem = mysql_connect_problem(exc, self.spec, timeout_s=self.policy.connect_timeout_s)
        return f"Could not connect to {self.label}: {problem}"

    def identity(self, conn: Any) -> ServerIdentity | None:
        cursor = conn.cursor()
        try:
            mariadb = "mariadb" in conn.get_server_info().lower()
            cursor.execute(identity_sql(MYSQL, mariadb=mariadb))
            return identity_from_row(MYSQL, cursor.fetchone())
        except MySQLdb.OperationalError as exc:
            if _mysql_code(exc) == 1193:  # an old server without a server id variable
                return None
            raise self.failure(f"Could not read from {self.label}: {_mysql_message(exc)}") from None
        except MySQLdb.Error as exc:
            raise self.failure(f"Could not read from {self.label}: {_mysql_message(exc)}") from None
        finally:
            cursor.close()

    def superuser_powers(self, conn: Any) -> list[str]:
        mariadb = "mariadb" in conn.get_server_info().lower()
        cursor = conn.cursor()
        try:
            own = self.grants(cursor, "SHOW GRANTS")
            started_as = None
            if mariadb and any(mysql_granted_roles(line) for line in own):
                # While a role is current (a default role), MariaDB's SHOW
                # GRANTS shows its privileges too: read the user's own without it.
                cursor.execute("SELECT CURRENT_ROLE()")
                started_as = cursor.fetchone()[0]
                if started_as is not None:
                    cursor.execute("SET ROLE NONE")
                    own = self.grants(cursor, "SHOW GRANTS")
            held = mysql_server_privileges(own)
            # A role the user may take on counts too: SET ROLE works in a
            # read-only session, and inside a procedure the statement calls.
            roles = [] if held else [role for line in own for role in mysql_granted_roles(line)]
            by_role = []
            for role in roles:
                if mariadb:
                    # MariaDB shows a role's privileges, and those of the roles
                    # granted to it, while it is the current role.
                    cursor.execute(f"SET ROLE {_mysql_quote(*role)}")
                    by_role.append((role, self.grants(cursor, "SHOW GRANTS")))
                else:
                    using = f"SHOW GRANTS FOR CURRENT_USER() USING {_mysql_quote(*role)}"
                    by_role.append((role, self.grants(cursor, using)))
            if mariadb and (roles or started_as is not None):
                cursor.execute(f"SET ROLE {_mysql_quote(_mysql_text(started_as))}" if started_as else "SET ROLE NONE")
        except MySQLdb.Error as exc:
            raise self.failure(
                f"Could not read the privileges of the user on {self.label}: {_mysql_message(exc)}"
            ) from None
        finally:
            cursor.close()
        reasons = [f"has {', '.join(held)} on *.*"] if held else []
        for role, lines in by_role:
            extra = [name for name in mysql_server_privileges(lines) if name not in held]
            if extra:
                reasons.append(f'can take on the role "{"@".join(role)}", which has {", ".join(extra)} on *.*')
        return reasons

    def grants(self, cursor: Any, sql: str) -> list[str]:
        cursor.execute(sql)
        return [_mysql_text(row[0]) for row in cursor.fetchall()]

    def prepare(self, conn: Any) -> None:
        mariadb = "mariadb" in conn.get_server_info().lower()
        timeout = self.policy.timeout_s
        limit = (
            f"SESSION max_statement_time = {timeout:.6f}"
            if mariadb
            else f"SESSION max_execution_time = {max(1, int(timeout * 1000))}"
        )
        statements = [
            f"SET SESSION time_zone = '+00:00', SESSION sql_select_limit = {self.policy.max_rows + 1}, {limit}"
        ]
        if self.policy.read_only:
            statements += ["SET SESSION TRANSACTION READ ONLY", "START TRANSACTION READ ONLY"]
        cursor = conn.cursor()
        try:
            for sql in statements:
                cursor.execute(sql)
        except MySQLdb.Error as exc:
            raise self.failure(f"Could not prepare the session on {self.label}: {_mysql_message(exc)}") from None
        finally:
            cursor.close()

    def cancel(self, conn: Any) -> None:
        self.kill(self.thread_id)

    def kill(self, thread_id: int) -> None:
        """Stop the running statement from a second connection."""
        helper = MySQLdb.connect(**self.connect_kwargs(self.address, max(1, math.ceil(self.policy.connect_timeout_s))))
        try:
            helper.cursor().execute(f"KILL QUERY {int(thread_id)}")
        finally:
            helper.close()

    def execute(self, conn: Any) -> Fetched:
        cursor = MySQLdb.cursors.SSCursor(conn)
        try:
            cursor.execute(self.statement.text)
            if cursor.description is None:
                rows, row_count = self.rows([]), max(conn.affected_rows(), 0)
            else:
                rows, ended = self.collect(cursor)
                if not ended:
                    # Still streaming (past a cap, or the statement has its own
                    # LIMIT above sql_select_limit): stop it rather than read it to the end.
                    self.kill(self.thread_id)
                row_count = rows.count
            try:
                cursor.close()
            except MySQLdb.Error:
                pass  # the killed remainder of a truncated result
            if self.policy.read_only:
                conn.rollback()
            else:
                conn.commit()
        except MySQLdb.Error as exc:
            code = _mysql_code(exc)
            if code in _MYSQL_TIMEOUT_ERRORS:
                raise self.timeout_error() from None
            if code in _MYSQL_READ_ONLY_ERRORS:
                raise self.failure(f"Refused in a read-only session: {_mysql_message(exc)}") from None
            raise self.failure(f"SQL error: {_mysql_message(exc)}") from None
        # SLEEP() and BENCHMARK() end early without an error when interrupted:
        # a statement that only returned at the limit was cut off, not finished.
        if time.monotonic() - self.started >= self.policy.timeout_s:
            raise self.timeout_error()
        return rows.fields, rows, row_count


# --- The identity of a server --------------------------------------------


def identity_sql(engine: str, *, mariadb: bool = True) -> str:
    """SQL whose one row identifies a database server (and, on PostgreSQL, the database).

    PostgreSQL: the postmaster's start time (microseconds) and the database.
    MariaDB: ``@@server_uid``; MySQL: ``@@server_uuid``. Both are readable by
    any user, and the same query run on PZLS's own connection gives the value
    to compare with.
    """
    if engine == POSTGRESQL:
        return "SELECT extract(epoch FROM pg_postmaster_start_time())::text, current_database()"
    return "SELECT @@server_uid" if mariadb else "SELECT @@server_uuid"


def identity_from_row(engine: str, row: Sequence[Any] | None) -> ServerIdentity | None:
    if not row or row[0] is None:
        return None
    return (engine, *(str(value) for value in row))
