"""Migration 0002 (record-level sync) on a database holding repositories of the previous release.

Rows are written as the previous release's database store wrote them, then
the migration runs: each record becomes version 1, changed at its
repository's version, its insertion order its position; each repository
gets its last position and an epoch of its own, and the audit counter its row.
"""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.storage, pytest.mark.django_db(transaction=True)]

BEFORE = [("sync", "0001_initial")]
AFTER = [("sync", "0002_records")]


def migrate(targets: list[tuple[str, str]]):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_records_of_the_previous_release_get_versions_positions_and_repositories() -> None:
    try:
        old = migrate(BEFORE)
        Repository, Store, Record = (old.get_model("sync", name) for name in ("Repository", "Store", "Record"))
        a = Repository.objects.create(user_id="a", version=3, generation=5, next_seq=5, store_count=2, record_count=3)
        Repository.objects.create(user_id="b", version=1, generation=7, next_seq=0)
        humans = Store.objects.create(repository=a, name="humans", seq=0, record_count=2)
        tags = Store.objects.create(repository=a, name="tags", seq=3, record_count=1)
        for store, key, seq in ((humans, "h1", 1), (humans, "h2", 2), (tags, "t", 4)):
            Record.objects.create(store=store, key=key, item=f'"{key}":{{}}', digest="d" * 32, seq=seq)

        new = migrate(AFTER)
        Repository, Record, AuditCounter = (new.get_model("sync", n) for n in ("Repository", "Record", "AuditCounter"))
        rows = Record.objects.order_by("seq").values_list(
            "key", "version", "changed", "position", "deleted", "repository"
        )
        assert list(rows) == [
            ("h1", 1, 3, 1, False, a.pk),
            ("h2", 1, 3, 2, False, a.pk),
            ("t", 1, 3, 4, False, a.pk),
        ]
        heads = dict(Repository.objects.values_list("user_id", "position"))
        assert heads == {"a": 4, "b": 0}
        epochs = list(Repository.objects.values_list("epoch", flat=True))
        assert all(re.fullmatch("[0-9a-f]{16}", epoch) for epoch in epochs) and len(set(epochs)) == 2
        assert list(new.get_model("sync", "Store").objects.values_list("tombstone_count", flat=True)) == [0, 0]
        assert list(AuditCounter.objects.values_list("pk", "next")) == [(1, 1)]
    finally:
        # Back to the latest state, for the tests after this one.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
