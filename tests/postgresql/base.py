"""Django's PostgreSQL backend, except that the test database is dropped even while in use.

Concurrency tests push from threads, and each thread opens its own
connection, which Python closes only when the garbage collector gets to
it. Django's plain ``DROP DATABASE`` at the end of the run would then fail
with "being accessed by other users" and leave the test database behind;
``WITH (FORCE)`` (PostgreSQL 13+) ends those sessions first.
"""

from __future__ import annotations

from django.db.backends.postgresql import base, creation


class DatabaseCreation(creation.DatabaseCreation):
    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        with self.connection._nodb_cursor() as cursor:
            cursor.execute(f"DROP DATABASE {self.connection.ops.quote_name(test_database_name)} WITH (FORCE)")


class DatabaseWrapper(base.DatabaseWrapper):
    creation_class = DatabaseCreation
