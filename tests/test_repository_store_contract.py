"""The repository store contract, run against every repository backend through its setting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import orjson
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from sync.backends import BaseRepositoryStore, Repository, get_repository_store, repository_stores
from sync.backends.base import CHANGES_PAGE, EMPTY_PULL, EMPTY_SUMMARY, RecordDump
from sync.merge import RawStores, encode_stores
from sync.records import PushOutcome, plan_push
from tests.backends import REPOSITORY_BACKENDS
from tests.helpers import assert_implements_every_method, in_threads

pytestmark = pytest.mark.storage

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
TS = "2026-05-17T10:04:05.123Z"


@pytest.fixture(params=REPOSITORY_BACKENDS)
def store(request: pytest.FixtureRequest, data_dir) -> Iterator[BaseRepositoryStore]:
    with override_settings(PZLS_SYNC_STORE={"BACKEND": request.param, "OPTIONS": {"location": str(data_dir)}}):
        instance = get_repository_store()
        assert f"{type(instance).__module__}.{type(instance).__name__}" == request.param
        yield instance


def fresh(store: BaseRepositoryStore) -> BaseRepositoryStore:
    """A second instance over the same storage, as another worker process would have."""
    repository_stores.reset()
    other = get_repository_store()
    assert other is not store
    return other


def push_raw(
    store: BaseRepositoryStore, stores: RawStores, user: str = U1, client_version: int | None = 0, ts: str = TS
) -> PushOutcome:
    """A full push as the service makes it: planned on the locked snapshot, committed under the same lock."""
    with store.locked(user) as snapshot:
        outcome = plan_push(snapshot, stores, timestamp=ts, client_version=client_version, audit=None)
        if outcome.change_set is not None:
            snapshot.commit(outcome.change_set)
    return outcome


def push(
    store: BaseRepositoryStore, stores: dict, user: str = U1, client_version: int | None = 0, ts: str = TS
) -> PushOutcome:
    return push_raw(store, encode_stores(stores), user, client_version, ts)


def dump_of(version: int, data: dict[str, dict[str, Any]]) -> RecordDump:
    """A repository without record states as ``replace`` takes it: every record version 1, changed at ``version``."""
    stores = {
        name: [(rid, msgspec.Raw(orjson.dumps(record)), 1, version) for rid, record in records.items()]
        for name, records in data.items()
    }
    return RecordDump(version=version, stores=stores, tombstones={})


def pulled(store: BaseRepositoryStore, user: str = U1) -> dict:
    return orjson.loads(store.pull_bytes(user))


@pytest.mark.parametrize("path", REPOSITORY_BACKENDS)
def test_backend_implements_every_method(path: str) -> None:
    assert_implements_every_method(BaseRepositoryStore, path)


def test_bad_backend_path_names_the_setting() -> None:
    with override_settings(PZLS_SYNC_STORE={"BACKEND": "builtins.dict", "OPTIONS": {}}):
        with pytest.raises(ImproperlyConfigured, match="PZLS_SYNC_STORE"):
            get_repository_store()


@pytest.mark.parametrize("path", REPOSITORY_BACKENDS)
def test_a_backend_without_its_location_names_the_setting(path: str) -> None:
    with override_settings(PZLS_SYNC_STORE={"BACKEND": path, "OPTIONS": {}}):
        with pytest.raises(ImproperlyConfigured, match=r"PZLS_SYNC_STORE.*location"):
            get_repository_store()


def test_a_new_user_has_an_empty_repository(store: BaseRepositoryStore) -> None:
    assert store.pull_bytes(U1) == EMPTY_PULL
    assert store.load(U1) == Repository(version=0, data={})
    assert store.summary(U1) == EMPTY_SUMMARY
    page = store.changes(U1, 0)
    assert (page.current_version, page.pending, page.entries) == (0, 0, [])


def test_push_adds_records_and_raises_the_version(store: BaseRepositoryStore) -> None:
    result = push(store, {"humans": {"h1": {"name": "A"}, "h2": {"name": "B"}}, "tags": {"t1": {}}})
    assert (result.version, result.added, result.modified) == (1, 3, 0)
    data: dict[str, dict[str, Any]] = {"humans": {"h1": {"name": "A"}, "h2": {"name": "B"}}, "tags": {"t1": {}}}
    expected = {"version": 1, "data": data}
    assert pulled(store) == expected
    assert pulled(fresh(store)) == expected
    assert fresh(store).load(U1) == Repository(version=1, data=data)


def test_pull_bytes_are_compact_json_of_the_repository(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"h1": {"name": "Zoë", "n": 1.5, "tags": ["a", None, True]}}})
    raw = store.pull_bytes(U1)
    assert raw == orjson.dumps(
        {"version": 1, "data": {"humans": {"h1": {"name": "Zoë", "n": 1.5, "tags": ["a", None, True]}}}}
    )


def test_pull_tag_changes_exactly_when_the_pull_changes(store: BaseRepositoryStore) -> None:
    tags = [store.pull_tag(U1)]
    push(store, {"humans": {"h1": {"a": 1}}})
    tags.append(store.pull_tag(U1))
    push(store, {"humans": {"h1": {"a": 1}}})  # no change
    assert store.pull_tag(U1) == tags[-1] == fresh(store).pull_tag(U1)
    push(store, {"humans": {"h1": {"a": 2}}})
    tags.append(store.pull_tag(U1))
    store.replace(U1, dump_of(2, {"humans": {"h1": {"a": 3}}}), [])  # same version, new content
    tags.append(store.pull_tag(U1))
    store.delete(U1)
    push(store, {"humans": {"h1": {"a": 1}}})  # version 1 again, after a delete
    tags.append(store.pull_tag(U1))
    assert len(set(tags)) == len(tags)
    assert store.pull_tag(U2) != tags[-1]


def test_identical_push_changes_nothing(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"h1": {"a": 1, "b": [1, 2]}}})
    before = store.pull_bytes(U1)
    result = push(store, {"humans": {"h1": {"b": [1, 2], "a": 1}}}, client_version=1)
    assert (result.version, result.added, result.modified) == (1, 0, 0)
    assert store.pull_bytes(U1) == before
    assert store.changes(U1, 0).pending == 1


def test_json_equality_rules(store: BaseRepositoryStore) -> None:
    push(store, {"s": {"bool": {"v": True}, "int": {"v": 1}, "float": {"v": 2}}})
    result = push(store, {"s": {"bool": {"v": 1}, "int": {"v": 1.0}, "float": {"v": 2.0}}})
    assert (result.added, result.modified) == (0, 1)
    assert store.changes(U1, 1).entries[0]["modified"] == [{"store": "s", "id": "bool"}]


def test_modify_keeps_place_and_new_ids_go_last(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"b": {"n": 1}, "a": {"n": 1}}, "others": {"o": {}}})
    result = push(store, {"cases": {"c": {}}, "humans": {"z": {"n": 1}, "b": {"n": 2}}})
    assert (result.version, result.added, result.modified) == (2, 2, 1)
    data = pulled(store)["data"]
    assert list(data) == ["humans", "others", "cases"]
    assert list(data["humans"]) == ["b", "a", "z"]
    assert data["humans"]["b"] == {"n": 2}


def test_push_never_deletes(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"h1": {}, "h2": {}}})
    push(store, {"humans": {"h3": {}}})
    assert list(pulled(store)["data"]["humans"]) == ["h1", "h2", "h3"]


def test_changelog_entries_have_the_protocol_shape(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"h1": {}}}, client_version=None)
    push(store, {"humans": {"h1": {"x": 1}, "h2": {}}}, client_version=1, ts="2026-05-17T10:04:06.000Z")
    page = store.changes(U1, 0)
    assert page.current_version == 2 and page.pending == 2
    assert page.entries == [
        {
            "version": 1,
            "timestamp": TS,
            "clientVersion": None,
            "added": [{"store": "humans", "id": "h1"}],
            "modified": [],
            "action": "push",
        },
        {
            "version": 2,
            "timestamp": "2026-05-17T10:04:06.000Z",
            "clientVersion": 1,
            "added": [{"store": "humans", "id": "h2"}],
            "modified": [{"store": "humans", "id": "h1"}],
            "action": "push",
        },
    ]
    assert store.changes(U1, 1).entries == page.entries[1:]
    assert store.changes(U1, 2).pending == 0
    assert store.changes(U1, 99).entries == []


def test_changes_page_holds_the_newest_fifty(store: BaseRepositoryStore) -> None:
    for n in range(CHANGES_PAGE + 10):
        push(store, {"humans": {f"h{n}": {}}})
    page = store.changes(U1, 3)
    assert page.pending == CHANGES_PAGE + 7
    assert [e["version"] for e in page.entries] == list(range(11, CHANGES_PAGE + 11))


def test_summary_counts(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"h1": {}, "h2": {}}, "tags": {"t": {}}})
    push(store, {"humans": {"h1": {"x": 1}}}, ts="2026-05-17T10:05:00.000Z")
    push(store, {"humans": {"h1": {"x": 1}}}, ts="2026-05-17T10:06:00.000Z")  # no change: not a sync
    for instance in (store, fresh(store)):
        summary = instance.summary(U1)
        assert summary.version == 2
        assert summary.stores == 2
        assert summary.records == 3
        assert summary.total_syncs == 2
        assert summary.last_sync == "2026-05-17T10:05:00.000Z"
        assert summary.data_size_bytes == len(instance.pull_bytes(U1))


def test_users_are_isolated(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"h1": {"owner": 1}}}, user=U1)
    push(store, {"humans": {"h1": {"owner": 2}}}, user=U2)
    push(store, {"humans": {"h2": {}}}, user=U2)
    assert pulled(store, U1) == {"version": 1, "data": {"humans": {"h1": {"owner": 1}}}}
    assert pulled(store, U2)["version"] == 2
    assert store.changes(U1, 0).pending == 1


def test_replace_installs_a_repository_and_its_changelog(store: BaseRepositoryStore) -> None:
    push(store, {"old": {"x": {}}})
    entries = [
        {
            "version": 4,
            "timestamp": TS,
            "clientVersion": 3,
            "added": [{"store": "humans", "id": "h1"}],
            "modified": [],
            "action": "push",
        },
        {
            "version": 7,
            "timestamp": "2026-05-17T11:00:00.000Z",
            "clientVersion": 6,
            "added": [],
            "modified": [],
            "action": "push",
        },
    ]
    store.replace(U1, dump_of(7, {"humans": {"h1": {"n": "A"}}}), entries)
    other = fresh(store)
    assert pulled(other) == {"version": 7, "data": {"humans": {"h1": {"n": "A"}}}}
    page = other.changes(U1, 0)
    assert page.current_version == 7 and page.entries == entries
    summary = other.summary(U1)
    assert (summary.version, summary.records, summary.total_syncs, summary.last_sync) == (
        7,
        1,
        2,
        "2026-05-17T11:00:00.000Z",
    )
    result = push(other, {"humans": {"h2": {}}})
    assert result.version == 8


def test_delete_forgets_everything(store: BaseRepositoryStore) -> None:
    push(store, {"humans": {"h1": {}}})
    store.delete(U1)
    assert store.pull_bytes(U1) == EMPTY_PULL
    assert fresh(store).summary(U1) == EMPTY_SUMMARY
    assert store.changes(U1, 0).pending == 0
    assert push(store, {"humans": {"h1": {}}}).version == 1


def test_concurrent_pushes_are_serialised(store: BaseRepositoryStore) -> None:
    versions: list[int] = []
    lock = threading.Lock()

    def pusher(worker: int) -> None:
        for n in range(10):
            result = push(store, {"humans": {f"w{worker}-{n}": {"n": n}}})
            with lock:
                versions.append(result.version)

    in_threads(8, pusher)
    assert sorted(versions) == list(range(1, 81))
    repo = fresh(store).load(U1)
    assert repo.version == 80 and len(repo.data["humans"]) == 80
    assert store.changes(U1, 0).pending == 80


def test_record_texts_come_back_byte_for_byte_whatever_they_hold(store: BaseRepositoryStore) -> None:
    # Raw tabs, newlines and carriage returns between tokens, backslashes in
    # strings and in ids: characters bulk loaders (PostgreSQL's COPY) must escape.
    texts = {
        "tabs": b'{\t"a" :\t1}',
        "lines": b'{\n  "a": [1,\r\n 2]\n}',
        'back\\slash "id"': b'{"path":"C:\\\\dir\\\\file","nl":"a\\nb","tab":"\\t","u":"\\u005c"}',
        "plain": b'{"name":"Zo\xc3\xab"}',
    }
    pushed = {"s": {rid: msgspec.Raw(text) for rid, text in texts.items()}}
    assert push_raw(store, pushed).added == 4
    body = b"".join(f"{orjson.dumps(rid).decode()}:".encode() + text + b"," for rid, text in texts.items())[:-1]
    assert store.pull_bytes(U1) == b'{"version":1,"data":{"s":{' + body + b"}}}"
    assert fresh(store).pull_bytes(U1) == store.pull_bytes(U1)
