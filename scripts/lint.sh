#!/usr/bin/env bash
# Static checks over the whole project, run by `make lint` and before the tests
# by `make test`: ruff's lint rules, ruff's formatting (checked, never applied
# here: `make format` applies it) and mypy with the Django and DRF plugins.
# All three run even when one fails, so one pass reports everything; the
# script fails if any of them did. Configuration: pyproject.toml.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${PZLS_VENV:-.venv}

status=0
echo "=== ruff check ==="
"$VENV/bin/ruff" check . || status=1
echo "=== ruff format --check ==="
"$VENV/bin/ruff" format --check . || status=1
echo "=== mypy ==="
"$VENV/bin/mypy" . || status=1
exit "$status"
