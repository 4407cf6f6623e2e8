#!/usr/bin/env bash
# Installs whatever is missing for PZLS to run and be tested: the Debian
# packages that requirements need to build, a virtualenv in .venv, and the
# pinned requirements. With --test it also installs what only the test suite
# needs (Chromium for the browser tests). Safe to run again: each step checks
# before it acts, so a second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${PZLS_VENV:-.venv}
SYSTEM_PACKAGES=(pkg-config libmariadb-dev gcc)
if [ "${1:-}" = "--test" ]; then
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

stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
