"""Hostile input: whatever a client sends, the answer is the documented status
and ``{"error": ...}``, and a rejected request writes nothing.

"Nothing written" is checked three ways: the data directory holds the same
files with the same bytes, the caller's pull is byte for byte the same, and
the users are the same. Names that look like paths or JavaScript prototype
keys are valid data: they are stored as data and never become file names.

The parts that need the real server (header limits of gunicorn, memory of a
worker under large pushes, slow clients) are in the ``live`` section below.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self
from uuid import UUID

import pytest
import requests

from accounts.models import User
from testkit.client import Client
from testkit.server import LiveServer
from tests.helpers import Api, LiveServers, snapshot

# --- helpers ----------------------------------------------------------------


def files(data_dir: Path) -> dict[str, bytes]:
    """Every file under the data directory with its bytes."""
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file()}


def users() -> list[tuple[UUID, str, str]]:
    return sorted(User.objects.values_list("pk", "username", "password"))


class Unchanged:
    """Asserts on exit that the data directory, the pull and the users are as they were on entry."""

    def __init__(self, data_dir: Path, api: Any) -> None:
        self.data_dir, self.api = data_dir, api

    def state(self) -> tuple[Any, ...]:
        pull = self.api.get("/api/sync") if self.api.token else None
        return files(self.data_dir), users(), pull.content if pull is not None else None

    def __enter__(self) -> Self:
        self.before = self.state()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            after = self.state()
            assert after[0].keys() == self.before[0].keys(), "files appeared or vanished"
            assert after == self.before, "the data directory, users or pull changed"


@pytest.fixture
def seeded(admin_api: Any) -> Any:
    """The admin with a repository holding one record, so a rejected push has something to leave alone."""
    response = admin_api.post("/api/sync", {"stores": {"humans": {"h1": {"name": "John Smith"}}}})
    assert response.status_code == 200
    return admin_api


@pytest.fixture
def unchanged(data_dir: Path, seeded: Any) -> Iterator[Unchanged]:
    with Unchanged(data_dir, seeded) as guard:
        yield guard


def reject(response: Any, status: int, error: str) -> None:
    assert (response.status_code, response.json()) == (status, {"error": error}), response.content[:300]
    assert response["Content-Type"] == "application/json"


DEPTH = 100_000
DEEP_ARRAY = b"[" * DEPTH + b"]" * DEPTH
DEEP_OBJECT = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH

# --- deep nesting ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url,body,error",
    [
        ("/api/auth/register", DEEP_ARRAY, "Malformed JSON: depth limit exceeded: line 1 column 1026 (char 1025)"),
        ("/api/auth/login", DEEP_OBJECT, "Malformed JSON: depth limit exceeded: line 1 column 5122 (char 5121)"),
        (
            "/api/auth/change-password",
            DEEP_OBJECT,
            "Malformed JSON: depth limit exceeded: line 1 column 5122 (char 5121)",
        ),
        ("/api/sync", DEEP_ARRAY, "Request body must be a JSON object"),
        (
            "/api/sync",
            b'{"stores":' + DEEP_OBJECT + b"}",
            "Malformed JSON: record 'a' in store 'a': nesting too deep (limit 512 levels)",
        ),
        (
            "/api/sync",
            b'{"stores":{"s":{"r":' + DEEP_OBJECT + b"}}}",
            "Malformed JSON: record 'r' in store 's': nesting too deep (limit 512 levels)",
        ),
        (
            "/api/sync",
            b'{"stores":{},"extra":' + DEEP_ARRAY + b"}",
            "Malformed JSON: nesting too deep (limit 512 levels)",
        ),
    ],
    ids=["register", "login", "change-password", "push-array", "push-stores", "push-record", "push-ignored-key"],
)
def test_json_nested_100000_levels_is_400(unchanged, seeded, url, body, error):
    reject(seeded.post(url, data=body), 400, error)


def test_deep_query_body_is_400_with_success_false(unchanged, seeded):
    response = seeded.post("/api/query", data=DEEP_OBJECT)
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error": "Malformed JSON: depth limit exceeded: line 1 column 5122 (char 5121)",
    }


# --- numbers and literals JSON does not have ----------------------------------------


@pytest.mark.parametrize(
    "url,body,error",
    [
        (
            "/api/auth/register",
            b'{"username":"x","password":"secret1","n":1e400}',
            "Malformed JSON: number is infinity when parsed as double: line 1 column 42 (char 41)",
        ),
        (
            "/api/sync",
            b'{"stores":{"s":{"r":{"n":1e400}}}}',
            "Malformed JSON: record 'r' in store 's': number is infinity when parsed as double: line 1 column 6 (char 5)",
        ),
        (
            "/api/sync",
            b'{"stores":{"s":{"r":{"n":-1e400}}}}',
            "Malformed JSON: record 'r' in store 's': number is infinity when parsed as double: line 1 column 6 (char 5)",
        ),
        (
            "/api/sync",
            b'{"clientVersion":1e400,"stores":{}}',
            "Malformed JSON: number is infinity when parsed as double: line 1 column 1 (char 0)",
        ),
        (
            "/api/sync",
            b'{"stores":{"s":{"r":{"n":1' + b"0" * 400 + b"}}}}",
            "Malformed JSON: record 'r' in store 's': number is infinity when parsed as double: line 1 column 6 (char 5)",
        ),
    ],
    ids=["register", "push-record", "push-negative", "push-clientVersion", "push-400-digit-integer"],
)
def test_numbers_that_overflow_a_double_are_400(unchanged, seeded, url, body, error):
    reject(seeded.post(url, data=body), 400, error)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_400(unchanged, seeded, literal):
    orjson_error = {
        b"NaN": "unexpected character, expected a JSON value: line 1 column 28 (char 27)",
        b"Infinity": "unexpected character, expected a JSON value: line 1 column 28 (char 27)",
        b"-Infinity": "no digit after sign: line 1 column 29 (char 28)",
    }[literal]
    reject(
        seeded.post("/api/auth/register", data=b'{"username":"x","password":' + literal + b"}"),
        400,
        f"Malformed JSON: {orjson_error}",
    )
    reject(
        seeded.post("/api/sync", data=b'{"stores":{"s":{"r":{"n":' + literal + b"}}}}"),
        400,
        f"Malformed JSON: JSON is malformed: invalid character (byte {25 + literal.startswith(b'-')})",
    )
    reject(
        seeded.post("/api/sync", data=b'{"clientVersion":' + literal + b',"stores":{}}'),
        400,
        f"Malformed JSON: JSON is malformed: invalid character (byte {17 + literal.startswith(b'-')})",
    )


# --- text that is not Unicode -----------------------------------------------------------


@pytest.mark.parametrize(
    "url,body,error",
    [
        (
            "/api/auth/register",
            b'{"username":"\xff\xfe","password":"secret1"}',
            "Malformed JSON: str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)",
        ),
        ("/api/sync", b'{"stores":{"\xff":{"r":{}}}}', "Malformed JSON: invalid UTF-8: invalid start byte"),
        ("/api/sync", b'{"stores":{"s":{"\xc3\x28":{}}}}', "Malformed JSON: invalid UTF-8: invalid continuation byte"),
        (
            "/api/sync",
            b'{"data":{"s":{"\xed\xa0\x80":{}}}}',
            "Malformed JSON: invalid UTF-8: invalid continuation byte",
        ),
        (
            "/api/sync",
            b'{"stores":{"s":{"r":{"a":"\xed\xa0\x80"}}}}',
            "Malformed JSON: record 'r' in store 's': str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)",
        ),
    ],
    ids=["register", "push-store-name", "push-record-id", "push-encoded-surrogate-id", "push-record"],
)
def test_invalid_utf8_is_400(unchanged, seeded, url, body, error):
    reject(seeded.post(url, data=body), 400, error)


@pytest.mark.parametrize(
    "url,body,error",
    [
        (
            "/api/auth/register",
            b'{"username":"a\\ud800b","password":"secret1"}',
            "Malformed JSON: no low surrogate in string: line 1 column 15 (char 14)",
        ),
        (
            "/api/sync",
            b'{"stores":{"\\ud800":{"r":{}}}}',
            "Malformed JSON: JSON is malformed: unexpected end of hex escape (byte 18)",
        ),
        (
            "/api/sync",
            b'{"stores":{"s":{"\\udfff":{}}}}',
            "Malformed JSON: JSON is malformed: invalid utf-16 surrogate pair (byte 23)",
        ),
        # msgspec's own words for a lone high surrogate at the end of a string.
        ("/api/sync", b'{"stores":{"s":{"r":{"a":"\\ud800"}}}}', "Malformed JSON: Input data was truncated"),
        (
            "/api/sync",
            b'{"stores":{"s":{"r":{"\\ud800":1}}}}',
            "Malformed JSON: JSON is malformed: unexpected end of hex escape (byte 28)",
        ),
    ],
    ids=["register", "push-store-name", "push-record-id", "push-record-value", "push-record-key"],
)
def test_lone_surrogates_are_400(unchanged, seeded, url, body, error):
    reject(seeded.post(url, data=body), 400, error)


def test_rejected_first_push_creates_no_file(data_dir, analyst_api):
    before = files(data_dir)
    reject(
        analyst_api.post("/api/sync", data=b'{"stores":{"s":{"r":{"n":1e400}}}}'),
        400,
        "Malformed JSON: record 'r' in store 's': number is infinity when parsed as double: line 1 column 6 (char 5)",
    )
    assert files(data_dir) == before


@pytest.mark.parametrize("since", ["1e30", "9" * 30, "9223372036854775808", "1.7976931348623157e308"])
def test_since_beyond_any_version_is_no_changes_not_500(unchanged, seeded, since):
    """A since past 2^64 was echoed as clientVersion, which JSON output cannot hold: 500.

    It is answered as the largest integer a JavaScript client reads exactly.
    """
    response = seeded.get(f"/api/sync/changes?since={since}")
    assert response.status_code == 200, response.content
    assert response.json() == {"currentVersion": 1, "clientVersion": 2**53 - 1, "pendingChanges": 0, "changes": []}


# --- control characters, path-like and prototype names -------------------------------------


def test_nul_byte_in_username_store_name_and_record_id(unchanged, seeded):
    reject(
        seeded.post("/api/auth/register", data=b'{"username":"a\\u0000b","password":"secret1"}'),
        400,
        "Username must not contain control characters",
    )
    reject(
        seeded.post("/api/auth/login", data=b'{"username":"a\\u0000b","password":"secret1"}'),
        401,
        "Invalid username or password",
    )
    reject(
        seeded.post("/api/sync", data=b'{"stores":{"a\\u0000":{"r":{}}}}'),
        400,
        "Store name 'a\\x00' contains control characters",
    )
    reject(
        seeded.post("/api/sync", data=b'{"stores":{"s":{"r\\u0000":{}}}}'),
        400,
        "Record id 'r\\x00' in store 's' contains control characters",
    )


HOSTILE_NAMES = [
    "../../etc/passwd",
    "..",
    ".",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "__proto__",
    "constructor",
    "prototype",
    "hasOwnProperty",
    "tokens.json",
    "db.sqlite3",
    "repo.json",
    "%2e%2e%2f",
]


def test_path_and_prototype_names_are_stored_as_data_and_never_become_files(data_dir, seeded, tmp_path):
    expected_files = set(files(data_dir))
    stores = {name: {rid: {"name": f"{name}/{rid}", "id": rid} for rid in HOSTILE_NAMES} for name in HOSTILE_NAMES}
    response = seeded.post("/api/sync", {"stores": stores})
    assert response.status_code == 200, response.content
    assert response.json()["added"] == len(HOSTILE_NAMES) ** 2
    # The same files as before, but for the repository's own journal and index (by its stamp); none anywhere else.
    layout = re.compile(r"repo_[0-9a-f-]{36}\.(journal|[0-9a-f]{32}\.idx)")
    after = set(files(data_dir))
    assert {name for name in after ^ expected_files if not layout.fullmatch(name)} == set()
    outside = {p for p in data_dir.parent.rglob("*") if not p.is_relative_to(data_dir)}
    assert not any(p.name in {"passwd", "win.ini"} or "__proto__" in p.name for p in outside)
    pulled = seeded.get("/api/sync").json()["data"]
    for name in HOSTILE_NAMES:
        assert pulled[name] == stores[name]
    # A prototype key is an ordinary record for resolve and status too.
    again = seeded.post(
        "/api/sync", {"stores": {"humans": {"__proto__": {"name": "John Smith"}, "constructor": {"name": "Jon Smith"}}}}
    )
    assert again.status_code == 200
    resolved = seeded.get("/api/resolve?threshold=0.3").json()
    assert {(m["entity1"]["id"], m["entity2"]["id"]) for m in resolved["results"]} >= {("__proto__", "constructor")}
    assert seeded.get("/api/sync/status").json()["account"]["stores"] == len(HOSTILE_NAMES) + 1


@pytest.mark.parametrize("username", ["../../etc/passwd", "__proto__", "constructor"])
def test_path_and_prototype_usernames_are_just_names(data_dir, admin_api, api, username):
    before = set(files(data_dir))
    body = api.register(username, "secret1")
    assert body["user"]["username"] == username
    assert api.post("/api/sync", {"stores": {"s": {"r": {}}}}).status_code == 200
    new = set(files(data_dir)) - before
    # The new repository's files are named by the user's id, never by the username.
    assert new and all(body["user"]["id"] in name for name in new), new


# --- sizes and credentials ------------------------------------------------------------------


def test_username_of_10000_characters(unchanged, seeded):
    name = "u" * 10_000
    reject(
        seeded.post("/api/auth/register", {"username": name, "password": "secret1"}),
        400,
        "Username must be at most 64 characters",
    )
    reject(
        seeded.post("/api/auth/login", {"username": name, "password": "secret1"}), 401, "Invalid username or password"
    )


SQL_USERNAMES = ["x' OR '1'='1", "'; DROP TABLE accounts_user; --", 'admin" --', "1; SELECT * FROM accounts_user"]


def test_sql_looking_usernames_are_stored_as_typed(admin_api):
    for username in SQL_USERNAMES:
        assert Api().register(username, "secret1")["user"]["username"] == username
    listed = {u["username"] for u in admin_api.get("/api/admin/users").json()["users"]}
    assert listed == {"admin", *SQL_USERNAMES}
    assert User.objects.count() == 1 + len(SQL_USERNAMES)


@pytest.mark.parametrize(
    "username,password",
    [("admin' --", "x"), ("' OR 1=1 --", "' OR ''='"), ("admin", "' OR '1'='1"), ("admin'/*", "*/--")],
)
def test_sql_looking_logins_fail_like_any_wrong_password(unchanged, seeded, username, password):
    reject(
        seeded.post("/api/auth/login", {"username": username, "password": password}),
        401,
        "Invalid username or password",
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "text/json",
        "application/json-patch+json",
    ],
)
@pytest.mark.parametrize("url", ["/api/auth/register", "/api/auth/login", "/api/auth/change-password", "/api/sync"])
def test_content_type_other_than_json_is_415(unchanged, seeded, url, content_type):
    body = b'{"username":"zed","password":"secret1","currentPassword":"adminpass","newPassword":"secret2","stores":{"s":{"r":{}}}}'
    reject(
        seeded.post(url, data=body, content_type=content_type),
        415,
        f'Unsupported media type "{content_type}" in request.',
    )


@pytest.mark.parametrize(
    "header",
    [
        "Bearer ../../etc/passwd",
        "Bearer 'OR'1'='1'--",
        "Bearer " + "a" * 10_000,
        "Bearer 3F1C0A52-3C1E-4C8E-9A53-6C1E1B1D2F00",
        "Bearer {3f1c0a52-3c1e-4c8e-9a53-6c1e1b1d2f00}",
    ],
    ids=["path", "sql", "10k", "uppercase-uuid", "braced-uuid"],
)
def test_bearer_tokens_that_are_not_issued_uuids_are_401(unchanged, seeded, header):
    for method, url in (("get", "/api/sync"), ("post", "/api/sync")):
        response = getattr(seeded.client, method)(
            url, {"stores": {"s": {"r": {}}}}, format="json", HTTP_AUTHORIZATION=header
        )
        reject(response, 401, "Invalid or expired token")
        assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Basic YWRtaW46YWRtaW5wYXNz", "Digest username=admin", "Negotiate abc", "bearer"])
def test_authorization_that_is_not_bearer_is_401(unchanged, seeded, header):
    response = seeded.client.post("/api/sync", {"stores": {"s": {"r": {}}}}, format="json", HTTP_AUTHORIZATION=header)
    reject(response, 401, "Authorization header must be: Bearer <token>")
    assert response["WWW-Authenticate"] == "Bearer"


# --- live server: gunicorn's limits, worker memory, slow clients ---------------------------


MIB = 1024 * 1024


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def peak_during(pid: int, action: Any) -> tuple[Any, int]:
    """(what ``action()`` returned, how far the worker's resident memory rose above its level before)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = proc_status(pid)["VmRSS"]
    result = action()
    return result, proc_status(pid)["VmHWM"] - before


def raw_http(port: int, request: bytes) -> bytes:
    """Send bytes, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def live(live_server_factory: LiveServers) -> LiveServer:
    """One worker, so the worker that answers is the one measured."""
    return live_server_factory.start(workers=1)


@pytest.fixture(scope="module")
def live_client(live: LiveServer) -> Client:
    """An account on the live server, for the large requests."""
    client = Client(live.url, timeout=60)
    client.register("big")
    return client


@pytest.mark.live
def test_headers_of_100_kb(live, live_client):
    """gunicorn refuses one oversized header or line itself, with its own small HTML page.

    That page breaks §1's "never HTML" but not the client: the status is a
    sane 4xx, the connection is closed, nothing reaches Django, and no client
    of PZLS sends such requests. Behind nginx its own limits answer first.
    100 KB spread over fields within the limits is an ordinary request.
    """
    before = files(live.data_dir)
    big = b"x" * 100_000
    for request, status in [
        (
            b"GET /api/auth/me HTTP/1.1\r\nHost: t\r\nX-Big: " + big + b"\r\n\r\n",
            b"431 Request Header Fields Too Large",
        ),
        (
            b"GET /api/auth/me HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + big + b"\r\n\r\n",
            b"431 Request Header Fields Too Large",
        ),
        (b"GET /api/auth/me?" + big + b" HTTP/1.1\r\nHost: t\r\n\r\n", b"414 URI Too Long"),
        (
            b"GET /api/auth/me HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(1000)) + b"\r\n",
            b"431 Request Header Fields Too Large",
        ),
    ]:
        answer = raw_http(live.port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status), head
        assert b"Content-Type: text/html" in head and b"Connection: close" in head
        assert len(body) < 1000 and b"Traceback" not in body
    # 99 KB in fields gunicorn accepts (at most 100 fields of at most 16 KiB; requests adds 5 of its own).
    spread = {f"X-Pad-{i}": "p" * 1100 for i in range(90)}
    response = requests.get(
        f"{live.url}/api/auth/me", headers={**spread, "Authorization": f"Bearer {live_client.token}"}, timeout=30
    )
    assert response.status_code == 200 and response.json()["user"]["username"] == "big"
    response = requests.get(f"{live.url}/api/auth/me", headers=spread, timeout=30)
    assert (response.status_code, response.json()) == (401, {"error": "Authentication required"})
    assert requests.get(f"{live.url}/api/auth/health", timeout=30).status_code == 200
    assert files(live.data_dir).keys() == before.keys()


@pytest.mark.live
def test_rejected_50_mb_bodies_hold_under_4x_and_write_nothing(live, live_client):
    pid = live.worker_pids()[0]
    size = 49 * MIB
    live_client.push({"s": {"seed": {}}})  # a repository exists (see test_rejected_first_push_creates_no_file)
    pull = live_client.get("/api/sync").content
    before = snapshot(live.data_dir)  # files' bytes and database rows (SQLite's -shm changes on reads)
    cases = [
        (
            "/api/auth/register",
            b'{"password":"secret1","username":"' + b"u" * size + b'"}',
            400,
            "Username must be at most 64 characters",
        ),
        # Valid JSON up to its end, where a brace is missing: the whole body is scanned first.
        (
            "/api/sync",
            b'{"stores":{"s":{"r":{"blob":"' + b"x" * size + b'"}}}',
            400,
            "Malformed JSON: Input data was truncated",
        ),
        (
            "/api/sync",
            b'{"stores":{"s":{"r":{"blob":"' + b"x" * size + b'","n":1e400}}}}',
            400,
            "Malformed JSON: record 'r' in store 's': number is infinity when parsed as double: line 1 column 51380240 (char 51380239)",
        ),
    ]
    for url, body, status, error in cases:
        response, peak = peak_during(
            pid,
            lambda url=url, body=body: live_client.post(url, data=body, timeout=120),
        )
        assert (response.status_code, response.json()) == (status, {"error": error})
        print(
            f"\n{url} rejected, {len(body) / MIB:.0f} MiB body: worker peak +{peak / MIB:.0f} MiB ({peak / len(body):.1f}x)"
        )
        assert peak <= 4 * len(body), f"{peak / MIB:.0f} MiB for a {len(body) / MIB:.0f} MiB body"
    assert snapshot(live.data_dir) == before
    assert live_client.get("/api/sync").content == pull


@pytest.mark.live
def test_push_of_49_mb_in_one_string_succeeds_under_4x(live, live_client):
    pid = live.worker_pids()[0]
    blob = "é" * (24 * MIB) + "x" * MIB  # 49 MiB of UTF-8
    body = b'{"stores":{"big":{"r":{"blob":"' + blob.encode() + b'"}}}}'
    assert 48 * MIB < len(body) < 50 * MIB
    response, peak = peak_during(pid, lambda: live_client.post("/api/sync", data=body, timeout=300))
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 1
    print(f"\n49 MiB one-string push: worker peak +{peak / MIB:.0f} MiB ({peak / len(body):.1f}x the body)")
    assert peak <= 4 * len(body)
    pulled = live_client.get("/api/sync", timeout=300).json()
    assert pulled["data"]["big"]["r"]["blob"] == blob


@pytest.mark.live
def test_push_of_1_000_000_tiny_records_succeeds(live, live_client):
    pid = live.worker_pids()[0]
    count = 1_000_000
    body = b'{"stores":{"tiny":{' + b",".join(b'"%d":{}' % i for i in range(count)) + b"}}}"
    response, peak = peak_during(pid, lambda: live_client.post("/api/sync", data=body, timeout=300))
    assert response.status_code == 200, response.text
    assert response.json()["added"] == count
    # Per-record objects, not the body, dominate here (about 540 MiB measured for
    # this 11 MiB body, most of it the changelog's list of added ids).
    print(f"\n1,000,000-record push ({len(body) / MIB:.0f} MiB): worker peak +{peak / MIB:.0f} MiB")
    assert peak < 1024 * MIB
    status = live_client.status()
    assert status["account"]["records"] >= count


@pytest.mark.live
def test_slow_clients_hold_sync_workers_until_gunicorns_timeout(live_server_factory):
    """Why PZLS belongs behind a buffering proxy.

    A gunicorn sync worker reads one request at a time. N clients that send
    their headers a byte now and then hold N workers: every other client waits,
    here until gunicorn's timeout (PZLS_WORKER_TIMEOUT_S, 120 s by default)
    kills the stuck workers. An attacker simply reconnects. nginx in front
    reads whole requests (and whole answers) itself, cheaply, before a worker
    is involved; see the README's nginx configuration.
    """
    workers, timeout_s = 2, 3
    server = live_server_factory.start(workers=workers, env={"PZLS_WORKER_TIMEOUT_S": str(timeout_s)})
    stop = threading.Event()
    sockets = []
    try:

        def trickle(conn: socket.socket) -> None:
            try:
                conn.sendall(b"GET /api/auth/health HTTP/1.1\r\nHost: t\r\n")
                while not stop.wait(0.3):
                    conn.sendall(b"X: y\r\n")
            except OSError:
                pass  # the worker holding it was killed

        for _ in range(workers):
            conn = socket.create_connection(("127.0.0.1", server.port))
            sockets.append(conn)
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()
        time.sleep(0.5)
        with pytest.raises(requests.ReadTimeout):
            requests.get(f"{server.url}/api/auth/health", timeout=(1, timeout_s * 0.5))
        started = time.monotonic()
        response = requests.get(f"{server.url}/api/auth/health", timeout=60)
        assert response.status_code == 200
        assert time.monotonic() - started < timeout_s + 20
        assert "WORKER TIMEOUT" in server.log_path.read_text(errors="replace")
    finally:
        stop.set()
        for conn in sockets:
            conn.close()
        server.kill()  # a throwaway server: no graceful wait for workers a slow client may hold again
