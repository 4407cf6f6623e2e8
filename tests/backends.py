"""The backends the contract suites run against. A new backend joins by being listed here.

The database backends run on whatever database the test run uses (SQLite by
default, PostgreSQL with ``PZLS_TEST_STORAGE=database``, see tests/settings.py).
Their tests are transactional: the contract's concurrency tests push from
several threads, each on its own connection, which must see committed rows
and really wait for each other's locks.
"""

import pytest

_REAL_TRANSACTIONS = pytest.mark.django_db(transaction=True)

TOKEN_BACKENDS = [
    "accounts.backends.json_file.JSONFileTokenStore",
    pytest.param("accounts.backends.database.DatabaseTokenStore", marks=_REAL_TRANSACTIONS),
]

REPOSITORY_BACKENDS = [
    "sync.backends.json_file.JSONFileRepositoryStore",
    pytest.param("sync.backends.database.DatabaseRepositoryStore", marks=_REAL_TRANSACTIONS),
]
