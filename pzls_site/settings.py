"""Django settings for PZLS.

Every setting an operator may change comes from the environment, prefixed
``PZLS_`` (plus ``PORT`` and ``DATABASE_URL``), read and checked once by
``pzls_site.env``; this module only places those values. The defaults run on
a laptop: ``make run`` with nothing set serves on port 3456 with its data in
``./data``. README.md lists every setting.
"""

from __future__ import annotations

import copy
import secrets

from pzls_site import __version__ as _PZLS_VERSION
from pzls_site import env
from pzls_site.files import atomic_write, prepare_data_dir

BASE_DIR = env.BASE_DIR
_ENV = env.current()

# --- Where PZLS keeps its data -------------------------------------------

PZLS_DATA_DIR = _ENV.data_dir
PZLS_DATA_DIR.mkdir(parents=True, exist_ok=True)
prepare_data_dir(PZLS_DATA_DIR)  # umask 077, 0700/0600, crash leftovers removed

SECRET_KEY = _ENV.secret_key
if not SECRET_KEY:
    # A per-installation key kept beside the data, so sessions of the admin
    # site survive restarts without the operator having to invent one.
    _key_file = PZLS_DATA_DIR / "secret_key"
    if not _key_file.exists():
        atomic_write(_key_file, secrets.token_urlsafe(50).encode())  # mode 0600
    SECRET_KEY = _key_file.read_text().strip()

DEBUG = _ENV.debug
ALLOWED_HOSTS = _ENV.allowed_hosts

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
if _ENV.database is not None:
    DATABASES = {"default": copy.deepcopy(_ENV.database)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": PZLS_DATA_DIR / "db.sqlite3",
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

PZLS_MAX_BODY_MB = _ENV.max_body_mb
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
    # No OPTIONS description: an OPTIONS request that is not a CORS preflight
    # (corsheaders answers those) is 405 like any method a URL does not serve.
    "DEFAULT_METADATA_CLASS": None,
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
PZLS_CORS_ORIGINS = _ENV.cors_origins
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_ALL_ORIGINS = "*" in PZLS_CORS_ORIGINS
CORS_ALLOWED_ORIGINS = [] if CORS_ALLOW_ALL_ORIGINS else PZLS_CORS_ORIGINS
CORS_ALLOW_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CORS_ALLOW_HEADERS = ["authorization", "content-type", "if-none-match", "if-match", "accept-encoding"]
CORS_EXPOSE_HEADERS = ["ETag", "Retry-After", "WWW-Authenticate"]
CORS_PREFLIGHT_MAX_AGE = 86400

# --- Browser-facing security -----------------------------------------------
# The admin site is the only part that uses cookies. Its session cookie is
# never readable by scripts and not sent on cross-site subrequests; with
# PZLS_HTTPS (clients reach PZLS over TLS, normally terminated at the reverse
# proxy) the session and CSRF cookies are sent over TLS only, and when
# PZLS_TRUSTED_PROXIES names a proxy, its X-Forwarded-Proto tells Django the
# request came over TLS (the proxy must set that header, overwriting the client's).

PZLS_HTTPS = _ENV.https
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PZLS_HTTPS
if PZLS_HTTPS and _ENV.trusted_proxies > 0:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Accounts ------------------------------------------------------------

PZLS_TOKEN_TTL_HOURS = _ENV.token_ttl_hours
# How often a token's "last used" is written back; reads within this many
# seconds of the last write do not rewrite the token store.
PZLS_TOKEN_RENEW_INTERVAL_S = _ENV.token_renew_interval_s
# An env.Rate (limit, period_s), parsed from "10/minute" and the like.
PZLS_LOGIN_RATE = _ENV.login_rate
# Logins and registrations per client address (IPv6: per /64), counted before any password is hashed.
PZLS_AUTH_RATE_PER_ADDRESS = _ENV.auth_rate_per_address
PZLS_REGISTRATION = _ENV.registration
# Number of reverse proxies in front of PZLS whose X-Forwarded-For is trusted
# to name the client address (for the login rate limit). 0: use the socket's.
PZLS_TRUSTED_PROXIES = _ENV.trusted_proxies
# The account that token-less calls to GET /api/resolve and POST /api/query act
# as (Pazator's resolver and pipelines send no token); None: they get 401.
PZLS_ANONYMOUS_USER = _ENV.anonymous_user

# --- Storage backends ----------------------------------------------------
# Chosen like Django's STORAGES: {"BACKEND": dotted path, "OPTIONS": {...}}.
# PZLS_STORAGE=files (default) or database fills both; PZLS_TOKEN_BACKEND and
# PZLS_SYNC_BACKEND name a class directly.

PZLS_STORAGE = _ENV.storage
# Each backend is given the data directory as its OPTIONS' location.
PZLS_TOKEN_STORE, PZLS_SYNC_STORE = _ENV.stores()

# --- Query (remote SQL) --------------------------------------------------

PZLS_QUERY_ROLES = _ENV.query_roles
PZLS_QUERY_ALLOWED_HOSTS = _ENV.query_allowed_hosts
PZLS_QUERY_READ_ONLY = _ENV.query_read_only
PZLS_QUERY_TIMEOUT_S = _ENV.query_timeout_s
PZLS_QUERY_CONNECT_TIMEOUT_S = _ENV.query_connect_timeout_s
PZLS_QUERY_MAX_ROWS = _ENV.query_max_rows
PZLS_QUERY_MAX_BYTES = _ENV.query_max_bytes
PZLS_QUERY_ALLOW_SUPERUSER = _ENV.query_allow_superuser

# --- Logging -------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": _ENV.log_level.upper()},
    "loggers": {"django.request": {"level": "ERROR"}},
}
