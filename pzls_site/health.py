"""Whether this server can do its job: a data directory that takes a write and a database that answers."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from django.conf import settings
from django.db import connection

import pzls_site
from pzls_site.files import probe_write

logger = logging.getLogger("pzls")


def server_version() -> str:
    return pzls_site.__version__


def _unwritable(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Data directory is full"
    if exc.errno == errno.EROFS:
        return "Data directory is read-only"
    return "Data directory is not writable"


def problem() -> str | None:
    """None when healthy, else a short description of what is wrong (details are logged)."""
    data_dir = Path(settings.PZLS_DATA_DIR)
    try:
        probe_write(data_dir)
    except OSError as exc:
        logger.exception("health: data directory %s cannot take a write", data_dir)
        return _unwritable(exc)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        logger.exception("health: database does not answer")
        return "Database unavailable"
    return None
