#!/usr/bin/env bash
# Applies migrations, collects the admin site's static files and serves PZLS with gunicorn (what `make run` ends with).
# PORT (default 3456) and PZLS_DATA_DIR (default ./data) choose where.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PZLS_VENV:-.venv}
export DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-pzls_site.settings}
"$VENV/bin/python" manage.py migrate --noinput -v 0
# Several servers may start at once from one checkout; one collects at a time.
flock staticfiles.lock "$VENV/bin/python" manage.py collectstatic --noinput -v 0
exec "$VENV/bin/gunicorn" -c pzls_site/gunicorn_conf.py pzls_site.wsgi:application
