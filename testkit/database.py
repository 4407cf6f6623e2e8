"""Throwaway PostgreSQL databases, for servers on the database storage.

``throwaway_database()`` creates a database with a unique name on the local
server (``PZLS_TEST_POSTGRES_ADMIN_URL``, default the ``postgres`` database
as ``postgres``) and drops it afterwards, whatever is still connected. When
no server answers it raises ``DatabaseUnavailable``; the test suite turns that
into a skip on a laptop and a failure in CI.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2

ADMIN_URL = os.environ.get("PZLS_TEST_POSTGRES_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")


class DatabaseUnavailable(RuntimeError):
    """No PostgreSQL server answers at ``ADMIN_URL``."""


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped on exit even while servers are still connected to it."""
    try:
        admin = psycopg2.connect(ADMIN_URL, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(f"PostgreSQL at {ADMIN_URL} is not available: {exc}".strip()) from None
    admin.autocommit = True
    name = f"pzls_test_{secrets.token_hex(6)}"
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(ADMIN_URL)
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def execute(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on ``url`` and return its rows (none for a statement without)."""
    with contextlib.closing(psycopg2.connect(url, connect_timeout=5)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
