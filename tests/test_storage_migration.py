"""Moving an installation between storages with ``export_data`` and ``import_data``.

A few users with repositories and changelogs are made on one storage,
exported, restored into an empty server on the other storage, and compared
through the API: every pull byte for byte, versions, ``changes?since=0``,
status, and logins with the old passwords. Then back again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from django.core.management import call_command
from django.test import override_settings

from accounts.models import User
from tests.helpers import Api, data_dir_settings

pytestmark = pytest.mark.storage

FILES = {
    "token_backend": "accounts.backends.json_file.JSONFileTokenStore",
    "sync_backend": "sync.backends.json_file.JSONFileRepositoryStore",
}
DATABASE = {
    "token_backend": "accounts.backends.database.DatabaseTokenStore",
    "sync_backend": "sync.backends.database.DatabaseRepositoryStore",
}
USERS = {"admin": "adminpass", "alice": "alicepass", "Bob Ü": "bobpass1", "idle": "idlepass"}

# Raw bodies, so records arrive with spacing and key orders of their own: a
# storage that re-serialised them would not give the same bytes back.
PUSHES = {
    "admin": [
        b'{"clientVersion": 0, "stores": {"humans": {"h2": {"name": "Zo\\u00eb", "n": 1.50, "tags": [true, null]},'
        b' "h1": {"b": 1, "a": {"y": [], "x": {}}}}, "tags": {"t": {}}}}',
        b'{"clientVersion": 1, "stores": {"cases": {"c \\"quoted\\"": {"text": "line\\nbreak \\\\ back"}},'
        b' "humans": {"h1": {"a": {"x": {}, "y": []}, "b": 1}, "h3": {"emoji": "\xf0\x9f\x99\x82"}}}}',
        b'{"clientVersion": 2, "stores": {"humans": {"h2": {"name": "Zoe"}}, "tags": {"t": {"v": 1e2}}}}',
    ],
    "alice": [
        b'{"stores": {"others": {"o1": {"k": "v"}}}}',
        b'{"clientVersion": null, "data": {"others": {"o2": { "spaced" : [ 1 , 2 ] }}}}',
    ],
    "Bob Ü": [b'{"clientVersion": 0, "stores": {"s": {"r%d": {"i": %d}}}}' % (n, n) for n in range(60)],
}


def snapshot(settings_block: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What every user sees through the API on this storage, after logging in with their password."""
    seen = {}
    with override_settings(**settings_block):
        for username, password in USERS.items():
            api = Api()
            response = api.post("/api/auth/login", {"username": username, "password": password})
            assert response.status_code == 200, (username, response.content)
            api.token = response.json()["token"]
            pull = api.get("/api/sync")
            assert pull.status_code == 200
            account = api.get("/api/sync/status").json()["account"]
            seen[username] = {
                "pull": pull.content,
                "changes": api.get("/api/sync/changes?since=0").content,
                "changes_since_2": api.get("/api/sync/changes?since=2").content,
                "account": account,
                "user": response.json()["user"],
            }
    return seen


def build(settings_block: dict[str, Any]) -> None:
    with override_settings(**settings_block):
        for username, password in USERS.items():
            api = Api()
            api.register(username, password)
            for body in PUSHES.get(username, []):
                response = api.client.post(
                    "/api/sync", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api.token}"
                )
                assert response.status_code == 200, response.content


def move(source: dict[str, Any], target: dict[str, Any], backup: Path) -> None:
    """Export on ``source``, empty the server, restore on ``target`` (the management commands)."""
    with override_settings(**source):
        call_command("export_data", str(backup), verbosity=0)
        User.objects.all().delete()  # the signals empty the source storage too
    with override_settings(**target):
        call_command("import_data", str(backup), verbosity=0)


@pytest.mark.parametrize("first,second", [(FILES, DATABASE), (DATABASE, FILES)], ids=["files-first", "database-first"])
def test_an_installation_moves_between_storages_and_back_unchanged(
    tmp_path: Path, data_dir: Path, first, second
) -> None:
    first, second = data_dir_settings(data_dir, **first), data_dir_settings(data_dir, **second)
    build(first)
    before = snapshot(first)
    assert orjson.loads(before["admin"]["pull"])["version"] == 3
    assert orjson.loads(before["Bob Ü"]["pull"])["version"] == 60
    assert before["idle"]["pull"] == b'{"version":0,"data":{}}'
    # The pushed texts are kept as sent, spacing included.
    assert b'"o2":{ "spaced" : [ 1 , 2 ] }' in before["alice"]["pull"]

    move(first, second, tmp_path / "there.jsonl")
    there = snapshot(second)
    for username in USERS:
        assert there[username]["pull"] == before[username]["pull"], username
        for key in ("changes", "changes_since_2", "account", "user"):
            assert there[username][key] == before[username][key], (username, key)

    # The moved repositories go on from where they were, on the new storage.
    with override_settings(**second):
        api = Api()
        api.token = api.post("/api/auth/login", {"username": "admin", "password": "adminpass"}).json()["token"]
        pushed = api.post("/api/sync", {"stores": {"humans": {"h1": {"b": 1, "a": {"y": [], "x": {}}}, "h4": {}}}})
        assert pushed.json() == {
            "version": 4,
            "added": 1,
            "modified": 0,
            "message": "Sync successful. 1 added, 0 modified.",
        }
        after = orjson.loads(api.get("/api/sync").content)
        assert list(after["data"]["humans"]) == ["h2", "h1", "h3", "h4"]

    move(second, first, tmp_path / "back.jsonl")
    back = snapshot(first)
    for username in USERS:
        if username != "admin":
            assert back[username] == there[username], username
            assert back[username]["pull"] == before[username]["pull"], username
    assert orjson.loads(back["admin"]["pull"]) == after
    assert orjson.loads(back["admin"]["changes"])["currentVersion"] == 4
