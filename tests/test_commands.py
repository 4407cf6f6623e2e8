"""manage.py commands: createuser, createsuperuser, import_legacy_repo, export_data,
import_data and purge_tokens. Each result is checked as a user would see it:
logging in and pulling through the HTTP API."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from accounts.backends import get_token_store
from accounts.models import Role, User
from testkit.server import ROOT
from tests.helpers import Api, data_dir_settings

pytestmark = pytest.mark.storage

COMMANDS = ["createuser", "import_legacy_repo", "export_data", "import_data", "purge_tokens"]


def run(name: str, *args: str, stdin: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    out = io.StringIO()
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    call_command(name, *args, stdout=out)
    return out.getvalue()


def login(username: str, password: str) -> Any:
    return Api().post("/api/auth/login", {"username": username, "password": password})


# --- help and exit status ----------------------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_explains_itself(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from django.core.management import ManagementUtility

    with pytest.raises(SystemExit) as exit_info:
        ManagementUtility(["manage.py", name, "--help"]).execute()
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: manage.py {name}" in text
    assert len(text.split("\n\n")[1]) > 80  # a real description, not just the usage line


def test_a_failing_command_says_why_and_exits_with_status_1(tmp_path: Path) -> None:
    env = {**os.environ, "PZLS_DATA_DIR": str(tmp_path / "data"), "DJANGO_SETTINGS_MODULE": "pzls_site.settings"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True, cwd=ROOT)
    first = subprocess.run(
        [*manage, "createuser", "root", "--password-stdin"],
        input="rootpass\n",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert first.returncode == 0 and "Created admin root" in first.stdout
    again = subprocess.run(
        [*manage, "createuser", "ROOT", "--password-stdin"],
        input="rootpass\n",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1
    assert again.stderr.strip() == "CommandError: Username already taken"


# --- createuser ----------------------------------------------------------------------


def test_createuser_follows_registration_first_admin_then_analysts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "Created admin root" in run(
        "createuser", "root", "--password-stdin", stdin="rootpass\n", monkeypatch=monkeypatch
    )
    assert "Created analyst ann" in run(
        "createuser", "ann", "--password-stdin", stdin="annpass1\n", monkeypatch=monkeypatch
    )
    assert login("root", "rootpass").json()["user"]["role"] == "admin"
    assert login("ann", "annpass1").json()["user"]["role"] == "analyst"


def test_createuser_role_option(monkeypatch: pytest.MonkeyPatch, admin_api: Api) -> None:
    run("createuser", "boss", "--role", "admin", "--password-stdin", stdin="bosspass\n", monkeypatch=monkeypatch)
    assert User.objects.get(username="boss").role == Role.ADMIN
    assert login("boss", "bosspass").status_code == 200
    with pytest.raises(CommandError, match="invalid choice: 'root'"):
        run("createuser", "x", "--role", "root", "--password-stdin", stdin="xxxxxxx\n", monkeypatch=monkeypatch)


def test_a_password_with_spaces_is_kept_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    run("createuser", "sp", "--password-stdin", stdin="  two words  \r\n", monkeypatch=monkeypatch)
    assert login("sp", "  two words  ").status_code == 200


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("admin", "whatever1", "Username already taken"),
        ("ADMIN", "whatever1", "Username already taken"),
        ("newbie", "abc", "Password must be at least 6 characters"),
        ("bad\tname", "whatever1", "Username must not contain control characters"),
        ("x" * 65, "whatever1", "Username must be at most 64 characters"),
        ("   ", "whatever1", "Username is required"),
    ],
)
def test_createuser_validates_like_registration(
    username: str, password: str, message: str, monkeypatch: pytest.MonkeyPatch, admin_api: Api
) -> None:
    with pytest.raises(CommandError) as error:
        run("createuser", username, "--password-stdin", stdin=password + "\n", monkeypatch=monkeypatch)
    assert str(error.value) == message
    assert User.objects.count() == 1


def test_createuser_without_a_password_source_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CommandError, match="use --password-stdin"):
        run("createuser", "nobody", stdin="", monkeypatch=monkeypatch)
    with pytest.raises(CommandError, match="standard input was empty"):
        run("createuser", "nobody", "--password-stdin", stdin="", monkeypatch=monkeypatch)
    assert not User.objects.exists()


def test_the_first_user_made_by_createuser_adopts_a_legacy_repository(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    (data_dir / "repo.json").write_bytes(b'{"version": 4, "data": {"humans": {"h1": {"name": "Old"}}}}')
    run("createuser", "root", "--password-stdin", stdin="rootpass\n", monkeypatch=monkeypatch)
    api = Api()
    api.token = login("root", "rootpass").json()["token"]
    assert api.get("/api/sync").json() == {"version": 4, "data": {"humans": {"h1": {"name": "Old"}}}}
    assert (data_dir / "repo.json.migrated").exists()


def test_createsuperuser_noinput_makes_an_admin_that_logs_in(monkeypatch: pytest.MonkeyPatch, admin_api: Api) -> None:
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "chief")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "chiefpass")
    call_command("createsuperuser", interactive=False, stdout=io.StringIO())
    response = login("chief", "chiefpass")
    assert response.status_code == 200 and response.json()["user"]["role"] == "admin"
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "CHIEF")
    with pytest.raises(CommandError, match="already taken"):
        call_command("createsuperuser", interactive=False, stdout=io.StringIO())


# --- purge_tokens ----------------------------------------------------------------------


def test_purge_tokens_forgets_expired_tokens_and_keeps_live_ones(admin_api: Api) -> None:
    now = datetime.now(UTC)
    expired_token = admin_api.token
    with mock.patch("accounts.services.utcnow", return_value=now + timedelta(hours=20)):
        live_token = login("admin", "adminpass").json()["token"]
    user_id = str(User.objects.get().pk)
    assert len(get_token_store().list_user(user_id)) == 2
    # A day and an hour on: the first token has expired, the second has not.
    with mock.patch("accounts.services.utcnow", return_value=now + timedelta(hours=25)):
        assert run("purge_tokens") == "Purged 1 expired token\n"
        assert [r.expires > now + timedelta(hours=25) for r in get_token_store().list_user(user_id)] == [True]
        assert Api().get("/api/auth/me", token=live_token).status_code == 200
        assert Api().get("/api/auth/me", token=expired_token).status_code == 401
        assert run("purge_tokens") == "Purged 0 expired tokens\n"


# --- import_legacy_repo ------------------------------------------------------------------

LEGACY = {
    "version": 7,
    "data": {"humans": {"h1": {"name": "Ann"}, "h2": {"name": "Bob"}}, "tags": {"t1": {"label": "x"}}},
}
LEGACY_CHANGELOG = [
    {
        "version": 6,
        "timestamp": "2025-01-01T00:00:00.000Z",
        "clientVersion": 5,
        "added": [],
        "modified": [],
        "action": "push",
    },
    {
        "version": 7,
        "timestamp": "2025-01-02T00:00:00.000Z",
        "clientVersion": 6,
        "added": [{"store": "tags", "id": "t1"}],
        "modified": [],
        "action": "push",
    },
]


def write_legacy(directory: Path, *, changelog: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "repo.json").write_bytes(orjson.dumps(LEGACY))
    if changelog:
        (directory / "changelog.json").write_bytes(orjson.dumps(LEGACY_CHANGELOG))
    return directory / "repo.json"


def test_import_into_an_empty_repository_keeps_version_data_and_history(
    admin_api: Api, analyst_api: Api, data_dir: Path
) -> None:
    write_legacy(data_dir)
    out = io.StringIO()
    call_command("import_legacy_repo", "--user", "ANALYST", stdout=out)
    assert "Imported into analyst's repository: version 7" in out.getvalue()
    assert analyst_api.get("/api/sync").content == orjson.dumps(LEGACY)
    changes = analyst_api.get("/api/sync/changes?since=0").json()
    assert changes["changes"] == LEGACY_CHANGELOG
    # the data directory's legacy files are renamed, never deleted, and the admin's repository is untouched
    assert sorted(p.name for p in data_dir.glob("*.json*") if "migrated" in p.name) == [
        "changelog.json.migrated",
        "repo.json.migrated",
    ]
    assert admin_api.get("/api/sync").json() == {"version": 0, "data": {}}


def test_import_from_another_path_leaves_that_file_alone(analyst_api: Api, tmp_path: Path) -> None:
    path = write_legacy(tmp_path / "old-server", changelog=False)
    call_command("import_legacy_repo", "--path", str(path), "--user", "analyst", stdout=io.StringIO())
    assert analyst_api.get("/api/sync").json() == LEGACY
    assert path.exists()


def test_import_refuses_a_repository_with_data_unless_merge(analyst_api: Api, tmp_path: Path) -> None:
    analyst_api.push({"humans": {"h1": {"name": "Changed"}, "h9": {"name": "Mine"}}})
    path = write_legacy(tmp_path / "legacy")
    with pytest.raises(CommandError, match=r"already has a repository \(version 1, 2 records\); use --merge"):
        call_command("import_legacy_repo", "--path", str(path), "--user", "analyst", stdout=io.StringIO())
    assert analyst_api.get("/api/sync").json()["version"] == 1

    out = io.StringIO()
    call_command("import_legacy_repo", "--path", str(path), "--user", "analyst", "--merge", stdout=out)
    assert "version 2, 2 added, 1 modified" in out.getvalue()
    pulled = analyst_api.get("/api/sync").json()
    assert pulled["version"] == 2
    assert pulled["data"]["humans"] == {"h1": {"name": "Ann"}, "h9": {"name": "Mine"}, "h2": {"name": "Bob"}}
    assert pulled["data"]["tags"] == {"t1": {"label": "x"}}
    entry = analyst_api.get("/api/sync/changes?since=1").json()["changes"]
    assert len(entry) == 1 and entry[0]["modified"] == [{"store": "humans", "id": "h1"}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No legacy repository at"),
        (b"{not json", "Cannot read legacy repository"),
        (b'{"version": -1, "data": {}}', "has no valid version"),
        (b'{"version": 1, "data": {"humans": {"h1": 5}}}', "Cannot read legacy repository"),
    ],
)
def test_import_explains_a_missing_or_broken_file(
    content: bytes | None, message: str, analyst_api: Api, tmp_path: Path
) -> None:
    path = tmp_path / "repo.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CommandError, match=message):
        call_command("import_legacy_repo", "--path", str(path), "--user", "analyst", stdout=io.StringIO())
    assert analyst_api.get("/api/sync").json() == {"version": 0, "data": {}}


def test_import_names_an_unknown_user(admin_api: Api, data_dir: Path) -> None:
    write_legacy(data_dir)
    with pytest.raises(CommandError, match="User 'ghost' not found"):
        call_command("import_legacy_repo", "--user", "ghost", stdout=io.StringIO())
    assert (data_dir / "repo.json").exists()


# --- export_data and import_data ------------------------------------------------------------


def build_server() -> dict[str, Any]:
    """Users of every kind with data and history; returns what a restore must reproduce."""
    admin = Api()
    admin.register("admin", "adminpass")
    ann = Api()
    ann.register("Ann", "annpass1")
    ann.push({"humans": {"h2": {"name": "Zed", "n": 1.5, "tags": ["a", True, None]}, "h1": {"z": 1, "a": 2}}}, 0)
    ann.push({"cases": {"c1": {"title": "ünïcode ✓"}}}, 1)
    ann.push({"humans": {"h2": {"name": "Zed II"}}}, 2)
    bob = Api()
    bob.register("bob", "bobpass1")
    bob.push({"tags": {"t": {}}})
    Api().register("carol", "carolpass")  # no data
    login("Ann", "annpass1")  # sets last_login
    User.objects.filter(username="bob").update(is_active=False)
    snapshot: dict[str, Any] = {
        "users": {
            u.username: (str(u.pk), u.role, u.is_active, u.created_at, u.last_login, u.password)
            for u in User.objects.all()
        },
        "pulls": {},
        "changes": {},
        "tokens": [admin.token, ann.token],
    }
    for name, client in (("admin", admin), ("Ann", ann)):
        snapshot["pulls"][name] = client.get("/api/sync").content
        snapshot["changes"][name] = client.get("/api/sync/changes?since=0").json()
    return snapshot


def test_a_restored_server_serves_the_same_pulls_logins_and_versions(tmp_path: Path, data_dir: Path) -> None:
    before = build_server()
    backup = tmp_path / "backup.jsonl"
    out = io.StringIO()
    call_command("export_data", str(backup), stdout=out)
    assert "Exported 4 users, 2 repositories and 4 changelog entries" in out.getvalue()
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # it holds password hashes
    for token in before["tokens"]:
        assert token not in backup.read_text()

    # a new, empty server
    User.objects.all().delete()
    assert list(data_dir.glob("repo_*")) == []
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with override_settings(**data_dir_settings(fresh)):
        out = io.StringIO()
        call_command("import_data", str(backup), stdout=out)
        assert "Imported 4 users, 2 repositories and 4 changelog entries" in out.getvalue()
        after = {
            u.username: (str(u.pk), u.role, u.is_active, u.created_at, u.last_login, u.password)
            for u in User.objects.all()
        }
        assert after == before["users"]
        for token in before["tokens"]:
            assert Api().get("/api/auth/me", token=token).status_code == 401  # tokens are not restored
        for name, password in (("admin", "adminpass"), ("Ann", "annpass1")):
            client = Api()
            response = client.post("/api/auth/login", {"username": name, "password": password})
            assert response.status_code == 200
            client.token = response.json()["token"]
            assert client.get("/api/sync").content == before["pulls"][name]
            assert client.get("/api/sync/changes?since=0").json() == before["changes"][name]
        assert login("bob", "bobpass1").status_code == 403  # still disabled
        assert login("carol", "carolpass").status_code == 200
        status = Api()
        status.token = login("Ann", "annpass1").json()["token"]
        assert status.get("/api/sync/status").json()["account"]["version"] == 3
        # a restored user keeps syncing from where they were
        status.push({"humans": {"h3": {"name": "New"}}}, 3)
        assert status.get("/api/sync").json()["version"] == 4


def test_import_refuses_a_server_that_has_users(tmp_path: Path) -> None:
    build_server()
    backup = tmp_path / "backup.jsonl"
    call_command("export_data", str(backup), stdout=io.StringIO())
    with pytest.raises(CommandError, match="already has users"):
        call_command("import_data", str(backup), stdout=io.StringIO())
    assert User.objects.count() == 4


def corrupt(backup: Path, change: str) -> None:
    lines = backup.read_bytes().splitlines(keepends=True)
    if change == "truncate":
        lines = lines[:-1]
    elif change == "bad json":
        lines[3] = b"{oops\n"
    elif change == "bad record":
        # the last repository, so that a restore writing as it reads would already have written others
        repo_line = max(i for i, line in enumerate(lines) if b'"type":"repository"' in line)
        doc = orjson.loads(lines[repo_line])
        doc["repository"]["data"]["tags"]["t"] = "not an object"
        lines[repo_line] = orjson.dumps(doc) + b"\n"
    elif change == "not a backup":
        lines = [b'{"version": 1, "data": {}}\n']
    backup.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("truncate", "incomplete"),
        ("bad json", "Line 4 is not JSON"),
        ("bad record", "Record 't' in store 'tags' must be a JSON object"),
        ("not a backup", "is not a PZLS backup"),
    ],
)
def test_import_checks_the_whole_file_before_writing_anything(change: str, message: str, tmp_path: Path) -> None:
    build_server()
    backup = tmp_path / "backup.jsonl"
    call_command("export_data", str(backup), stdout=io.StringIO())
    User.objects.all().delete()
    corrupt(backup, change)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with override_settings(**data_dir_settings(fresh)):
        with pytest.raises(CommandError, match=message):
            call_command("import_data", str(backup), stdout=io.StringIO())
        assert not User.objects.exists()
        assert list(fresh.glob("repo_*")) == []


def test_export_replaces_an_old_backup_whole_and_reports_a_missing_directory(tmp_path: Path) -> None:
    build_server()
    backup = tmp_path / "backup.jsonl"
    backup.write_text("an older backup that is much longer than one line\n" * 1000)
    call_command("export_data", str(backup), stdout=io.StringIO())
    lines = backup.read_bytes().splitlines()
    assert orjson.loads(lines[0])["format"] == "pzls-backup" and orjson.loads(lines[-1])["type"] == "end"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    with pytest.raises(CommandError, match="No such directory"):
        call_command("export_data", str(tmp_path / "nowhere" / "b.jsonl"), stdout=io.StringIO())
    with pytest.raises(CommandError, match="No such file"):
        call_command("import_data", str(tmp_path / "missing.jsonl"), stdout=io.StringIO())


def test_a_restore_keeps_record_versions_seqs_and_tombstones(tmp_path: Path) -> None:
    ann = Api()
    ann.register("admin", "adminpass")
    ann.push({"humans": {"h1": {"v": 1}, "h2": {"v": 1}, "h3": {"v": 1}}})
    ann.push({"humans": {"h1": {"v": 2}}})
    ann.post("/api/sync/ops", {"operations": [{"action": "delete", "store": "humans", "entity_id": "h2"}]})
    walked = ann.get("/api/sync/cursor?deleted=1").json()["entities"]
    backup = tmp_path / "backup.jsonl"
    call_command("export_data", str(backup), stdout=io.StringIO())
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    User.objects.all().delete()
    with override_settings(**data_dir_settings(fresh)):
        call_command("import_data", str(backup), stdout=io.StringIO())
        again = Api()
        again.login("admin", "adminpass")
        restored = again.get("/api/sync/cursor?deleted=1").json()["entities"]
        key = itemgetter("store", "id", "version", "seq", "data")
        assert sorted(map(key, restored), key=repr) == sorted(map(key, walked), key=repr)
        assert {(e["id"], e["version"], e.get("deleted", False)) for e in restored} == {
            ("h1", 2, False),
            ("h2", 2, True),
            ("h3", 1, False),
        }
        # The tombstone still keeps a full push from bringing h2 back.
        answer = again.push({"humans": {"h2": {"v": 1}}})
        assert answer.get("skipped") == 1 and answer["added"] == 0
