"""PROTOCOL.md §2 (accounts) and §6 (administration), through the API as a client sees it."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import orjson
import pytest
from django.conf import settings
from django.test import override_settings
from django.utils.module_loading import import_string

import pzls_site.clock
from accounts.models import User
from pzls_site.env import Env, Rate
from tests.helpers import Api, assert_error

pytestmark = pytest.mark.storage

USER_KEYS = {"id", "username", "role", "createdAt"}
ADMIN_ROW_KEYS = {"id", "username", "role", "createdAt", "disabled", "lastLogin", "version", "records", "lastSync"}
INVALID = "Invalid username or password"


def assert_401(response) -> None:
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == "Bearer"


def user_count() -> int:
    return User.objects.count()


def login(api: Api, username: str, password: str, **extra):
    return api.post("/api/auth/login", {"username": username, "password": password}, **extra)


def all_file_bytes(directory: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in directory.rglob("*") if p.is_file()]


class Clock:
    """The time accounts.services sees, moved by hand instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock():
    c = Clock()
    with mock.patch("accounts.services.utcnow", side_effect=lambda: c.now):
        yield c


# --- register ------------------------------------------------------------------------


def test_first_user_is_admin_later_ones_analysts(api):
    first = api.register("alice", "secret1")
    assert set(first) == {"token", "user"}
    assert set(first["user"]) == USER_KEYS
    assert first["user"]["username"] == "alice"
    assert first["user"]["role"] == "admin"
    assert str(uuid.UUID(first["user"]["id"])) == first["user"]["id"]
    for name in ("bob", "carol"):
        body = Api().register(name, "secret2")
        assert body["user"]["role"] == "analyst"
        assert body["user"]["username"] == name
    ids = {u.pk for u in User.objects.all()}
    assert len(ids) == 3


def test_register_token_works_at_once(api):
    body = api.register("alice", "secret1")
    me = api.get("/api/auth/me")
    assert me.status_code == 200
    assert me.json() == {"user": body["user"]}


@pytest.mark.parametrize(
    "body",
    [
        {"password": "secret1"},
        {"username": "", "password": "secret1"},
        {"username": None, "password": "secret1"},
        {"username": "   ", "password": "secret1"},
        {"username": 42, "password": "secret1"},
        {"username": ["alice"], "password": "secret1"},
        {"username": "a" * 65, "password": "secret1"},
        {"username": "ä" * 65, "password": "secret1"},
        {"username": "al\x00ice", "password": "secret1"},
        {"username": "al\nice", "password": "secret1"},
        {"username": "al\tice", "password": "secret1"},
        {"username": "\x1falice", "password": "secret1"},
        {"username": "alice\r", "password": "secret1"},
        {"username": "al\x7fice", "password": "secret1"},
        {"username": "alice", "password": "12345"},
        {"username": "alice", "password": ""},
        {"username": "alice"},
        {"username": "alice", "password": None},
        {"username": "alice", "password": 1234567},
    ],
)
def test_register_invalid_is_400_and_creates_nobody(api, body):
    assert_error(api.post("/api/auth/register", body), 400)
    assert user_count() == 0
    assert api.get("/api/sync/status").json()["registeredUsers"] == 0


def test_register_limits_are_inclusive(api):
    name = "a" * 64
    body = api.register(name, "123456")
    assert body["user"]["username"] == name
    assert login(Api(), name, "123456").status_code == 200


def test_register_non_object_body_is_400(api):
    response = api.client.post("/api/auth/register", b"[]", content_type="application/json")
    assert_error(response, 400)
    assert user_count() == 0


@pytest.mark.parametrize("second", ["alice", "ALICE", "aLiCe", "Alice"])
def test_username_taken_case_insensitively_is_409(api, second):
    first = api.register("Alice", "secret1")
    assert_error(Api().post("/api/auth/register", {"username": second, "password": "other12"}), 409)
    assert user_count() == 1
    # Stored as typed, and the failed attempt changed nothing about the first user.
    assert api.get("/api/auth/me").json()["user"] == first["user"]
    assert first["user"]["username"] == "Alice"
    assert login(Api(), "Alice", "secret1").status_code == 200
    assert_error(login(Api(), "Alice", "other12"), 401, INVALID)


def test_username_stored_as_typed(api):
    api.register("MiXeD Case Ünïcode", "secret1")
    assert User.objects.get().username == "MiXeD Case Ünïcode"
    assert api.get("/api/auth/me").json()["user"]["username"] == "MiXeD Case Ünïcode"


@override_settings(PZLS_REGISTRATION="closed")
def test_registration_closed_is_403_and_creates_nobody(api):
    assert_error(api.post("/api/auth/register", {"username": "alice", "password": "secret1"}), 403)
    assert user_count() == 0


def test_registration_closed_still_lets_existing_users_log_in(admin_api):
    with override_settings(PZLS_REGISTRATION="closed"):
        assert_error(Api().post("/api/auth/register", {"username": "bob", "password": "secret1"}), 403)
        assert user_count() == 1
        assert login(Api(), "admin", "adminpass").status_code == 200


# --- tokens ------------------------------------------------------------------------


def test_tokens_are_uuid4_strings(api):
    tokens = [api.register("alice", "secret1")["token"]]
    tokens.append(login(api, "alice", "secret1").json()["token"])
    tokens.append(Api().register("bob", "secret1")["token"])
    for token in tokens:
        assert isinstance(token, str)
        parsed = uuid.UUID(token)
        assert parsed.version == 4
        assert str(parsed) == token
    assert len(set(tokens)) == 3


@pytest.mark.files_only
def test_token_store_holds_only_sha256_digests(api, data_dir):
    tokens = [api.register("alice", "secret1")["token"]]
    tokens.append(login(api, "alice", "secret1").json()["token"])
    api.token = tokens[1]
    api.post("/api/sync", {"stores": {"humans": {"h1": {"name": "x"}}}})
    stored = orjson.loads((data_dir / "tokens.json").read_bytes())
    digests = set(stored["tokens"]) if "tokens" in stored else set(stored)
    for token in tokens:
        assert hashlib.sha256(token.encode()).hexdigest() in digests
    files = all_file_bytes(data_dir)
    assert files
    for token in tokens:
        for variant in (token, token.replace("-", ""), token.upper()):
            for path, content in files:
                assert variant.encode() not in content, path


def test_a_leaked_digest_logs_nobody_in(api, data_dir):
    token = api.register("alice", "secret1")["token"]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert_401(api.get("/api/auth/me", token=digest))


def test_unused_token_expires_after_ttl(clock):
    api = Api()
    token = api.register("alice", "secret1")["token"]
    clock.advance(hours=24, seconds=1)
    assert_401(api.get("/api/auth/me", token=token))
    # Expired means gone: going back does not revive it.
    clock.advance(hours=-2)
    assert_401(api.get("/api/auth/me", token=token))


def test_token_is_good_until_ttl(clock):
    api = Api()
    token = api.register("alice", "secret1")["token"]
    clock.advance(hours=23, minutes=59)
    assert api.get("/api/auth/me", token=token).status_code == 200


def test_use_renews_the_token(clock):
    api = Api()
    token = api.register("alice", "secret1")["token"]
    idle = Api()
    idle_token = login(idle, "alice", "secret1").json()["token"]
    clock.advance(hours=20)
    assert api.get("/api/sync", token=token).status_code == 200
    clock.advance(hours=20)  # 40 h after issue, 20 h after last use
    assert api.get("/api/auth/me", token=token).status_code == 200
    assert_401(idle.get("/api/auth/me", token=idle_token))
    clock.advance(hours=23)
    assert api.get("/api/auth/me", token=token).status_code == 200
    clock.advance(hours=24, seconds=1)
    assert_401(api.get("/api/auth/me", token=token))


@override_settings(PZLS_TOKEN_TTL_HOURS=1)
def test_ttl_setting_is_honoured(clock):
    api = Api()
    used = api.register("alice", "secret1")["token"]
    unused = login(Api(), "alice", "secret1").json()["token"]
    clock.advance(minutes=59)
    assert api.get("/api/auth/me", token=used).status_code == 200
    clock.advance(minutes=2)
    assert_401(api.get("/api/auth/me", token=unused))
    assert api.get("/api/auth/me", token=used).status_code == 200


@pytest.mark.files_only
def test_renewal_is_written_at_most_once_a_minute(clock, data_dir):
    api = Api()
    token = api.register("alice", "secret1")["token"]
    path = data_dir / "tokens.json"
    digest = hashlib.sha256(token.encode()).hexdigest()

    def snapshot():
        st = path.stat()
        return (st.st_ino, st.st_mtime_ns, path.read_bytes())

    after_issue = snapshot()
    clock.advance(seconds=10)
    assert api.get("/api/auth/me", token=token).status_code == 200
    clock.advance(seconds=40)
    assert api.get("/api/sync", token=token).status_code == 200
    assert snapshot() == after_issue
    clock.advance(seconds=11)  # 61 s after the last write
    assert api.get("/api/auth/me", token=token).status_code == 200
    renewed = snapshot()
    assert renewed != after_issue
    record = orjson.loads(renewed[2])["tokens"][digest]
    assert record["lastUsed"] == pzls_site.clock.iso(clock.now)
    clock.advance(seconds=30)
    assert api.get("/api/auth/me", token=token).status_code == 200
    assert snapshot() == renewed


def test_disabling_a_user_revokes_their_tokens(admin_api, analyst_api):
    other = login(Api(), "analyst", "analystpass").json()["token"]
    user = User.objects.get(username="analyst")
    user.is_active = False
    user.save()
    assert_401(analyst_api.get("/api/auth/me"))
    assert_401(analyst_api.get("/api/sync", token=other))
    assert_error(login(Api(), "analyst", "analystpass"), 403)
    # Re-enabling does not bring the revoked tokens back.
    user.is_active = True
    user.save()
    assert_401(analyst_api.get("/api/auth/me"))
    assert login(Api(), "analyst", "analystpass").status_code == 200
    assert admin_api.get("/api/auth/me").status_code == 200


# --- login -------------------------------------------------------------------------


def test_login_returns_a_new_token_and_the_user(api):
    registered = api.register("alice", "secret1")
    response = login(Api(), "alice", "secret1")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "user"}
    assert body["user"] == registered["user"]
    assert body["token"] != registered["token"]
    assert api.get("/api/auth/me", token=body["token"]).status_code == 200
    assert api.get("/api/auth/me", token=registered["token"]).status_code == 200


def test_login_failures_say_the_same_for_unknown_user_and_wrong_password(admin_api):
    unknown = login(Api(), "nobody", "adminpass")
    wrong = login(Api(), "admin", "wrongpass")
    assert_error(unknown, 401, INVALID)
    assert_error(wrong, 401, INVALID)
    assert unknown.content == wrong.content


def test_login_is_case_sensitive_about_passwords(admin_api):
    assert_error(login(Api(), "admin", "ADMINPASS"), 401, INVALID)


@pytest.mark.files_only
@pytest.mark.parametrize("body", [{}, {"username": "admin"}, {"password": "adminpass"}, {"username": 1, "password": 2}])
def test_login_incomplete_is_an_error_and_issues_nothing(admin_api, data_dir, body):
    tokens_before = (data_dir / "tokens.json").read_bytes()
    response = Api().post("/api/auth/login", body)
    assert response.status_code in (400, 401)
    assert_error(response, response.status_code)
    assert (data_dir / "tokens.json").read_bytes() == tokens_before


def test_login_of_disabled_account_is_403(admin_api, analyst_api):
    User.objects.filter(username="analyst").update(is_active=False)
    assert_error(login(Api(), "analyst", "analystpass"), 403)
    # The wrong password still says 401, not 403: nothing is revealed without the password.
    assert_error(login(Api(), "analyst", "wrongpass"), 401, INVALID)


RATE_NOW = 60 * 29_000_000 + 20.0  # 20 s into a minute


@override_settings(PZLS_LOGIN_RATE=Rate(limit=3, period_s=60))
def test_login_rate_limit_answers_429_with_retry_after(admin_api):
    with mock.patch("accounts.ratelimit.time") as fake_time:
        fake_time.time.return_value = RATE_NOW
        for _ in range(3):
            assert_error(login(Api(), "admin", "wrongpass"), 401, INVALID)
        response = login(Api(), "admin", "wrongpass")
        assert_error(response, 429)
        assert 1 <= int(response["Retry-After"]) <= 120
        # Over the limit even the right password is refused, and no token is issued.
        response = login(Api(), "admin", "adminpass")
        assert_error(response, 429)
        wait = int(response["Retry-After"])
        assert 1 <= wait <= 120
        # The limit is per client address and username.
        assert login(Api(), "admin", "adminpass", REMOTE_ADDR="10.9.8.7").status_code == 200
        assert_error(login(Api(), "someone-else", "whatever1"), 401, INVALID)
        # Retry-After tells the truth: after that many seconds the login goes through.
        fake_time.time.return_value = RATE_NOW + wait
        assert login(Api(), "admin", "adminpass").status_code == 200


@override_settings(PZLS_LOGIN_RATE=Rate(limit=3, period_s=60))
def test_login_rate_limit_counts_usernames_case_insensitively(admin_api):
    with mock.patch("accounts.ratelimit.time") as fake_time:
        fake_time.time.return_value = RATE_NOW
        for name in ("admin", "ADMIN", "Admin"):
            assert_error(login(Api(), name, "wrongpass"), 401, INVALID)
        assert_error(login(Api(), "aDmIn", "wrongpass"), 429)


# --- the per-address limit (PZLS_AUTH_RATE_PER_ADDRESS) on logins and registrations ---------

# What the server runs with when the variable is unset (tests/settings.py raises it for the suite).
DEFAULT_PER_ADDRESS = Env.from_environ({}).auth_rate_per_address


@pytest.fixture
def hashes():
    """The names of the password hashes computed (made or checked) by any configured hasher, as they happen."""
    calls: list[str] = []
    with contextlib.ExitStack() as stack:
        for path in settings.PASSWORD_HASHERS:
            hasher = import_string(path)
            for method in ("encode", "verify"):
                original = getattr(hasher, method)

                def counting(self, *args, _original=original, _name=f"{hasher.__name__}.{method}", **kwargs):
                    calls.append(_name)
                    return _original(self, *args, **kwargs)

                stack.enter_context(mock.patch.object(hasher, method, counting))
        yield calls


@pytest.fixture
def frozen_rate_clock():
    with mock.patch("accounts.ratelimit.time") as fake_time:
        fake_time.time.return_value = RATE_NOW
        yield fake_time


def register(username: str, password: str = "secret1", **extra):
    return Api().post("/api/auth/register", {"username": username, "password": password}, **extra)


def assert_address_refused(response) -> int:
    message = assert_error(response, 429)
    wait = int(response["Retry-After"])
    assert message == f"Too many attempts from this address; try again in {wait} seconds"
    assert 1 <= wait <= 120
    return wait


@override_settings(PZLS_AUTH_RATE_PER_ADDRESS=DEFAULT_PER_ADDRESS)
def test_logins_and_registrations_from_one_address_are_limited_before_any_hash(admin_api, frozen_rate_clock, hashes):
    assert (DEFAULT_PER_ADDRESS.limit, DEFAULT_PER_ADDRESS.period_s) == (30, 60)
    # 30 a minute from one address, logins and registrations together, each with another username.
    for n in range(15):
        assert_error(login(Api(), f"nobody{n}", "wrongpass"), 401, INVALID)
        assert register(f"newcomer{n}").status_code == 200
    assert hashes  # every one of them hashed a password
    users_before = user_count()
    hashes.clear()
    # The 31st: refused, the right password too, before any username lookup or hash.
    assert_address_refused(login(Api(), "admin", "adminpass"))
    assert_address_refused(register("latecomer"))
    wait = assert_address_refused(login(Api(), "newcomer0", "secret1"))  # refused attempts count too
    assert hashes == []
    assert user_count() == users_before
    # Another address is counted on its own.
    assert login(Api(), "admin", "adminpass", REMOTE_ADDR="10.9.8.7").status_code == 200
    assert register("elsewhere", REMOTE_ADDR="10.9.8.7").status_code == 200
    # Retry-After tells the truth: after that many seconds the login goes through.
    frozen_rate_clock.time.return_value = RATE_NOW + wait
    assert login(Api(), "admin", "adminpass").status_code == 200


@override_settings(PZLS_AUTH_RATE_PER_ADDRESS=Rate(limit=3, period_s=60))
def test_requests_refused_before_hashing_do_not_count(admin_api, frozen_rate_clock, hashes):
    for _ in range(5):
        assert_error(register("", "secret1"), 400, "Username is required")
        assert_error(register("shorty", "abc"), 400, "Password must be at least 6 characters")
        assert_error(Api().post("/api/auth/login", {"username": "admin"}), 400, "Username and password are required")
        assert_error(login(Api(), "x" * 65, "wrongpass"), 401, INVALID)
    with override_settings(PZLS_REGISTRATION="closed"):
        for _ in range(5):
            assert_error(register("closed-door"), 403, "Registration is closed")
    assert hashes == []
    # A taken username hashes (the hash comes before the check), so it counts.
    assert_error(register("ADMIN"), 409, "Username already taken")
    assert register("one").status_code == 200
    assert login(Api(), "one", "secret1").status_code == 200
    assert_address_refused(register("two"))


@override_settings(PZLS_AUTH_RATE_PER_ADDRESS=Rate(limit=3, period_s=60), PZLS_TRUSTED_PROXIES=1)
def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_count(admin_api, frozen_rate_clock):
    client = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.5"}
    for n in range(3):
        assert_error(login(Api(), f"nobody{n}", "wrongpass", **client), 401, INVALID)
    assert_address_refused(register("someone", **client))
    # The proxy's own address and another client behind it are not that client.
    other = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.20, 203.0.113.6"}
    assert register("someone", **other).status_code == 200
    assert login(Api(), "admin", "adminpass", REMOTE_ADDR="127.0.0.1").status_code == 200
    # What the client wrote before the proxy's entry is not believed.
    spoofed = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "192.0.2.99, 203.0.113.5"}
    assert_address_refused(login(Api(), "admin", "adminpass", **spoofed))


@override_settings(PZLS_AUTH_RATE_PER_ADDRESS=Rate(limit=3, period_s=60), PZLS_TRUSTED_PROXIES=0)
def test_without_trusted_proxies_a_forged_x_forwarded_for_does_not_help(admin_api, frozen_rate_clock, hashes):
    for n in range(3):
        forged = {"HTTP_X_FORWARDED_FOR": f"192.0.2.{n}"}
        assert_error(login(Api(), f"nobody{n}", "wrongpass", **forged), 401, INVALID)
    hashes.clear()
    assert_address_refused(register("someone", HTTP_X_FORWARDED_FOR="192.0.2.200"))
    assert_address_refused(login(Api(), "admin", "adminpass", HTTP_X_FORWARDED_FOR="192.0.2.201"))
    assert hashes == []


@override_settings(PZLS_AUTH_RATE_PER_ADDRESS=Rate(limit=3, period_s=60))
def test_ipv6_clients_are_counted_per_64_prefix_and_mapped_ipv4_as_ipv4(admin_api, frozen_rate_clock):
    for n, address in enumerate(["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:DB8:1:2:abcd::9"]):
        assert_error(login(Api(), f"nobody{n}", "wrongpass", REMOTE_ADDR=address), 401, INVALID)
    assert_address_refused(register("v6", REMOTE_ADDR="2001:db8:1:2::42"))
    assert register("v6", REMOTE_ADDR="2001:db8:1:3::1").status_code == 200  # the next /64
    for n in range(3):
        assert_error(login(Api(), f"nobody{n}", "wrongpass", REMOTE_ADDR="198.51.100.7"), 401, INVALID)
    assert_address_refused(login(Api(), "admin", "adminpass", REMOTE_ADDR="::ffff:198.51.100.7"))
    assert login(Api(), "admin", "adminpass", REMOTE_ADDR="198.51.100.8").status_code == 200  # IPv4: each address


@override_settings(PZLS_AUTH_RATE_PER_ADDRESS=Rate(limit=5, period_s=60), PZLS_LOGIN_RATE=Rate(limit=2, period_s=60))
def test_the_per_username_limit_still_applies_and_the_counts_do_not_mix(admin_api, frozen_rate_clock):
    for _ in range(2):
        assert_error(login(Api(), "admin", "wrongpass"), 401, INVALID)
    response = login(Api(), "admin", "adminpass")
    assert_error(response, 429, f"Too many login attempts; try again in {response['Retry-After']} seconds")
    # Three attempts so far from this address; two more are allowed, whatever the username.
    assert_error(login(Api(), "other", "wrongpass"), 401, INVALID)
    assert register("fresh").status_code == 200
    assert_address_refused(login(Api(), "other2", "wrongpass"))


# --- logout, me, change-password -------------------------------------------------------


def test_logout_revokes_only_that_token(api):
    first = api.register("alice", "secret1")["token"]
    second = login(Api(), "alice", "secret1").json()["token"]
    response = api.post("/api/auth/logout", token=first)
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert_401(api.get("/api/auth/me", token=first))
    assert_401(api.post("/api/auth/logout", token=first))
    assert api.get("/api/auth/me", token=second).status_code == 200


def test_logout_without_token_is_401(api):
    assert_401(api.post("/api/auth/logout"))


def test_me_returns_the_user_object(admin_api, analyst_api):
    body = analyst_api.get("/api/auth/me").json()
    assert set(body) == {"user"}
    assert set(body["user"]) == USER_KEYS
    assert body["user"]["username"] == "analyst"
    assert body["user"]["role"] == "analyst"
    assert body["user"]["id"] == str(User.objects.get(username="analyst").pk)


def test_user_objects_never_contain_secrets(api):
    registered = api.register("alice", "secret1")
    logged_in = login(Api(), "alice", "secret1")
    me = api.get("/api/auth/me")
    password_hash = User.objects.get().password
    assert password_hash
    for response in (logged_in, me):
        assert password_hash.encode() not in response.content
        assert b"secret1" not in response.content
    assert set(registered["user"]) == USER_KEYS
    assert set(logged_in.json()["user"]) == USER_KEYS
    assert registered["token"] not in orjson.dumps(me.json()).decode()


def change_password(api: Api, current: object, new: object, **kw):
    return api.post("/api/auth/change-password", {"currentPassword": current, "newPassword": new}, **kw)


def test_change_password_revokes_other_tokens_and_keeps_the_calling_one(api):
    calling = api.register("alice", "secret1")["token"]
    other = login(Api(), "alice", "secret1").json()["token"]
    bob = Api()
    bob.register("bob", "bobpass")
    response = change_password(api, "secret1", "newsecret")
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert api.get("/api/auth/me", token=calling).status_code == 200
    assert_401(api.get("/api/auth/me", token=other))
    assert bob.get("/api/auth/me").status_code == 200  # other users keep theirs
    assert login(Api(), "alice", "newsecret").status_code == 200
    assert_error(login(Api(), "alice", "secret1"), 401, INVALID)


def test_change_password_wrong_current_is_403_and_changes_nothing(api):
    api.register("alice", "secret1")
    other = login(Api(), "alice", "secret1").json()["token"]
    assert_error(change_password(api, "wrong-one", "newsecret"), 403)
    # 403, not 401: the calling token is still good.
    assert api.get("/api/auth/me").status_code == 200
    assert api.get("/api/auth/me", token=other).status_code == 200
    assert login(Api(), "alice", "secret1").status_code == 200
    assert_error(login(Api(), "alice", "newsecret"), 401, INVALID)


@pytest.mark.parametrize("new", ["12345", "", None, 123456])
def test_change_password_invalid_new_is_400_and_changes_nothing(api, new):
    api.register("alice", "secret1")
    other = login(Api(), "alice", "secret1").json()["token"]
    assert_error(change_password(api, "secret1", new), 400)
    assert api.get("/api/auth/me", token=other).status_code == 200
    assert login(Api(), "alice", "secret1").status_code == 200


def test_change_password_without_token_is_401(admin_api):
    assert_401(change_password(Api(), "adminpass", "newsecret"))
    assert login(Api(), "admin", "adminpass").status_code == 200


# --- health --------------------------------------------------------------------------


def test_health_is_ok_without_token(api):
    response = api.get("/api/auth/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "server": "PZLS", "version": pzls_site.__version__}
    assert api.get("/api/auth/health", token="garbage").status_code == 200


def test_health_is_503_when_the_data_dir_is_not_writable(api, data_dir):
    # Tests run as root, so permissions would not stop a write: a path under a
    # regular file cannot be written by anyone.
    blocker = data_dir / "a-file"
    blocker.write_text("not a directory")
    with override_settings(PZLS_DATA_DIR=blocker / "data"):
        response = api.get("/api/auth/health")
    assert response.status_code == 503
    body = response.json()
    assert set(body) == {"status", "error"}
    assert body["status"] == "unavailable"
    assert isinstance(body["error"], str) and body["error"]
    assert response["Access-Control-Allow-Origin"] == "*"


def test_health_is_503_when_the_database_does_not_answer(api):
    with mock.patch("pzls_site.health.connection") as fake:
        fake.cursor.side_effect = RuntimeError("database gone")
        response = api.get("/api/auth/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and isinstance(body["error"], str) and body["error"]
    assert "database gone" not in body["error"]


# --- legacy migration -----------------------------------------------------------------

LEGACY_DATA = {
    "humans": {"h1": {"name": "Ann", "tags": ["a"]}, "h2": {"name": "Bo"}},
    "tags": {"t1": {"label": "x"}},
}
LEGACY_CHANGELOG = [
    {
        "version": 1,
        "timestamp": "2025-01-01T00:00:00.000Z",
        "clientVersion": 0,
        "added": [{"store": "humans", "id": "h1"}],
        "modified": [],
        "action": "push",
    },
    {
        "version": 2,
        "timestamp": "2025-01-02T00:00:00.000Z",
        "clientVersion": 1,
        "added": [{"store": "humans", "id": "h2"}, {"store": "tags", "id": "t1"}],
        "modified": [],
        "action": "push",
    },
    {
        "version": 3,
        "timestamp": "2025-01-03T00:00:00.000Z",
        "clientVersion": 2,
        "added": [],
        "modified": [{"store": "humans", "id": "h1"}],
        "action": "push",
    },
]


def test_legacy_repository_becomes_the_first_users(api, data_dir):
    repo_bytes = orjson.dumps({"version": 3, "data": LEGACY_DATA}, option=orjson.OPT_INDENT_2)
    changelog_bytes = orjson.dumps(LEGACY_CHANGELOG, option=orjson.OPT_INDENT_2)
    (data_dir / "repo.json").write_bytes(repo_bytes)
    (data_dir / "changelog.json").write_bytes(changelog_bytes)

    api.register("alice", "secret1")
    pulled = api.get("/api/sync")
    assert pulled.json() == {"version": 3, "data": LEGACY_DATA}
    assert list(pulled.json()["data"]["humans"]) == ["h1", "h2"]
    changes = api.get("/api/sync/changes?since=0").json()
    assert changes["currentVersion"] == 3
    assert changes["pendingChanges"] == 3
    assert changes["changes"] == LEGACY_CHANGELOG

    # Renamed, never deleted: the original bytes are still on disk under another name.
    assert not (data_dir / "repo.json").exists()
    assert not (data_dir / "changelog.json").exists()
    kept = {p.read_bytes() for p in data_dir.iterdir() if p.is_file()}
    assert repo_bytes in kept
    assert changelog_bytes in kept

    # Once only: the next user starts empty.
    bob = Api()
    bob.register("bob", "secret1")
    assert bob.get("/api/sync").json() == {"version": 0, "data": {}}
    assert bob.get("/api/sync/changes").json()["pendingChanges"] == 0

    # The adopted repository goes on from its version.
    result = api.post("/api/sync", {"clientVersion": 3, "stores": {"humans": {"h3": {"name": "Cy"}}}}).json()
    assert result["version"] == 4


def test_legacy_repository_without_changelog(api, data_dir):
    (data_dir / "repo.json").write_bytes(orjson.dumps({"version": 7, "data": LEGACY_DATA}))
    body = api.register("alice", "secret1")
    assert body["user"]["role"] == "admin"
    assert api.get("/api/sync").json() == {"version": 7, "data": LEGACY_DATA}
    assert api.get("/api/sync/changes").json()["pendingChanges"] == 0
    assert not (data_dir / "repo.json").exists()
    assert any(p.name.startswith("repo.json") for p in data_dir.iterdir())


def test_legacy_file_appearing_later_is_not_adopted_by_a_later_user(admin_api, data_dir):
    (data_dir / "repo.json").write_bytes(orjson.dumps({"version": 2, "data": LEGACY_DATA}))
    bob = Api()
    bob.register("bob", "secret1")
    assert bob.get("/api/sync").json() == {"version": 0, "data": {}}
    assert admin_api.get("/api/sync").json() == {"version": 0, "data": {}}
    assert (data_dir / "repo.json").exists()


@pytest.mark.parametrize(
    "content", [b"{not json", b"[]", b'{"version": -1, "data": {}}', b'{"version": 1, "data": []}']
)
def test_unreadable_legacy_file_does_not_block_registration_and_is_kept(api, data_dir, content):
    (data_dir / "repo.json").write_bytes(content)
    body = api.register("alice", "secret1")
    assert body["user"]["role"] == "admin"
    assert api.get("/api/sync").json() == {"version": 0, "data": {}}
    assert (data_dir / "repo.json").read_bytes() == content


# --- administration (§6) -------------------------------------------------------------


def test_admin_users_list(admin_api, analyst_api):
    admin_api.post("/api/sync", {"stores": {"humans": {"h1": {"n": 1}, "h2": {"n": 2}}, "tags": {"t": {}}}})
    admin_api.post("/api/sync", {"stores": {"humans": {"h1": {"n": 3}}}})
    assert login(Api(), "analyst", "analystpass").status_code == 200
    User.objects.filter(username="analyst").update(is_active=False)
    response = admin_api.get("/api/admin/users")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"users"}
    rows = {row["username"]: row for row in body["users"]}
    assert set(rows) == {"admin", "analyst"}
    for row in body["users"]:
        assert set(row) == ADMIN_ROW_KEYS, row
    admin, analyst = rows["admin"], rows["analyst"]
    assert admin["id"] == str(User.objects.get(username="admin").pk)
    assert admin["role"] == "admin" and analyst["role"] == "analyst"
    assert admin["disabled"] is False and analyst["disabled"] is True
    assert admin["lastLogin"] is None
    assert isinstance(analyst["lastLogin"], str)
    assert admin["version"] == 2 and admin["records"] == 3
    changes = admin_api.get("/api/sync/changes").json()["changes"]
    assert admin["lastSync"] == changes[-1]["timestamp"]
    assert analyst["version"] == 0 and analyst["records"] == 0 and analyst["lastSync"] is None
    me = admin_api.get("/api/auth/me").json()["user"]
    assert {k: admin[k] for k in USER_KEYS} == me
    assert User.objects.get(username="admin").password.encode() not in response.content


def test_admin_users_requires_a_token(admin_api):
    assert_401(Api().get("/api/admin/users"))


def test_admin_users_is_403_for_an_analyst(analyst_api):
    assert_error(analyst_api.get("/api/admin/users"), 403)


@pytest.mark.files_only
def test_admin_delete_removes_user_tokens_repository_and_changelog(admin_api, analyst_api, data_dir):
    analyst_api.post("/api/sync", {"stores": {"humans": {"h1": {"name": "x"}}}})
    second = login(Api(), "analyst", "analystpass").json()["token"]
    user_id = str(User.objects.get(username="analyst").pk)
    assert (data_dir / f"repo_{user_id}.json").exists()
    assert (data_dir / f"changelog_{user_id}.jsonl").exists()
    admin_pull = admin_api.get("/api/sync").content

    response = admin_api.delete(f"/api/admin/users/{user_id}")
    assert response.status_code == 200
    assert response.json() == {"success": True}

    assert not User.objects.filter(pk=user_id).exists()
    assert_401(analyst_api.get("/api/auth/me"))
    assert_401(analyst_api.get("/api/sync", token=second))
    assert_error(login(Api(), "analyst", "analystpass"), 401, INVALID)
    assert [p.name for p in data_dir.iterdir() if user_id in p.name] == []
    tokens = orjson.loads((data_dir / "tokens.json").read_bytes())["tokens"]
    assert all(raw["userId"] != user_id for raw in tokens.values())
    assert [r["username"] for r in admin_api.get("/api/admin/users").json()["users"]] == ["admin"]
    assert admin_api.get("/api/sync").content == admin_pull
    assert admin_api.get("/api/auth/me").status_code == 200

    # The name is free again, and the new account starts empty.
    fresh = Api()
    fresh.register("analyst", "analystpass")
    assert fresh.get("/api/sync").json() == {"version": 0, "data": {}}


def test_admin_cannot_delete_themself(admin_api):
    admin_id = str(User.objects.get(username="admin").pk)
    assert_error(admin_api.delete(f"/api/admin/users/{admin_id}"), 400)
    assert User.objects.filter(pk=admin_id).exists()
    assert admin_api.get("/api/auth/me").status_code == 200


@pytest.mark.parametrize("user_id", [str(uuid.uuid4()), "not-a-uuid", "12345", "00000000-0000-0000-0000-000000000000"])
def test_admin_delete_unknown_id_is_404(admin_api, analyst_api, user_id):
    assert_error(admin_api.delete(f"/api/admin/users/{user_id}"), 404)
    assert user_count() == 2


def test_admin_delete_is_403_for_an_analyst_and_deletes_nothing(admin_api, analyst_api):
    admin_id = str(User.objects.get(username="admin").pk)
    assert_error(analyst_api.delete(f"/api/admin/users/{admin_id}"), 403)
    assert user_count() == 2
    assert admin_api.get("/api/auth/me").status_code == 200


def test_admin_delete_without_token_is_401(admin_api, analyst_api):
    analyst_id = str(User.objects.get(username="analyst").pk)
    assert_401(Api().delete(f"/api/admin/users/{analyst_id}"))
    assert user_count() == 2


# --- usernames on every database -------------------------------------------------------
#
# This module runs on SQLite, PostgreSQL and MariaDB (scripts/test.sh): a name
# the API accepts must be stored and found again exactly on each, and one that
# would not fit a column is 400 before anything is written.

KEY_LIMIT = "Username must be at most 255 characters after Unicode normalisation and case folding"
INVISIBLE = "Username must not contain invisible formatting characters"
CONTROL = "Username must not contain control characters"


@pytest.mark.parametrize(
    ("name", "login_as"),
    [
        ("ß" * 64, "ẞ" * 64),  # folds to 128 characters; the capital sharp s folds the same
        ("ﬃ" * 64, "ﬃ" * 64),  # ligature: NFKC makes three letters of each, 192 in all
        ("ﬃ" * 16, "FFI" * 16),
        ("ǰ" * 64, "ǰ" * 64),  # folds to two code points
        ("ǰ" * 32, "J\u030c" * 32),
        ("ﷺ" * 14, "ﷺ" * 14),  # 14 x 18 = 252 characters once normalised: fits
        ("😀" * 64, "😀" * 64),  # 4-byte UTF-8 (utf8mb4 on MariaDB)
        ("🧑🏽" * 32, "🧑🏽" * 32),  # emoji with a skin-tone modifier, all astral
        ("e\u0301" * 32, "é" * 32),  # combining sequences: NFKC composes them
        ("שָׁלוֹם עולם", "שָׁלוֹם עולם"),  # right-to-left letters and points, no direction marks
        ("Ωmega\u00a0名前", "ωMEGA 名前"),  # no-break space folds to a space
    ],
)
def test_unicode_usernames_are_stored_as_typed_and_found_folded(api, name, login_as):
    body = api.register(name, "secret1")
    assert body["user"]["username"] == name
    assert User.objects.get().username == name  # the database gave back every code point
    assert api.get("/api/auth/me").json()["user"]["username"] == name
    assert login(Api(), name, "secret1").status_code == 200
    response = login(Api(), login_as, "secret1")
    assert response.status_code == 200, response.content
    assert response.json()["user"]["username"] == name
    assert_error(Api().post("/api/auth/register", {"username": login_as, "password": "secret2"}), 409)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ﷺ" * 64, KEY_LIMIT),  # 64 characters typed, 1152 once normalised
        ("ﷺ" * 15, KEY_LIMIT),  # 270 once normalised
        ("ﷺ" * 14 + "a" * 4, KEY_LIMIT),  # 256: one over
        ("a" * 255 + "ﷺ", "Username must be at most 64 characters"),
        ("al\x00ice", CONTROL),
        ("al\x85ice", CONTROL),  # C1 control (NEXT LINE)
        ("al\x9bice", CONTROL),
        ("al\u2028ice", CONTROL),  # line separator
        ("al\u2029ice", CONTROL),  # paragraph separator
        ("ali\u200bce", INVISIBLE),  # zero-width space
        ("ali\u200cce", INVISIBLE),  # zero-width non-joiner
        ("ali\u200dce", INVISIBLE),  # zero-width joiner
        ("👨\u200d👩\u200d👧", INVISIBLE),  # an emoji family is joined by them
        ("\u200ealice", INVISIBLE),  # left-to-right mark
        ("alice\u200f", INVISIBLE),  # right-to-left mark
        ("\u202eecila", INVISIBLE),  # right-to-left override
        ("al\u00adice", INVISIBLE),  # soft hyphen
        ("\ufeffalice", INVISIBLE),  # byte order mark
        ("\u2060", INVISIBLE),  # word joiner only
    ],
)
def test_a_username_that_would_not_fit_or_hides_characters_is_400_and_creates_nobody(api, name, message):
    assert_error(api.post("/api/auth/register", {"username": name, "password": "secret1"}), 400, message)
    assert user_count() == 0
    # Nothing to find either: login answers as for any unknown name, never 500.
    assert_error(login(Api(), name, "secret1"), 401, INVALID)


@pytest.mark.parametrize("raw", [b'"\\ud800"', b'"al\\udfffice"', b'"\\ud83d"', b'"\\ud800\\ud800"'])
def test_a_lone_surrogate_in_json_is_400_and_creates_nobody(api, raw):
    body = b'{"username": ' + raw + b', "password": "secret1"}'
    response = api.client.post("/api/auth/register", body, content_type="application/json")
    assert_error(response, 400)
    assert user_count() == 0
    response = api.client.post("/api/auth/login", body, content_type="application/json")
    assert_error(response, 400)


@pytest.mark.parametrize("name", ["\ud800", "al\udcffice", "\udfff" * 3])
def test_a_lone_surrogate_from_the_shell_or_the_admin_site_is_refused_with_a_message(name):
    # Command-line arguments that are not UTF-8 arrive as lone surrogates (surrogateescape).
    from accounts.forms import UserAdminCreationForm
    from accounts.services import user_create
    from pzls_site.exceptions import BadRequest

    with pytest.raises(BadRequest, match=r"^Username must be valid Unicode text"):
        user_create(username=name, password="secret1")
    form = UserAdminCreationForm(
        data={"username": name, "role": "analyst", "password1": "x1y2z3w4", "password2": "x1y2z3w4"}
    )
    assert not form.is_valid()
    assert form.errors["username"] == ["Username must be valid Unicode text (no unpaired surrogates)"]
    with pytest.raises(BadRequest, match=r"^Password must be valid Unicode text"):
        user_create(username="alice", password="secret" + name)
    assert user_count() == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Straße", "STRASSE"),
        ("straße", "Strasse"),
        ("ﬁle", "FILE"),
        ("é", "e\u0301"),  # composed and decomposed
        ("①②", "12"),  # compatibility characters
        ("\uff2b\uff45\uff59", "key"),  # full-width letters
        ("ΣΊΣΥΦΟΣ", "σίσυφος"),  # final sigma folds like sigma
    ],
)
def test_names_equal_once_normalised_and_folded_collide(api, first, second):
    api.register(first, "secret1")
    assert_error(Api().post("/api/auth/register", {"username": second, "password": "other12"}), 409)
    assert user_count() == 1
    assert login(Api(), second, "secret1").json()["user"]["username"] == first


def test_names_that_differ_after_folding_are_different_users_on_every_database(api):
    # MySQL's default collations would call these equal (accents, trailing
    # spaces, ß = ss in some); the username columns compare exactly there too.
    names = ["alice", "älice", "alice ", " alice", "al\u0131ce", "alíce", "\uff41lice2", "alice2 "]
    for n, name in enumerate(names):
        assert Api().post("/api/auth/register", {"username": name, "password": f"secret{n}"}).status_code == 200, name
    assert user_count() == len(names)
    for n, name in enumerate(names):
        response = login(Api(), name, f"secret{n}")
        assert response.status_code == 200, name
        assert response.json()["user"]["username"] == name


def test_the_longest_names_fit_every_column(api):
    longest = ["a" * 64, "ẞ" * 64, "ﬃ" * 64, "😀" * 64, "ﷺ" * 14 + "a" * 3]
    for name in longest:
        assert Api().post("/api/auth/register", {"username": name, "password": "secret1"}).status_code == 200, name
    stored = {u.username: u.username_key for u in User.objects.all()}
    assert set(stored) == set(longest)
    assert stored["ﷺ" * 14 + "a" * 3] == username_key_of("ﷺ" * 14 + "a" * 3) and len(stored["ﷺ" * 14 + "a" * 3]) == 255


def username_key_of(name: str) -> str:
    from accounts.models import username_key

    return username_key(name)


# --- account changes of one user, one at a time ---------------------------------------
#
# A password change checks the current password, then hashes the new one
# without holding anything; the hook below runs another account change of the
# same user exactly there, as a request on another worker would, and the
# change must then be decided on what is stored once it holds the user's lock.


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@contextlib.contextmanager
def meanwhile(action):
    """Run ``action`` once, after the password change checked the current password and before it writes."""
    from django.contrib.auth.hashers import make_password as real_make_password

    done: list[bool] = []

    def hook(*args, **kwargs):
        if not done:
            done.append(True)
            action()
        return real_make_password(*args, **kwargs)

    with mock.patch("accounts.services.make_password", side_effect=hook):
        yield
    assert done, "the hook never ran"


def test_two_password_changes_with_the_same_current_password_one_wins(admin_api, analyst_api):
    from accounts import services

    other = login(Api(), "analyst", "analystpass").json()["token"]
    user = User.objects.get(username="analyst")

    def second_change():
        services.user_change_password(
            user=User.objects.get(pk=user.pk),
            current_password="analystpass",
            new_password="second-new",
            keep_digest=digest_of(other),
        )

    with meanwhile(second_change):
        loser = change_password(analyst_api, "analystpass", "first-new")
    assert_error(loser, 403, "Current password is incorrect")
    # The winner's token and password work; the loser left nothing of its own.
    assert analyst_api.get("/api/auth/me", token=other).status_code == 200
    assert_401(analyst_api.get("/api/auth/me"))  # revoked by the winner
    assert login(Api(), "analyst", "second-new").status_code == 200
    assert_error(login(Api(), "analyst", "first-new"), 401, INVALID)
    assert_error(login(Api(), "analyst", "analystpass"), 401, INVALID)


def test_a_password_change_racing_a_logout_of_its_token_is_401_and_changes_nothing(admin_api, analyst_api):
    from accounts import services

    user = User.objects.get(username="analyst")
    calling = analyst_api.token
    assert calling is not None
    with meanwhile(lambda: services.user_logout(user=user, digest=digest_of(calling))):
        assert_error(change_password(analyst_api, "analystpass", "newsecret"), 401, "Invalid or expired token")
    assert_401(analyst_api.get("/api/auth/me"))
    assert login(Api(), "analyst", "analystpass").status_code == 200
    assert_error(login(Api(), "analyst", "newsecret"), 401, INVALID)


def test_a_password_change_racing_a_disable_is_403_and_changes_nothing(admin_api, analyst_api):
    from accounts import services

    user = User.objects.get(username="analyst")
    with meanwhile(lambda: services.user_set_access(user=User.objects.get(pk=user.pk), is_active=False)):
        assert_error(change_password(analyst_api, "analystpass", "newsecret"), 403, "Account disabled")
    assert_401(analyst_api.get("/api/auth/me"))
    assert_error(login(Api(), "analyst", "analystpass"), 403, "Account disabled")
    services.user_set_access(user=user, is_active=True)
    assert login(Api(), "analyst", "analystpass").status_code == 200
    assert_error(login(Api(), "analyst", "newsecret"), 401, INVALID)


def test_a_password_change_racing_a_role_change_keeps_both(admin_api, analyst_api):
    from accounts import services

    user = User.objects.get(username="analyst")
    with meanwhile(lambda: services.user_set_access(user=User.objects.get(pk=user.pk), role="admin")):
        assert change_password(analyst_api, "analystpass", "newsecret").status_code == 200
    assert analyst_api.get("/api/auth/me").json()["user"]["role"] == "admin"
    assert login(Api(), "analyst", "newsecret").status_code == 200
    assert_error(login(Api(), "analyst", "analystpass"), 401, INVALID)


def test_a_password_change_racing_the_deletion_of_its_user_is_401_and_leaves_nothing(admin_api, analyst_api, data_dir):
    from accounts import services

    user = User.objects.get(username="analyst")
    admin = User.objects.get(username="admin")
    with meanwhile(lambda: services.user_delete_with_data(user=User.objects.get(pk=user.pk), actor=admin)):
        assert_error(change_password(analyst_api, "analystpass", "newsecret"), 401, "Invalid or expired token")
    assert traces_of(str(user.pk), data_dir) == []
    assert_error(login(Api(), "analyst", "newsecret"), 401, INVALID)


def test_a_login_racing_a_password_change_does_not_sign_in_with_the_old_password(admin_api, analyst_api):
    from accounts import services

    user = User.objects.get(username="analyst")
    real = User.check_password
    done: list[bool] = []

    def check_then_change(self, raw):
        ok = real(self, raw)
        if ok and not done and self.pk == user.pk:
            done.append(True)
            services.user_set_password(user=User.objects.get(pk=user.pk), password="reset-by-admin")
        return ok

    with mock.patch.object(User, "check_password", check_then_change):
        assert_error(login(Api(), "analyst", "analystpass"), 401, INVALID)
    assert done
    assert user_sessions_of(user) == []
    assert login(Api(), "analyst", "reset-by-admin").status_code == 200


def user_sessions_of(user: User) -> list:
    from accounts import services

    return services.user_sessions(user_id=str(user.pk))


# --- deleting a user while their requests are under way --------------------------------


def traces_of(user_id: str, data_dir: Path) -> list[str]:
    """Everything of ``user_id`` still kept: files naming them or holding their id, and rows in any table.

    The audit log is left out: it records what a user did, and keeps that after the user is gone (§8.5).
    """
    from django.apps import apps
    from django.db import models as m

    from sync.models import AuditBatch

    forms = {user_id, user_id.replace("-", "")}
    found = [
        f"file {p.relative_to(data_dir)}"
        for p in data_dir.rglob("*")
        if any(form in p.name for form in forms)
        or (p.is_file() and any(form.encode() in p.read_bytes() for form in forms))
    ]
    for model in apps.get_models():
        if model is AuditBatch:
            continue
        for field in model._meta.concrete_fields:
            if isinstance(field, m.UUIDField):
                rows = model._default_manager.filter(**{field.name: uuid.UUID(user_id)})
            elif isinstance(field, (m.CharField, m.TextField)):
                rows = model._default_manager.none()
                for form in forms:
                    rows = rows | model._default_manager.filter(**{f"{field.name}__contains": form})
            else:
                continue
            if rows.exists():
                found.append(f"row of {model._meta.db_table} by {field.name}")
    return found


def big_stores(tag: str, records: int = 400) -> dict:
    return {"humans": {f"{tag}-{n}": {"name": f"Person {n}", "notes": "n" * 800} for n in range(records)}}


def is_file_store() -> bool:
    from sync.backends import get_repository_store
    from sync.backends.json_file import JSONFileRepositoryStore

    return isinstance(get_repository_store(), JSONFileRepositoryStore)


@contextlib.contextmanager
def once_after(cls: type, name: str, action):
    """Run ``action`` once, right after ``cls.name`` returns (the interleaving a test forces)."""
    real = getattr(cls, name)
    done: list[bool] = []

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if not done:
            done.append(True)
            action()
        return result

    with mock.patch.object(cls, name, wrapper):
        yield
    assert done, f"{cls.__name__}.{name} was never called"


def before_the_push_writes():
    """Where a push has read its user's repository but not yet locked it for writing, per storage."""
    from sync.backends.database import _DatabaseSnapshot
    from sync.backends.json_file import JSONFileRepositoryStore

    if is_file_store():
        return JSONFileRepositoryStore, "_plan"  # planned, before the lock
    return _DatabaseSnapshot, "stored_for"  # read while planning without the lock, before locked() starts


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("existing", [True, False], ids=["with-repository", "first-push"])
def test_a_push_whose_user_is_deleted_before_it_writes_is_401_and_leaves_nothing(
    admin_api, analyst_api, data_dir, existing
):
    from accounts import services

    user = User.objects.get(username="analyst")
    uid = str(user.pk)
    if existing:
        assert analyst_api.post("/api/sync", {"stores": big_stores("old")}).status_code == 200
        assert analyst_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip").status_code == 200  # a cached copy too
    admin_api.post("/api/sync", {"stores": {"tags": {"t": {"by": "admin"}}}})
    admin_pull = admin_api.get("/api/sync").content

    def delete() -> None:
        services.user_delete_with_data(user=User.objects.get(pk=uid), actor=User.objects.get(username="admin"))

    cls, name = before_the_push_writes()
    with once_after(cls, name, delete):
        response = analyst_api.post("/api/sync", {"stores": big_stores("new")})
    assert_error(response, 401, "Invalid or expired token")
    assert response["WWW-Authenticate"] == "Bearer"
    assert traces_of(uid, data_dir) == []
    assert admin_api.get("/api/sync").content == admin_pull


@pytest.mark.django_db(transaction=True)
def test_a_delete_waits_for_a_push_that_is_writing_and_then_removes_it(admin_api, analyst_api, data_dir):
    import sync.backends.database
    import sync.backends.json_file

    uid = str(User.objects.get(username="analyst").pk)
    analyst_api.post("/api/sync", {"stores": big_stores("old")})
    writing, results = threading.Event(), {}
    real_commit = sync.backends.database._DatabaseSnapshot.commit

    def slow_commit(self, *args, **kwargs):  # under the database store's lock, in its transaction
        writing.set()
        time.sleep(0.5)  # the delete starts meanwhile and must wait for this push
        return real_commit(self, *args, **kwargs)

    def push() -> None:
        results["push"] = Api().post("/api/sync", {"stores": big_stores("new")}, token=analyst_api.token)

    def delete() -> None:
        writing.wait(10)
        results["delete"] = Api().delete(f"/api/admin/users/{uid}", token=admin_api.token)

    if is_file_store():
        # The file store plans before its lock: hold the lock from inside instead.
        target, name = sync.backends.json_file.JSONFileRepositoryStore, "_append_changelog"
        real_append = target._append_changelog

        def slow_append(self, *args, **kwargs):
            writing.set()
            time.sleep(0.5)
            return real_append(self, *args, **kwargs)

        patch = mock.patch.object(target, name, slow_append)
    else:
        patch = mock.patch.object(sync.backends.database._DatabaseSnapshot, "commit", slow_commit)
    with patch:
        threads = [threading.Thread(target=push), threading.Thread(target=delete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results["push"].status_code == 200, results["push"].content  # it held the lock first
    assert results["delete"].status_code == 200, results["delete"].content
    assert traces_of(uid, data_dir) == []


@pytest.mark.django_db(transaction=True)
def test_a_login_whose_user_is_deleted_after_the_password_check_issues_no_token(admin_api, analyst_api, data_dir):
    from accounts import services

    user = User.objects.get(username="analyst")
    uid = str(user.pk)
    analyst_api.post("/api/auth/logout")
    real = User.check_password
    done: list[bool] = []

    def check_then_delete(self, raw):
        ok = real(self, raw)
        if ok and not done and str(self.pk) == uid:
            done.append(True)
            services.user_delete_with_data(user=User.objects.get(pk=uid), actor=User.objects.get(username="admin"))
        return ok

    with mock.patch.object(User, "check_password", check_then_delete):
        assert_error(login(Api(), "analyst", "analystpass"), 401, INVALID)
    assert done
    assert traces_of(uid, data_dir) == []


@pytest.mark.django_db(transaction=True)
def test_a_gzip_pull_whose_user_is_deleted_while_it_reads_keeps_no_copy(admin_api, analyst_api, data_dir):
    from accounts import services
    from sync.backends.database import DatabaseRepositoryStore
    from sync.backends.json_file import JSONFileRepositoryStore

    uid = str(User.objects.get(username="analyst").pk)
    stores = big_stores("big", records=600)  # well over the 256 KiB a body must have to be kept
    assert analyst_api.post("/api/sync", {"stores": stores}).status_code == 200

    def delete() -> None:
        services.user_delete_with_data(user=User.objects.get(pk=uid), actor=User.objects.get(username="admin"))

    # After the body is read and before its copies are written.
    cls, name = (JSONFileRepositoryStore, "pull") if is_file_store() else (DatabaseRepositoryStore, "_read")
    with once_after(cls, name, delete):
        response = analyst_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200  # the body as it was when the pull read it
    assert (
        orjson.loads(gzip.decompress(b"".join(response.streaming_content) if response.streaming else response.content))[
            "data"
        ]
        == stores
    )
    assert traces_of(uid, data_dir) == []
