"""PROTOCOL-v2 §7 (record-level sync) and the issue-14 decisions, through the API.

Per-record versions and tombstones, full pushes that skip deleted ids,
``POST /api/sync/ops`` (every row of the ops table, validation, atomic
batches), per-record GET/PUT/DELETE with ETag and If-Match, the cursor pull,
the stores summary, changelog entries for ops, the caller's own audit log
(``GET /api/sync/ops``) and ``manage.py purge_tombstones``. Every check is
what a client sees: answers, pulls, cursors, the changelog.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import User
from sync.backends import get_repository_store
from testkit.client import ok, query_string, record_path
from tests.helpers import Api, assert_error, in_threads

pytestmark = pytest.mark.storage

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
H = "humans"
OK_KEYS = {"ok", "entity_id", "id", "store", "action", "version"}
CONFLICT_KEYS = {"ok", "conflict", "entity_id", "id", "store", "action", "serverVersion", "serverData"}
ENTITY_KEYS = {"store", "id", "version", "seq", "data"}
AUDIT_KEYS = {
    "seq", "timestamp", "username", "userId", "action", "store", "entity_id", "version",
    "targetUsername", "targetUserId", "ip",
}  # fmt: skip
RECORD_ACTIONS = {"create", "update", "delete"}


# --- helpers ---------------------------------------------------------------------------


def op(action: str, entity_id: str, data: Any = None, *, store: str = H, **extra: Any) -> dict[str, Any]:
    """One operation; ``data`` left out when None, ``expectedVersion`` and others through ``extra``."""
    body: dict[str, Any] = {"action": action, "store": store, "entity_id": entity_id}
    if data is not None:
        body["data"] = data
    body.update(extra)
    return body


def ops_raw(api: Api, body: Any) -> Any:
    return api.post("/api/sync/ops", body)


def put(api: Api, store: str, record_id: str, body: Any = None, *, data: bytes | None = None, **headers: str) -> Any:
    return api.put(record_path(store, record_id), body, data=data, **headers)


def delete(api: Api, store: str, record_id: str, **headers: str) -> Any:
    return api.delete(record_path(store, record_id), **headers)


def get_record(api: Api, store: str, record_id: str, **headers: str) -> Any:
    return api.get(record_path(store, record_id), **headers)


def walk(api: Api, cursor: str | None = None, **params: object) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every entity from ``cursor`` on, page after page until hasMore is false; and the last page."""
    entities: list[dict[str, Any]] = []
    for _ in range(10_000):
        page = api.cursor(cursor, **params)
        entities += page["entities"]
        cursor = page["nextCursor"]
        if not page["hasMore"]:
            return entities, page
        assert page["entities"], page  # more to come, so this page cannot be empty
    raise AssertionError("the cursor walk never ended")


def entity(api: Api, store: str, record_id: str) -> dict[str, Any] | None:
    """The record's cursor entity, tombstones included (None if the server knows nothing of it)."""
    found = [e for e in walk(api, deleted=1)[0] if (e["store"], e["id"]) == (store, record_id)]
    assert len(found) <= 1, found
    return found[0] if found else None


def audit(api: Api, since: int = 0) -> list[dict[str, Any]]:
    """The caller's record-change entries of the audit log after ``since`` (account events left out)."""
    entries: list[dict[str, Any]] = []
    while True:
        page = api.op_log(since=since, limit=1000)
        entries += page["ops"]
        if not page["ops"]:
            return [e for e in entries if e["action"] in RECORD_ACTIONS]
        since = page["ops"][-1]["seq"]


def changes(api: Api) -> list[dict[str, Any]]:
    return api.changes(since=0)["changes"]


def version(api: Api) -> int:
    return api.pull()["version"]


def everything(api: Api) -> dict[str, Any]:
    """What a write could change, as the client sees it."""
    return {
        "pull": api.get("/api/sync").content,
        "changes": api.changes(since=0),
        "cursor": walk(api, deleted=1)[0],
        "stores": api.sync_stores(),
        "audit": audit(api),
        "status": api.status()["account"],
    }


def seed(api: Api) -> None:
    """humans: live (v2, {"v": 2}), gone (a tombstone of version 3), other (v1); tags: t1 (v1)."""
    api.push({H: {"live": {"v": 1}, "gone": {"v": 1}, "other": {"v": 1}}, "tags": {"t1": {"name": "x"}}})
    api.push({H: {"live": {"v": 2}, "gone": {"v": 2}}})
    body = api.ops([op("delete", "gone")])
    assert body["results"][0]["version"] == 3, body


def nested_object(depth: int) -> bytes:
    """JSON text of an object nesting exactly ``depth`` levels (objects inside objects)."""
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def ops_bytes(record: bytes) -> bytes:
    return b'{"operations":[{"action":"create","store":"humans","entity_id":"deep","data":' + record + b"}]}"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_tombstones", *args, stdout=out)
    return out.getvalue()


def first_number(text: str) -> int:
    numbers = re.findall(r"\d+", text)
    assert numbers, text
    return int(numbers[0])


def ok_result(action: str, entity_id: str, version_: int, store: str = H) -> dict[str, Any]:
    return {"ok": True, "entity_id": entity_id, "id": entity_id, "store": store, "action": action, "version": version_}


def conflict(action: str, entity_id: str, server_version: int, server_data: Any, store: str = H) -> dict[str, Any]:
    return {
        "ok": False, "conflict": True, "entity_id": entity_id, "id": entity_id, "store": store, "action": action,
        "serverVersion": server_version, "serverData": server_data,
    }  # fmt: skip


# --- versions -------------------------------------------------------------------------------


def test_a_created_record_is_version_1_and_every_change_adds_one(admin_api):
    admin_api.push({H: {"h1": {"name": "Ann"}}})
    assert admin_api.record(H, "h1") == {"store": H, "id": "h1", "version": 1, "data": {"name": "Ann"}}
    admin_api.push({H: {"h1": {"name": "Anne"}}})
    assert admin_api.ops([op("update", "h1", {"name": "Annie"})])["results"][0]["version"] == 3
    assert put(admin_api, H, "h1", {"name": "Anna"}).status_code == 200
    assert admin_api.record(H, "h1") == {"store": H, "id": "h1", "version": 4, "data": {"name": "Anna"}}
    assert version(admin_api) == 4


def test_records_a_push_leaves_alone_keep_their_version_and_seq(admin_api):
    admin_api.push({H: {"h1": {"n": 1}, "h2": {"n": 2}}})
    admin_api.push({H: {"h1": {"n": 10}}})
    by_id = {e["id"]: e for e in walk(admin_api)[0]}
    assert (by_id["h1"]["version"], by_id["h1"]["seq"]) == (2, 2)
    assert (by_id["h2"]["version"], by_id["h2"]["seq"]) == (1, 1)


@pytest.mark.parametrize(
    "first,again",
    [
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({"n": 1}, {"n": 1.0}),
        ({"n": [1, {"x": None}]}, {"n": [1.0, {"x": None}]}),
    ],
    ids=["key-order", "1-and-1.0", "nested"],
)
@pytest.mark.parametrize("how", ["push", "update", "put"])
def test_writing_an_equal_value_is_no_change(admin_api, first, again, how):
    admin_api.push({H: {"h1": first}})
    before = everything(admin_api)
    if how == "push":
        body = admin_api.push({H: {"h1": again}})
        assert (body["version"], body["added"], body["modified"], body.get("skipped", 0)) == (1, 0, 0, 0)
    elif how == "update":
        body = admin_api.ops([op("update", "h1", again)])
        assert body == {"version": 1, "applied": 1, "conflicts": 0, "results": [ok_result("update", "h1", 1)]}
    else:
        response = put(admin_api, H, "h1", again)
        assert ok(response) == {"store": H, "id": "h1", "version": 1}
        assert response["ETag"] == '"1"'
    assert everything(admin_api) == before


@pytest.mark.parametrize("how", ["push", "update", "put"])
def test_true_is_not_1_so_writing_it_is_a_change(admin_api, how):
    admin_api.push({H: {"h1": {"n": 1}}})
    if how == "push":
        assert admin_api.push({H: {"h1": {"n": True}}})["modified"] == 1
    elif how == "update":
        assert admin_api.ops([op("update", "h1", {"n": True})])["results"][0]["version"] == 2
    else:
        assert ok(put(admin_api, H, "h1", {"n": True}))["version"] == 2
    assert admin_api.record(H, "h1") == {"store": H, "id": "h1", "version": 2, "data": {"n": True}}
    assert version(admin_api) == 2


def test_a_revived_record_continues_from_its_tombstone_version(admin_api):
    seed(admin_api)  # "gone" is a tombstone of version 3
    assert admin_api.ops([op("create", "gone", {"back": True})])["results"][0] == ok_result("create", "gone", 4)
    assert admin_api.record(H, "gone") == {"store": H, "id": "gone", "version": 4, "data": {"back": True}}


# --- full pushes and tombstones -------------------------------------------------------------------


def test_a_push_that_skips_nothing_answers_as_the_first_edition_did(admin_api):
    body = admin_api.push({H: {"h1": {}}})
    assert set(body) == {"version", "added", "modified", "message"}
    assert (body["version"], body["added"], body["modified"]) == (1, 1, 0)
    assert "skipped" not in admin_api.push({H: {"h1": {}}})  # no change at all


def test_a_full_push_never_brings_a_deleted_record_back(admin_api):
    seed(admin_api)
    gone_before = entity(admin_api, H, "gone")
    body = admin_api.push({H: {"gone": {"v": 99}, "live": {"v": 3}, "new": {"v": 1}}})
    assert (body["version"], body["added"], body["modified"], body["skipped"]) == (4, 1, 1, 1)
    assert body["message"].startswith("Sync successful.")
    assert "gone" not in admin_api.pull()["data"][H]
    assert_error(get_record(admin_api, H, "gone"), 404)
    assert entity(admin_api, H, "gone") == gone_before
    assert changes(admin_api)[-1] == {
        "version": 4,
        "timestamp": changes(admin_api)[-1]["timestamp"],
        "clientVersion": 0,
        "added": [{"store": H, "id": "new"}],
        "modified": [{"store": H, "id": "live"}],
        "action": "push",
    }


def test_a_push_of_deleted_ids_only_changes_nothing(admin_api):
    seed(admin_api)
    admin_api.ops([op("delete", "other")])
    before = everything(admin_api)
    body = admin_api.push({H: {"gone": {"v": 1}, "other": {"v": 1}}})
    assert (body["version"], body["added"], body["modified"], body["skipped"]) == (4, 0, 0, 2)
    assert everything(admin_api) == before


def test_the_push_changelog_entry_has_no_deleted_list(admin_api):
    admin_api.push({H: {"h1": {}}}, client_version=None)
    entry = changes(admin_api)[0]
    assert set(entry) == {"version", "timestamp", "clientVersion", "added", "modified", "action"}
    assert entry["action"] == "push" and entry["added"] == [{"store": H, "id": "h1"}]


# --- ops: the table -------------------------------------------------------------------------------

LIVE = {"v": 2}  # "live" is version 2 with this value; "gone" a tombstone of version 3; "never" unknown
NEW = {"v": "new"}

# (action, id, expectedVersion ("absent", None or a number), the result, the record afterwards: (version, data) or
# (version, None) for a tombstone, or None when the server knows nothing of it, and what the audit log gets)
TABLE = [
    ("create", "live", "absent", conflict("create", "live", 2, LIVE), (2, LIVE), None),
    ("create", "live", 2, conflict("create", "live", 2, LIVE), (2, LIVE), None),
    ("create", "gone", "absent", ok_result("create", "gone", 4), (4, NEW), "create"),
    ("create", "gone", 3, ok_result("create", "gone", 4), (4, NEW), "create"),
    ("create", "gone", 0, conflict("create", "gone", 3, None), (3, None), None),
    ("create", "gone", 4, conflict("create", "gone", 3, None), (3, None), None),
    ("create", "never", "absent", ok_result("create", "never", 1), (1, NEW), "create"),
    ("create", "never", None, ok_result("create", "never", 1), (1, NEW), "create"),
    ("create", "never", 0, ok_result("create", "never", 1), (1, NEW), "create"),
    ("create", "never", 1, conflict("create", "never", 0, None), None, None),
    ("update", "live", "absent", ok_result("update", "live", 3), (3, NEW), "update"),
    ("update", "live", None, ok_result("update", "live", 3), (3, NEW), "update"),
    ("update", "live", 2, ok_result("update", "live", 3), (3, NEW), "update"),
    ("update", "live", 1, conflict("update", "live", 2, LIVE), (2, LIVE), None),
    ("update", "live", 3, conflict("update", "live", 2, LIVE), (2, LIVE), None),
    ("update", "live", 0, conflict("update", "live", 2, LIVE), (2, LIVE), None),
    ("update", "gone", "absent", ok_result("create", "gone", 4), (4, NEW), "create"),
    ("update", "gone", 3, ok_result("create", "gone", 4), (4, NEW), "create"),
    ("update", "gone", 0, conflict("update", "gone", 3, None), (3, None), None),
    ("update", "gone", 2, conflict("update", "gone", 3, None), (3, None), None),
    ("update", "never", "absent", ok_result("create", "never", 1), (1, NEW), "create"),
    ("update", "never", 0, ok_result("create", "never", 1), (1, NEW), "create"),
    ("update", "never", 1, conflict("update", "never", 0, None), None, None),
    ("delete", "live", "absent", ok_result("delete", "live", 3), (3, None), "delete"),
    ("delete", "live", None, ok_result("delete", "live", 3), (3, None), "delete"),
    ("delete", "live", 2, ok_result("delete", "live", 3), (3, None), "delete"),
    ("delete", "live", 1, conflict("delete", "live", 2, LIVE), (2, LIVE), None),
    ("delete", "live", 0, conflict("delete", "live", 2, LIVE), (2, LIVE), None),
    ("delete", "gone", "absent", ok_result("delete", "gone", 3), (3, None), None),
    ("delete", "gone", 3, ok_result("delete", "gone", 3), (3, None), None),
    ("delete", "gone", 2, conflict("delete", "gone", 3, None), (3, None), None),
    ("delete", "gone", 0, conflict("delete", "gone", 3, None), (3, None), None),
    ("delete", "never", "absent", ok_result("delete", "never", 0), None, None),
    ("delete", "never", 0, ok_result("delete", "never", 0), None, None),
    ("delete", "never", 1, conflict("delete", "never", 0, None), None, None),
]


@pytest.mark.parametrize(
    "action,target,expected_version,result,after,logged",
    [pytest.param(*row, id=f"{row[0]}-{row[1]}-ev-{row[2]}") for row in TABLE],
)
def test_the_ops_table(admin_api, action, target, expected_version, result, after, logged):
    seed(admin_api)
    before = everything(admin_api)
    extra = {} if expected_version == "absent" else {"expectedVersion": expected_version}
    body = admin_api.ops([op(action, target, None if action == "delete" else NEW, **extra)])
    changed = logged is not None
    assert body == {
        "version": 4 if changed else 3,
        "applied": 1 if result["ok"] else 0,
        "conflicts": 0 if result["ok"] else 1,
        "results": [result],
    }
    if not changed:  # a conflict, or a delete of what is already gone: nothing at all happened
        assert everything(admin_api) == before
        return
    found = entity(admin_api, H, target)
    assert found is not None
    assert (found["version"], found["data"], found["seq"], found.get("deleted", False)) == (
        after[0], after[1], 4, after[1] is None,
    )  # fmt: skip
    live = admin_api.pull()["data"][H]
    assert (target in live) == (after[1] is not None)
    if after[1] is not None:
        assert live[target] == NEW
        # created or revived: at the end of its store; updated: where it was ("live" comes first)
        assert list(live).index(target) == (len(live) - 1 if logged == "create" else 0)
    entry = changes(admin_api)[-1]
    lists = {"create": "added", "update": "modified", "delete": "deleted"}
    assert entry == {
        "version": 4, "timestamp": entry["timestamp"], "clientVersion": None,
        "added": [], "modified": [], "deleted": [], "action": "ops",
    } | {lists[logged]: [{"store": H, "id": target}]}  # fmt: skip
    new_entries = audit(admin_api)[len(before["audit"]) :]
    assert [(e["action"], e["store"], e["entity_id"], e["version"]) for e in new_entries] == [
        (logged, H, target, after[0])
    ]


def test_each_op_sees_the_ones_before_it(admin_api):
    admin_api.push({"tags": {"t1": {}}})
    body = admin_api.ops(
        [
            op("create", "h1", {"a": 1}),
            op("update", "h1", {"a": 2}, expectedVersion=1),
            op("delete", "h1", expectedVersion=2),
            op("create", "h1", {"a": 3}, expectedVersion=3),
            op("update", "h1", {"a": 4}, expectedVersion=1),
            op("create", "h1", {"a": 5}),
            op("update", "h2", {"b": 1}),
            op("update", "h2", {"b": 1}, expectedVersion=1),
            op("delete", "h2"),
            op("delete", "h2"),
        ]
    )
    assert body == {
        "version": 2,
        "applied": 8,
        "conflicts": 2,
        "results": [
            ok_result("create", "h1", 1),
            ok_result("update", "h1", 2),
            ok_result("delete", "h1", 3),
            ok_result("create", "h1", 4),
            conflict("update", "h1", 4, {"a": 3}),
            conflict("create", "h1", 4, {"a": 3}),
            ok_result("create", "h2", 1),
            ok_result("update", "h2", 1),  # equal value: no change
            ok_result("delete", "h2", 2),
            ok_result("delete", "h2", 2),  # already deleted: no change
        ],
    }
    assert admin_api.pull() == {"version": 2, "data": {"tags": {"t1": {}}, H: {"h1": {"a": 3}}}}
    assert entity(admin_api, H, "h2") == {"store": H, "id": "h2", "version": 2, "seq": 2, "deleted": True, "data": None}
    assert [(e["action"], e["entity_id"], e["version"]) for e in audit(admin_api) if e["store"] == H] == [
        ("create", "h1", 1), ("update", "h1", 2), ("delete", "h1", 3), ("create", "h1", 4),
        ("create", "h2", 1), ("delete", "h2", 2),
    ]  # fmt: skip
    assert len(changes(admin_api)) == 2


def test_a_batch_whose_ops_all_conflict_changes_nothing(admin_api):
    seed(admin_api)
    before = everything(admin_api)
    body = admin_api.ops(
        [
            op("create", "live", {"x": 1}),
            op("update", "live", {"x": 1}, expectedVersion=1),
            op("delete", "other", expectedVersion=7),
            op("update", "gone", {"x": 1}, expectedVersion=1),
        ]
    )
    assert body == {
        "version": 3,
        "applied": 0,
        "conflicts": 4,
        "results": [
            conflict("create", "live", 2, LIVE),
            conflict("update", "live", 2, LIVE),
            conflict("delete", "other", 1, {"v": 1}),
            conflict("update", "gone", 3, None),
        ],
    }
    assert everything(admin_api) == before


def test_a_batch_that_changes_nothing_keeps_the_version(admin_api):
    seed(admin_api)
    before = everything(admin_api)
    body = admin_api.ops(
        [op("update", "live", {"v": 2.0}), op("delete", "gone"), op("delete", "never"), op("delete", "x", store="new")]
    )
    assert (body["version"], body["applied"], body["conflicts"]) == (3, 4, 0)
    assert everything(admin_api) == before


def test_the_applied_ops_of_a_batch_are_one_version_and_one_changelog_entry(admin_api):
    seed(admin_api)
    body = admin_api.ops(
        [
            op("create", "c1", {"n": 1}, store="cases"),
            op("update", "live", {"v": 3}),
            op("delete", "other"),
            op("create", "live", {"v": 9}),  # a conflict does not stop the others
            op("update", "gone", {"v": 4}),  # applied as a create
            op("update", "t1", {"name": "y"}, store="tags"),
        ]
    )
    assert (body["version"], body["applied"], body["conflicts"]) == (4, 5, 1)
    assert len(changes(admin_api)) == 4
    assert changes(admin_api)[-1] == {
        "version": 4,
        "timestamp": changes(admin_api)[-1]["timestamp"],
        "clientVersion": None,
        "added": [{"store": "cases", "id": "c1"}, {"store": H, "id": "gone"}],
        "modified": [{"store": H, "id": "live"}, {"store": "tags", "id": "t1"}],
        "deleted": [{"store": H, "id": "other"}],
        "action": "ops",
    }
    assert ISO_MS_Z.match(changes(admin_api)[-1]["timestamp"])
    assert {e["seq"] for e in walk(admin_api, deleted=1)[0] if e["id"] in {"c1", "live", "other", "gone", "t1"}} == {4}


def test_result_objects_have_exactly_their_fields(admin_api):
    seed(admin_api)
    body = admin_api.ops([op("update", "live", {"v": 5}), op("create", "live", {"v": 6})])
    assert set(body) == {"version", "applied", "conflicts", "results"}
    assert set(body["results"][0]) == OK_KEYS
    assert set(body["results"][1]) == CONFLICT_KEYS
    assert body["results"][1]["conflict"] is True and body["results"][1]["ok"] is False
    assert body["results"][0]["ok"] is True


def test_id_is_accepted_for_entity_id_and_both_are_answered(admin_api):
    body = admin_api.ops([{"action": "create", "store": H, "id": "h1", "data": {"n": 1}}])
    assert body["results"] == [ok_result("create", "h1", 1)]
    assert admin_api.record(H, "h1")["data"] == {"n": 1}


def test_unknown_fields_are_ignored_and_delete_ignores_data(admin_api):
    admin_api.push({H: {"h1": {}}})
    body = admin_api.ops(
        [
            op("create", "h2", {"n": 2}, comment="hi", timestamp=5, expectedversion="x"),
            op("delete", "h1", data="not an object"),
            op("delete", "h3", data=[1, 2]),
        ]
    )
    assert body["results"] == [ok_result("create", "h2", 1), ok_result("delete", "h1", 2), ok_result("delete", "h3", 0)]
    assert admin_api.pull()["data"] == {H: {"h2": {"n": 2}}}


def test_a_batch_of_1000_ops_is_accepted(admin_api):
    body = admin_api.ops([op("create", f"h{i}", {"i": i}) for i in range(1000)])
    assert (body["version"], body["applied"], body["conflicts"], len(body["results"])) == (1, 1000, 0, 1000)
    assert [r["entity_id"] for r in body["results"]] == [f"h{i}" for i in range(1000)]
    assert admin_api.sync_stores()["total"] == 1000


def test_a_record_nesting_512_levels_is_accepted_by_ops(admin_api):
    body = ok(admin_api.post("/api/sync/ops", data=ops_bytes(nested_object(512))))
    assert body["results"][0]["ok"] is True
    assert admin_api.record(H, "deep")["version"] == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_conditional_updates_let_exactly_one_win(admin_api):
    admin_api.push({H: {"h1": {"n": 0}}})
    answers: list[dict[str, Any]] = [{} for _ in range(6)]

    def work(number: int) -> None:
        client = Api()
        client.token = admin_api.token
        answers[number] = client.ops([op("update", "h1", {"n": number + 1}, expectedVersion=1)])

    in_threads(6, work)
    winners = [n for n, a in enumerate(answers) if a["results"][0]["ok"]]
    assert len(winners) == 1, answers
    assert admin_api.record(H, "h1") == {"store": H, "id": "h1", "version": 2, "data": {"n": winners[0] + 1}}
    assert version(admin_api) == 2
    for n, answer in enumerate(answers):
        if n != winners[0]:
            assert answer["results"][0] == conflict("update", "h1", 2, {"n": winners[0] + 1})


# --- ops: validation --------------------------------------------------------------------------

GOOD = op("create", "fresh", {"n": 1})


def at(index: int, bad: Any) -> dict[str, Any]:
    """A body whose ops are good except the one at ``index``."""
    operations: list[Any] = [op("create", f"fresh{i}", {"n": i}) for i in range(index)]
    operations.append(bad)
    operations.append(GOOD)
    return {"operations": operations}


BAD_OPS = [
    ("not-an-object-number", 1),
    ("not-an-object-string", "create"),
    ("not-an-object-null", None),
    ("not-an-object-list", [GOOD]),
    ("no-action", {"store": H, "entity_id": "x", "data": {}}),
    ("action-unknown", op("insert", "x", {})),
    ("action-upper-case", op("CREATE", "x", {})),
    ("action-number", op(1, "x", {})),  # type: ignore[arg-type]
    ("action-null", op(None, "x", {})),  # type: ignore[arg-type]
    ("no-store", {"action": "create", "entity_id": "x", "data": {}}),
    ("store-empty", op("create", "x", {}, store="")),
    ("store-65", op("create", "x", {}, store="s" * 65)),
    ("store-nul", op("create", "x", {}, store="a\x00b")),
    ("store-newline", op("create", "x", {}, store="a\nb")),
    ("store-number", op("create", "x", {}, store=5)),  # type: ignore[arg-type]
    ("store-null", op("create", "x", {}, store=None)),  # type: ignore[arg-type]
    ("no-id", {"action": "create", "store": H, "data": {}}),
    ("id-empty", op("create", "", {})),
    ("id-257", op("create", "i" * 257, {})),
    ("id-nul", op("create", "a\x00b", {})),
    ("id-unit-separator", op("create", "a\x1fb", {})),
    ("id-number", op("create", 7, {})),  # type: ignore[arg-type]
    ("id-null", op("create", None, {})),  # type: ignore[arg-type]
    ("id-key-number", {"action": "create", "store": H, "id": 7, "data": {}}),
    ("create-no-data", op("create", "x")),
    ("update-no-data", op("update", "x")),
    ("create-data-list", op("create", "x", [1])),
    ("create-data-string", op("create", "x", "text")),
    ("update-data-number", op("update", "x", 3)),
    ("update-data-true", op("update", "x", True)),
    ("create-data-null", {"action": "create", "store": H, "entity_id": "x", "data": None}),
    ("ev-string", op("update", "x", {}, expectedVersion="1")),
    ("ev-true", op("update", "x", {}, expectedVersion=True)),
    ("ev-false", op("create", "x", {}, expectedVersion=False)),
    ("ev-negative", op("update", "x", {}, expectedVersion=-1)),
    ("ev-float", op("update", "x", {}, expectedVersion=1.5)),
    ("ev-list", op("delete", "x", expectedVersion=[1])),
    ("ev-object", op("delete", "x", expectedVersion={"v": 1})),
    ("delete-ev-true", op("delete", "x", expectedVersion=True)),
]


@pytest.mark.parametrize("index", [0, 3])
@pytest.mark.parametrize("name,bad", BAD_OPS, ids=[name for name, _ in BAD_OPS])
def test_a_malformed_op_is_400_naming_its_index_and_nothing_is_applied(admin_api, index, name, bad):
    seed(admin_api)
    before = everything(admin_api)
    message = assert_error(ops_raw(admin_api, at(index, bad)), 400)
    assert message.startswith(f"operations[{index}]"), message
    assert everything(admin_api) == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ops": [GOOD]},
        {"operations": None},
        {"operations": {"0": GOOD}},
        {"operations": "create"},
        {"operations": 1},
        {"operations": []},
        {"operations": [GOOD] * 1001},
        {"operations": [op("create", f"h{i}", {}) for i in range(1001)]},
    ],
    ids=["empty", "other-key", "null", "object", "string", "number", "empty-list", "1001-same", "1001"],
)
def test_a_body_without_a_list_of_1_to_1000_ops_is_400(admin_api, body):
    seed(admin_api)
    before = everything(admin_api)
    assert_error(ops_raw(admin_api, body), 400)
    assert everything(admin_api) == before


@pytest.mark.parametrize("raw", [b"[]", b'[{"operations": []}]', b'"x"', b"1", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_400(admin_api, raw):
    seed(admin_api)
    before = everything(admin_api)
    assert_error(admin_api.post("/api/sync/ops", data=raw), 400, "Request body must be a JSON object")
    assert everything(admin_api) == before


def test_an_empty_body_is_400(admin_api):
    response = admin_api.client.generic(
        "POST", "/api/sync/ops", b"", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}"
    )
    assert_error(response, 400)
    assert version(admin_api) == 0


@pytest.mark.parametrize("raw", [b"{", b'{"operations": [}', b'{"operations": [NaN]}', b"\xff"])
def test_malformed_json_is_400(admin_api, raw):
    seed(admin_api)
    before = everything(admin_api)
    assert assert_error(admin_api.post("/api/sync/ops", data=raw), 400).startswith("Malformed JSON")
    assert everything(admin_api) == before


def test_data_nesting_deeper_than_512_levels_is_400_and_nothing_is_applied(admin_api):
    seed(admin_api)
    before = everything(admin_api)
    raw = (
        b'{"operations":[{"action":"create","store":"humans","entity_id":"ok","data":{}},'
        b'{"action":"update","store":"humans","entity_id":"deep","data":' + nested_object(513) + b"}]}"
    )
    message = assert_error(admin_api.post("/api/sync/ops", data=raw), 400)
    assert "operations[1]" in message or "nesting too deep" in message, message
    assert everything(admin_api) == before


def test_ops_not_json_is_415(admin_api):
    body = orjson.dumps({"operations": [GOOD]})
    response = admin_api.post("/api/sync/ops", data=body, content_type="text/plain")
    assert_error(response, 415)
    assert version(admin_api) == 0


# --- per-record URLs ----------------------------------------------------------------------------


def test_get_a_record_with_its_etag(admin_api):
    seed(admin_api)
    response = get_record(admin_api, H, "live")
    assert ok(response) == {"store": H, "id": "live", "version": 2, "data": LIVE}
    assert response["ETag"] == '"2"'
    assert ok(get_record(admin_api, "tags", "t1")) == {"store": "tags", "id": "t1", "version": 1, "data": {"name": "x"}}


@pytest.mark.parametrize("store,record_id", [(H, "gone"), (H, "never"), ("nostore", "live"), ("tags", "live")])
def test_get_a_tombstone_or_unknown_record_is_404(admin_api, store, record_id):
    seed(admin_api)
    assert_error(get_record(admin_api, store, record_id), 404)


@pytest.mark.parametrize("record_id", ["a/b", "with space", "ü?#%&=+", "%2F", "a\u007fb", "i" * 256, "🙂"], ids=repr)
def test_any_valid_id_works_in_the_url(admin_api, record_id):
    response = put(admin_api, "tags ✓", record_id, {"n": 1})
    assert ok(response) == {"store": "tags ✓", "id": record_id, "version": 1}
    assert admin_api.record("tags ✓", record_id) == {"store": "tags ✓", "id": record_id, "version": 1, "data": {"n": 1}}
    assert admin_api.pull()["data"] == {"tags ✓": {record_id: {"n": 1}}}
    assert ok(delete(admin_api, "tags ✓", record_id)) == {"store": "tags ✓", "id": record_id, "version": 2}
    assert admin_api.pull()["data"].get("tags ✓", {}) == {}


def test_put_creates_a_record(admin_api):
    response = put(admin_api, H, "h1", {"name": "Ann"})
    assert ok(response) == {"store": H, "id": "h1", "version": 1}
    assert response["ETag"] == '"1"'
    assert admin_api.pull() == {"version": 1, "data": {H: {"h1": {"name": "Ann"}}}}
    entry = changes(admin_api)[0]
    assert entry == {
        "version": 1, "timestamp": entry["timestamp"], "clientVersion": None,
        "added": [{"store": H, "id": "h1"}], "modified": [], "deleted": [], "action": "ops",
    }  # fmt: skip
    assert [(e["action"], e["entity_id"], e["version"]) for e in audit(admin_api)] == [("create", "h1", 1)]


def test_put_replaces_a_record(admin_api):
    seed(admin_api)
    response = put(admin_api, H, "live", {"replaced": True})
    assert ok(response) == {"store": H, "id": "live", "version": 3}
    assert response["ETag"] == '"3"'
    assert admin_api.record(H, "live")["data"] == {"replaced": True}
    assert admin_api.pull()["version"] == 4
    assert changes(admin_api)[-1]["modified"] == [{"store": H, "id": "live"}]
    assert audit(admin_api)[-1]["action"] == "update"


def test_put_brings_a_deleted_record_back(admin_api):
    seed(admin_api)
    assert ok(put(admin_api, H, "gone", {"back": 1})) == {"store": H, "id": "gone", "version": 4}
    data = admin_api.pull()["data"][H]
    assert list(data) == ["live", "other", "gone"]  # revived: at the end of its store
    assert changes(admin_api)[-1]["added"] == [{"store": H, "id": "gone"}]


@pytest.mark.parametrize("if_match", ['"2"', 'W/"2"', "2", '"1", "2"', '"2","5"', 'W/"7", W/"2"', "*"])
def test_put_with_a_matching_if_match_applies(admin_api, if_match):
    seed(admin_api)
    response = put(admin_api, H, "live", {"v": 3}, HTTP_IF_MATCH=if_match)
    assert ok(response) == {"store": H, "id": "live", "version": 3}
    assert admin_api.record(H, "live")["data"] == {"v": 3}


@pytest.mark.parametrize("if_match", ['"1"', 'W/"3"', "0", '"1", "3"'])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_mismatching_if_match_is_412_with_the_server_record(admin_api, if_match, method):
    seed(admin_api)
    before = everything(admin_api)
    if method == "PUT":
        response = put(admin_api, H, "live", {"v": 3}, HTTP_IF_MATCH=if_match)
    else:
        response = delete(admin_api, H, "live", HTTP_IF_MATCH=if_match)
    assert response.status_code == 412, response.content
    assert response["Content-Type"].startswith("application/json")
    assert orjson.loads(response.content) == {"error": "Precondition failed", "serverVersion": 2, "serverData": LIVE}
    assert everything(admin_api) == before


@pytest.mark.parametrize("target,server_version", [("never", 0), ("gone", 3)])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_if_match_star_needs_a_live_record(admin_api, target, server_version, method):
    seed(admin_api)
    before = everything(admin_api)
    if method == "PUT":
        response = put(admin_api, H, target, {"v": 1}, HTTP_IF_MATCH="*")
    else:
        response = delete(admin_api, H, target, HTTP_IF_MATCH="*")
    assert response.status_code == 412, response.content
    assert orjson.loads(response.content) == {
        "error": "Precondition failed", "serverVersion": server_version, "serverData": None,
    }  # fmt: skip
    assert everything(admin_api) == before


@pytest.mark.parametrize("target,if_match,created", [("never", '"0"', 1), ("gone", '"3"', 4), ("gone", "3", 4)])
def test_put_with_if_match_of_the_current_version_of_a_missing_record_creates_it(admin_api, target, if_match, created):
    """The same engine as ops: an update whose expectedVersion is the tombstone's (0 for unknown) creates."""
    seed(admin_api)
    assert ok(put(admin_api, H, target, {"n": 1}, HTTP_IF_MATCH=if_match)) == {
        "store": H, "id": target, "version": created,
    }  # fmt: skip
    assert admin_api.record(H, target)["data"] == {"n": 1}


@pytest.mark.parametrize("target,created", [("never", 1), ("gone", 4)])
def test_put_with_if_none_match_star_creates(admin_api, target, created):
    seed(admin_api)
    response = put(admin_api, H, target, {"n": 1}, HTTP_IF_NONE_MATCH="*")
    assert ok(response) == {"store": H, "id": target, "version": created}
    assert response["ETag"] == f'"{created}"'


def test_put_with_if_none_match_star_on_a_live_record_is_412(admin_api):
    seed(admin_api)
    before = everything(admin_api)
    response = put(admin_api, H, "live", {"n": 1}, HTTP_IF_NONE_MATCH="*")
    assert response.status_code == 412
    assert orjson.loads(response.content) == {"error": "Precondition failed", "serverVersion": 2, "serverData": LIVE}
    assert everything(admin_api) == before


@pytest.mark.parametrize("if_match", ['"abc"', "abc", '"-1"', "-1", '"1.5"', 'W/"x"'])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_malformed_if_match_is_400(admin_api, if_match, method):
    seed(admin_api)
    before = everything(admin_api)
    if method == "PUT":
        response = put(admin_api, H, "live", {"v": 3}, HTTP_IF_MATCH=if_match)
    else:
        response = delete(admin_api, H, "live", HTTP_IF_MATCH=if_match)
    assert_error(response, 400)
    assert everything(admin_api) == before


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"3", b"null", b"true", b'[{"v": 1}]'])
def test_put_of_something_not_an_object_is_400(admin_api, raw):
    seed(admin_api)
    before = everything(admin_api)
    assert_error(put(admin_api, H, "live", data=raw), 400)
    assert_error(put(admin_api, H, "never", data=raw), 400)
    assert everything(admin_api) == before


@pytest.mark.parametrize("raw", [b"{", b'{"a": NaN}', b'{"a": 1e400}', b"\xff"])
def test_put_of_malformed_json_is_400(admin_api, raw):
    seed(admin_api)
    before = everything(admin_api)
    assert assert_error(put(admin_api, H, "live", data=raw), 400).startswith("Malformed JSON")
    assert everything(admin_api) == before


def test_put_nesting_limit_is_512_levels(admin_api):
    seed(admin_api)
    before = everything(admin_api)
    assert_error(put(admin_api, H, "live", data=nested_object(513)), 400)
    assert everything(admin_api) == before
    assert ok(put(admin_api, H, "live", data=nested_object(512)))["version"] == 3


def test_put_not_json_is_415(admin_api):
    seed(admin_api)
    before = everything(admin_api)
    assert_error(put(admin_api, H, "live", data=b'{"v": 9}', content_type="text/plain"), 415)
    assert everything(admin_api) == before


@pytest.mark.parametrize(
    "store,record_id",
    [(H, "i" * 257), (H, "a\x00b"), (H, "a\nb"), ("s" * 65, "x"), ("a\x01b", "x")],
    ids=["id-257", "id-nul", "id-newline", "store-65", "store-soh"],
)
def test_an_invalid_store_or_id_in_the_url_is_400(admin_api, store, record_id):
    seed(admin_api)
    before = everything(admin_api)
    assert_error(put(admin_api, store, record_id, {"n": 1}), 400)
    assert_error(delete(admin_api, store, record_id), 400)
    response = get_record(admin_api, store, record_id)
    assert response.status_code in (400, 404)
    assert_error(response, response.status_code)
    assert everything(admin_api) == before


def test_delete_a_record(admin_api):
    seed(admin_api)
    response = delete(admin_api, H, "live")
    assert ok(response) == {"store": H, "id": "live", "version": 3}
    assert_error(get_record(admin_api, H, "live"), 404)
    assert "live" not in admin_api.pull()["data"][H]
    assert admin_api.pull()["version"] == 4
    assert changes(admin_api)[-1]["deleted"] == [{"store": H, "id": "live"}]
    assert changes(admin_api)[-1]["action"] == "ops"
    last = audit(admin_api)[-1]
    assert (last["action"], last["store"], last["entity_id"], last["version"]) == ("delete", H, "live", 3)
    assert entity(admin_api, H, "live") == {
        "store": H,
        "id": "live",
        "version": 3,
        "seq": 4,
        "deleted": True,
        "data": None,
    }


@pytest.mark.parametrize("target,current", [("never", 0), ("gone", 3)])
@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "if-match-current"])
def test_deleting_what_is_already_gone_is_200_and_no_change(admin_api, target, current, conditional):
    seed(admin_api)
    before = everything(admin_api)
    headers = {"HTTP_IF_MATCH": f'"{current}"'} if conditional else {}
    assert ok(delete(admin_api, H, target, **headers)) == {"store": H, "id": target, "version": current}
    assert everything(admin_api) == before


@pytest.mark.parametrize("if_match", ['"2"', 'W/"2"', "2", "*"])
def test_delete_with_a_matching_if_match(admin_api, if_match):
    seed(admin_api)
    assert ok(delete(admin_api, H, "live", HTTP_IF_MATCH=if_match)) == {"store": H, "id": "live", "version": 3}
    assert_error(get_record(admin_api, H, "live"), 404)


def test_delete_of_an_unknown_id_with_a_wrong_if_match_is_412(admin_api):
    response = delete(admin_api, H, "never", HTTP_IF_MATCH='"1"')
    assert response.status_code == 412
    assert orjson.loads(response.content) == {"error": "Precondition failed", "serverVersion": 0, "serverData": None}


@pytest.mark.parametrize("method", ["post", "patch"])
def test_other_methods_on_a_record_are_405(admin_api, method):
    seed(admin_api)
    response = getattr(admin_api.client, method)(
        record_path(H, "live"), b"{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}"
    )
    assert_error(response, 405, "Method not allowed")
    allowed = {m.strip() for m in response["Allow"].split(",")}
    assert {"GET", "PUT", "DELETE", "HEAD"} <= allowed and method.upper() not in allowed


@pytest.mark.parametrize("path", ["/api/sync/records", "/api/sync/records/humans", "/api/sync/record/humans/h1"])
def test_a_records_url_without_store_and_id_is_404(admin_api, path):
    assert_error(admin_api.get(path), 404, "Not found")


def test_a_browser_may_send_if_match_and_put_and_delete(api):
    response = api.client.options(
        record_path(H, "h1"),
        HTTP_ORIGIN="null",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="PUT",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type, if-match",
    )
    assert response.status_code == 200
    methods = {m.strip().upper() for m in response["Access-Control-Allow-Methods"].split(",")}
    headers = {h.strip().lower() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"PUT", "DELETE"} <= methods
    assert "if-match" in headers


# --- the cursor -------------------------------------------------------------------------------


def test_the_cursor_of_an_empty_repository(admin_api):
    page = admin_api.cursor()
    assert set(page) == {"entities", "nextCursor", "hasMore", "latestSeq"}
    assert (page["entities"], page["hasMore"], page["latestSeq"]) == ([], False, 0)
    assert isinstance(page["nextCursor"], str)
    admin_api.push({H: {"h1": {"n": 1}}})
    after = admin_api.cursor(page["nextCursor"])
    assert after["entities"] == [{"store": H, "id": "h1", "version": 1, "seq": 1, "data": {"n": 1}}]
    assert admin_api.cursor("")["entities"] == after["entities"]


def test_the_cursor_gives_records_in_the_order_of_their_last_change(admin_api):
    admin_api.push({H: {"h2": {"n": 2}, "h1": {"n": 1}}, "tags": {"t1": {}}})
    admin_api.push({H: {"h2": {"n": 20}}})
    admin_api.ops(
        [op("create", "c1", {}, store="cases"), op("update", "h1", {"n": 10}), op("delete", "t1", store="tags")]
    )
    put(admin_api, "tags", "t2", {"x": 1})
    entities, page = walk(admin_api)
    assert entities == [
        {"store": H, "id": "h2", "version": 2, "seq": 2, "data": {"n": 20}},
        {"store": "cases", "id": "c1", "version": 1, "seq": 3, "data": {}},
        {"store": H, "id": "h1", "version": 2, "seq": 3, "data": {"n": 10}},
        {"store": "tags", "id": "t2", "version": 1, "seq": 4, "data": {"x": 1}},
    ]
    assert page["latestSeq"] == 4
    assert [(e["id"], e.get("deleted", False)) for e in walk(admin_api, deleted=1)[0]] == [
        ("h2", False), ("c1", False), ("h1", False), ("t1", True), ("t2", False),
    ]  # fmt: skip


def test_within_a_push_the_cursor_keeps_store_order_then_record_order(admin_api):
    admin_api.push({H: {"b": {}, "a": {}, "c": {}}, "tags": {"z": {}, "y": {}}})
    assert [(e["store"], e["id"]) for e in walk(admin_api, limit=2)[0]] == [
        (H, "b"), (H, "a"), (H, "c"), ("tags", "z"), ("tags", "y"),
    ]  # fmt: skip


def test_within_an_ops_batch_the_cursor_keeps_op_order(admin_api):
    admin_api.push({H: {"old": {}}, "tags": {"t0": {}}})
    admin_api.ops(
        [
            op("create", "x", {}),
            op("create", "y", {}, store="tags"),
            op("update", "old", {"n": 1}),
            op("create", "z", {}, store="cases"),
            op("update", "t0", {"n": 1}, store="tags"),
        ]
    )
    assert [(e["store"], e["id"]) for e in walk(admin_api, limit=2)[0]] == [
        (H, "x"), ("tags", "y"), (H, "old"), ("cases", "z"), ("tags", "t0"),
    ]  # fmt: skip


def test_within_a_push_new_and_modified_records_keep_the_push_order(admin_api):
    admin_api.push({H: {"b": {}, "d": {}}})
    admin_api.push({H: {"a": {}, "b": {"n": 1}, "c": {}, "d": {"n": 1}}})
    assert [e["id"] for e in walk(admin_api, limit=3)[0]] == ["a", "b", "c", "d"]


def test_cursor_pages(admin_api):
    admin_api.push({H: {f"h{i}": {"i": i} for i in range(7)}})
    first = admin_api.cursor(limit=3)
    assert [e["id"] for e in first["entities"]] == ["h0", "h1", "h2"] and first["hasMore"] is True
    second = admin_api.cursor(first["nextCursor"], limit=3)
    assert [e["id"] for e in second["entities"]] == ["h3", "h4", "h5"] and second["hasMore"] is True
    last = admin_api.cursor(second["nextCursor"], limit=3)
    assert [e["id"] for e in last["entities"]] == ["h6"] and last["hasMore"] is False
    assert last["latestSeq"] == 1
    # nextCursor on the last page: the next call returns only what changed since.
    empty = admin_api.cursor(last["nextCursor"], limit=3)
    assert (empty["entities"], empty["hasMore"], empty["latestSeq"]) == ([], False, 1)
    admin_api.push({H: {"h3": {"i": 33}, "h9": {"i": 9}}})
    for cursor in (last["nextCursor"], empty["nextCursor"]):
        page = admin_api.cursor(cursor, limit=3)
        assert [(e["id"], e["data"], e["seq"]) for e in page["entities"]] == [("h3", {"i": 33}, 2), ("h9", {"i": 9}, 2)]
        assert page["hasMore"] is False


def test_a_page_that_ends_exactly_at_the_end_has_no_more(admin_api):
    admin_api.push({H: {f"h{i}": {} for i in range(4)}})
    page = admin_api.cursor(limit=4)
    assert len(page["entities"]) == 4 and page["hasMore"] is False
    page = admin_api.cursor(admin_api.cursor(limit=2)["nextCursor"], limit=2)
    assert [e["id"] for e in page["entities"]] == ["h2", "h3"] and page["hasMore"] is False


def test_the_default_limit_is_500(admin_api):
    admin_api.push({H: {f"h{i:04}": {} for i in range(501)}})
    page = admin_api.cursor()
    assert len(page["entities"]) == 500 and page["hasMore"] is True
    rest = admin_api.cursor(page["nextCursor"])
    assert [e["id"] for e in rest["entities"]] == ["h0500"] and rest["hasMore"] is False


def test_a_limit_above_5000_is_read_as_5000(admin_api):
    admin_api.push({H: {f"h{i:04}": {} for i in range(5003)}})
    for limit in (5001, 10_000, 10**30):
        page = admin_api.cursor(limit=limit)
        assert len(page["entities"]) == 5000 and page["hasMore"] is True, limit
    assert len(admin_api.cursor(limit=5000)["entities"]) == 5000
    assert len(admin_api.cursor(limit=1)["entities"]) == 1


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=abc", "limit=1.5", "limit=%205", "limit=1&limit=2"])
def test_a_bad_limit_is_400(admin_api, query):
    admin_api.push({H: {"h1": {}}})
    assert_error(admin_api.get(f"/api/sync/cursor?{query}"), 400)


def test_the_store_filter(admin_api):
    admin_api.push({H: {"h1": {}, "h2": {}}, "tags": {"t1": {}}})
    admin_api.ops([op("update", "h1", {"n": 1}), op("create", "t2", {}, store="tags"), op("delete", "h2")])
    entities, page = walk(admin_api, store="tags", limit=1)
    assert [(e["store"], e["id"]) for e in entities] == [("tags", "t1"), ("tags", "t2")]
    assert page["latestSeq"] == 2
    assert [e["id"] for e in walk(admin_api, store=H)[0]] == ["h1"]
    assert [(e["id"], e.get("deleted", False)) for e in walk(admin_api, store=H, deleted=1)[0]] == [
        ("h1", False), ("h2", True),
    ]  # fmt: skip
    # A walk of one store sees only that store's later changes.
    position = page["nextCursor"]
    admin_api.push({H: {"h1": {"n": 2}}, "tags": {"t1": {"n": 2}}})
    assert [e["id"] for e in admin_api.cursor(position, store="tags")["entities"]] == ["t1"]


def test_an_unknown_store_gives_an_empty_page(admin_api):
    admin_api.push({H: {"h1": {}}})
    page = admin_api.cursor(store="nothing")
    assert (page["entities"], page["hasMore"], page["latestSeq"]) == ([], False, 1)
    assert isinstance(page["nextCursor"], str)


@pytest.mark.parametrize("store", ["s" * 65, "a\x00b", "a\nb"], ids=["65", "nul", "newline"])
def test_an_invalid_store_name_is_400(admin_api, store):
    assert_error(admin_api.get("/api/sync/cursor" + query_string({"store": store})), 400)


@pytest.mark.parametrize("value,included", [("1", True), ("true", True), ("0", False), ("false", False), (None, False)])
def test_the_deleted_parameter(admin_api, value, included):
    seed(admin_api)
    entities = walk(admin_api, deleted=value)[0]
    gone = [e for e in entities if e["id"] == "gone"]
    if included:
        assert gone == [{"store": H, "id": "gone", "version": 3, "seq": 3, "deleted": True, "data": None}]
        for e in entities:
            if e["id"] != "gone":
                assert set(e) - {"deleted"} == ENTITY_KEYS and e.get("deleted", False) is False
    else:
        assert gone == []
        assert all(set(e) == ENTITY_KEYS for e in entities)
    assert {e["id"] for e in entities} - {"gone"} == {"live", "other", "t1"}


@pytest.mark.parametrize("value", ["yes", "2", "on", "-1", "truth"])
def test_a_bad_deleted_parameter_is_400(admin_api, value):
    assert_error(admin_api.get(f"/api/sync/cursor?deleted={value}"), 400)


def test_a_walk_with_pushes_between_its_pages_gets_every_record_in_its_latest_state(admin_api):
    admin_api.push({H: {f"h{i}": {"v": 0} for i in range(6)}})
    received: list[tuple[str, Any]] = []
    page = admin_api.cursor(limit=2)
    received += [(e["id"], e["data"]) for e in page["entities"]]  # h0, h1
    admin_api.push({H: {"h0": {"v": 1}, "h3": {"v": 1}, "h9": {"v": 1}}})
    admin_api.ops([op("delete", "h4"), op("update", "h1", {"v": 1})])
    while page["hasMore"] or not received:
        page = admin_api.cursor(page["nextCursor"], limit=2)
        received += [(e["id"], e["data"]) for e in page["entities"]]
    # h2, h5 unchanged; h3 once, in its new state; h0 and h1 again since they changed after they were sent; h4 gone
    assert received == [
        ("h0", {"v": 0}), ("h1", {"v": 0}), ("h2", {"v": 0}), ("h5", {"v": 0}),
        ("h0", {"v": 1}), ("h3", {"v": 1}), ("h9", {"v": 1}), ("h1", {"v": 1}),
    ]  # fmt: skip
    assert page["latestSeq"] == 3


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "🙂", "null", "-1", "x" * 5000], ids=repr)
def test_an_invalid_cursor_is_400(admin_api, cursor):
    admin_api.push({H: {"h1": {}}})
    assert_error(admin_api.get("/api/sync/cursor" + query_string({"cursor": cursor})), 400, "Invalid cursor")


def test_a_cursor_is_a_short_url_safe_string(admin_api):
    admin_api.push({H: {f"h{i}": {} for i in range(3)}})
    cursor = admin_api.cursor(limit=1)["nextCursor"]
    assert re.fullmatch(r"[A-Za-z0-9_.~-]{1,200}", cursor), cursor


def test_a_cursor_issued_before_a_purge_stays_valid(admin_api):
    admin_api.push({H: {"h1": {}, "h2": {}, "h3": {}}})
    first = admin_api.cursor(limit=1, deleted=1)
    admin_api.ops([op("delete", "h2")])
    time.sleep(0.01)
    run("--older-than", "0")
    admin_api.push({H: {"h4": {}}})
    entities, _ = walk(admin_api, first["nextCursor"], deleted=1)
    assert [e["id"] for e in entities] == ["h3", "h4"]
    entities, _ = walk(admin_api, first["nextCursor"])
    assert [e["id"] for e in entities] == ["h3", "h4"]


def test_a_cursor_from_before_a_restore_restarts_from_the_beginning(admin_api, tmp_path):
    uid = admin_api.me()["user"]["id"]
    admin_api.push({H: {"a": {"n": 1}}})
    backup = tmp_path / "backup.jsonl"
    call_command("export_data", str(backup), stdout=io.StringIO())
    admin_api.push({H: {"b": {"n": 1}}})
    admin_api.push({H: {"c": {"n": 1}}})
    cursor = walk(admin_api)[1]["nextCursor"]
    get_repository_store().delete(uid)
    User.objects.all().delete()
    call_command("import_data", str(backup), stdout=io.StringIO())
    admin_api.login("admin", "adminpass")
    admin_api.push({H: {"d": {"n": 1}}})  # version 2 again, but other records
    entities, page = walk(admin_api, cursor)
    assert [(e["id"], e["version"], e["seq"]) for e in entities] == [("a", 1, 1), ("d", 1, 2)]
    assert page["latestSeq"] == 2


def test_a_repository_from_the_previous_release_has_versions_1_and_seq_its_version(api, tmp_path):
    """A backup written by the release before §7: no record versions; restored, every record is version 1."""
    uid = "3f1c0000-0000-4000-8000-000000000001"
    lines = [
        {"format": "pzls-backup", "formatVersion": 1, "createdAt": "2026-05-17T10:04:05.123Z"},
        {
            "type": "user", "id": uid, "username": "old", "passwordHash": make_password("secret1"), "role": "admin",
            "isActive": True, "createdAt": "2026-05-01T10:00:00+00:00", "lastLogin": None,
        },
        {"type": "repository", "userId": uid, "repository": {"version": 7, "data": {H: {"h1": {"n": 1}, "h2": {}}}}},
        {"type": "end", "users": 1, "repositories": 1, "changes": 0},
    ]  # fmt: skip
    backup = Path(tmp_path / "old.jsonl")
    backup.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    call_command("import_data", str(backup), stdout=io.StringIO())
    api.login("old", "secret1")
    assert walk(api)[0] == [
        {"store": H, "id": "h1", "version": 1, "seq": 7, "data": {"n": 1}},
        {"store": H, "id": "h2", "version": 1, "seq": 7, "data": {}},
    ]
    assert api.record(H, "h1")["version"] == 1
    assert api.ops([op("update", "h1", {"n": 2}, expectedVersion=1)])["results"] == [ok_result("update", "h1", 2)]
    assert api.sync_stores() == {"stores": [{"store": H, "count": 2}], "total": 2, "latestSeq": 8}


# --- stores ---------------------------------------------------------------------------------


def test_stores_of_an_empty_repository(admin_api):
    assert admin_api.sync_stores() == {"stores": [], "total": 0, "latestSeq": 0}


def test_stores_lists_live_counts_in_pull_order(admin_api):
    admin_api.push({"tags": {"t1": {}, "t2": {}}, H: {"h1": {}}})
    admin_api.ops([op("create", "c1", {}, store="cases"), op("delete", "t1", store="tags"), op("create", "h2", {})])
    assert admin_api.sync_stores() == {
        "stores": [{"store": "tags", "count": 1}, {"store": H, "count": 2}, {"store": "cases", "count": 1}],
        "total": 4,
        "latestSeq": 2,
    }
    assert list(admin_api.pull()["data"]) == ["tags", H, "cases"]
    admin_api.ops([op("delete", "t2", store="tags")])
    assert admin_api.sync_stores() == {
        "stores": [{"store": "tags", "count": 0}, {"store": H, "count": 2}, {"store": "cases", "count": 1}],
        "total": 3,
        "latestSeq": 3,
    }
    assert admin_api.status()["account"]["records"] == 3


# --- pulls --------------------------------------------------------------------------------------


def test_pull_order_new_ids_at_the_end_and_a_revived_one_too(admin_api):
    admin_api.push({H: {"a": {}, "b": {}, "c": {}}})
    admin_api.ops([op("delete", "a"), op("update", "b", {"n": 1}), op("create", "d", {})])
    assert list(admin_api.pull()["data"][H]) == ["b", "c", "d"]
    admin_api.ops([op("create", "a", {"back": 1})])
    assert admin_api.pull()["data"][H] == {"b": {"n": 1}, "c": {}, "d": {}, "a": {"back": 1}}
    assert list(admin_api.pull()["data"][H]) == ["b", "c", "d", "a"]


def test_a_record_deleted_and_created_again_in_one_batch_goes_to_the_end_of_its_store(admin_api):
    admin_api.push({H: {"a": {}, "b": {}}})
    body = admin_api.ops([op("delete", "a"), op("create", "a", {"again": 1})])
    assert body["results"] == [ok_result("delete", "a", 2), ok_result("create", "a", 3)]
    assert list(admin_api.pull()["data"][H]) == ["b", "a"]


def test_a_conditional_pull_sees_ops_and_per_record_writes(admin_api):
    admin_api.push({H: {"a": {}}})
    for write in (
        lambda: admin_api.ops([op("update", "a", {"n": 1})]),
        lambda: put(admin_api, H, "a", {"n": 2}),
        lambda: delete(admin_api, H, "a"),
    ):
        tag = admin_api.get("/api/sync")["ETag"]
        write()
        response = admin_api.get("/api/sync", HTTP_IF_NONE_MATCH=tag)
        assert response.status_code == 200
        assert response["ETag"] != tag
    assert admin_api.pull() == {"version": 4, "data": {H: {}}} or admin_api.pull() == {"version": 4, "data": {}}


def test_status_counts_live_records_and_every_changing_request(admin_api):
    seed(admin_api)
    account = admin_api.status()["account"]
    assert (account["version"], account["records"], account["totalSyncs"]) == (3, 3, 3)


# --- the changelog ----------------------------------------------------------------------------


def test_changes_lists_pushes_ops_and_per_record_writes(admin_api):
    admin_api.push({H: {"h1": {}}})
    admin_api.ops([op("create", "h2", {})])
    put(admin_api, H, "h3", {})
    delete(admin_api, H, "h1")
    admin_api.ops([op("delete", "nothing")])  # no change: no entry
    page = admin_api.changes(since=1)
    assert (page["currentVersion"], page["clientVersion"], page["pendingChanges"]) == (4, 1, 3)
    assert [(c["version"], c["action"]) for c in page["changes"]] == [(2, "ops"), (3, "ops"), (4, "ops")]
    assert [c.get("added") for c in page["changes"]] == [[{"store": H, "id": "h2"}], [{"store": H, "id": "h3"}], []]
    assert page["changes"][-1]["deleted"] == [{"store": H, "id": "h1"}]
    assert admin_api.changes(since=4)["changes"] == []


# --- the audit log: GET /api/sync/ops -----------------------------------------------------------


def test_the_op_log_has_one_entry_per_record_change(admin_api):
    uid = admin_api.me()["user"]["id"]
    admin_api.push({H: {"h1": {"n": 1}, "h2": {}}})
    admin_api.push({H: {"h3": {}, "h1": {"n": 2}, "h2": {}}})
    admin_api.ops([op("update", "h2", {"x": 1}), op("delete", "h3"), op("update", "nope", {}, expectedVersion=3)])
    put(admin_api, H, "h4", {})
    put(admin_api, H, "h4", {"y": 1})
    delete(admin_api, H, "h4")
    delete(admin_api, H, "h4")  # no change
    put(admin_api, H, "h1", {"n": 2})  # no change
    entries = audit(admin_api)
    assert [(e["action"], e["store"], e["entity_id"], e["version"]) for e in entries] == [
        ("create", H, "h1", 1), ("create", H, "h2", 1),
        ("create", H, "h3", 1), ("update", H, "h1", 2),
        ("update", H, "h2", 2), ("delete", H, "h3", 2),
        ("create", H, "h4", 1), ("update", H, "h4", 2), ("delete", H, "h4", 3),
    ]  # fmt: skip
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for e in entries:
        assert set(e) == AUDIT_KEYS
        assert (e["username"], e["userId"], e["targetUsername"], e["targetUserId"]) == ("admin", uid, None, None)
        assert e["ip"] == "127.0.0.1"
        assert ISO_MS_Z.match(e["timestamp"])


def test_the_op_log_answer(admin_api):
    admin_api.push({H: {"h1": {}, "h2": {}}})
    page = admin_api.op_log()
    assert set(page) == {"ops", "count", "latestSeq"}
    assert page["count"] == len(page["ops"])
    assert page["latestSeq"] == page["ops"][-1]["seq"]
    assert page["latestSeq"] >= 2


def test_another_users_changes_never_appear(admin_api, analyst_api):
    admin_api.push({H: {"mine": {}}})
    analyst_api.push({H: {"theirs": {}}, "tags": {"t": {}}})
    analyst_api.ops([op("delete", "theirs")])
    put(analyst_api, H, "x", {})
    mine = admin_api.op_log(limit=1000)
    assert {e["username"] for e in mine["ops"]} == {"admin"}
    assert [e["entity_id"] for e in mine["ops"] if e["action"] in RECORD_ACTIONS] == ["mine"]
    theirs = audit(analyst_api)
    assert {e["username"] for e in theirs} == {"analyst"}
    assert [e["entity_id"] for e in theirs] == ["theirs", "t", "theirs", "x"]
    # seq is server-wide: the analyst's entries come after the admin's, and latestSeq is the server's last
    assert theirs[0]["seq"] > audit(admin_api)[-1]["seq"]
    assert mine["latestSeq"] == analyst_api.op_log()["latestSeq"] == theirs[-1]["seq"]


def test_the_op_log_pages_with_since_and_limit(admin_api):
    admin_api.push({H: {f"h{i:03}": {} for i in range(250)}})
    everything_ = audit(admin_api)
    assert len(everything_) == 250
    start = everything_[0]["seq"] - 1
    first = admin_api.op_log(since=start)
    assert first["count"] == len(first["ops"]) == 200
    assert [e["seq"] for e in first["ops"]] == [e["seq"] for e in everything_[:200]]
    rest = admin_api.op_log(since=first["ops"][-1]["seq"])
    assert [e["entity_id"] for e in rest["ops"]] == [f"h{i:03}" for i in range(200, 250)]
    assert rest["count"] == 50
    page = admin_api.op_log(since=start, limit=7)
    assert [e["entity_id"] for e in page["ops"]] == [f"h{i:03}" for i in range(7)] and page["count"] == 7
    end = admin_api.op_log(since=rest["ops"][-1]["seq"])
    assert (end["ops"], end["count"]) == ([], 0)
    assert end["latestSeq"] == rest["ops"][-1]["seq"]
    assert all(e["seq"] > start + 10 for e in admin_api.op_log(since=start + 10)["ops"])


def test_the_op_log_limit_is_at_most_1000(admin_api):
    admin_api.push({H: {f"h{i:04}": {} for i in range(1005)}})
    for limit in (1001, 5000, 10**30):
        page = admin_api.op_log(since=0, limit=limit)
        assert page["count"] == len(page["ops"]) == 1000, limit


@pytest.mark.parametrize(
    "query", ["since=-1", "since=abc", "since=1.5", "limit=0", "limit=-3", "limit=abc", "limit=2.5", "since=1&since=2"]
)
def test_bad_op_log_parameters_are_400(admin_api, query):
    admin_api.push({H: {"h1": {}}})
    assert_error(admin_api.get(f"/api/sync/ops?{query}"), 400)


def test_the_op_log_never_shows_a_token_or_password(admin_api):
    admin_api.push({H: {"h1": {}}})
    put(admin_api, H, "h2", {})
    text = admin_api.get("/api/sync/ops").content.decode()
    assert admin_api.token not in text
    assert "adminpass" not in text
    assert "password" not in text.lower() and "hash" not in text.lower()


# --- purge_tombstones --------------------------------------------------------------------------


def test_purge_removes_tombstones_and_the_ids_are_as_never_seen(admin_api):
    seed(admin_api)
    admin_api.ops([op("delete", "t1", store="tags")])
    before = admin_api.changes(since=0)
    time.sleep(0.01)
    assert first_number(run("--older-than", "0")) == 2
    assert [e["id"] for e in walk(admin_api, deleted=1)[0] if e.get("deleted")] == []
    assert admin_api.changes(since=0) == before  # no repository change
    assert version(admin_api) == 4
    assert ok(delete(admin_api, H, "gone")) == {"store": H, "id": "gone", "version": 0}
    body = admin_api.ops([op("create", "gone", {"again": 1}, expectedVersion=0)])
    assert body["results"] == [ok_result("create", "gone", 1)]
    assert version(admin_api) == 5
    assert first_number(run("--older-than", "0")) == 0


def test_purge_keeps_recent_tombstones(admin_api):
    seed(admin_api)
    assert first_number(run("--older-than", "1")) == 0
    assert entity(admin_api, H, "gone") == {
        "store": H,
        "id": "gone",
        "version": 3,
        "seq": 3,
        "deleted": True,
        "data": None,
    }


def test_purge_with_a_fraction_of_a_day_removes_only_older_deletes(admin_api):
    admin_api.push({H: {"old": {}, "new": {}}})
    admin_api.ops([op("delete", "old")])
    time.sleep(1.5)
    admin_api.ops([op("delete", "new")])
    assert first_number(run("--older-than", "0.00001")) == 1  # 0.864 seconds
    assert [e["id"] for e in walk(admin_api, deleted=1)[0]] == ["new"]


def test_purge_for_one_user(admin_api, analyst_api):
    admin_api.push({H: {"a": {}}})
    analyst_api.push({H: {"b": {}}})
    admin_api.ops([op("delete", "a")])
    analyst_api.ops([op("delete", "b")])
    time.sleep(0.01)
    assert first_number(run("--older-than", "0", "--user", "ANALYST")) == 1
    assert [e["id"] for e in walk(analyst_api, deleted=1)[0]] == []
    assert [e["id"] for e in walk(admin_api, deleted=1)[0]] == ["a"]


@pytest.mark.parametrize(
    "args",
    [(), ("--older-than", "-1"), ("--older-than", "abc"), ("--older-than",), ("--older-than", "0", "--user", "nobody")],
    ids=["missing", "negative", "text", "no-value", "unknown-user"],
)
def test_purge_with_bad_arguments_is_an_error_and_purges_nothing(admin_api, args):
    seed(admin_api)
    time.sleep(0.01)
    with pytest.raises(CommandError):
        run(*args)
    assert entity(admin_api, H, "gone") is not None


# --- every endpoint: authentication, methods, JSON errors ------------------------------------------

ENDPOINTS = [
    ("get", "/api/sync/cursor"),
    ("get", "/api/sync/stores"),
    ("get", "/api/sync/ops"),
    ("post", "/api/sync/ops"),
    ("get", "/api/sync/records/humans/live"),
    ("put", "/api/sync/records/humans/live"),
    ("delete", "/api/sync/records/humans/live"),
]


def call(api: Api, method: str, path: str, **extra: Any) -> Any:
    body = orjson.dumps({"operations": [GOOD]} if path.rstrip("/").endswith("/ops") else {"v": 9})
    if method in ("post", "put"):
        return getattr(api.client, method)(path, body, content_type="application/json", **extra)
    return getattr(api.client, method)(path, content_type="application/json", **extra)


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_every_endpoint_needs_a_token(admin_api, method, path):
    seed(admin_api)
    before = everything(admin_api)
    response = call(Api(), method, path)
    assert_error(response, 401, "Authentication required")
    assert response["WWW-Authenticate"] == "Bearer"
    response = call(Api(), method, path, HTTP_AUTHORIZATION="Bearer not-a-token")
    assert_error(response, 401, "Invalid or expired token")
    assert everything(admin_api) == before


@pytest.mark.parametrize("method,path", [e for e in ENDPOINTS if "/records/" not in e[1]])
def test_every_endpoint_with_a_trailing_slash(admin_api, method, path):
    """As every API URL (PROTOCOL.md §1); not the record URLs, where an id may end with a slash."""
    seed(admin_api)
    response = call(admin_api, method, path + "/", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}")
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    "method,path",
    [("put", "/api/sync/ops"), ("delete", "/api/sync/ops"), ("post", "/api/sync/cursor"), ("post", "/api/sync/stores")],
)
def test_wrong_methods_are_405(admin_api, method, path):
    response = call(admin_api, method, path, HTTP_AUTHORIZATION=f"Bearer {admin_api.token}")
    assert_error(response, 405, "Method not allowed")
    assert method.upper() not in {m.strip() for m in response["Allow"].split(",")}
