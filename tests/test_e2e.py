"""End-to-end tests: the real server, started as ``make run`` starts it (gunicorn,
several worker processes), over HTTP. Slower than the API tests, so each module
shares one server where the tests allow it."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from tests.liveserver import LiveServer

pytestmark = pytest.mark.e2e


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def register(server: LiveServer, username: str, password: str = "secret1") -> str:
    response = requests.post(
        f"{server.url}/api/auth/register", json={"username": username, "password": password}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("e2e") / "data", workers=2, env={"PZLS_LOGIN_RATE": "5/minute"})
    live.start()
    yield live
    live.stop()


def test_concurrent_pushes_from_eight_threads_are_serialised(server: LiveServer) -> None:
    token = register(server, "pusher")
    versions: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def pusher(worker: int) -> None:
        with requests.Session() as session:
            for n in range(25):
                body = {"clientVersion": 0, "stores": {"humans": {f"w{worker}-r{n}": {"name": f"Person {worker} {n}"}}}}
                response = session.post(
                    f"{server.url}/api/sync", data=orjson.dumps(body), headers=auth(token), timeout=60
                )
                with lock:
                    if response.status_code != 200:
                        failures.append(response.text)
                    else:
                        assert response.json()["added"] == 1
                        versions.append(response.json()["version"])

    threads = [threading.Thread(target=pusher, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sorted(versions) == list(range(1, 201))  # each version answered exactly once

    pull = requests.get(f"{server.url}/api/sync", headers=auth(token), timeout=30).json()
    assert pull["version"] == 200
    assert len(pull["data"]["humans"]) == 200
    changes = requests.get(f"{server.url}/api/sync/changes?since=0", headers=auth(token), timeout=30).json()
    assert changes["currentVersion"] == 200 and changes["pendingChanges"] == 200
    assert [e["version"] for e in changes["changes"]] == list(range(151, 201))
    status = requests.get(f"{server.url}/api/sync/status", headers=auth(token), timeout=30).json()
    assert status["account"]["records"] == 200 and status["account"]["totalSyncs"] == 200


def test_a_body_over_50_mib_is_refused_with_413_and_nothing_changes(server: LiveServer) -> None:
    token = register(server, "bigpusher")
    body = b'{"stores":{"humans":{"h1":{"notes":"' + b"x" * (50 * 1024 * 1024) + b'"}}}}'
    response = requests.post(f"{server.url}/api/sync", data=body, headers=auth(token), timeout=120)
    assert response.status_code == 413
    assert response.json() == {"error": "Request body too large (limit 50 MiB)"}
    assert response.headers["Access-Control-Allow-Origin"] == "*"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        yield body[:1024]
        for start in range(1024, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    response = requests.post(f"{server.url}/api/sync", data=chunks(), headers=auth(token), timeout=120)
    assert response.status_code == 413
    assert response.json() == {"error": "Request body too large (limit 50 MiB)"}
    pull = requests.get(f"{server.url}/api/sync", headers=auth(token), timeout=30)
    assert pull.content == b'{"version":0,"data":{}}'


def test_a_chunked_body_under_the_limit_is_an_ordinary_push(server: LiveServer) -> None:
    token = register(server, "chunky")
    body = orjson.dumps({"stores": {"humans": {"h1": {"name": "A"}}}})
    response = requests.post(
        f"{server.url}/api/sync", data=iter([body[:10], body[10:]]), headers=auth(token), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 1


def test_no_token_is_stored_in_clear_text(server: LiveServer) -> None:
    tokens = [register(server, f"reader{n}") for n in range(3)]
    login = requests.post(
        f"{server.url}/api/auth/login", json={"username": "reader0", "password": "secret1"}, timeout=30
    )
    tokens.append(login.json()["token"])
    for token in tokens:
        assert requests.get(f"{server.url}/api/auth/me", headers=auth(token), timeout=30).status_code == 200
        requests.post(
            f"{server.url}/api/sync", json={"stores": {"tags": {"t": {"by": "me"}}}}, headers=auth(token), timeout=30
        )
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "tokens.json" for p in files)
    for path in files:
        content = path.read_bytes()
        for token in tokens:
            for form in {token, token.replace("-", ""), token.upper()}:
                assert form.encode() not in content, f"token found in {path.name}"


def test_crash_mid_push_loses_nothing_acknowledged(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "data", workers=2).start()
    token = register(live, "crashy")
    acknowledged: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = itertools.count()

    def pusher() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                n = next(counter)
                # Records big enough that a push takes a while to write.
                body = {"clientVersion": 0, "stores": {"humans": {f"r{n}": {"name": f"P{n}", "notes": "n" * 20000}}}}
                try:
                    response = session.post(
                        f"{live.url}/api/sync", data=orjson.dumps(body), headers=auth(token), timeout=10
                    )
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

    restarted = LiveServer(live.data_dir, workers=2).start()
    try:
        pull = requests.get(f"{restarted.url}/api/sync", headers=auth(token), timeout=30).json()
        assert pull["version"] == on_disk["version"]
        stored = pull["data"]["humans"]
        missing = [rid for _, rid in acknowledged if rid not in stored]
        assert missing == []
        assert max(v for v, _ in acknowledged) <= pull["version"]
        changes = requests.get(f"{restarted.url}/api/sync/changes?since=0", headers=auth(token), timeout=30).json()
        assert changes["currentVersion"] == pull["version"]
        assert changes["pendingChanges"] == pull["version"]  # one entry per version, none lost, none extra
        assert len(stored) == pull["version"]  # every version added exactly one record
        # The server goes on from where it stopped, without gaps.
        after = requests.post(
            f"{restarted.url}/api/sync", json={"stores": {"humans": {"after": {}}}}, headers=auth(token), timeout=30
        ).json()
        assert after["version"] == pull["version"] + 1
        changes = requests.get(
            f"{restarted.url}/api/sync/changes?since={pull['version'] - 1}", headers=auth(token), timeout=30
        ).json()
        assert [e["version"] for e in changes["changes"]] == [pull["version"], pull["version"] + 1]
    finally:
        restarted.stop()


def test_login_rate_limit_holds_across_workers(server: LiveServer) -> None:
    register(server, "limited")
    statuses = []
    for n in range(8):
        # A new connection each time, so the attempts land on different workers.
        response = requests.post(
            f"{server.url}/api/auth/login",
            json={"username": "LIMITED", "password": "wrong-password" if n % 2 else "secret1"},
            headers={"Connection": "close"},
            timeout=30,
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"].startswith("Too many login attempts")
            assert 1 <= int(response.headers["Retry-After"]) <= 120
    assert statuses == [200, 401, 200, 401, 200, 429, 429, 429]
