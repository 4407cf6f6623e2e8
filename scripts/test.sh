#!/usr/bin/env bash
# Runs the test suite three times; every run must pass:
#  1. everything, on the default files storage (Django's database: a throwaway SQLite file);
#  2. the tests marked `storage` again on the database storage, on a throwaway
#     PostgreSQL database (PZLS_TEST_STORAGE=database, see tests/settings.py),
#     except those marked `files_only` (they look at the files storage's files).
# Markers are declared in pytest.ini. Extra arguments go to both runs; a marker
# expression (-m EXPR) narrows both, e.g. `scripts/test.sh -m live`. A second
# run that selects nothing (exit status 5) is fine: the selection has no
# storage-dependent test. Without a reachable PostgreSQL the second run is
# skipped with a warning on a laptop, and fails in CI (CI=true), where it must run.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${PZLS_VENV:-.venv}
PG_URL=${PZLS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

args=()
marker=""
while [ $# -gt 0 ]; do
  case "$1" in
    -m) marker="${2:-}"; shift; [ $# -gt 0 ] && shift ;;
    -m*) marker="${1#-m}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
combine() { # the database run's marker expression, narrowed by the caller's
  if [ -n "$marker" ]; then echo "($1) and ($marker)"; else echo "$1"; fi
}

echo "=== on the files storage ==="
if [ -n "$marker" ]; then
  "$VENV/bin/python" -m pytest -m "$marker" "${args[@]}"
else
  "$VENV/bin/python" -m pytest "${args[@]}"
fi
files_status=$?
if [ "$files_status" -eq 5 ]; then
  echo "ERROR: no test matches this selection" >&2
fi

case "$(echo "${CI:-}" | tr '[:upper:]' '[:lower:]')" in 1 | true | yes) in_ci=1 ;; *) in_ci="" ;; esac
if PZLS_PG_URL="$PG_URL" "$VENV/bin/python" -c 'import os, psycopg2; psycopg2.connect(os.environ["PZLS_PG_URL"], connect_timeout=5).close()' 2>/dev/null \
  || [ -n "$in_ci" ]; then
  echo "=== again on the database storage (PostgreSQL) ==="
  PZLS_TEST_STORAGE=database "$VENV/bin/python" -m pytest -m "$(combine "storage and not files_only")" "${args[@]}"
  database_status=$?
  if [ "$database_status" -eq 5 ]; then
    echo "(no storage-dependent test in this selection: nothing to run again)"
    database_status=0
  fi
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
  || [ -n "$in_ci" ]; then
  echo "=== the account suite on MariaDB/MySQL ==="
  PZLS_TEST_STORAGE=database PZLS_TEST_DATABASE_URL="$MYSQL_URL" "$VENV/bin/python" -m pytest tests/test_accounts.py \
    -m "$(combine "storage and not files_only")" "${args[@]}"
  mariadb_status=$?
  if [ "$mariadb_status" -eq 5 ]; then
    mariadb_status=0
  fi
else
  echo "WARNING: MariaDB/MySQL at $MYSQL_URL does not answer: the account suite did not run there (it must in CI)" >&2
  mariadb_status=0
fi

[ "$files_status" -eq 0 ] && [ "$database_status" -eq 0 ] && [ "$mariadb_status" -eq 0 ]
