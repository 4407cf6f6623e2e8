"""What the database stores promise beyond the contract: rows instead of files, the
per-server pull cache, consistent pulls under concurrent pushes, exact ids, and
database failures answered as the protocol's 500.

Runs on whatever database the test run uses (SQLite by default, PostgreSQL
with ``PZLS_TEST_STORAGE=database``).
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from datetime import UTC, datetime, timedelta
from unittest import mock

import orjson
import pytest
from django.db import OperationalError, connection
from django.test import override_settings

from accounts.models import Token, User
from pzls_site.exceptions import StorageError
from sync.backends import get_repository_store
from sync.backends.base import BaseRepositoryStore
from sync.backends.database import DatabaseRepositoryStore
from sync.merge import encode_stores
from sync.models import ChangelogEntry, Record, Repository, Store
from sync.records import PushOutcome, plan_push
from tests.helpers import Api, data_dir_settings

pytestmark = pytest.mark.storage

DATABASE = {
    "token_backend": "accounts.backends.database.DatabaseTokenStore",
    "sync_backend": "sync.backends.database.DatabaseRepositoryStore",
}
U = "44444444-4444-4444-8444-444444444444"
TS = "2026-05-17T10:04:05.123Z"


@pytest.fixture(autouse=True)
def database_storage(data_dir):
    with override_settings(**data_dir_settings(data_dir, **DATABASE)):
        yield


def push(store: BaseRepositoryStore, stores: dict, *, client_version: int | None = 0) -> PushOutcome:
    """A full push as the service makes it: planned on the locked snapshot, committed under the same lock."""
    with store.locked(U) as snapshot:
        outcome = plan_push(snapshot, encode_stores(stores), timestamp=TS, client_version=client_version, audit=None)
        if outcome.change_set is not None:
            snapshot.commit(outcome.change_set)
    return outcome


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_token_rows_hold_only_digests(api) -> None:
    tokens = [api.register("alice", "secret1")["token"]]
    tokens.append(api.post("/api/auth/login", {"username": "alice", "password": "secret1"}).json()["token"])
    rows = list(Token.objects.values_list("digest", "user_id"))
    assert sorted(rows) == sorted((digest(t), str(User.objects.get().pk)) for t in tokens)
    for token in tokens:
        for variant in (token, token.replace("-", "")):
            assert not Token.objects.filter(digest__icontains=variant).exists()


def test_failed_and_incomplete_logins_issue_no_token(admin_api) -> None:
    before = list(Token.objects.values_list("digest", flat=True))
    for body in (
        {},
        {"username": "admin"},
        {"username": "admin", "password": "wrongpass"},
        {"username": 1, "password": 2},
    ):
        assert Api().post("/api/auth/login", body).status_code in (400, 401)
    assert list(Token.objects.values_list("digest", flat=True)) == before


def test_renewal_is_written_at_most_once_a_minute(api) -> None:
    now = [datetime.now(UTC)]
    with mock.patch("accounts.services.utcnow", side_effect=lambda: now[0]):
        token = api.register("alice", "secret1")["token"]
        issued = Token.objects.get(digest=digest(token)).last_used
        now[0] += timedelta(seconds=50)
        assert api.get("/api/auth/me").status_code == 200
        assert Token.objects.get(digest=digest(token)).last_used == issued
        now[0] += timedelta(seconds=11)
        assert api.get("/api/auth/me").status_code == 200
        row = Token.objects.get(digest=digest(token))
        assert row.last_used == now[0] and row.expires == now[0] + timedelta(hours=24)


def test_deleting_a_user_removes_their_tokens_and_repository_rows(admin_api, analyst_api) -> None:
    analyst_api.post("/api/sync", {"stores": {"humans": {"h1": {"n": 1}}}})
    admin_api.post("/api/sync", {"stores": {"humans": {"h1": {"n": 2}}}})
    user_id = str(User.objects.get(username="analyst").pk)
    assert Repository.objects.filter(user_id=user_id).exists()
    assert admin_api.delete(f"/api/admin/users/{user_id}").status_code == 200
    assert not Token.objects.filter(user_id=user_id).exists()
    assert not Repository.objects.filter(user_id=user_id).exists()
    admin_repo = Repository.objects.get()
    assert set(Store.objects.values_list("repository", flat=True)) == {admin_repo.pk}
    assert set(Record.objects.values_list("store__repository", flat=True)) == {admin_repo.pk}
    assert set(ChangelogEntry.objects.values_list("repository", flat=True)) == {admin_repo.pk}


def test_record_ids_and_store_names_are_exact(admin_api) -> None:
    stores = {"Tags": {"a": {"n": 1}}, "tags": {"a": {"n": 2}, "A": {"n": 3}, "a ": {"n": 4}, "ä": {"n": 5}}}
    assert admin_api.post("/api/sync", {"stores": stores}).json()["added"] == 5
    assert orjson.loads(admin_api.get("/api/sync").content)["data"] == stores


def test_large_pulls_are_cached_per_tag_and_replaced_after_a_push(data_dir) -> None:
    store = DatabaseRepositoryStore(location=data_dir, cache_min_bytes=1000)
    big = {"humans": {f"h{n}": {"notes": "x" * 50, "n": n} for n in range(100)}}
    push(store, big)
    first = store.pull(U)
    assert first.file is None  # read from the database, then cached
    cached = list((data_dir / "pullcache").iterdir())
    assert [p.name for p in cached] == [f"{U}.{first.tag}.json"]
    again = store.pull(U)
    assert again.file is not None and again.tag == first.tag
    assert again.read() == first.body
    push(store, {"humans": {"h0": {"n": "changed"}}}, client_version=1)
    after = store.pull(U)
    assert after.tag != first.tag and after.file is None
    assert orjson.loads(after.read())["data"]["humans"]["h0"] == {"n": "changed"}
    assert [p.name for p in (data_dir / "pullcache").iterdir()] == [f"{U}.{after.tag}.json"]
    uncached = DatabaseRepositoryStore(location=data_dir, cache_min_bytes=None)
    assert store.pull(U).read() == after.body == uncached.pull(U).read()
    store.delete(U)
    assert list((data_dir / "pullcache").iterdir()) == []


def test_small_pulls_are_not_cached(data_dir) -> None:
    store = get_repository_store()
    push(store, {"s": {"r": {}}})
    assert store.pull(U).body == b'{"version":1,"data":{"s":{"r":{}}}}'
    assert not (data_dir / "pullcache").exists() or list((data_dir / "pullcache").iterdir()) == []


def test_plain_and_gzip_copies_share_one_directory_and_one_clean_up(admin_api, analyst_api, data_dir) -> None:
    def copies() -> list[str]:
        return sorted(p.name for p in (data_dir / "pullcache").glob("*.json*"))

    big = {"humans": {f"h{n}": {"notes": "x" * 300} for n in range(1000)}}
    assert analyst_api.post("/api/sync", {"stores": big}).status_code == 200
    plain = analyst_api.get("/api/sync")
    packed = analyst_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert gzip.decompress(packed.content) == plain.content
    uid = analyst_api.get("/api/auth/me").json()["user"]["id"]
    tag = plain["ETag"].strip('"')
    assert copies() == [f"{uid}.{tag}.json", f"{uid}.{tag}.json.gz"]
    # Sent from the copies, byte for byte.
    assert analyst_api.get("/api/sync").content == plain.content
    assert analyst_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip").content == packed.content

    analyst_api.post("/api/sync", {"stores": {"humans": {"h0": {"notes": "changed"}}}})
    newer = analyst_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert orjson.loads(gzip.decompress(newer.content))["data"]["humans"]["h0"] == {"notes": "changed"}
    new_tag = newer["ETag"].strip('"').removesuffix("-gz")
    assert copies() == [f"{uid}.{new_tag}.json", f"{uid}.{new_tag}.json.gz"]

    assert admin_api.delete(f"/api/admin/users/{uid}").status_code == 200
    assert copies() == []


@pytest.mark.django_db(transaction=True)
def test_every_pull_is_one_moment_of_the_repository_while_pushes_land(data_dir) -> None:
    store = DatabaseRepositoryStore(location=data_dir, cache_min_bytes=None)
    stop = threading.Event()
    errors: list[BaseException] = []

    def pusher() -> None:
        try:
            for n in range(60):
                # Each push adds one record to each of two stores.
                push(store, {"a": {f"r{n}": {"n": n}}, "b": {f"r{n}": {"n": n}}}, client_version=n)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=pusher)
    thread.start()
    pulls = 0
    try:
        while not stop.is_set() or pulls == 0:
            source = store.pull(U)
            doc = orjson.loads(source.read())
            version = doc["version"]
            # The version and both stores from the same moment.
            assert [len(doc["data"].get(name, {})) for name in ("a", "b")] == [version, version]
            pulls += 1
    finally:
        thread.join()
        connection.close()
    assert errors == []
    assert orjson.loads(store.pull_bytes(U))["version"] == 60


def _broken(*args, **kwargs):
    raise OperationalError("the database went away")


def test_a_database_failure_is_a_storage_error_and_a_500(admin_api) -> None:
    with mock.patch.object(Store.objects, "using", side_effect=_broken):
        with pytest.raises(StorageError):
            push(get_repository_store(), {"s": {"r": {}}})
        response = admin_api.post("/api/sync", {"stores": {"s": {"r": {}}}})
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error"}
    assert admin_api.get("/api/sync").content == b'{"version":0,"data":{}}'
