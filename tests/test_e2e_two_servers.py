"""Two servers, one database: ``PZLS_STORAGE=database`` over one PostgreSQL, as when scaling out.

Two real servers (``scripts/serve.sh``: migrate, then gunicorn with two
workers each) on different ports and data directories share a throwaway
PostgreSQL database and one ``PZLS_SECRET_KEY``. Whatever one server does,
the other must see at once: accounts, tokens and their revocation,
repositories, versions and ETags.
"""

from __future__ import annotations

import threading

import orjson
import pytest

from testkit.client import Client
from testkit.database import execute
from testkit.server import LiveServer
from tests.helpers import LiveServers, in_threads

pytestmark = [pytest.mark.live, pytest.mark.postgres]

SECRET_KEY = "two-servers-share-this-secret-key-" + "k" * 20


@pytest.fixture(scope="module")
def database_url(live_server_factory: LiveServers) -> str:
    return live_server_factory.database()


@pytest.fixture(scope="module")
def servers(live_server_factory: LiveServers, database_url: str) -> tuple[LiveServer, LiveServer]:
    env = {"PZLS_SECRET_KEY": SECRET_KEY, "PZLS_LOGIN_RATE": "1000/minute", "PZLS_AUTH_RATE_PER_ADDRESS": "1000/minute"}
    # One after the other: the first applies the migrations, the second finds them applied.
    first = live_server_factory.start(storage="database", database_url=database_url, env=env)
    second = live_server_factory.start(storage="database", database_url=database_url, env=env)
    return first, second


def test_migrate_ran_on_postgresql_and_nothing_is_stored_in_the_data_directories(servers, database_url) -> None:
    applied = {(app, name) for app, name in execute(database_url, "SELECT app, name FROM django_migrations")}
    assert {("accounts", "0002_token"), ("sync", "0001_initial")} <= applied
    for server in servers:
        # The shared key is used; neither server invents its own, and no SQLite database appears.
        names = {p.name for p in server.data_dir.iterdir()}
        assert "secret_key" not in names and "db.sqlite3" not in names and "tokens.json" not in names


def test_an_account_made_on_one_server_logs_in_on_the_other(servers) -> None:
    a, b = servers
    token_a = a.client().register("roamer")["token"]
    token_b = b.client().login("ROAMER")["token"]
    for server in (a, b):
        for token in (token_a, token_b):
            assert server.client(token).me()["user"]["username"] == "roamer"


def test_pushes_through_both_servers_at_once_are_all_kept_in_one_line_of_versions(servers) -> None:
    a, b = servers
    token_a = a.client().register("pusher")["token"]
    token_b = b.client().login("pusher")["token"]
    acknowledged: list[tuple[int, str]] = []
    lock = threading.Lock()
    pushes_per_thread = 12

    def pusher(thread: int) -> None:  # threads 0 to 7 push through a, 8 to 15 through b
        server, token = ((a, token_a), (b, token_b))[thread // 8]
        worker = thread % 8
        client = Client(server.url, token, timeout=60)
        for n in range(pushes_per_thread):
            record_id = f"{server.port}-w{worker}-r{n}"
            answer = client.push({"humans": {record_id: {"name": f"P {worker} {n}", "n": n}}})
            assert answer["added"] == 1, answer
            with lock:
                acknowledged.append((answer["version"], record_id))

    in_threads(16, pusher)
    total = 2 * 8 * pushes_per_thread
    # Every version answered exactly once: contiguous, unique, no gaps.
    assert sorted(version for version, _ in acknowledged) == list(range(1, total + 1))

    pulls = [server.client(token_a).get("/api/sync") for server in (a, b)]
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
        client = server.client(token)
        changes = client.changes(since=0)
        assert changes["currentVersion"] == total and changes["pendingChanges"] == total
        assert [e["version"] for e in changes["changes"]] == list(range(total - 49, total + 1))
        by_version = dict(acknowledged)
        for entry in changes["changes"]:
            assert entry["added"] == [{"store": "humans", "id": by_version[entry["version"]]}]
        account = client.status()["account"]
        assert (account["version"], account["records"], account["totalSyncs"]) == (total, total, total)
        assert account["dataSizeBytes"] == len(pulls[0].content)


def test_an_etag_from_one_server_is_current_on_the_other(servers) -> None:
    a, b = servers
    on_a = a.client()
    on_b = b.client(on_a.register("tagger")["token"])
    on_a.push({"tags": {"t1": {"n": 1}}})
    etag = on_a.get("/api/sync").headers["ETag"]
    not_modified = on_b.get("/api/sync", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    on_b.push({"tags": {"t1": {"n": 2}}})
    changed = on_a.get("/api/sync", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert orjson.loads(changed.content)["data"]["tags"]["t1"] == {"n": 2}


def test_a_token_revoked_on_one_server_is_refused_by_the_other_at_once(servers) -> None:
    a, b = servers
    a.client().register("leaver")
    token = b.client().login("leaver")["token"]
    other = a.client().login("leaver")["token"]
    b.client(token).pull()
    a.client(token).logout()
    for server in (b, a):
        for url in ("/api/auth/me", "/api/sync"):
            refused = server.client(token).get(url)
            assert refused.status_code == 401
            assert refused.headers["WWW-Authenticate"] == "Bearer"
    # Only that token: the user's other one still works everywhere.
    b.client(other).me()


def test_servers_reconnect_after_the_database_drops_their_connections(servers, database_url) -> None:
    a, b = servers
    token = a.client().register("survivor")["token"]
    for server in (a, b):  # every worker gets a connection to lose
        for _ in range(6):
            server.client(token).get("/api/auth/me", headers={"Connection": "close"})
    ended = execute(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert ended, "the servers kept no connection open (CONN_MAX_AGE should keep one per worker)"
    # Connection health checks notice the dead connections at the start of the next request.
    for server in (a, b):
        for _ in range(6):
            response = server.client(token).get("/api/auth/me", headers={"Connection": "close"})
            assert response.status_code == 200, response.text
