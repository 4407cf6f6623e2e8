"""Settings for the test suite: the project's own, with a throwaway data directory and database.

By default the suite runs on the ``files`` storage, with Django's database in
a throwaway SQLite file (a real file, not shared-cache memory, so threads of
the concurrency tests wait for each other's locks as worker processes do).

``PZLS_TEST_STORAGE=database`` switches the whole suite to the ``database``
storage on PostgreSQL (``PZLS_TEST_DATABASE_URL``, default the local server's
``postgres`` database, which only serves to create the test database), or on
MySQL/MariaDB when that URL is ``mysql://`` (e.g.
``mysql://root@127.0.0.1:3306/test``): the test database is then created
utf8mb4 with a case- and accent-insensitive collation, the default users
meet, so the suite shows the account columns compare exactly all the same.
pytest-django creates a test database with a name unique to this run and
drops it at the end, so several runs on one server never meet.
"""

import os
import secrets
import tempfile

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TMP = tempfile.mkdtemp(prefix="pzls-test-")
os.environ["PZLS_DATA_DIR"] = _TMP

from pzls_site.env import Rate, store_settings  # noqa: E402
from pzls_site.settings import *  # noqa: E402, F403

# The suite registers and logs in hundreds of users from one address (127.0.0.1)
# within a minute; the per-address limit itself is tested at its real default
# (tests/test_accounts.py sets it back with override_settings).
PZLS_AUTH_RATE_PER_ADDRESS = Rate(limit=1_000_000, period_s=60)

# Fast hashing keeps the suite quick; scrypt itself is tested explicitly.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *PASSWORD_HASHERS]  # noqa: F405

# Unit tests never run collectstatic: plain static storage (no manifest needed
# to render admin pages) and no scan of STATIC_ROOT, which an end-to-end
# server may be rewriting at that moment.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_AUTOREFRESH = True

PZLS_TEST_STORAGE = os.environ.get("PZLS_TEST_STORAGE", "files").strip().lower() or "files"
if PZLS_TEST_STORAGE == "database":
    # Set here, not in os.environ: end-to-end servers started by the tests
    # inherit the environment and must not be pointed at this database.
    DATABASES = {
        "default": {
            **dj_database_url.parse(
                os.environ.get("PZLS_TEST_DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
            ),
            "TEST": {"NAME": f"pzls_test_{os.getpid()}_{secrets.token_hex(4)}"},
        }
    }
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["ENGINE"] = "tests.postgresql"
    if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
        DATABASES["default"]["OPTIONS"] = {**DATABASES["default"].get("OPTIONS", {}), "charset": "utf8mb4"}
        DATABASES["default"]["TEST"].update(CHARSET="utf8mb4", COLLATION="utf8mb4_unicode_ci")
    PZLS_TOKEN_STORE, PZLS_SYNC_STORE = store_settings("database", PZLS_DATA_DIR)  # noqa: F405
elif PZLS_TEST_STORAGE != "files":
    raise ImproperlyConfigured(f"PZLS_TEST_STORAGE must be files or database, not {PZLS_TEST_STORAGE!r}")

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(_TMP, "test.sqlite3")}
