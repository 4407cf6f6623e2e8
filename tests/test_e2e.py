"""End-to-end tests: the real server, started as ``make run`` starts it (gunicorn,
several worker processes), over HTTP. Slower than the API tests, so each module
shares one server where the tests allow it."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import requests

from testkit.client import Client
from testkit.server import LiveServer
from tests.helpers import LiveServers, in_threads

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def server(live_server_factory: LiveServers) -> LiveServer:
    return live_server_factory.start(env={"PZLS_LOGIN_RATE": "5/minute"})


def test_concurrent_pushes_from_eight_threads_are_serialised(server: LiveServer) -> None:
    owner = server.client()
    owner.register("pusher")
    versions: list[int] = []
    lock = threading.Lock()

    def pusher(worker: int) -> None:
        client = Client(server.url, owner.token, timeout=60)
        for n in range(25):
            answer = client.push({"humans": {f"w{worker}-r{n}": {"name": f"Person {worker} {n}"}}})
            assert answer["added"] == 1
            with lock:
                versions.append(answer["version"])

    in_threads(8, pusher)
    assert sorted(versions) == list(range(1, 201))  # each version answered exactly once

    pull = owner.pull()
    assert pull["version"] == 200
    assert len(pull["data"]["humans"]) == 200
    changes = owner.changes(since=0)
    assert changes["currentVersion"] == 200 and changes["pendingChanges"] == 200
    assert [e["version"] for e in changes["changes"]] == list(range(151, 201))
    status = owner.status()
    assert status["account"]["records"] == 200 and status["account"]["totalSyncs"] == 200


def test_a_body_over_50_mib_is_refused_with_413_and_nothing_changes(server: LiveServer) -> None:
    client = server.client()
    client.register("bigpusher")
    body = b'{"stores":{"humans":{"h1":{"notes":"' + b"x" * (50 * 1024 * 1024) + b'"}}}}'
    response = client.post("/api/sync", data=body, timeout=120)
    assert response.status_code == 413
    assert response.json() == {"error": "Request body too large (limit 50 MiB)"}
    assert response.headers["Access-Control-Allow-Origin"] == "*"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        yield body[:1024]
        for start in range(1024, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    response = client.post("/api/sync", data=chunks(), timeout=120)
    assert response.status_code == 413
    assert response.json() == {"error": "Request body too large (limit 50 MiB)"}
    assert client.get("/api/sync").content == b'{"version":0,"data":{}}'


def test_a_chunked_body_under_the_limit_is_an_ordinary_push(server: LiveServer) -> None:
    client = server.client()
    client.register("chunky")
    body = orjson.dumps({"stores": {"humans": {"h1": {"name": "A"}}}})
    response = client.post("/api/sync", data=iter([body[:10], body[10:]]))
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 1


def test_no_token_is_stored_in_clear_text(server: LiveServer) -> None:
    tokens = [server.client().register(f"reader{n}")["token"] for n in range(3)]
    tokens.append(server.client().login("reader0")["token"])
    for token in tokens:
        client = server.client(token)
        client.me()
        client.push({"tags": {"t": {"by": "me"}}})
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "tokens.json" for p in files)
    for path in files:
        content = path.read_bytes()
        for token in tokens:
            for form in {token, token.replace("-", ""), token.upper()}:
                assert form.encode() not in content, f"token found in {path.name}"


def test_crash_mid_push_loses_nothing_acknowledged(live_server_factory: LiveServers) -> None:
    live = live_server_factory.start()
    token = live.client().register("crashy")["token"]
    acknowledged: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = itertools.count()

    def pusher() -> None:
        client = Client(live.url, token, timeout=10)
        while not stop.is_set():
            n = next(counter)
            # Records big enough that a push takes a while to write.
            body = {"clientVersion": 0, "stores": {"humans": {f"r{n}": {"name": f"P{n}", "notes": "n" * 20000}}}}
            try:
                response = client.post("/api/sync", body)
            except requests.RequestException:
                return
            if response.status_code == 200:
                with lock:
                    acknowledged.append((response.json()["version"], f"r{n}"))

    threads = [threading.Thread(target=pusher) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    live.kill()  # SIGKILL to master and workers, pushes in flight
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) >= 60

    repo_files = list(live.data_dir.glob("repo_*.json"))
    repo_files = [p for p in repo_files if not p.name.endswith(".meta.json")]
    assert len(repo_files) == 1
    stamp, body = repo_files[0].read_bytes().split(b"\n", 1)  # the stamp line, then the pull body
    assert re.fullmatch(rb'\{"stamp":"[0-9a-f]{32}"\}', stamp)
    on_disk = orjson.loads(body)  # parseable
    for line in next(live.data_dir.glob("changelog_*.jsonl")).read_bytes().splitlines()[:-1]:
        orjson.loads(line)  # every complete line parses

    restarted = live_server_factory.start(data_dir=live.data_dir)
    client = restarted.client(token)
    pull = client.pull()
    # The snapshot holds the repository up to its version; the journal beside it, the commits since.
    assert pull["version"] >= on_disk["version"]
    stored = pull["data"]["humans"]
    missing = [rid for _, rid in acknowledged if rid not in stored]
    assert missing == []
    assert max(v for v, _ in acknowledged) <= pull["version"]
    changes = client.changes(since=0)
    assert changes["currentVersion"] == pull["version"]
    assert changes["pendingChanges"] == pull["version"]  # one entry per version, none lost, none extra
    assert len(stored) == pull["version"]  # every version added exactly one record
    # The server goes on from where it stopped, without gaps.
    after = client.push({"humans": {"after": {}}})
    assert after["version"] == pull["version"] + 1
    changes = client.changes(since=pull["version"] - 1)
    assert [e["version"] for e in changes["changes"]] == [pull["version"], pull["version"] + 1]
    restarted.stop()


def test_login_rate_limit_holds_across_workers(server: LiveServer) -> None:
    server.client().register("limited")
    anonymous = server.client()
    statuses = []
    for n in range(8):
        # A new connection each time, so the attempts land on different workers.
        response = anonymous.post(
            "/api/auth/login",
            {"username": "LIMITED", "password": "wrong-password" if n % 2 else "secret1"},
            headers={"Connection": "close"},
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"].startswith("Too many login attempts")
            assert 1 <= int(response.headers["Retry-After"]) <= 120
    assert statuses == [200, 401, 200, 401, 200, 429, 429, 429]


def test_pazators_token_less_resolver_and_pipelines_work_with_an_anonymous_account(
    live_server_factory: LiveServers,
) -> None:
    """PZLS_ANONYMOUS_USER through the environment, as an operator sets it, on the real server."""
    env = {"PZLS_ANONYMOUS_USER": "Alice", "PZLS_QUERY_ALLOWED_HOSTS": "db.internal:5432"}
    live = live_server_factory.start(workers=2, env=env)
    # No account yet: the resolver gets 401, as without the setting.
    assert requests.get(f"{live.url}/api/resolve", timeout=30).status_code == 401
    owner = live.client()
    owner.register("alice")
    same = {"birthDate": "1980-01-01", "nationality": "GB"}
    humans = {"h1": {"name": "John Smith", **same}, "h2": {"name": "Jon Smith", **same}}
    owner.push({"humans": humans})
    # What Pazator's resolver sends: no Authorization header, from a file:// page.
    resolved = requests.get(f"{live.url}/api/resolve?threshold=0.6", headers={"Origin": "null"}, timeout=30)
    assert resolved.status_code == 200, resolved.text
    assert resolved.headers["Access-Control-Allow-Origin"] == "*"
    answer = resolved.json()
    assert answer["count"] == 1
    assert {answer["results"][0]["entity1"]["id"], answer["results"][0]["entity2"]["id"]} == {"h1", "h2"}
    # What a pipeline sends: JSON, no token; it runs as alice, under the allow-list.
    body = {"connectionString": "postgres://reader:secret@192.0.2.1:5432/warehouse", "query": "SELECT 1"}
    queried = requests.post(f"{live.url}/api/query", json=body, headers={"Origin": "null"}, timeout=30)
    assert queried.status_code == 403
    assert queried.json() == {
        "success": False,
        "error": "Host 192.0.2.1 port 5432 is not in PZLS_QUERY_ALLOWED_HOSTS",
    }
    # A bad token is still 401, and the repository itself still needs a token.
    bad = requests.get(f"{live.url}/api/resolve", headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert bad.status_code == 401 and bad.json() == {"error": "Invalid or expired token"}
    assert requests.get(f"{live.url}/api/sync", timeout=30).status_code == 401
