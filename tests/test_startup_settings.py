"""The environment is checked once, at start-up (pzls_site.env).

A malformed or out-of-range value stops ``make run`` (scripts/serve.sh),
``manage.py`` and gunicorn before anything is served, with one line naming
the variable, the value and what is allowed, and exit status 2. That a good
environment starts and answers is what every end-to-end test's server does
(testkit.server waits for /api/auth/health).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pzls_site import env
from pzls_site.env import EnvError, Rate
from testkit.server import ROOT, free_port
from tests.helpers import settings_in_subprocess

pytestmark = pytest.mark.live

# (variable, value, part of what the line says is allowed): one per kind of value.
BAD_VALUES = [
    ("PZLS_WORKERS", "abc", "expected a whole number of at least 1"),
    ("PZLS_MAX_BODY_MB", "-1", "expected a number of at least 0"),
    ("PORT", "99999", "expected a whole number from 1 to 65535"),
    ("PZLS_LOGIN_RATE", "banana", "expected a rate such as 10/minute (N/second, N/minute, N/hour or N/day)"),
    ("PZLS_STORAGE", "nosuch", "expected files or database"),
    ("DATABASE_URL", "nonsense://x", "expected a database URL such as postgres://"),
    ("PZLS_QUERY_ALLOWED_HOSTS", "db.example.com,host:port", "Host pattern 'host:port' has an invalid port"),
    ("PZLS_QUERY_ROLES", "admin,wizard", "unknown role 'wizard'; expected comma-separated roles among admin, analyst"),
    ("PZLS_DEBUG", "maybe", "expected true or false"),
    ("PZLS_AUTH_RATE_PER_ADDRESS", "30 a minute", "expected a rate such as 10/minute"),
    ("PZLS_ANONYMOUS_USER", "al\tice", "expected a username of at most 64 characters without control characters"),
]


def server_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment testkit.server starts the server with, none of the caller's PZLS_* leaking in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PZLS_") and k != "DJANGO_SETTINGS_MODULE"}
    return {
        **clean,
        "PORT": str(port),
        "PZLS_BIND_HOST": "127.0.0.1",
        "PZLS_DATA_DIR": str(tmp_path / "data"),
        "PZLS_VENV": sys.prefix,
        **extra,
    }


def run(command: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60, check=False)


def assert_refused(result: subprocess.CompletedProcess[str], name: str, value: str, allowed: str, port: int) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == env.EXIT_STATUS, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"{name}={value!r} is not allowed: "), output
    assert allowed in lines[0]
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))


@pytest.mark.parametrize("name,value,allowed", BAD_VALUES)
def test_make_run_stops_at_start_up_on_a_bad_value(tmp_path, name, value, allowed):
    port = free_port()
    result = run(["bash", str(ROOT / "scripts" / "serve.sh")], server_env(tmp_path, port, **{name: value}))
    assert_refused(result, name, value, allowed, port)
    # Stopped at its first step: nothing was migrated.
    assert not (tmp_path / "data" / "db.sqlite3").exists()


@pytest.mark.parametrize(
    "name,value,allowed",
    [BAD_VALUES[0], BAD_VALUES[3], ("PZLS_BIND_HOST", "127.0.0.1:80", "without a port")],
)
def test_gunicorn_stops_before_binding_on_a_bad_value(tmp_path, name, value, allowed):
    port = free_port()
    gunicorn = [
        str(Path(sys.prefix) / "bin" / "gunicorn"),
        "-c",
        "pzls_site/gunicorn_conf.py",
        "pzls_site.wsgi:application",
    ]
    result = run(gunicorn, server_env(tmp_path, port, **{name: value}))
    assert_refused(result, name, value, allowed, port)


@pytest.mark.parametrize(
    "name,value,allowed",
    [
        BAD_VALUES[4],
        ("PZLS_HTTPS", "sometimes", "expected true or false"),
        ("PZLS_LOG_LEVEL", "loud", "critical"),
        ("PZLS_QUERY_MAX_BYTES", "0", "expected a whole number of at least 1"),
        ("PZLS_QUERY_MAX_BYTES", "50MiB", "expected a whole number of at least 1"),
        ("PZLS_QUERY_ALLOW_SUPERUSER", "perhaps", "expected true or false"),
    ],
)
def test_manage_py_stops_on_a_bad_value(tmp_path, name, value, allowed):
    manage = [sys.executable, str(ROOT / "manage.py"), "check"]
    result = run(manage, server_env(tmp_path, 1, **{name: value}))
    assert result.stdout == ""
    assert_refused(result, name, value, allowed, free_port())
    good = run(manage, server_env(tmp_path, 1))
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize(
    "hosts,problem",
    [
        (None, "it must be set when PZLS_ANONYMOUS_USER is set"),
        ("db.internal,*", "* lets token-less callers (PZLS_ANONYMOUS_USER) reach any host"),
    ],
)
def test_make_run_stops_when_anonymous_calls_could_query_any_host(tmp_path, hosts, problem):
    port = free_port()
    extra = {"PZLS_ANONYMOUS_USER": "alice", **({"PZLS_QUERY_ALLOWED_HOSTS": hosts} if hosts else {})}
    result = run(["bash", str(ROOT / "scripts" / "serve.sh")], server_env(tmp_path, port, **extra))
    assert_refused(result, "PZLS_QUERY_ALLOWED_HOSTS", hosts or "", problem, port)
    assert "expected an explicit list of the database hosts pipelines need" in result.stderr + result.stdout


def test_a_refused_database_url_does_not_print_its_password():
    with pytest.raises(EnvError) as info:
        env.parse_database_url("DATABASE_URL", "postgres://pzls:hunter2@db.internal:notaport/pzls")
    assert "hunter2" not in str(info.value)
    assert str(info.value).startswith("DATABASE_URL='postgres://pzls:***@db.internal:notaport/pzls' is not allowed")


# --- the parse functions -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_parse_bool_accepts(raw, expected):
    assert env.parse_bool("PZLS_DEBUG", raw) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_parse_bool_refuses(raw):
    with pytest.raises(EnvError, match="^" + re.escape(f"PZLS_DEBUG={raw!r} is not allowed: expected true or false")):
        env.parse_bool("PZLS_DEBUG", raw)


@pytest.mark.parametrize("raw,expected", [("0", 0), ("50", 50), (" 2.5 ", 2.5), ("1e3", 1000)])
def test_parse_number_accepts(raw, expected):
    assert env.parse_number("PZLS_MAX_BODY_MB", raw, minimum=0) == expected


@pytest.mark.parametrize("raw", ["-1", "-0.001", "abc", "nan", "inf", "5 MB"])
def test_parse_number_refuses(raw):
    with pytest.raises(EnvError, match=r"expected a number of at least 0$"):
        env.parse_number("PZLS_MAX_BODY_MB", raw, minimum=0)


def test_parse_number_honours_its_range():
    assert env.parse_number("PZLS_QUERY_TIMEOUT_S", "0.001", minimum=0.001) == 0.001
    with pytest.raises(
        EnvError, match=r"^PZLS_QUERY_TIMEOUT_S='0' is not allowed: expected a number of at least 0.001$"
    ):
        env.parse_number("PZLS_QUERY_TIMEOUT_S", "0", minimum=0.001)
    with pytest.raises(EnvError, match=r"expected a number from 1 to 10$"):
        env.parse_number("X", "10.5", minimum=1, maximum=10)


@pytest.mark.parametrize("raw,expected", [("1", 1), ("+3", 3), (" 65535 ", 65535), ("3456", 3456)])
def test_parse_integer_accepts(raw, expected):
    assert env.parse_integer("PORT", raw, minimum=1, maximum=65535) == expected


@pytest.mark.parametrize("raw", ["0", "65536", "99999", "-1", "3.0", "1_000", "abc", "0x10"])
def test_parse_integer_refuses(raw):
    with pytest.raises(
        EnvError, match="^" + re.escape(f"PORT={raw!r} is not allowed: expected a whole number from 1 to 65535") + "$"
    ):
        env.parse_integer("PORT", raw, minimum=1, maximum=65535)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("10/minute", Rate(10, 60)),
        ("5/m", Rate(5, 60)),
        ("100/hour", Rate(100, 3600)),
        ("3/s", Rate(3, 1)),
        ("1000/day", Rate(1000, 86400)),
        (" 7 / Minute ", Rate(7, 60)),
        ("2/min", Rate(2, 60)),
        ("6/hours", Rate(6, 3600)),
    ],
)
def test_parse_rate_accepts(raw, expected):
    assert env.parse_rate("PZLS_LOGIN_RATE", raw) == expected


@pytest.mark.parametrize(
    "raw", ["banana", "10", "10/", "/minute", "x/minute", "10/week", "10/mango", "1.5/minute", "10/minute/2"]
)
def test_parse_rate_refuses(raw):
    with pytest.raises(EnvError, match=r"expected a rate such as 10/minute \(N/second, N/minute, N/hour or N/day\)$"):
        env.parse_rate("PZLS_LOGIN_RATE", raw)


@pytest.mark.parametrize("raw", ["0/minute", "-1/minute"])
def test_parse_rate_needs_one_attempt_at_least(raw):
    with pytest.raises(EnvError, match=r"expected a rate of at least 1 attempt"):
        env.parse_rate("PZLS_LOGIN_RATE", raw)


def test_parse_choice():
    assert env.parse_choice("PZLS_STORAGE", " Database ", ("files", "database")) == "database"
    with pytest.raises(EnvError, match=r"^PZLS_REGISTRATION='invite' is not allowed: expected open or closed$"):
        env.parse_choice("PZLS_REGISTRATION", "invite", ("open", "closed"))


def test_parse_list_drops_blank_items():
    assert env.parse_list("PZLS_CORS_ORIGINS", " https://a.example , null,, ") == ["https://a.example", "null"]


@pytest.mark.parametrize(
    "url,engine",
    [
        ("postgres://pzls:secret@db.internal:5432/pzls", "django.db.backends.postgresql"),
        ("mysql://pzls:secret@db.internal:3306/pzls", "django.db.backends.mysql"),
        ("sqlite:////var/lib/pzls/db.sqlite3", "django.db.backends.sqlite3"),
    ],
)
def test_parse_database_url_accepts(url, engine):
    config = env.parse_database_url("DATABASE_URL", url)
    assert config["ENGINE"] == engine
    assert config["CONN_MAX_AGE"] == 600 and config["CONN_HEALTH_CHECKS"] is True


@pytest.mark.parametrize("url", ["nonsense://x", "garbage", "postgres://h:notaport/db", "oracle://u:p@h:1521/db"])
def test_parse_database_url_refuses(url):
    with pytest.raises(EnvError, match=r"expected a database URL such as postgres://"):
        env.parse_database_url("DATABASE_URL", url)


def test_parse_host_patterns_reuses_the_query_allow_list_rules():
    raw = "*, db.example.com, *.corp.example:5432, 10.0.0.0/8, [fd00::/8]:5432"
    assert env.parse_host_patterns("PZLS_QUERY_ALLOWED_HOSTS", raw) == [
        "*",
        "db.example.com",
        "*.corp.example:5432",
        "10.0.0.0/8",
        "[fd00::/8]:5432",
    ]
    for bad, problem in [("db:99999", "invalid port"), ("[fd00::", "unclosed '['"), (":5432", "has no host")]:
        with pytest.raises(EnvError, match=re.escape(problem)):
            env.parse_host_patterns("PZLS_QUERY_ALLOWED_HOSTS", f"db.example.com,{bad}")


def test_parse_roles():
    assert env.parse_roles("PZLS_QUERY_ROLES", "admin, analyst") == ["admin", "analyst"]
    with pytest.raises(EnvError, match=r"unknown roles 'root', 'wizard'"):
        env.parse_roles("PZLS_QUERY_ROLES", "root,admin,wizard")


def test_parse_username_allows_what_registration_allows():
    assert env.parse_username("PZLS_ANONYMOUS_USER", " Alice Smith ") == "Alice Smith"
    assert env.parse_username("PZLS_ANONYMOUS_USER", "é" * 64) == "é" * 64
    for bad in ["a" * 65, "al\x7fice", "al\nice"]:
        with pytest.raises(EnvError, match=r"expected a username of at most 64 characters without control characters$"):
            env.parse_username("PZLS_ANONYMOUS_USER", bad)


def test_the_username_length_env_knows_is_the_accounts_one():
    from accounts.models import USERNAME_MAX_LENGTH

    assert env.USERNAME_MAX_LENGTH == USERNAME_MAX_LENGTH


@pytest.mark.parametrize("hosts", ["*", "*:5432", "db.internal, *.*", "0.0.0.0/0", "[::/0]:5432", "?*", "*?.*"])
def test_anonymous_user_refuses_an_allow_list_that_matches_every_host(hosts):
    with pytest.raises(EnvError, match=r"^PZLS_QUERY_ALLOWED_HOSTS=.* lets token-less callers .* reach any host"):
        env.Env.from_environ({"PZLS_ANONYMOUS_USER": "alice", "PZLS_QUERY_ALLOWED_HOSTS": hosts})
    # Without the setting the same list is allowed, as before.
    assert env.Env.from_environ({"PZLS_QUERY_ALLOWED_HOSTS": hosts}).anonymous_user is None


def test_anonymous_user_with_an_explicit_allow_list():
    hosts = "db.internal:5432, *.corp.example, 10.0.0.0/8, [fd00::/8]"
    parsed = env.Env.from_environ({"PZLS_ANONYMOUS_USER": " alice ", "PZLS_QUERY_ALLOWED_HOSTS": hosts})
    assert parsed.anonymous_user == "alice"
    assert parsed.query_allowed_hosts == ["db.internal:5432", "*.corp.example", "10.0.0.0/8", "[fd00::/8]"]
    with pytest.raises(EnvError, match=r"^PZLS_QUERY_ALLOWED_HOSTS=' ' is not allowed: it must be set when"):
        env.Env.from_environ({"PZLS_ANONYMOUS_USER": "alice", "PZLS_QUERY_ALLOWED_HOSTS": " "})
    # Blank is unset: no anonymous account, and the allow-list may stay open.
    assert env.Env.from_environ({"PZLS_ANONYMOUS_USER": "  "}).anonymous_user is None


def test_the_roles_env_knows_are_the_accounts_roles():
    from accounts.models import Role

    assert list(env.ROLES) == list(Role.values)


@pytest.mark.parametrize(
    "raw,bind",
    [("0.0.0.0", "0.0.0.0:3456"), ("localhost", "localhost:3456"), ("::1", "[::1]:3456"), ("[::]", "[::]:3456")],
)
def test_bind_host(raw, bind):
    assert env.Env.from_environ({"PZLS_BIND_HOST": raw}).bind == bind


@pytest.mark.parametrize("raw", ["127.0.0.1:80", "a b", "-host", "http://x"])
def test_bind_host_refuses(raw):
    with pytest.raises(EnvError, match=r"without a port"):
        env.parse_bind_host("PZLS_BIND_HOST", raw)


def test_parse_dotted_path():
    path = "accounts.backends.database.DatabaseTokenStore"
    assert env.parse_dotted_path("PZLS_TOKEN_BACKEND", path) == path
    with pytest.raises(EnvError, match=r"dotted path of a class"):
        env.parse_dotted_path("PZLS_TOKEN_BACKEND", "DatabaseTokenStore")


# --- the whole environment -----------------------------------------------------------


def test_unset_and_blank_variables_take_the_documented_defaults():
    defaults = env.Env.from_environ({})
    assert (
        env.Env.from_environ(dict.fromkeys(["PORT", "PZLS_WORKERS", "PZLS_LOGIN_RATE", "PZLS_DEBUG"], " ")) == defaults
    )
    assert (defaults.port, defaults.bind_host, defaults.data_dir) == (3456, "0.0.0.0", ROOT / "data")
    assert defaults.workers == min(2 * (os.cpu_count() or 1) + 1, 8)
    assert defaults.worker_timeout_s == 120 and defaults.access_log is None and defaults.log_level == "info"
    assert defaults.database is None and defaults.storage == "files"
    assert defaults.login_rate == Rate(10, 60) and defaults.registration == "open"
    assert defaults.auth_rate_per_address == Rate(30, 60) and defaults.anonymous_user is None
    assert defaults.query_roles == ["admin"] and defaults.query_allowed_hosts == ["*"]
    assert (defaults.max_body_mb, defaults.token_ttl_hours, defaults.query_max_rows) == (50, 24, 10000)


def test_current_parses_the_process_environment_again_only_when_it_changes(monkeypatch):
    monkeypatch.setenv("PZLS_WORKERS", "3")
    first = env.current()
    assert first.workers == 3 and env.current() is first
    monkeypatch.setenv("PZLS_WORKERS", "abc")
    with pytest.raises(EnvError, match=r"^PZLS_WORKERS='abc'"):
        env.current()


@pytest.mark.parametrize(
    "storage,token_backend,sync_backend",
    [
        ("files", "accounts.backends.json_file.JSONFileTokenStore", "sync.backends.json_file.JSONFileRepositoryStore"),
        ("database", "accounts.backends.database.DatabaseTokenStore", "sync.backends.database.DatabaseRepositoryStore"),
    ],
)
def test_store_settings_locate_both_backends_in_the_data_directory(tmp_path, storage, token_backend, sync_backend):
    token, sync = env.store_settings(storage, tmp_path)
    assert token == {"BACKEND": token_backend, "OPTIONS": {"location": str(tmp_path)}}
    assert sync == {"BACKEND": sync_backend, "OPTIONS": {"location": str(tmp_path)}}
    token, sync = env.store_settings(storage, tmp_path, token_backend="my.Tokens", sync_backend="my.Repos")
    assert (token["BACKEND"], sync["BACKEND"]) == ("my.Tokens", "my.Repos")
    with pytest.raises(ValueError, match="unknown storage 'cloud'"):
        env.store_settings("cloud", tmp_path)


def test_settings_take_the_stores_from_the_environment(tmp_path):
    code = "import json; print(json.dumps([s.PZLS_TOKEN_STORE, s.PZLS_SYNC_STORE, s.PZLS_LOGIN_RATE.limit]))"
    printed = settings_in_subprocess(
        tmp_path, code, PZLS_STORAGE="database", PZLS_SYNC_BACKEND="my.Repos", PZLS_LOGIN_RATE="4/hour"
    )
    location = {"location": str(tmp_path.resolve())}
    assert json.loads(printed) == [
        {"BACKEND": "accounts.backends.database.DatabaseTokenStore", "OPTIONS": location},
        {"BACKEND": "my.Repos", "OPTIONS": location},
        4,
    ]


def test_settings_take_the_per_address_rate_from_the_environment(tmp_path):
    code = "print(s.PZLS_AUTH_RATE_PER_ADDRESS)"
    assert settings_in_subprocess(tmp_path, code) == "Rate(limit=30, period_s=60)"
    assert settings_in_subprocess(tmp_path, code, PZLS_AUTH_RATE_PER_ADDRESS="5/hour") == "Rate(limit=5, period_s=3600)"


def test_settings_take_the_anonymous_user_from_the_environment(tmp_path):
    code = "print(repr(s.PZLS_ANONYMOUS_USER))"
    assert settings_in_subprocess(tmp_path, code) == "None"
    printed = settings_in_subprocess(
        tmp_path, code, PZLS_ANONYMOUS_USER=" alice ", PZLS_QUERY_ALLOWED_HOSTS="db.internal"
    )
    assert printed == "'alice'"


def test_no_environment_reads_outside_the_env_module():
    """Every PZLS_*, PORT and DATABASE_URL read goes through pzls_site.env (the test suite and benchmark aside)."""
    packages = [
        p for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name not in {"tests", "bench", "testkit"}
    ]
    sources = [ROOT / "manage.py", *(path for package in packages for path in package.rglob("*.py"))]
    assert ROOT / "pzls_site" / "settings.py" in sources
    readers = [
        str(path.relative_to(ROOT))
        for path in sources
        if path != ROOT / "pzls_site" / "env.py"
        and any(read in path.read_text() for read in ("os.environ.get(", "os.environ[", "getenv("))
    ]
    assert readers == []
