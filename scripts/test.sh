#!/usr/bin/env bash
# Runs the test suite twice (extra arguments go to both pytest runs):
#  1. everything, on the default files storage (Django's database: a throwaway SQLite file);
#  2. the storage-dependent suites again on the database storage, on a throwaway
#     PostgreSQL database (PZLS_TEST_STORAGE=database, see tests/settings.py).
# Both must pass. Without a reachable PostgreSQL the second run is skipped with
# a warning on a laptop, and fails in CI (CI=true), where it must run.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${PZLS_VENV:-.venv}
PG_URL=${PZLS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

"$VENV/bin/python" -m pytest "$@"
files_status=$?

DATABASE_SUITES=(
  tests/test_accounts.py
  tests/test_sync.py
  tests/test_api_general.py
  tests/test_commands.py
  tests/test_token_store_contract.py
  tests/test_repository_store_contract.py
  tests/test_storage_database.py
  tests/test_storage_migration.py
)
# These look at the files of the files storage (tokens.json, repo_<id>.json);
# tests/test_storage_database.py checks the same promises on the database rows.
FILES_ONLY=(
  tests/test_accounts.py::test_token_store_holds_only_sha256_digests
  tests/test_accounts.py::test_renewal_is_written_at_most_once_a_minute
  tests/test_accounts.py::test_login_incomplete_is_an_error_and_issues_nothing
  tests/test_accounts.py::test_admin_delete_removes_user_tokens_repository_and_changelog
)

if PZLS_PG_URL="$PG_URL" "$VENV/bin/python" -c 'import os, psycopg2; psycopg2.connect(os.environ["PZLS_PG_URL"], connect_timeout=5).close()' 2>/dev/null \
  || [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
  echo "=== again on the database storage (PostgreSQL) ==="
  PZLS_TEST_STORAGE=database "$VENV/bin/python" -m pytest "${DATABASE_SUITES[@]}" \
    $(printf -- '--deselect %s ' "${FILES_ONLY[@]}") "$@"
  database_status=$?
else
  echo "WARNING: PostgreSQL at $PG_URL does not answer: the database-storage run was skipped (it must run in CI)" >&2
  database_status=0
fi

# --- 3. the account suite again on MariaDB/MySQL (database storage) ----------------------
# Usernames must fit every column of every supported database: tests/test_accounts.py
# runs on a throwaway test database of the server PZLS_TEST_MYSQL_URL names
# (utf8mb4, see tests/settings.py). Skipped with a warning on a laptop without
# one, required in CI.
MYSQL_URL=${PZLS_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
if PZLS_MYSQL_URL="$MYSQL_URL" "$VENV/bin/python" -c 'import os, dj_database_url, MySQLdb
c = dj_database_url.parse(os.environ["PZLS_MYSQL_URL"])
MySQLdb.connect(host=c["HOST"], port=int(c["PORT"] or 3306), user=c["USER"], password=c["PASSWORD"] or "", connect_timeout=5).close()' 2>/dev/null \
  || [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
  echo "=== the account suite on MariaDB/MySQL ==="
  PZLS_TEST_STORAGE=database PZLS_TEST_DATABASE_URL="$MYSQL_URL" "$VENV/bin/python" -m pytest tests/test_accounts.py \
    $(printf -- '--deselect %s ' "${FILES_ONLY[@]}") "$@"
  mariadb_status=$?
else
  echo "WARNING: MariaDB/MySQL at $MYSQL_URL does not answer: the account suite did not run there (it must in CI)" >&2
  mariadb_status=0
fi

[ "$files_status" -eq 0 ] && [ "$database_status" -eq 0 ] && [ "$mariadb_status" -eq 0 ]
