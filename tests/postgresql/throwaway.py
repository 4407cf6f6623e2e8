"""Throwaway PostgreSQL databases for tests that start servers of their own.

``throwaway_database()`` creates a database with a unique name on the local
server (``PZLS_TEST_POSTGRES_ADMIN_URL``, default the ``postgres`` database
as ``postgres``) and drops it afterwards, whatever is still connected. When
no server answers, the test is skipped on a laptop and fails in CI
(``CI=true``), where these tests must run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

ADMIN_URL = os.environ.get("PZLS_TEST_POSTGRES_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _admin(*, in_test: bool) -> psycopg2.extensions.connection:
    try:
        connection = psycopg2.connect(ADMIN_URL, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        message = f"PostgreSQL at {ADMIN_URL} is not available: {exc}".strip()
        if not in_test:
            raise RuntimeError(message) from None
        if IN_CI:
            pytest.fail(message + " (CI=true: these tests must run)")
        pytest.skip(message)
    connection.autocommit = True
    return connection


@contextlib.contextmanager
def throwaway_database(*, in_test: bool = True) -> Iterator[str]:
    """The URL of a new, empty database, dropped on exit.

    Outside a test (``in_test=False``, the benchmark) a missing server is a RuntimeError.
    """
    name = f"pzls_test_{secrets.token_hex(6)}"
    admin = _admin(in_test=in_test)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(ADMIN_URL)
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def execute(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on ``url`` and return its rows (none for a statement without)."""
    with contextlib.closing(psycopg2.connect(url, connect_timeout=5)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
