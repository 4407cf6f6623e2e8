"""Two servers, one database: ``PZLS_STORAGE=database`` over one PostgreSQL, as when scaling out.

Two real servers (``scripts/serve.sh``: migrate, then gunicorn with two
workers each) on different ports and data directories share a throwaway
PostgreSQL database and one ``PZLS_SECRET_KEY``. Whatever one server does,
the other must see at once: accounts, tokens and their revocation,
repositories, versions and ETags.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import orjson
import pytest
import requests

from tests.liveserver import LiveServer
from tests.postgresql.throwaway import execute, throwaway_database

pytestmark = pytest.mark.e2e

SECRET_KEY = "two-servers-share-this-secret-key-" + "k" * 20


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    env = {
        "PZLS_STORAGE": "database",
        "DATABASE_URL": database_url,
        "PZLS_SECRET_KEY": SECRET_KEY,
        "PZLS_LOGIN_RATE": "1000/minute",
        "PZLS_AUTH_RATE_PER_ADDRESS": "1000/minute",
    }
    root = tmp_path_factory.mktemp("two-servers")
    first = LiveServer(root / "a" / "data", workers=2, env=env)
    second = LiveServer(root / "b" / "data", workers=2, env=env)
    # One after the other: the first applies the migrations, the second finds them applied.
    first.start()
    try:
        second.start()
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


def register(server: LiveServer, username: str, password: str = "secret1") -> str:
    response = requests.post(
        f"{server.url}/api/auth/register", json={"username": username, "password": password}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def login(server: LiveServer, username: str, password: str = "secret1") -> str:
    response = requests.post(
        f"{server.url}/api/auth/login", json={"username": username, "password": password}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def test_migrate_ran_on_postgresql_and_nothing_is_stored_in_the_data_directories(servers, database_url) -> None:
    applied = {(app, name) for app, name in execute(database_url, "SELECT app, name FROM django_migrations")}
    assert {("accounts", "0002_token"), ("sync", "0001_initial")} <= applied
    for server in servers:
        # The shared key is used; neither server invents its own, and no SQLite database appears.
        names = {p.name for p in server.data_dir.iterdir()}
        assert "secret_key" not in names and "db.sqlite3" not in names and "tokens.json" not in names


def test_an_account_made_on_one_server_logs_in_on_the_other(servers) -> None:
    a, b = servers
    token_a = register(a, "roamer")
    token_b = login(b, "ROAMER")
    for server in (a, b):
        for token in (token_a, token_b):
            me = requests.get(f"{server.url}/api/auth/me", headers=auth(token), timeout=30)
            assert me.status_code == 200 and me.json()["user"]["username"] == "roamer"


def test_pushes_through_both_servers_at_once_are_all_kept_in_one_line_of_versions(servers) -> None:
    a, b = servers
    token_a = register(a, "pusher")
    token_b = login(b, "pusher")
    acknowledged: list[tuple[int, str]] = []
    failures: list[str] = []
    lock = threading.Lock()
    pushes_per_thread = 12

    def pusher(server: LiveServer, token: str, worker: int) -> None:
        with requests.Session() as session:
            for n in range(pushes_per_thread):
                record_id = f"{server.port}-w{worker}-r{n}"
                body = {"clientVersion": 0, "stores": {"humans": {record_id: {"name": f"P {worker} {n}", "n": n}}}}
                response = session.post(
                    f"{server.url}/api/sync", data=orjson.dumps(body), headers=auth(token), timeout=60
                )
                with lock:
                    if response.status_code != 200 or response.json()["added"] != 1:
                        failures.append(f"{response.status_code} {response.text}")
                    else:
                        acknowledged.append((response.json()["version"], record_id))

    threads = [
        threading.Thread(target=pusher, args=(server, token, worker))
        for server, token in ((a, token_a), (b, token_b))
        for worker in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    total = 2 * 8 * pushes_per_thread
    # Every version answered exactly once: contiguous, unique, no gaps.
    assert sorted(version for version, _ in acknowledged) == list(range(1, total + 1))

    pulls = [requests.get(f"{server.url}/api/sync", headers=auth(token_a), timeout=30) for server in (a, b)]
    assert pulls[0].status_code == pulls[1].status_code == 200
    assert pulls[0].content == pulls[1].content
    assert pulls[0].headers["ETag"] == pulls[1].headers["ETag"]
    pulled = orjson.loads(pulls[0].content)
    assert pulled["version"] == total
    humans = pulled["data"]["humans"]
    assert sorted(humans) == sorted(record_id for _, record_id in acknowledged)
    # First-insertion order is the order of the versions that added them.
    assert list(humans) == [record_id for _, record_id in sorted(acknowledged)]

    for server, token in ((a, token_b), (b, token_a)):
        changes = requests.get(f"{server.url}/api/sync/changes?since=0", headers=auth(token), timeout=30).json()
        assert changes["currentVersion"] == total and changes["pendingChanges"] == total
        assert [e["version"] for e in changes["changes"]] == list(range(total - 49, total + 1))
        by_version = dict(acknowledged)
        for entry in changes["changes"]:
            assert entry["added"] == [{"store": "humans", "id": by_version[entry["version"]]}]
        account = requests.get(f"{server.url}/api/sync/status", headers=auth(token), timeout=30).json()["account"]
        assert (account["version"], account["records"], account["totalSyncs"]) == (total, total, total)
        assert account["dataSizeBytes"] == len(pulls[0].content)


def test_an_etag_from_one_server_is_current_on_the_other(servers) -> None:
    a, b = servers
    token = register(a, "tagger")
    requests.post(f"{a.url}/api/sync", json={"stores": {"tags": {"t1": {"n": 1}}}}, headers=auth(token), timeout=30)
    first = requests.get(f"{a.url}/api/sync", headers=auth(token), timeout=30)
    etag = first.headers["ETag"]
    not_modified = requests.get(f"{b.url}/api/sync", headers={**auth(token), "If-None-Match": etag}, timeout=30)
    assert not_modified.status_code == 304
    requests.post(f"{b.url}/api/sync", json={"stores": {"tags": {"t1": {"n": 2}}}}, headers=auth(token), timeout=30)
    changed = requests.get(f"{a.url}/api/sync", headers={**auth(token), "If-None-Match": etag}, timeout=30)
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert orjson.loads(changed.content)["data"]["tags"]["t1"] == {"n": 2}


def test_a_token_revoked_on_one_server_is_refused_by_the_other_at_once(servers) -> None:
    a, b = servers
    register(a, "leaver")
    token = login(b, "leaver")
    other = login(a, "leaver")
    assert requests.get(f"{b.url}/api/sync", headers=auth(token), timeout=30).status_code == 200
    assert requests.post(f"{a.url}/api/auth/logout", headers=auth(token), timeout=30).status_code == 200
    for server in (b, a):
        for url in ("/api/auth/me", "/api/sync"):
            refused = requests.get(f"{server.url}{url}", headers=auth(token), timeout=30)
            assert refused.status_code == 401
            assert refused.headers["WWW-Authenticate"] == "Bearer"
    # Only that token: the user's other one still works everywhere.
    assert requests.get(f"{b.url}/api/auth/me", headers=auth(other), timeout=30).status_code == 200


def test_servers_reconnect_after_the_database_drops_their_connections(servers, database_url) -> None:
    a, b = servers
    token = register(a, "survivor")
    for server in (a, b):  # every worker gets a connection to lose
        for _ in range(6):
            requests.get(f"{server.url}/api/auth/me", headers={**auth(token), "Connection": "close"}, timeout=30)
    ended = execute(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert ended, "the servers kept no connection open (CONN_MAX_AGE should keep one per worker)"
    # Connection health checks notice the dead connections at the start of the next request.
    for server in (a, b):
        for _ in range(6):
            response = requests.get(
                f"{server.url}/api/auth/me", headers={**auth(token), "Connection": "close"}, timeout=30
            )
            assert response.status_code == 200, response.text
