#!/usr/bin/env bash
# Installs whatever is missing for PZLS: the Debian packages that requirements
# need to build, a virtualenv in .venv, and the pinned requirements.
#   (no option)  what the server needs to run: requirements.txt (`make run`);
#   --dev        also what the tests, the benchmark and the tools need:
#                requirements-dev.txt (`make bench`);
#   --test       --dev, and Chromium for the browser tests (`make test`).
# Safe to run again: each step checks before it acts, so a second run takes
# about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${PZLS_VENV:-.venv}
case "${1:-}" in
  "") level=runtime ;;
  --dev) level=dev ;;
  --test) level=test ;;
  *) echo "usage: $0 [--dev | --test]" >&2; exit 2 ;;
esac

SYSTEM_PACKAGES=(pkg-config libmariadb-dev gcc)
if [ "$level" = test ]; then
  SYSTEM_PACKAGES+=(chromium)
fi

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! command -v python3.11 >/dev/null 2>&1; then
  missing+=(python3.11 python3.11-venv python3.11-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  python3.11 -m venv "$VENV"
fi

# The stamp holds the digest of the requirements last installed: of
# requirements.txt alone (runtime) or of both files (dev). A dev install of
# the current files also satisfies the runtime level, so `make run` after
# `make test` installs nothing; a change to either file installs again.
stamp="$VENV/.requirements.sha256"
runtime_digest=$(cat requirements.txt | sha256sum | cut -d' ' -f1)
dev_digest=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
installed=$(cat "$stamp" 2>/dev/null || true)
if [ "$level" = runtime ]; then
  file=requirements.txt want=$runtime_digest
else
  file=requirements-dev.txt want=$dev_digest
fi
if [ "$installed" != "$want" ] && { [ "$level" != runtime ] || [ "$installed" != "$dev_digest" ]; }; then
  echo "setup: installing $file"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$file"
  echo "$want" > "$stamp"
fi
