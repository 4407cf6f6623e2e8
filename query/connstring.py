"""Parse the connection URL of ``POST /api/query`` (PROTOCOL.md §5).

Pure: imports nothing from Django or a driver. ``parse_connection_string``
turns ``postgres://user:p%40ss@db.example.com:5432/sales?sslmode=require``
into a ``ConnectionSpec``. Only the options listed in ``SUPPORTED_OPTIONS`` are
accepted: libpq and the MySQL client understand many more (``hostaddr``,
``passfile``, ``options=-c default_transaction_read_only=off``, ``service``,
``read_default_file``...), and each of those would let a caller override a
guard or read files on the PZLS host, so anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

POSTGRESQL = "postgresql"
MYSQL = "mysql"

SCHEMES = {"postgres": POSTGRESQL, "postgresql": POSTGRESQL, "mysql": MYSQL, "mariadb": MYSQL}
DEFAULT_PORTS = {POSTGRESQL: 5432, MYSQL: 3306}
ENGINE_LABELS = {POSTGRESQL: "PostgreSQL", MYSQL: "MySQL/MariaDB"}

_PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_MYSQL_SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
# libpq's sslmode names, accepted on MySQL URLs too so one habit works for both.
_PG_TO_MYSQL_SSL = {
    "disable": "DISABLED",
    "allow": "PREFERRED",
    "prefer": "PREFERRED",
    "require": "REQUIRED",
    "verify-ca": "VERIFY_CA",
    "verify-full": "VERIFY_IDENTITY",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

SUPPORTED_OPTIONS = {
    POSTGRESQL: ("sslmode", "ssl", "application_name"),
    MYSQL: ("charset", "ssl-mode", "ssl_mode", "sslmode", "ssl"),
}

MAX_LENGTH = 4096


class ConnectionStringError(ValueError):
    """The connection string cannot be used; the message is safe to show (no password)."""


@dataclass(frozen=True)
class ConnectionSpec:
    """Where to connect and as whom. ``options`` holds normalised driver options."""

    engine: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``engine://host:port/database`` for messages and logs: never the user or password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.engine}://{host}:{self.port}/{self.database}"


def _has_control_characters(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def parse_connection_string(text: str) -> ConnectionSpec:
    """Parse a ``postgres://``, ``postgresql://``, ``mysql://`` or ``mariadb://`` URL.

    User, password and database are percent-decoded. Raises
    ``ConnectionStringError`` with a message that never contains the password.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConnectionStringError("connectionString must be a non-empty string")
    text = text.strip()
    if len(text) > MAX_LENGTH:
        raise ConnectionStringError(f"connectionString is longer than {MAX_LENGTH} characters")
    if _has_control_characters(text):
        raise ConnectionStringError("connectionString must not contain control characters")
    scheme, sep, _ = text.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise ConnectionStringError(
            "connectionString must be a URL such as postgres://user:password@host:5432/database"
        )
    engine = SCHEMES.get(scheme.lower())
    if engine is None:
        raise ConnectionStringError(
            f"Unsupported database scheme {scheme!r}: use postgres://, postgresql://, mysql:// or mariadb://"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        # urllib's message can quote the whole netloc, password included.
        raise ConnectionStringError("connectionString is not a valid URL (check the host and port)") from None
    if parts.fragment:
        raise ConnectionStringError("connectionString must not contain '#' (percent-encode it as %23 in a password)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ConnectionStringError("connectionString has no host")
    if port == 0:
        raise ConnectionStringError("connectionString has an invalid port 0")
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    database = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if "/" in database:
        raise ConnectionStringError("connectionString's path must be a single database name")
    if _has_control_characters(user + password + database):
        raise ConnectionStringError("connectionString must not contain control characters")
    return ConnectionSpec(
        engine=engine,
        host=host.lower(),
        port=port or DEFAULT_PORTS[engine],
        user=user,
        password=password,
        database=database,
        options=_parse_options(engine, parts.query),
    )


def _parse_options(engine: str, query: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConnectionStringError("connectionString has malformed query parameters") from None
    raw: dict[str, str] = {}
    for key, value in pairs:
        if key not in SUPPORTED_OPTIONS[engine]:
            supported = ", ".join(SUPPORTED_OPTIONS[engine])
            raise ConnectionStringError(
                f"Unsupported connection option {key!r} for {ENGINE_LABELS[engine]} (supported: {supported})"
            )
        if key in raw:
            raise ConnectionStringError(f"Connection option {key!r} is given twice")
        raw[key] = value
    return _normalise_pg(raw) if engine == POSTGRESQL else _normalise_mysql(raw)


def _flag(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConnectionStringError(f"Connection option {key!r} must be true or false")


def _normalise_pg(raw: dict[str, str]) -> dict[str, str]:
    options: dict[str, str] = {}
    if "sslmode" in raw and "ssl" in raw:
        raise ConnectionStringError("Give either 'sslmode' or 'ssl', not both")
    if "sslmode" in raw:
        if raw["sslmode"] not in _PG_SSLMODES:
            raise ConnectionStringError(f"sslmode must be one of {', '.join(_PG_SSLMODES)}")
        options["sslmode"] = raw["sslmode"]
    if "ssl" in raw:
        # node-postgres style (?ssl=true), which Pazator users may paste.
        options["sslmode"] = "require" if _flag("ssl", raw["ssl"]) else "disable"
    if "application_name" in raw:
        name = raw["application_name"]
        if len(name) > 63 or not name.isprintable():
            raise ConnectionStringError("application_name must be at most 63 printable characters")
        options["application_name"] = name
    return options


def _normalise_mysql(raw: dict[str, str]) -> dict[str, str]:
    options: dict[str, str] = {}
    if "charset" in raw:
        if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", raw["charset"]):
            raise ConnectionStringError("charset must be a character set name such as utf8mb4")
        options["charset"] = raw["charset"].lower()
    modes = [key for key in ("ssl-mode", "ssl_mode", "sslmode", "ssl") if key in raw]
    if len(modes) > 1:
        raise ConnectionStringError(f"Give only one of {', '.join(modes)}")
    if modes:
        key = modes[0]
        value = raw[key]
        if key == "ssl":
            options["ssl_mode"] = "REQUIRED" if _flag(key, value) else "DISABLED"
        elif value in _PG_TO_MYSQL_SSL:
            options["ssl_mode"] = _PG_TO_MYSQL_SSL[value]
        elif value.upper() in _MYSQL_SSL_MODES:
            options["ssl_mode"] = value.upper()
        else:
            raise ConnectionStringError(f"{key} must be one of {', '.join(_MYSQL_SSL_MODES)}")
    return options
