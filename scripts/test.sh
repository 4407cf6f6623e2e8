#!/usr/bin/env bash
# Runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PZLS_VENV:-.venv}
exec "$VENV/bin/python" -m pytest "$@"
