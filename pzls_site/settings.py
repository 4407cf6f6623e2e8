"""Django settings for PZLS.

Every setting an operator may change comes from the environment here and only
here, prefixed ``PZLS_`` (plus ``PORT`` and ``DATABASE_URL``). The defaults run
on a laptop: ``make run`` with nothing set serves on port 3456 with its data in
``./data``. README.md lists every setting.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from pzls_site import __version__ as _PZLS_VERSION

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def _env_number(name: str, default: float, *, minimum: float = 0, integer: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {raw!r}")
    return value


def _env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- Where PZLS keeps its data -------------------------------------------

PZLS_DATA_DIR = Path(os.environ.get("PZLS_DATA_DIR") or BASE_DIR / "data").resolve()
PZLS_DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("PZLS_SECRET_KEY", "")
if not SECRET_KEY:
    # A per-installation key kept beside the data, so sessions of the admin
    # site survive restarts without the operator having to invent one.
    _key_file = PZLS_DATA_DIR / "secret_key"
    if not _key_file.exists():
        import secrets

        _tmp = _key_file.with_suffix(f".tmp{os.getpid()}")
        _tmp.write_text(secrets.token_urlsafe(50))
        os.chmod(_tmp, 0o600)
        os.replace(_tmp, _key_file)
    SECRET_KEY = _key_file.read_text().strip()

DEBUG = _env_bool("PZLS_DEBUG", False)
ALLOWED_HOSTS = _env_list("PZLS_ALLOWED_HOSTS", ["*"])

# --- Applications --------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "sync",
    "resolve",
    "query",
]

MIDDLEWARE = [
    # Outermost, so that even the early refusals below carry the security headers.
    "pzls_site.middleware.SecurityHeadersMiddleware",
    "pzls_site.middleware.ApiBoundaryMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The admin site's CSS and JS, served by the app server itself: PZLS has
    # no separate web server in front of it to do that.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "pzls_site.urls"
WSGI_APPLICATION = "pzls_site.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ------------------------------------------------------------
# SQLite in the data directory unless DATABASE_URL names another server.
# WAL and IMMEDIATE transactions let several gunicorn workers write safely.

_SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(PZLS_DATA_DIR / "db.sqlite3"),
            "OPTIONS": _SQLITE_OPTIONS,
            # One connection per worker, kept: opening SQLite (and its PRAGMAs)
            # for every request cost more than the request itself.
            "CONN_MAX_AGE": None,
            "CONN_HEALTH_CHECKS": True,
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(_SQLITE_OPTIONS)
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    # MySQL/MariaDB: talk utf8mb4, so 4-byte characters (emoji) reach the
    # server intact; the account columns are utf8mb4 themselves whatever the
    # database's default (accounts.models.ExactCharField).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("charset", "utf8mb4")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.ScryptPasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

# The API's rule (accounts.services.validate_password) for Django's own forms
# and createsuperuser too.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 6}},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# `make run` collects the admin site's static files; hashed names let
# browsers cache them forever and whitenoise serves them pre-compressed.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- HTTP API ------------------------------------------------------------

PZLS_MAX_BODY_MB = _env_number("PZLS_MAX_BODY_MB", 50, minimum=0)
PZLS_MAX_BODY_BYTES = int(PZLS_MAX_BODY_MB * 1024 * 1024)
# Django's own form parsing (the admin site) keeps its default limits; the
# API reads bodies through PZLS's parser, which enforces PZLS_MAX_BODY_MB.

REST_FRAMEWORK = {
    "DEFAULT_PARSER_CLASSES": ["pzls_site.json.ORJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["pzls_site.json.ORJSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "pzls_site.json.JSONOnlyNegotiation",
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "pzls_site.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI description (/api/schema, browsable at /api/docs); the bodies
# are written out in pzls_site/schema.py from PROTOCOL.md.
SPECTACULAR_SETTINGS = {
    "TITLE": "PZLS API",
    "DESCRIPTION": (
        "The sync server of Pazator (PROTOCOL.md). Bodies are JSON; every non-2xx answer is "
        '{"error": "..."} (POST /api/query: {"success": false, "error": "..."} for 400 and 403). '
        "Every URL also accepts a trailing slash."
    ),
    "VERSION": _PZLS_VERSION,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "PREPROCESSING_HOOKS": ["pzls_site.schema.api_paths_only"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "pzls_site.schema.complete"],
    # Swagger UI's files come from this server (drf-spectacular-sidecar), not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# CORS for every /api/ URL. "*" by default: the API never authenticates by
# cookie, so no origin gains ambient credentials.
PZLS_CORS_ORIGINS = _env_list("PZLS_CORS_ORIGINS", ["*"])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_ALL_ORIGINS = "*" in PZLS_CORS_ORIGINS
CORS_ALLOWED_ORIGINS = [] if CORS_ALLOW_ALL_ORIGINS else PZLS_CORS_ORIGINS
CORS_ALLOW_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CORS_ALLOW_HEADERS = ["authorization", "content-type", "if-none-match", "accept-encoding"]
CORS_EXPOSE_HEADERS = ["ETag", "Retry-After", "WWW-Authenticate"]
CORS_PREFLIGHT_MAX_AGE = 86400

# --- Browser-facing security -----------------------------------------------
# The admin site is the only part that uses cookies. Its session cookie is
# never readable by scripts and not sent on cross-site subrequests; with
# PZLS_HTTPS (clients reach PZLS over TLS, normally terminated at the reverse
# proxy) the session and CSRF cookies are sent over TLS only, and when
# PZLS_TRUSTED_PROXIES names a proxy, its X-Forwarded-Proto tells Django the
# request came over TLS (the proxy must set that header, overwriting the client's).

PZLS_HTTPS = _env_bool("PZLS_HTTPS", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PZLS_HTTPS
if PZLS_HTTPS and int(_env_number("PZLS_TRUSTED_PROXIES", 0, integer=True)) > 0:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Accounts ------------------------------------------------------------

PZLS_TOKEN_TTL_HOURS = _env_number("PZLS_TOKEN_TTL_HOURS", 24, minimum=0.001)
# How often a token's "last used" is written back; reads within this many
# seconds of the last write do not rewrite the token store.
PZLS_TOKEN_RENEW_INTERVAL_S = _env_number("PZLS_TOKEN_RENEW_INTERVAL_S", 60, minimum=0)
PZLS_LOGIN_RATE = os.environ.get("PZLS_LOGIN_RATE", "10/minute")
PZLS_REGISTRATION = os.environ.get("PZLS_REGISTRATION", "open").strip().lower()
if PZLS_REGISTRATION not in {"open", "closed"}:
    raise ImproperlyConfigured(f"PZLS_REGISTRATION must be open or closed, not {PZLS_REGISTRATION!r}")
# Number of reverse proxies in front of PZLS whose X-Forwarded-For is trusted
# to name the client address (for the login rate limit). 0: use the socket's.
PZLS_TRUSTED_PROXIES = int(_env_number("PZLS_TRUSTED_PROXIES", 0, integer=True))

# --- Storage backends ----------------------------------------------------
# Chosen like Django's STORAGES: {"BACKEND": dotted path, "OPTIONS": {...}}.
# PZLS_STORAGE=files (default) or database fills both; PZLS_TOKEN_BACKEND and
# PZLS_SYNC_BACKEND name a class directly.

PZLS_STORAGE = os.environ.get("PZLS_STORAGE", "files").strip().lower()
_STORAGE_BACKENDS = {
    "files": (
        "accounts.backends.json_file.JSONFileTokenStore",
        "sync.backends.json_file.JSONFileRepositoryStore",
    ),
    "database": (
        "accounts.backends.database.DatabaseTokenStore",
        "sync.backends.database.DatabaseRepositoryStore",
    ),
}
if PZLS_STORAGE not in _STORAGE_BACKENDS:
    raise ImproperlyConfigured(f"PZLS_STORAGE must be files or database, not {PZLS_STORAGE!r}")
PZLS_TOKEN_STORE = {
    "BACKEND": os.environ.get("PZLS_TOKEN_BACKEND") or _STORAGE_BACKENDS[PZLS_STORAGE][0],
    "OPTIONS": {"location": str(PZLS_DATA_DIR)},
}
PZLS_SYNC_STORE = {
    "BACKEND": os.environ.get("PZLS_SYNC_BACKEND") or _STORAGE_BACKENDS[PZLS_STORAGE][1],
    "OPTIONS": {"location": str(PZLS_DATA_DIR)},
}

# --- Query (remote SQL) --------------------------------------------------

PZLS_QUERY_ROLES = _env_list("PZLS_QUERY_ROLES", ["admin"])
PZLS_QUERY_ALLOWED_HOSTS = _env_list("PZLS_QUERY_ALLOWED_HOSTS", ["*"])
PZLS_QUERY_READ_ONLY = _env_bool("PZLS_QUERY_READ_ONLY", True)
PZLS_QUERY_TIMEOUT_S = _env_number("PZLS_QUERY_TIMEOUT_S", 30, minimum=0.001)
PZLS_QUERY_CONNECT_TIMEOUT_S = _env_number("PZLS_QUERY_CONNECT_TIMEOUT_S", 10, minimum=1)
PZLS_QUERY_MAX_ROWS = int(_env_number("PZLS_QUERY_MAX_ROWS", 10000, minimum=1, integer=True))

# --- Logging -------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("PZLS_LOG_LEVEL", "INFO").upper()},
    "loggers": {"django.request": {"level": "ERROR"}},
}
