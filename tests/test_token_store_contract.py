"""The token store contract, run against every token backend through the setting that selects it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from accounts.backends import BaseTokenStore, TokenRecord, get_token_store, token_stores
from tests.backends import TOKEN_BACKENDS
from tests.helpers import assert_implements_every_method, in_threads

pytestmark = pytest.mark.storage


def _now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# Stores may forget expired tokens whenever they like, so the records here are recent.
T0 = _now_ms()


def record(digest: str, user_id: str = "u1", *, created: datetime = T0, ttl_h: float = 24) -> TokenRecord:
    return TokenRecord(
        digest=digest, user_id=user_id, created=created, last_used=created, expires=created + timedelta(hours=ttl_h)
    )


@pytest.fixture(params=TOKEN_BACKENDS)
def store(request: pytest.FixtureRequest, data_dir) -> Iterator[BaseTokenStore]:
    with override_settings(PZLS_TOKEN_STORE={"BACKEND": request.param, "OPTIONS": {"location": str(data_dir)}}):
        instance = get_token_store()
        assert type(instance).__module__ + "." + type(instance).__name__ == request.param
        yield instance


def fresh(store: BaseTokenStore) -> BaseTokenStore:
    """A second instance over the same storage, as another worker process would have."""
    token_stores.reset()
    other = get_token_store()
    assert other is not store
    return other


@pytest.mark.parametrize("path", TOKEN_BACKENDS)
def test_backend_implements_every_method(path: str) -> None:
    assert_implements_every_method(BaseTokenStore, path)


def test_bad_backend_path_names_the_setting() -> None:
    with override_settings(PZLS_TOKEN_STORE={"BACKEND": "accounts.backends.nope.Store", "OPTIONS": {}}):
        with pytest.raises(ImproperlyConfigured, match="PZLS_TOKEN_STORE"):
            get_token_store()


@pytest.mark.parametrize("path", TOKEN_BACKENDS)
def test_a_backend_without_its_location_names_the_setting(path: str) -> None:
    with override_settings(PZLS_TOKEN_STORE={"BACKEND": path, "OPTIONS": {}}):
        with pytest.raises(ImproperlyConfigured, match=r"PZLS_TOKEN_STORE.*location"):
            get_token_store()


def test_add_then_get_round_trips(store: BaseTokenStore) -> None:
    rec = record("a" * 64)
    store.add(rec)
    assert store.get("a" * 64) == rec
    assert fresh(store).get("a" * 64) == rec


def test_unknown_digest_is_none(store: BaseTokenStore) -> None:
    assert store.get("f" * 64) is None


def test_touch_moves_last_use_and_expiry(store: BaseTokenStore) -> None:
    store.add(record("a" * 64))
    later = T0 + timedelta(minutes=3)
    store.touch("a" * 64, last_used=later, expires=later + timedelta(hours=24))
    got = fresh(store).get("a" * 64)
    assert got is not None
    assert got.last_used == later
    assert got.expires == later + timedelta(hours=24)
    assert got.created == T0


def test_touch_does_not_resurrect_a_revoked_token(store: BaseTokenStore) -> None:
    store.add(record("a" * 64))
    assert store.revoke("a" * 64) is True
    store.touch("a" * 64, last_used=T0, expires=T0 + timedelta(days=1))
    assert store.get("a" * 64) is None
    assert store.revoke("a" * 64) is False


def test_revoke_user_keeps_only_the_named_token(store: BaseTokenStore) -> None:
    for n in range(3):
        store.add(record(f"{n}" * 64, "u1", created=T0 + timedelta(seconds=n)))
    store.add(record("9" * 64, "u2"))
    assert store.revoke_user("u1", keep="1" * 64) == 2
    assert [r.digest for r in store.list_user("u1")] == ["1" * 64]
    assert store.get("9" * 64) is not None
    assert store.revoke_user("u1") == 1
    assert store.list_user("u1") == []
    assert store.revoke_user("nobody") == 0


def test_list_user_is_oldest_first_and_private(store: BaseTokenStore) -> None:
    store.add(record("b" * 64, "u1", created=T0 + timedelta(minutes=5)))
    store.add(record("a" * 64, "u1", created=T0))
    store.add(record("c" * 64, "u2"))
    assert [r.digest for r in store.list_user("u1")] == ["a" * 64, "b" * 64]


def test_purge_expired_forgets_only_expired_tokens(store: BaseTokenStore) -> None:
    now = _now_ms()
    store.add(record("a" * 64, created=now, ttl_h=1))
    store.add(record("b" * 64, created=now, ttl_h=24))
    assert store.purge_expired(now + timedelta(hours=2)) == 1
    assert store.get("a" * 64) is None
    assert store.get("b" * 64) is not None


def test_public_id_is_short_and_not_the_digest(store: BaseTokenStore) -> None:
    rec = record("0123456789ab" + "c" * 52)
    assert rec.public_id == "0123456789ab"


def test_concurrent_writers_lose_nothing(store: BaseTokenStore) -> None:
    def issue(worker: int) -> None:
        for n in range(15):
            store.add(record(f"{worker:02d}{n:02d}".ljust(64, "0"), f"u{worker}", created=datetime.now(UTC)))

    in_threads(8, issue)
    other = fresh(store)
    assert sum(len(other.list_user(f"u{w}")) for w in range(8)) == 120
