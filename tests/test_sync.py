"""PROTOCOL.md §3: pull, push, the changelog and status, through the API."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from testkit.client import ok
from tests.helpers import Api, assert_error

pytestmark = pytest.mark.storage

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
EMPTY = {"version": 0, "data": {}}
ACCOUNT_KEYS = {"username", "role", "version", "stores", "records", "dataSizeBytes", "totalSyncs", "lastSync"}
STATUS_KEYS = {"server", "serverVersion", "uptime", "registeredUsers", "account"}


def snapshot(api: Api) -> tuple[bytes, dict]:
    """Everything a push could change, as the client sees it."""
    return api.get("/api/sync").content, api.changes(since=0)


def ok_message(added: int, modified: int) -> str:
    return f"Sync successful. {added} added, {modified} modified."


# --- pull -----------------------------------------------------------------------------


def test_pull_of_an_empty_repository(admin_api):
    response = admin_api.get("/api/sync")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert orjson.loads(response.content) == EMPTY
    assert response.content.replace(b" ", b"") == b'{"version":0,"data":{}}'


def test_pull_returns_what_was_pushed(admin_api):
    stores = {
        "humans": {"h1": {"name": "Ann", "age": 31, "tags": ["a", "b"], "nested": {"x": None, "y": [1.5, True]}}},
        "others": {"o1": {"name": "Acme"}},
        "custom store": {"ünï": {"emoji": "🙂", "text": "line\nbreak"}},
    }
    admin_api.push(stores)
    assert admin_api.pull() == {"version": 1, "data": stores}


# --- push: body keys -------------------------------------------------------------------


def test_push_with_stores(admin_api):
    body = admin_api.push({"humans": {"h1": {"name": "A"}, "h2": {"name": "B"}}})
    assert body == {"version": 1, "added": 2, "modified": 0, "message": ok_message(2, 0)}


def test_push_with_legacy_data_key(admin_api):
    body = ok(admin_api.post("/api/sync", {"clientVersion": 0, "data": {"humans": {"h1": {"name": "A"}}}}))
    assert body == {"version": 1, "added": 1, "modified": 0, "message": ok_message(1, 0)}
    assert admin_api.pull() == {"version": 1, "data": {"humans": {"h1": {"name": "A"}}}}


@pytest.mark.parametrize("body", [{}, {"clientVersion": 0}, {"clientVersion": None}, {"other": {"humans": {}}}])
def test_push_without_stores_or_data_is_400_no_data_provided(admin_api, body):
    admin_api.push({"humans": {"h1": {"name": "A"}}})
    before = snapshot(admin_api)
    assert_error(admin_api.post("/api/sync", body), 400, "No data provided")
    assert snapshot(admin_api) == before


def test_push_with_empty_body_is_400_no_data_provided(admin_api):
    response = admin_api.client.generic(
        "POST", "/api/sync", b"", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}"
    )
    assert_error(response, 400, "No data provided")
    assert admin_api.pull() == EMPTY


def test_push_with_both_stores_and_data_is_400(admin_api):
    response = admin_api.post(
        "/api/sync", {"clientVersion": 0, "stores": {"humans": {"h1": {}}}, "data": {"others": {"o1": {}}}}
    )
    assert_error(response, 400)
    assert admin_api.pull() == EMPTY
    assert admin_api.changes()["pendingChanges"] == 0


# --- push: shape validation, all or nothing ------------------------------------------------


INVALID_PUSHES = [
    # (stores, store named in the error, id named in the error)
    pytest.param({"humans": {"h1": []}}, "humans", "h1", id="record-list"),
    pytest.param({"humans": {"h1": "text"}}, "humans", "h1", id="record-string"),
    pytest.param({"humans": {"h1": 7}}, "humans", "h1", id="record-number"),
    pytest.param({"humans": {"h1": None}}, "humans", "h1", id="record-null"),
    pytest.param({"humans": {"h1": True}}, "humans", "h1", id="record-bool"),
    pytest.param({"humans": {"ok": {"n": 1}, "bad": [1]}}, "humans", "bad", id="second-record-bad"),
    pytest.param({"humans": {"h1": {"n": 1}}, "others": {"o1": "x"}}, "others", "o1", id="second-store-bad"),
    pytest.param({"humans": {"": {"n": 1}}}, "humans", None, id="empty-id"),
    pytest.param({"humans": {"i" * 257: {"n": 1}}}, "humans", "i" * 80, id="id-257"),
    pytest.param({"humans": {"a\x00b": {"n": 1}}}, "humans", None, id="id-nul"),
    pytest.param({"humans": {"a\nb": {"n": 1}}}, "humans", None, id="id-newline"),
    pytest.param({"humans": {"a\x1fb": {"n": 1}}}, "humans", None, id="id-unit-separator"),
    pytest.param({"": {"h1": {"n": 1}}}, None, None, id="empty-store-name"),
    pytest.param({"s" * 65: {"h1": {"n": 1}}}, "s" * 65, None, id="store-65"),
    pytest.param({"hu\tmans": {"h1": {"n": 1}}}, None, None, id="store-tab"),
    pytest.param({"hu\x01mans": {"h1": {"n": 1}}}, None, None, id="store-soh"),
    pytest.param({"humans": []}, "humans", None, id="store-list"),
    pytest.param({"humans": [{"id": "h1"}]}, "humans", None, id="store-list-of-records"),
    pytest.param({"humans": "x"}, "humans", None, id="store-string"),
    pytest.param({"humans": None}, "humans", None, id="store-null"),
    pytest.param({"humans": 3}, "humans", None, id="store-number"),
]


@pytest.mark.parametrize("stores,store,record_id", INVALID_PUSHES)
def test_invalid_push_is_400_naming_store_and_id_and_writes_nothing(admin_api, data_dir, stores, store, record_id):
    admin_api.push({"humans": {"existing": {"n": 0}}, "others": {"o0": {"n": 0}}})
    before = snapshot(admin_api)
    files_before = sorted(p.name for p in data_dir.iterdir())
    message = assert_error(admin_api.post("/api/sync", {"clientVersion": 1, "stores": stores}), 400)
    if store is not None:
        assert store in message, message
    if record_id is not None:
        assert record_id in message, message
    assert snapshot(admin_api) == before
    assert sorted(p.name for p in data_dir.iterdir()) == files_before


@pytest.mark.parametrize("stores", [[], "humans", 5, True, [{"humans": {}}]])
def test_stores_not_an_object_is_400(admin_api, stores):
    assert_error(admin_api.post("/api/sync", {"clientVersion": 0, "stores": stores}), 400)
    assert_error(admin_api.post("/api/sync", {"clientVersion": 0, "data": stores}), 400)
    assert admin_api.pull() == EMPTY
    assert admin_api.changes()["pendingChanges"] == 0


def test_a_push_is_all_or_nothing_across_stores(admin_api):
    response = admin_api.post(
        "/api/sync",
        {"clientVersion": 0, "stores": {"humans": {"h1": {"name": "valid"}}, "others": {"o1": ["invalid"]}}},
    )
    assert_error(response, 400)
    assert admin_api.pull() == EMPTY
    # ... and in the other order too.
    response = admin_api.post(
        "/api/sync",
        {"clientVersion": 0, "stores": {"others": {"o1": ["invalid"]}, "humans": {"h1": {"name": "valid"}}}},
    )
    assert_error(response, 400)
    assert admin_api.pull() == EMPTY
    assert admin_api.changes() == {"currentVersion": 0, "clientVersion": 0, "pendingChanges": 0, "changes": []}


def test_name_and_id_limits_are_inclusive(admin_api):
    stores = {"s" * 64: {"i" * 256: {"n": 1}}, "x": {"y": {}}}
    assert admin_api.push(stores)["added"] == 2
    assert admin_api.pull() == {"version": 1, "data": stores}


def test_non_control_characters_are_fine_in_names_and_ids(admin_api):
    stores = {"tags ✓": {"id with spaces / slashes \\ and \u007f and ü": {"a": 1}}}
    assert admin_api.push(stores)["added"] == 1
    assert admin_api.pull()["data"] == stores


# --- push: clientVersion ------------------------------------------------------------------


@pytest.mark.parametrize("client_version", [-1, 1.5, "3", "", True, False, [1], {"v": 1}, -0.5, 1e20, 2**63, 2**64 - 1])
def test_invalid_client_version_is_400_and_writes_nothing(admin_api, client_version):
    response = admin_api.post("/api/sync", {"clientVersion": client_version, "stores": {"humans": {"h1": {}}}})
    assert_error(response, 400)
    assert admin_api.pull() == EMPTY
    assert admin_api.changes()["pendingChanges"] == 0


@pytest.mark.parametrize(
    "client_version,recorded", [(0, 0), (5, 5), (None, None), (7.0, 7), (2**53, 2**53), (2**63 - 1, 2**63 - 1)]
)
def test_valid_client_version_is_recorded(admin_api, client_version, recorded):
    admin_api.push({"humans": {"h1": {}}}, client_version=client_version)
    assert admin_api.changes()["changes"][0]["clientVersion"] == recorded


def test_missing_client_version_is_recorded_as_null(admin_api):
    response = admin_api.post("/api/sync", {"stores": {"humans": {"h1": {}}}})
    assert response.status_code == 200
    assert admin_api.changes()["changes"][0]["clientVersion"] is None


def test_client_version_does_not_gate_the_push(admin_api):
    admin_api.push({"humans": {"h1": {"v": 1}}})
    admin_api.push({"humans": {"h1": {"v": 2}}}, client_version=1)
    # An out-of-date (or future) clientVersion is still applied.
    assert admin_api.push({"humans": {"h1": {"v": 3}}}, client_version=0)["version"] == 3
    assert admin_api.push({"humans": {"h1": {"v": 4}}}, client_version=99)["version"] == 4
    assert admin_api.pull()["data"]["humans"]["h1"] == {"v": 4}


# --- push: merging and counting -------------------------------------------------------------


def test_added_and_modified_are_counted(admin_api):
    admin_api.push({"humans": {"h1": {"name": "A"}, "h2": {"name": "B"}}})
    body = admin_api.push(
        {"humans": {"h1": {"name": "A"}, "h2": {"name": "B2"}, "h3": {"name": "C"}}, "tags": {"t1": {}}},
        client_version=1,
    )
    assert body == {"version": 2, "added": 2, "modified": 1, "message": ok_message(2, 1)}
    assert admin_api.pull()["data"] == {
        "humans": {"h1": {"name": "A"}, "h2": {"name": "B2"}, "h3": {"name": "C"}},
        "tags": {"t1": {}},
    }


def test_a_record_is_replaced_not_merged(admin_api):
    admin_api.push({"humans": {"h1": {"name": "A", "age": 3}}})
    admin_api.push({"humans": {"h1": {"name": "A"}}})
    assert admin_api.pull()["data"]["humans"]["h1"] == {"name": "A"}


def test_key_order_is_not_a_modification(admin_api):
    admin_api.push({"humans": {"h1": {"a": 1, "b": {"x": 1, "y": [1, {"p": 1, "q": 2}]}}}})
    before = snapshot(admin_api)
    body = admin_api.push({"humans": {"h1": {"b": {"y": [1, {"q": 2, "p": 1}], "x": 1}, "a": 1}}}, client_version=1)
    assert body == {"version": 1, "added": 0, "modified": 0, "message": ok_message(0, 0)}
    assert snapshot(admin_api) == before


@pytest.mark.parametrize(
    "old,new",
    [
        ({"x": True}, {"x": 1}),
        ({"x": 1}, {"x": True}),
        ({"x": False}, {"x": 0}),
        ({"x": [True]}, {"x": [1]}),
        ({"x": {"y": 0}}, {"x": {"y": False}}),
        ({"x": 1}, {"x": "1"}),
        ({"x": None}, {"x": False}),
        ({"x": [1, 2]}, {"x": [2, 1]}),
        ({"x": 1}, {"x": 1, "y": None}),
        ({"x": 1.5}, {"x": 1.25}),
    ],
)
def test_different_json_values_are_a_modification(admin_api, old, new):
    admin_api.push({"humans": {"h1": old}})
    body = admin_api.push({"humans": {"h1": new}}, client_version=1)
    assert body == {"version": 2, "added": 0, "modified": 1, "message": ok_message(0, 1)}
    assert admin_api.pull()["data"]["humans"]["h1"] == new
    assert type(admin_api.pull()["data"]["humans"]["h1"]["x"]) is type(new["x"])


@pytest.mark.parametrize(
    "old,new",
    [
        (b'{"x":1}', b'{"x":1.0}'),
        (b'{"x":1.0}', b'{"x":1}'),
        (b'{"x":[1,{"y":2}]}', b'{"x":[1.0,{"y":2.0}]}'),
        (b'{"x":100}', b'{"x":1e2}'),
        (b'{"x":"\\u00e9"}', '{"x":"é"}'.encode()),
    ],
)
def test_equal_json_values_are_not_a_modification(admin_api, old, new):
    def raw_push(record: bytes):
        body = b'{"clientVersion":0,"stores":{"humans":{"h1":' + record + b"}}}"
        return admin_api.client.generic(
            "POST", "/api/sync", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}"
        )

    assert raw_push(old).json()["added"] == 1
    before = snapshot(admin_api)
    response = raw_push(new)
    assert response.status_code == 200
    assert response.json() == {"version": 1, "added": 0, "modified": 0, "message": ok_message(0, 0)}
    assert snapshot(admin_api) == before


def test_push_never_deletes(admin_api):
    admin_api.push({"humans": {"h1": {"n": 1}, "h2": {"n": 2}}, "tags": {"t1": {}}})
    admin_api.push({"humans": {"h3": {"n": 3}}})
    admin_api.push({"humans": {}})
    admin_api.push({})
    assert admin_api.pull() == {
        "version": 2,
        "data": {"humans": {"h1": {"n": 1}, "h2": {"n": 2}, "h3": {"n": 3}}, "tags": {"t1": {}}},
    }


def test_a_no_op_push_leaves_version_and_changelog_unchanged(admin_api, data_dir):
    admin_api.push({"humans": {"h1": {"n": 1}}})
    before = snapshot(admin_api)
    status_before = admin_api.get("/api/sync/status").json()["account"]
    no_ops: list[dict[str, dict[str, Any]]] = [
        {"humans": {"h1": {"n": 1}}},
        {},
        {"humans": {}},
        {"empty-new-store": {}},
    ]
    for stores in no_ops:
        body = admin_api.push(stores, client_version=1)
        assert body == {"version": 1, "added": 0, "modified": 0, "message": ok_message(0, 0)}
    assert snapshot(admin_api) == before
    assert admin_api.get("/api/sync/status").json()["account"] == status_before


def test_version_rises_by_one_per_effective_push(admin_api):
    versions = []
    for i in range(5):
        versions.append(admin_api.push({"humans": {f"h{i}": {"n": i}, "h0": {"n": 0}}}, client_version=i)["version"])
        admin_api.push({"humans": {"h0": {"n": 0}}})  # no-op in between
    assert versions == [1, 2, 3, 4, 5]
    assert admin_api.pull()["version"] == 5


def test_changelog_entry_shape(admin_api):
    admin_api.push({"humans": {"h1": {"n": 1}, "h2": {"n": 2}}})
    admin_api.push({"humans": {"h2": {"n": 20}, "h3": {"n": 3}}, "tags": {"t1": {}}, "others": {"o1": {}}}, 1)
    entries = admin_api.changes()["changes"]
    assert len(entries) == 2
    for entry in entries:
        assert set(entry) == {"version", "timestamp", "clientVersion", "added", "modified", "action"}
        assert ISO_MS_Z.match(entry["timestamp"]), entry
        assert entry["action"] == "push"
    assert entries[0]["version"] == 1 and entries[0]["clientVersion"] == 0
    assert entries[0]["added"] == [{"store": "humans", "id": "h1"}, {"store": "humans", "id": "h2"}]
    assert entries[0]["modified"] == []
    assert entries[1]["version"] == 2 and entries[1]["clientVersion"] == 1
    assert entries[1]["added"] == [
        {"store": "humans", "id": "h3"},
        {"store": "tags", "id": "t1"},
        {"store": "others", "id": "o1"},
    ]
    assert entries[1]["modified"] == [{"store": "humans", "id": "h2"}]
    assert entries[0]["timestamp"] <= entries[1]["timestamp"]


# --- changes ------------------------------------------------------------------------------


@pytest.fixture
def sixty_pushes(admin_api):
    for i in range(60):
        admin_api.push({"humans": {f"h{i}": {"n": i}}}, client_version=i)
    return admin_api


def test_changes_returns_the_last_fifty_of_the_pending(sixty_pushes):
    body = sixty_pushes.changes(since=0)
    assert set(body) == {"currentVersion", "clientVersion", "pendingChanges", "changes"}
    assert body["currentVersion"] == 60
    assert body["clientVersion"] == 0
    assert body["pendingChanges"] == 60
    assert [e["version"] for e in body["changes"]] == list(range(11, 61))
    assert body["changes"][-1]["added"] == [{"store": "humans", "id": "h59"}]
    assert body["changes"][-1]["clientVersion"] == 59


@pytest.mark.parametrize(
    "since,pending,first",
    [(5, 55, 11), (10, 50, 11), (11, 49, 12), (55, 5, 56), (59, 1, 60), (60, 0, None), (1000, 0, None)],
)
def test_changes_since(sixty_pushes, since, pending, first):
    body = sixty_pushes.changes(since=since)
    assert body["currentVersion"] == 60
    assert body["clientVersion"] == since
    assert body["pendingChanges"] == pending
    versions = [e["version"] for e in body["changes"]]
    assert versions == (list(range(first, 61)) if first else [])


@pytest.mark.parametrize("query", ["", "?since=", "?since=abc", "?since=nan", "?other=5", "?since=1x"])
def test_missing_or_non_numeric_since_means_zero(admin_api, query):
    for i in range(3):
        admin_api.push({"humans": {f"h{i}": {}}}, client_version=i)
    body = ok(admin_api.get(f"/api/sync/changes{query}"))
    assert body["clientVersion"] == 0
    assert body["pendingChanges"] == 3
    assert [e["version"] for e in body["changes"]] == [1, 2, 3]


def test_changes_of_an_empty_repository(admin_api):
    assert admin_api.changes() == {"currentVersion": 0, "clientVersion": 0, "pendingChanges": 0, "changes": []}


# --- order and isolation ---------------------------------------------------------------------


def test_pull_keeps_first_insertion_order(admin_api):
    admin_api.push({"tags": {"t1": {}}, "humans": {"b": {"n": 1}, "a": {"n": 2}, "10": {"n": 3}, "2": {"n": 4}}})
    admin_api.push({"humans": {"c": {"n": 5}, "a": {"n": 20}}, "others": {"z": {}, "y": {}}, "cases": {"k": {}}})
    admin_api.push({"others": {"x": {}}, "tags": {"t0": {}}})
    # Parse keeping order as JSON text has it.
    import json

    data = json.loads(admin_api.get("/api/sync").content)["data"]
    assert list(data) == ["tags", "humans", "others", "cases"]
    assert list(data["humans"]) == ["b", "a", "10", "2", "c"]
    assert data["humans"]["a"] == {"n": 20}
    assert list(data["others"]) == ["z", "y", "x"]
    assert list(data["tags"]) == ["t1", "t0"]


def test_users_never_see_each_others_data(admin_api, analyst_api):
    admin_api.push({"humans": {"h1": {"owner": "admin"}}})
    admin_api.push({"humans": {"h2": {"owner": "admin"}}})
    assert analyst_api.pull() == EMPTY
    assert analyst_api.changes() == {"currentVersion": 0, "clientVersion": 0, "pendingChanges": 0, "changes": []}
    # The same ids in another user's repository are new there.
    body = analyst_api.push({"humans": {"h1": {"owner": "analyst"}}})
    assert body == {"version": 1, "added": 1, "modified": 0, "message": ok_message(1, 0)}
    assert admin_api.pull() == {"version": 2, "data": {"humans": {"h1": {"owner": "admin"}, "h2": {"owner": "admin"}}}}
    assert analyst_api.pull() == {"version": 1, "data": {"humans": {"h1": {"owner": "analyst"}}}}
    assert admin_api.get("/api/sync/status").json()["account"]["records"] == 2
    assert analyst_api.get("/api/sync/status").json()["account"]["records"] == 1


# --- status ------------------------------------------------------------------------------


def test_status_without_token(admin_api, analyst_api):
    response = Api().get("/api/sync/status")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == STATUS_KEYS
    assert body["server"] == "PZLS"
    import pzls_site

    assert body["serverVersion"] == pzls_site.__version__
    assert isinstance(body["uptime"], (int, float)) and not isinstance(body["uptime"], bool)
    assert body["uptime"] >= 0
    assert body["registeredUsers"] == 2
    assert body["account"] is None


def test_status_with_no_users(api):
    body = api.get("/api/sync/status").json()
    assert body["registeredUsers"] == 0 and body["account"] is None


def test_status_with_a_token_describes_the_callers_repository(admin_api, analyst_api):
    admin_api.push({"humans": {"h1": {"n": 1}, "h2": {"n": 2}}, "tags": {"t1": {}}})
    admin_api.push({"humans": {"h1": {"n": 10}}, "cases": {"c1": {}}})
    admin_api.push({"humans": {"h1": {"n": 10}}})  # no-op: not a sync in the history
    analyst_api.push({"others": {"o1": {}}})
    body = admin_api.get("/api/sync/status").json()
    assert set(body) == STATUS_KEYS
    account = body["account"]
    assert set(account) == ACCOUNT_KEYS
    entries = admin_api.changes()["changes"]
    assert account == {
        "username": "admin",
        "role": "admin",
        "version": 2,
        "stores": 3,
        "records": 4,
        "dataSizeBytes": len(admin_api.get("/api/sync").content),
        "totalSyncs": 2,
        "lastSync": entries[-1]["timestamp"],
    }
    analyst = analyst_api.get("/api/sync/status").json()["account"]
    assert analyst["username"] == "analyst" and analyst["role"] == "analyst"
    assert analyst["version"] == 1 and analyst["records"] == 1 and analyst["stores"] == 1


def test_status_of_an_empty_repository(admin_api):
    account = admin_api.get("/api/sync/status").json()["account"]
    assert set(account) == ACCOUNT_KEYS
    assert account["username"] == "admin"
    assert account["version"] == 0
    assert account["stores"] == 0
    assert account["records"] == 0
    assert account["totalSyncs"] == 0
    assert account["lastSync"] is None
    assert isinstance(account["dataSizeBytes"], int) and account["dataSizeBytes"] >= 0


@pytest.mark.parametrize(
    "header", ["Bearer 3f1c0a52-3c1e-4c8e-9a53-6c1e1b1d2f00", "Bearer junk", "Bearer", "Basic YTpi", "Bearer a b"]
)
def test_status_with_an_invalid_token_is_the_tokenless_answer(admin_api, header):
    response = admin_api.client.get("/api/sync/status", content_type="application/json", HTTP_AUTHORIZATION=header)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == STATUS_KEYS
    assert body["account"] is None
    assert body["registeredUsers"] == 1
    assert "WWW-Authenticate" not in response


def test_status_with_a_revoked_token_is_the_tokenless_answer(admin_api):
    token = admin_api.token
    admin_api.post("/api/auth/logout")
    response = admin_api.get("/api/sync/status", token=token)
    assert response.status_code == 200
    assert response.json()["account"] is None


# --- the sync URLs need a token ---------------------------------------------------------------


@pytest.mark.parametrize("method,url", [("get", "/api/sync"), ("post", "/api/sync"), ("get", "/api/sync/changes")])
def test_sync_urls_without_token_are_401(admin_api, method, url):
    admin_api.push({"humans": {"h1": {}}})
    response = getattr(Api(), method)(url)
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == "Bearer"
    assert admin_api.pull()["version"] == 1
