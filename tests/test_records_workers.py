"""Another worker sees what one worker committed: every answer is the same from a store that has just started.

Each step changes the repository one way (a first push, ops, a re-push, per-record writes, deletes, a
purge, a large push that rewrites the snapshot); after each, a new store instance over the same storage,
as another worker process would have, gives the same pull, cursor walk, stores, status and changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.management import call_command

from sync.backends import repository_stores
from tests.helpers import Api

pytestmark = pytest.mark.storage

H = "humans"


def walk(api: Api) -> list[dict[str, Any]]:
    entities, cursor = [], ""
    for _ in range(10_000):
        page = api.get(f"/api/sync/cursor?limit=3&deleted=1&cursor={cursor}").json()
        assert page["entities"] or not page["hasMore"], page  # a page that says more is coming moves on
        assert page["nextCursor"] != cursor or not page["hasMore"], page
        entities += page["entities"]
        cursor = page["nextCursor"]
        if not page["hasMore"]:
            return entities
    raise AssertionError("the walk never ended")


def answers(api: Api) -> tuple[Any, ...]:
    return (
        api.get("/api/sync").content,
        walk(api),
        api.get("/api/sync/stores").json(),
        api.get("/api/sync/status").json()["account"],
        api.get("/api/sync/changes?since=0").json(),
        api.get("/api/sync/records/humans/h1").content,
    )


def ops(api: Api, *operations: dict[str, Any]) -> None:
    answer = api.post("/api/sync/ops", {"operations": list(operations)})
    assert answer.status_code == 200, answer.content


STEPS: list[tuple[str, Callable[[Api], object]]] = [
    ("first push", lambda api: api.push({H: {f"h{i}": {"i": i} for i in range(8)}, "tags": {"t": {}}})),
    ("ops", lambda api: ops(
        api,
        {"action": "update", "store": H, "entity_id": "h1", "data": {"i": 10}},
        {"action": "delete", "store": H, "entity_id": "h2"},
        {"action": "create", "store": "cases", "entity_id": "c1", "data": {"title": "x"}},
    )),
    ("re-push", lambda api: api.push({H: {"h1": {"i": 11}, "h2": {"i": 2}, "h3": {"i": 33}, "h9": {}}})),
    ("put", lambda api: api.client.put(
        "/api/sync/records/humans/h4", b'{"i": 44}', content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api.token}",
    )),
    ("precondition failed", lambda api: api.client.put(
        "/api/sync/records/humans/h4", b'{"i": 45}', content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api.token}", HTTP_IF_MATCH='"9"',
    )),
    ("delete", lambda api: api.delete("/api/sync/records/humans/h5")),
    ("revive", lambda api: ops(api, {"action": "create", "store": H, "entity_id": "h2", "data": {"back": True}})),
    ("purge", lambda api: call_command("purge_tombstones", "--older-than", "0", stdout=None)),
    ("large push", lambda api: api.push({H: {f"n{i}": {"pad": "x" * 2000} for i in range(700)}})),
    ("ops after the snapshot", lambda api: ops(api, {"action": "delete", "store": H, "entity_id": "n3"})),
]  # fmt: skip


def test_a_worker_that_starts_after_each_change_sees_what_the_first_one_sees(admin_api: Api) -> None:
    for name, step in STEPS:
        step(admin_api)
        seen = answers(admin_api)
        repository_stores.reset()  # another worker: nothing of the repository in memory
        assert answers(admin_api) == seen, name
