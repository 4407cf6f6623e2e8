"""Every variable an operator sets, read from the environment once and checked.

``pzls_site.settings`` (Django), ``pzls_site.gunicorn_conf`` (gunicorn) and
``manage.py`` take their configuration from ``current()`` and nowhere else:
each ``PZLS_*`` variable, ``PORT`` and ``DATABASE_URL`` is parsed here into a
typed value. A value that is malformed or out of range raises ``EnvError``,
whose message is one line naming the variable, the value and what is allowed;
``current_or_exit()`` prints that line and exits with status 2 before Django,
gunicorn or any request ever sees the value. An unset or blank variable
takes its default. README.md lists every variable.

This module imports nothing from Django, so it can check the environment
before Django is loaded (gunicorn reads its configuration first).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dj_database_url

from query import hosts

BASE_DIR = Path(__file__).resolve().parent.parent

# Exit status of manage.py and gunicorn when the environment is refused.
EXIT_STATUS = 2

# The roles of accounts.models.Role (a test keeps the two equal): that module
# defines models, which cannot be imported before Django is set up.
ROLES = ("admin", "analyst")
# accounts.models.USERNAME_MAX_LENGTH, for the same reason (a test keeps the two equal).
USERNAME_MAX_LENGTH = 64

STORAGE_BACKENDS = {
    "files": ("accounts.backends.json_file.JSONFileTokenStore", "sync.backends.json_file.JSONFileRepositoryStore"),
    "database": ("accounts.backends.database.DatabaseTokenStore", "sync.backends.database.DatabaseRepositoryStore"),
}

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# The database servers PZLS supports (README: PostgreSQL, MySQL 8 / MariaDB 10.5+, SQLite).
DATABASE_ENGINES = ("django.db.backends.postgresql", "django.db.backends.mysql", "django.db.backends.sqlite3")


class EnvError(ValueError):
    """A variable's value is not allowed; the message is one line naming the variable, the value and what is allowed."""

    def __init__(self, name: str, raw: str, expected: str, problem: str | None = None) -> None:
        self.name = name
        detail = f"{problem}; expected {expected}" if problem else f"expected {expected}"
        super().__init__(f"{name}={raw!r} is not allowed: {detail}")


# --- parse functions: (variable name, value as set) -> typed value, or EnvError ---


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise EnvError(name, raw, "true or false (or 1/0, yes/no, on/off)")


def _range_text(minimum: float, maximum: float | None) -> str:
    if maximum is None:
        return f"of at least {minimum:g}"
    return f"from {minimum:g} to {maximum:g}"


def parse_number(name: str, raw: str, *, minimum: float, maximum: float | None = None) -> float:
    expected = f"a number {_range_text(minimum, maximum)}"
    try:
        value = float(raw)
    except ValueError:
        raise EnvError(name, raw, expected) from None
    if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
        raise EnvError(name, raw, expected)
    return value


_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_integer(name: str, raw: str, *, minimum: int, maximum: int | None = None) -> int:
    expected = f"a whole number {_range_text(minimum, maximum)}"
    if not _INTEGER.fullmatch(raw.strip()):
        raise EnvError(name, raw, expected)
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        raise EnvError(name, raw, expected)
    return value


@dataclass(frozen=True)
class Rate:
    """A rate limit: at most ``limit`` attempts per ``period_s`` seconds."""

    limit: int
    period_s: int


_PERIODS = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
}


def parse_rate(name: str, raw: str) -> Rate:
    """``N/period``: ``10/minute``, ``100/hour``, ``3/second``, ``1000/day``; also ``5/m``, ``2/min``, ``6/hours``."""
    count, slash, period = raw.strip().partition("/")
    period_s = _PERIODS.get(period.strip().lower())
    if not slash or not _INTEGER.fullmatch(count.strip()) or period_s is None:
        raise EnvError(name, raw, "a rate such as 10/minute (N/second, N/minute, N/hour or N/day)")
    limit = int(count)
    if limit < 1:
        raise EnvError(name, raw, "a rate of at least 1 attempt, such as 10/minute")
    return Rate(limit=limit, period_s=period_s)


def parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``, compared without case and surrounding spaces."""
    value = raw.strip().lower()
    if value not in choices:
        raise EnvError(name, raw, f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0])
    return value


def parse_list(name: str, raw: str) -> list[str]:
    """Comma-separated items, each stripped; empty items are dropped."""
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_host_patterns(name: str, raw: str) -> list[str]:
    """A list of query host patterns (``*``, names with ``*`` wildcards, addresses, networks; optional ``:port``)."""
    items = parse_list(name, raw)
    for item in items:
        if item == "*":
            continue
        try:
            hosts.parse_pattern(item)
        except hosts.HostError as exc:
            raise EnvError(
                name,
                raw,
                "comma-separated host names (with * wildcards), IP addresses or networks, each optionally with :port",
                str(exc),
            ) from None
    return items


def parse_username(name: str, raw: str) -> str:
    """A username as registration allows it: at most 64 characters, no control characters; surrounding spaces dropped."""
    value = raw.strip()
    if len(value) > USERNAME_MAX_LENGTH or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise EnvError(name, raw, f"a username of at most {USERNAME_MAX_LENGTH} characters without control characters")
    return value


def _matches_every_host(item: str) -> bool:
    """Does the allow-list pattern ``item`` let a query reach any host (``*``, ``*.*``, ``0.0.0.0/0``, ``::/0``)?"""
    if item == "*":
        return True
    pattern = hosts.parse_pattern(item)
    if pattern.network is not None:
        return pattern.network.prefixlen == 0
    # A name pattern made of wildcards and dots only names no host in particular.
    return not re.sub(r"\[[^\]]*\]|[*?.]", "", pattern.name or "")


def check_anonymous_user(values: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """With ``PZLS_ANONYMOUS_USER`` set, anyone who reaches the server may query as that account:
    ``PZLS_QUERY_ALLOWED_HOSTS`` must then name the hosts, and no pattern may match every host."""
    if not values.get("anonymous_user"):
        return
    name = "PZLS_QUERY_ALLOWED_HOSTS"
    expected = "an explicit list of the database hosts pipelines need, none matching every host (*, 0.0.0.0/0)"
    if "query_allowed_hosts" not in values:
        raise EnvError(name, environ.get(name, ""), expected, "it must be set when PZLS_ANONYMOUS_USER is set")
    open_patterns = [item for item in values["query_allowed_hosts"] if _matches_every_host(item)]
    if open_patterns:
        problem = f"{', '.join(open_patterns)} lets token-less callers (PZLS_ANONYMOUS_USER) reach any host"
        raise EnvError(name, environ[name], expected, problem)


def parse_roles(name: str, raw: str) -> list[str]:
    items = parse_list(name, raw)
    unknown = [item for item in items if item not in ROLES]
    if unknown:
        problem = f"unknown role{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
        raise EnvError(name, raw, f"comma-separated roles among {', '.join(ROLES)}", problem)
    return items


def _without_password(url: str) -> str:
    """``url`` with the password of its user part replaced, for messages that are logged."""
    return re.sub(r"^([^:/?#]*://[^:/?#@]*:)[^/?#@]*@", r"\1***@", url)


def parse_database_url(name: str, raw: str) -> dict[str, Any]:
    """Django's DATABASES entry for a URL, connections kept 10 minutes and checked before reuse."""
    expected = (
        "a database URL such as postgres://user:password@host:5432/name, "
        "mysql://user:password@host:3306/name or sqlite:////absolute/path.sqlite3"
    )
    shown = _without_password(raw.strip())
    try:
        config = dict(dj_database_url.parse(raw.strip(), conn_max_age=600, conn_health_checks=True))
    except ValueError:  # dj_database_url's errors for unknown schemes and malformed URLs
        raise EnvError(name, shown, expected) from None
    if config.get("ENGINE") not in DATABASE_ENGINES:
        raise EnvError(name, shown, expected, f"{config.get('ENGINE')} is not supported")
    return config


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_bind_host(name: str, raw: str) -> str:
    """An IP address (IPv6 with or without brackets) or a host name, without a port."""
    value = raw.strip()
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(value):
        raise EnvError(name, raw, "an IP address or a host name, without a port (such as 0.0.0.0 or 127.0.0.1)")
    return value


_DOTTED_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def parse_dotted_path(name: str, raw: str) -> str:
    value = raw.strip()
    if not _DOTTED_PATH.fullmatch(value):
        raise EnvError(name, raw, "the dotted path of a class, such as accounts.backends.database.DatabaseTokenStore")
    return value


def parse_path(name: str, raw: str) -> Path:
    return Path(raw.strip()).resolve()


def parse_text(name: str, raw: str) -> str:
    return raw.strip()


# --- the whole environment -------------------------------------------------


def store_settings(
    storage: str, data_dir: Path | str, token_backend: str | None = None, sync_backend: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(PZLS_TOKEN_STORE, PZLS_SYNC_STORE)``: the backends of ``storage`` (or the classes named), located in ``data_dir``."""
    if storage not in STORAGE_BACKENDS:
        raise ValueError(f"unknown storage {storage!r}; expected one of {', '.join(STORAGE_BACKENDS)}")
    default_token, default_sync = STORAGE_BACKENDS[storage]
    options = {"location": str(data_dir)}
    return (
        {"BACKEND": token_backend or default_token, "OPTIONS": dict(options)},
        {"BACKEND": sync_backend or default_sync, "OPTIONS": dict(options)},
    )


def _default_workers() -> int:
    return min(2 * (os.cpu_count() or 1) + 1, 8)


@dataclass(frozen=True)
class Env:
    """The checked environment; README.md's configuration table, one field per variable."""

    port: int = 3456
    bind_host: str = "0.0.0.0"
    data_dir: Path = BASE_DIR / "data"
    workers: int = field(default_factory=_default_workers)
    worker_timeout_s: int = 120
    access_log: str | None = None
    log_level: str = "info"
    secret_key: str = field(default="", repr=False)
    debug: bool = False
    allowed_hosts: list[str] = field(default_factory=lambda: ["*"])
    database: dict[str, Any] | None = field(default=None, repr=False)
    max_body_mb: float = 50
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    token_ttl_hours: float = 24
    token_renew_interval_s: float = 60
    login_rate: Rate = Rate(limit=10, period_s=60)
    auth_rate_per_address: Rate = Rate(limit=30, period_s=60)
    anonymous_user: str | None = None
    registration: str = "open"
    trusted_proxies: int = 0
    https: bool = False
    storage: str = "files"
    token_backend: str | None = None
    sync_backend: str | None = None
    query_roles: list[str] = field(default_factory=lambda: ["admin"])
    query_allowed_hosts: list[str] = field(default_factory=lambda: ["*"])
    query_read_only: bool = True
    query_timeout_s: float = 30
    query_connect_timeout_s: float = 10
    query_max_rows: int = 10000
    query_max_bytes: int = 50 * 1024 * 1024
    query_allow_superuser: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Env:
        """Parse and check every variable; the first refused value raises ``EnvError``."""
        values: dict[str, Any] = {}

        def read(attribute: str, name: str, parse: Callable[[str, str], Any]) -> None:
            raw = environ.get(name)
            if raw is not None and raw.strip():
                values[attribute] = parse(name, raw)

        def number(minimum: float) -> Callable[[str, str], float]:
            return lambda name, raw: parse_number(name, raw, minimum=minimum)

        def integer(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
            return lambda name, raw: parse_integer(name, raw, minimum=minimum, maximum=maximum)

        def choice(*choices: str) -> Callable[[str, str], str]:
            return lambda name, raw: parse_choice(name, raw, choices)

        read("port", "PORT", integer(1, 65535))
        read("bind_host", "PZLS_BIND_HOST", parse_bind_host)
        read("data_dir", "PZLS_DATA_DIR", parse_path)
        read("workers", "PZLS_WORKERS", integer(1))
        read("worker_timeout_s", "PZLS_WORKER_TIMEOUT_S", integer(0))
        read("access_log", "PZLS_ACCESS_LOG", parse_text)
        read("log_level", "PZLS_LOG_LEVEL", choice(*LOG_LEVELS))
        read("secret_key", "PZLS_SECRET_KEY", parse_text)
        read("debug", "PZLS_DEBUG", parse_bool)
        read("allowed_hosts", "PZLS_ALLOWED_HOSTS", parse_list)
        read("database", "DATABASE_URL", parse_database_url)
        read("max_body_mb", "PZLS_MAX_BODY_MB", number(0))
        read("cors_origins", "PZLS_CORS_ORIGINS", parse_list)
        read("token_ttl_hours", "PZLS_TOKEN_TTL_HOURS", number(0.001))
        read("token_renew_interval_s", "PZLS_TOKEN_RENEW_INTERVAL_S", number(0))
        read("login_rate", "PZLS_LOGIN_RATE", parse_rate)
        read("auth_rate_per_address", "PZLS_AUTH_RATE_PER_ADDRESS", parse_rate)
        read("anonymous_user", "PZLS_ANONYMOUS_USER", parse_username)
        read("registration", "PZLS_REGISTRATION", choice("open", "closed"))
        read("trusted_proxies", "PZLS_TRUSTED_PROXIES", integer(0))
        read("https", "PZLS_HTTPS", parse_bool)
        read("storage", "PZLS_STORAGE", choice(*STORAGE_BACKENDS))
        read("token_backend", "PZLS_TOKEN_BACKEND", parse_dotted_path)
        read("sync_backend", "PZLS_SYNC_BACKEND", parse_dotted_path)
        read("query_roles", "PZLS_QUERY_ROLES", parse_roles)
        read("query_allowed_hosts", "PZLS_QUERY_ALLOWED_HOSTS", parse_host_patterns)
        read("query_read_only", "PZLS_QUERY_READ_ONLY", parse_bool)
        read("query_timeout_s", "PZLS_QUERY_TIMEOUT_S", number(0.001))
        read("query_connect_timeout_s", "PZLS_QUERY_CONNECT_TIMEOUT_S", number(1))
        read("query_max_rows", "PZLS_QUERY_MAX_ROWS", integer(1))
        read("query_max_bytes", "PZLS_QUERY_MAX_BYTES", integer(1))
        read("query_allow_superuser", "PZLS_QUERY_ALLOW_SUPERUSER", parse_bool)
        check_anonymous_user(values, environ)
        return cls(**values)

    @property
    def bind(self) -> str:
        """gunicorn's ``bind``: ``host:port``, an IPv6 address in brackets."""
        return f"[{self.bind_host}]:{self.port}" if ":" in self.bind_host else f"{self.bind_host}:{self.port}"

    def stores(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(PZLS_TOKEN_STORE, PZLS_SYNC_STORE)`` for this environment."""
        return store_settings(self.storage, self.data_dir, self.token_backend, self.sync_backend)


def _is_ours(name: str) -> bool:
    return name.startswith("PZLS_") or name in ("PORT", "DATABASE_URL")


def current() -> Env:
    """This process's environment, parsed once (again only if one of its variables has changed since)."""
    return _parse(frozenset((k, v) for k, v in os.environ.items() if _is_ours(k)))


@functools.lru_cache(maxsize=1)
def _parse(variables: frozenset[tuple[str, str]]) -> Env:
    return Env.from_environ(dict(variables))


def current_or_exit() -> Env:
    """``current()``, or the refusal's one line on standard error and exit status 2."""
    try:
        return current()
    except EnvError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_STATUS) from None
