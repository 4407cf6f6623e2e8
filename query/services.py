"""Remote SQL (PROTOCOL.md §5): the policy from settings around ``query.runner``.

``query_run`` decides whether a query may run at all (role, host allow-list,
the server's own database, statements that would dodge read-only mode), then
hands it to the runner with the limits of ``QueryPolicy`` (read-only, time,
rows, bytes, and whether a superuser may connect). Every refusal is a ``QueryForbidden`` (403) or a
``BadRequest``/``QueryFailed`` (400), never a driver's exception.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import ConnectionHandler

from accounts.models import User
from pzls_site.exceptions import BadRequest
from query import hosts
from query.connstring import (
    DEFAULT_PORTS,
    MYSQL,
    POSTGRESQL,
    ConnectionSpec,
    ConnectionStringError,
    parse_connection_string,
)
from query.exceptions import QueryFailed, QueryForbidden
from query.runner import QueryPolicy, QueryResult, ServerIdentity, identity_from_row, identity_sql, run_query, scrub
from query.statements import Statement, StatementError, single_statement

logger = logging.getLogger("pzls.query")


def query_run(*, user: User, connection_string: Any, query: Any) -> QueryResult:
    """Run one SQL statement for ``user`` on the server ``connection_string`` names."""
    allowed_roles = settings.PZLS_QUERY_ROLES
    if user.role not in allowed_roles:
        raise QueryForbidden(f"Running queries is not allowed for the {user.role} role")
    if connection_string is None or connection_string == "":
        raise BadRequest("connectionString is required")
    if not isinstance(query, str) or not query.strip():
        raise BadRequest("query is required and must be a non-empty string")
    if "\x00" in query:
        raise BadRequest("query must not contain NUL characters")
    try:
        spec = parse_connection_string(connection_string)
    except ConnectionStringError as exc:
        raise BadRequest(str(exc)) from None
    policy = _policy()
    try:
        statement = single_statement(query, dialect=spec.engine)
    except StatementError as exc:
        raise BadRequest(str(exc)) from None
    _refuse_escapes(statement, engine=spec.engine, read_only=policy.read_only)
    addresses = _addresses(spec, timeout=policy.connect_timeout_s)
    try:
        result = run_query(
            spec=spec,
            addresses=addresses,
            statement=statement,
            policy=policy,
            forbidden_identity=_own_identity(),
        )
    except (QueryFailed, QueryForbidden) as exc:
        logger.info("Query by %s on %s refused or failed: %s", user.username, spec.label, exc.message)
        raise
    except Exception as exc:
        # A fault in PZLS itself. The handler would log the exception with its
        # message, which is not ours to vouch for: log it here, scrubbed, and
        # hand on a clean one.
        import traceback

        text = scrub("".join(traceback.format_exception(exc)), spec.password)
        logger.error("Query runner failed on %s:\n%s", spec.label, text)
        raise RuntimeError("query runner failed (logged above)") from None
    logger.info(
        "Query by %s on %s: %d rows%s in %d ms",
        user.username,
        spec.label,
        result.row_count,
        " (truncated)" if result.truncated else "",
        result.elapsed_ms,
    )
    return result


def _policy() -> QueryPolicy:
    return QueryPolicy(
        read_only=bool(settings.PZLS_QUERY_READ_ONLY),
        timeout_s=float(settings.PZLS_QUERY_TIMEOUT_S),
        connect_timeout_s=float(settings.PZLS_QUERY_CONNECT_TIMEOUT_S),
        max_rows=int(settings.PZLS_QUERY_MAX_ROWS),
        max_bytes=int(settings.PZLS_QUERY_MAX_BYTES),
        allow_superuser=bool(settings.PZLS_QUERY_ALLOW_SUPERUSER),
    )


def _refuse_escapes(statement: Statement, *, engine: str, read_only: bool) -> None:
    """Statements that act outside the session's guards."""
    if engine == POSTGRESQL and statement.first == "COPY":
        # Only COPY's file and program forms would run here (the driver does
        # not stream STDIN/STDOUT), and they act on the database host.
        raise BadRequest("COPY is not supported here; use SELECT")
    if engine == MYSQL and read_only:
        if statement.contains("SET", "STATEMENT"):
            # SET STATEMENT tx_read_only=0 FOR CREATE TABLE ... runs DDL
            # outside the read-only transaction on MariaDB.
            raise QueryFailed("SET STATEMENT ... FOR is not allowed in a read-only session")
        if statement.contains("INTO", "OUTFILE") or statement.contains("INTO", "DUMPFILE"):
            raise QueryFailed(
                "SELECT ... INTO OUTFILE/DUMPFILE writes a file on the database server; not allowed in a read-only session"
            )


@lru_cache(maxsize=4)
def _patterns(items: tuple[str, ...]) -> list[hosts.HostPattern] | None:
    """The parsed allow-list; None when it allows every host."""
    if "*" in items:
        return None
    try:
        return hosts.parse_patterns(items)
    except hosts.HostError as exc:
        raise ImproperlyConfigured(f"PZLS_QUERY_ALLOWED_HOSTS: {exc}") from None


def _addresses(spec: ConnectionSpec, *, timeout: float) -> list[str]:
    """The checked addresses the runner may connect to, in the resolver's order."""
    try:
        resolved = hosts.resolve(spec.host, spec.port, timeout=timeout)
    except hosts.HostError as exc:
        raise QueryFailed(str(exc)) from None
    patterns = _patterns(tuple(settings.PZLS_QUERY_ALLOWED_HOSTS))
    allowed = resolved
    if patterns is not None:
        allowed = hosts.allowed_addresses(name=spec.host, port=spec.port, addresses=resolved, patterns=patterns)
        if not allowed:
            raise QueryForbidden(f"Host {spec.host} port {spec.port} is not in PZLS_QUERY_ALLOWED_HOSTS")
    own = _own_database()
    if own is not None:
        database = spec.database or spec.user if spec.engine == POSTGRESQL else spec.database
        if own.is_target(port=spec.port, database=database, addresses=allowed):
            raise QueryForbidden("Queries on PZLS's own database are not allowed")
    return allowed


def _own_settings() -> tuple[str, Mapping[str, Any]] | None:
    """(engine, Django's settings) of the database PZLS itself uses, when it is on the network."""
    database = settings.DATABASES.get("default") or {}
    engine = str(database.get("ENGINE", ""))
    if "postgresql" in engine or "postgis" in engine:
        return POSTGRESQL, database
    if "mysql" in engine:
        return MYSQL, database
    return None


def _own_database() -> hosts.OwnDatabase | None:
    own = _own_settings()
    if own is None:
        return None
    engine, database = own
    port = int(database.get("PORT") or DEFAULT_PORTS[engine])
    name = str(database.get("NAME") or "") if engine == POSTGRESQL else None
    return _own_database_cached(engine, str(database.get("HOST") or ""), port, name)


@lru_cache(maxsize=8)
def _own_database_cached(engine: str, host: str, port: int, name: str | None) -> hosts.OwnDatabase:
    # Resolved once per process: the address of PZLS's own database is configuration.
    return hosts.OwnDatabase.from_settings(engine=engine, host=host, port=port, database=name, timeout=5.0)


_identity_lock = threading.Lock()
_identity_cache: dict[tuple[Any, ...], ServerIdentity | None] = {}


def _own_identity() -> ServerIdentity | None:
    """The identity of PZLS's own database server (see ``query.runner.identity_sql``).

    Addresses can alias in ways a host check cannot see (this machine's
    public address, a port forward, another DNS name), so the runner also
    compares the identity of the server it reached with this one. Read once
    per process through a private connection built from
    ``settings.DATABASES['default']``; not cached when the read fails.
    """
    own = _own_settings()
    if own is None:
        return None
    engine, database = own
    key = (engine, database.get("HOST"), database.get("PORT"), database.get("NAME"), database.get("USER"))
    with _identity_lock:
        if key in _identity_cache:
            return _identity_cache[key]
        handler = ConnectionHandler({"default": copy.deepcopy(dict(database))})
        connection = handler["default"]
        try:
            with connection.cursor() as cursor:
                mariadb = engine == MYSQL and bool(getattr(connection, "mysql_is_mariadb", True))
                cursor.execute(identity_sql(engine, mariadb=mariadb))
                identity = identity_from_row(engine, cursor.fetchone())
        except Exception as exc:
            logger.warning("Could not read the identity of PZLS's own database: %s", type(exc).__name__)
            return None
        finally:
            connection.close()
        _identity_cache[key] = identity
        return identity
