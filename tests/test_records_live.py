"""Record-level sync (PROTOCOL-v2 §7, §8.5) on real servers: races on expectedVersion, the audit log under
many users on two servers, and SIGKILL in the middle of ops batches.

Real servers (``scripts/serve.sh``: gunicorn, several workers) from the shared
factory, on the files storage (one server, several workers) and on the
database storage (two servers over one PostgreSQL database). What is checked:

- Concurrent updates with ``expectedVersion`` (ops) and ``If-Match`` (PUT) on
  a few records: an accepted update was made against the version it named,
  a record's accepted versions are exactly 2..final, nothing accepted is
  lost, every conflict reports a state that really was, and a cursor walker
  running meanwhile ends with every record's final state.
- The audit log while 8 users push and send ops through both servers: seqs
  server-wide without gaps or duplicates (the ``sync_auditbatch`` rows),
  each user's entries exactly their changelog's committed changes (nothing of
  a refused push or batch), and a reader paging ``/api/sync/ops?since=`` meanwhile
  gets every entry exactly once, in seq order.
- SIGKILL at random moments while clients send ops batches: after a restart on
  the same data every acknowledged batch is there whole, every other batch is
  there whole or not at all, and the audit log has each change of the batches
  that are there exactly once.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
import requests

from testkit.client import Client, ok
from testkit.database import execute
from testkit.server import LiveServer
from tests.helpers import LiveServers, in_threads

pytestmark = pytest.mark.live

SECRET_KEY = "records-live-tests-share-this-secret-key-" + "k" * 20
ENV = {"PZLS_SECRET_KEY": SECRET_KEY, "PZLS_LOGIN_RATE": "1000/minute", "PZLS_AUTH_RATE_PER_ADDRESS": "1000/minute"}
# A busy two-core machine running several servers answers slowly now and then.
TIMEOUT = 60

STORAGES = [pytest.param("files", id="files"), pytest.param("database", id="database", marks=pytest.mark.postgres)]


# --- servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files_servers(live_server_factory: LiveServers) -> list[LiveServer]:
    """One server on the files storage with four workers: the workers race on the repository's files."""
    return [live_server_factory.start(workers=4, env=ENV)]


@pytest.fixture(scope="module")
def database_url(live_server_factory: LiveServers) -> str:
    return live_server_factory.database()


@pytest.fixture(scope="module")
def database_servers(live_server_factory: LiveServers, database_url: str) -> list[LiveServer]:
    """Two servers (two workers each) on one PostgreSQL database; one after the other, the first migrates."""
    first = live_server_factory.start(storage="database", database_url=database_url, env=ENV)
    second = live_server_factory.start(storage="database", database_url=database_url, env=ENV)
    return [first, second]


def servers_of(request: pytest.FixtureRequest, storage: str) -> list[LiveServer]:
    servers: list[LiveServer] = request.getfixturevalue(f"{storage}_servers")
    return servers


# --- calls -----------------------------------------------------------------------------------


def client_of(server: LiveServer, token: str | None = None) -> Client:
    return Client(server.url, token, timeout=TIMEOUT)


def record_path(store: str, record_id: str) -> str:
    return f"/api/sync/records/{quote(store, safe='')}/{quote(record_id, safe='')}"


def send_ops(client: Client, operations: list[dict[str, Any]]) -> dict[str, Any]:
    answer: dict[str, Any] = ok(client.post("/api/sync/ops", {"operations": operations}))
    assert len(answer["results"]) == len(operations), answer
    return answer


def walk(
    client: Client, cursor: str = "", *, limit: int = 5000, store: str | None = None, deleted: bool = False
) -> tuple[list[dict[str, Any]], str, int]:
    """Pages of the cursor from ``cursor`` until ``hasMore`` is false: the entities, the last nextCursor and latestSeq."""
    entities: list[dict[str, Any]] = []
    for _ in range(10_000):
        query = {"cursor": cursor, "limit": limit, **({"store": store} if store else {}), "deleted": int(deleted)}
        page = ok(client.get(f"/api/sync/cursor?{urlencode(query)}"))
        seqs = [e["seq"] for e in page["entities"]]
        assert seqs == sorted(seqs), f"a page not in the order of last change: {seqs}"
        assert len({(e["store"], e["id"]) for e in page["entities"]}) == len(page["entities"]), page
        entities += page["entities"]
        cursor = page["nextCursor"]
        assert isinstance(cursor, str) and cursor, page
        if not page["hasMore"]:
            return entities, cursor, page["latestSeq"]
    pytest.fail("the cursor never reached hasMore: false")


def whole_state(client: Client) -> dict[tuple[str, str], dict[str, Any]]:
    """Every record and tombstone of the repository, by (store, id), as the cursor gives them from the start."""
    entities, _, _ = walk(client, deleted=True)
    state = {(e["store"], e["id"]): e for e in entities}
    assert len(state) == len(entities), "a record came twice in one walk from the start of a quiet repository"
    return state


def own_audit(client: Client, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """The caller's whole audit log after ``since`` (``GET /api/sync/ops``, page by page)."""
    entries: list[dict[str, Any]] = []
    while True:
        page = ok(client.get(f"/api/sync/ops?since={since}&limit={limit}"))
        assert page["count"] == len(page["ops"]), page
        if not page["ops"]:
            return entries
        entries += page["ops"]
        since = page["ops"][-1]["seq"]


def change_of(entry: dict[str, Any]) -> tuple[str, str, str, int]:
    """An audit entry as the change it records: (action, store, id, record version)."""
    return entry["action"], entry["store"], entry["entity_id"], entry["version"]


def assert_strictly_rising(entries: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in entries]
    assert all(a < b for a, b in itertools.pairwise(seqs)), f"seqs not strictly increasing: {seqs}"


# --- 1. races on expectedVersion -----------------------------------------------------------------

RACED = ["r0", "r1", "r2"]
RACERS = 8
ROUNDS = 20


@dataclass(frozen=True)
class Accepted:
    record: str
    expected: int
    version: int
    data: dict[str, Any]
    repository_version: int | None  # None for a PUT, whose answer does not give it


@dataclass(frozen=True)
class Refused:
    record: str
    expected: int
    server_version: int
    server_data: Any


@pytest.mark.parametrize("storage", STORAGES)
def test_racing_updates_with_expected_versions_lose_nothing_and_skip_no_version(
    storage: str, request: pytest.FixtureRequest
) -> None:
    servers = servers_of(request, storage)
    owner = client_of(servers[0])
    token = owner.register(f"racer-{storage}")["token"]
    seed_data: dict[str, Any] = {"writer": None, "n": 0}
    creates = [
        {"action": "create", "store": "notes", "entity_id": r, "data": seed_data, "expectedVersion": 0} for r in RACED
    ]
    seeded = send_ops(owner, creates)
    assert seeded["applied"] == len(RACED) and [r["version"] for r in seeded["results"]] == [1] * len(RACED)
    seed_version = seeded["version"]

    accepted: list[Accepted] = []
    refused: list[Refused] = []
    lock = threading.Lock()

    def racer(number: int) -> None:
        """Read a record, then update it against the version read: ops for most, PUT with If-Match for two."""
        me = client_of(servers[number % len(servers)], token)
        rng = random.Random(number)
        for n in range(ROUNDS):
            record = rng.choice(RACED)
            if number % 4 == 1:  # read through the cursor
                seen = {e["id"]: e for e in walk(me, store="notes", limit=2)[0]}
                # From the start until hasMore is false: every record there is, at least once (§7.4).
                assert sorted(seen) == RACED, f"a walk of the cursor from the start missed records: {sorted(seen)}"
                version = seen[record]["version"]
            else:
                read = me.get(record_path("notes", record))
                body = ok(read)
                version = body["version"]
                assert read.headers["ETag"] == f'"{version}"'
            data = {"writer": number, "n": n, "base": version}
            if number % 4 == 3:
                response = me.request(
                    "PUT", record_path("notes", record), data=orjson.dumps(data), headers={"If-Match": f'"{version}"'}
                )
                assert response.status_code in (200, 412), (response.status_code, response.text)
                result = orjson.loads(response.content)
                with lock:
                    if response.status_code == 200:
                        assert response.headers["ETag"] == f'"{result["version"]}"'
                        accepted.append(Accepted(record, version, result["version"], data, None))
                    else:
                        refused.append(Refused(record, version, result["serverVersion"], result["serverData"]))
                continue
            op = {"action": "update", "store": "notes", "entity_id": record, "data": data, "expectedVersion": version}
            answer = send_ops(me, [op])
            result = answer["results"][0]
            assert result["entity_id"] == record and result["store"] == "notes", result
            with lock:
                if result["ok"]:
                    assert result["action"] == "update" and answer["applied"] == 1, answer
                    accepted.append(Accepted(record, version, result["version"], data, answer["version"]))
                else:
                    assert result["conflict"] is True and answer["conflicts"] == 1, answer
                    refused.append(Refused(record, version, result["serverVersion"], result["serverData"]))

    # The walker, meanwhile: from its last nextCursor until hasMore is false, again and again.
    walked: dict[str, tuple[int, Any]] = {}
    passes = 0
    racers_done = threading.Event()
    walker_failed: list[BaseException] = []

    def walker() -> None:
        nonlocal passes
        me = client_of(servers[-1], token)
        cursor = ""
        try:
            while True:
                last = racers_done.is_set()  # the pass begun after every racer ended is the last
                entities, cursor, _ = walk(me, cursor, store="notes", limit=2)
                for entity in entities:
                    before = walked.get(entity["id"])
                    assert before is None or entity["version"] > before[0], (before, entity)
                    walked[entity["id"]] = (entity["version"], entity["data"])
                passes += 1
                if last:
                    return
        except BaseException as exc:
            walker_failed.append(exc)

    walking = threading.Thread(target=walker)
    walking.start()
    try:
        in_threads(RACERS, racer)
    finally:
        racers_done.set()
        walking.join(120)
    if walker_failed:
        raise walker_failed[0]

    assert len(refused) >= RACERS, f"only {len(refused)} conflicts: the racers hardly raced"
    assert passes >= 3, f"the walker made {passes} passes only"
    final = {r: ok(owner.get(record_path("notes", r))) for r in RACED}
    data_at = {(a.record, a.version): a.data for a in accepted} | {(r, 1): seed_data for r in RACED}
    for record in RACED:
        mine = [a for a in accepted if a.record == record]
        wrong = [a for a in mine if a.version != a.expected + 1]
        assert wrong == [], f"accepted against a version other than the one they named: {wrong}"
        versions = sorted(a.version for a in mine)
        assert versions == list(range(2, final[record]["version"] + 1)), f"{record}: accepted versions {versions}"
        assert final[record]["data"] == data_at[record, final[record]["version"]], f"{record}: an update was lost"
        assert walked[record] == (final[record]["version"], final[record]["data"]), f"{record}: the walker is behind"
    for conflict in refused:
        # A conflict names a version the record really had, after the one the client read, with its data then.
        assert conflict.server_version > conflict.expected, conflict
        assert (conflict.record, conflict.server_version) in data_at, conflict
        assert conflict.server_data == data_at[conflict.record, conflict.server_version], conflict

    # One repository version per accepted change, none given twice.
    total = seed_version + len(accepted)
    by_ops = [a.repository_version for a in accepted if a.repository_version is not None]
    assert len(set(by_ops)) == len(by_ops) and all(seed_version < v <= total for v in by_ops), sorted(by_ops)
    for server in servers:
        assert walk(client_of(server, token), store="notes")[2] == total
        assert client_of(server, token).changes(since=0)["currentVersion"] == total
    # The audit log: the creates, then exactly one update per accepted change, at its version.
    entries = own_audit(owner)
    assert_strictly_rising(entries)
    records = [change_of(e) for e in entries if e["store"] is not None]
    expected = [("create", "notes", r, 1) for r in RACED] + [("update", "notes", a.record, a.version) for a in accepted]
    assert Counter(records) == Counter(expected)


# --- 2. the audit log under many users on two servers -------------------------------------------

USERS = 8
AUDIT_ROUNDS = 8


@dataclass
class Writer:
    """What one writing thread (a user on one side) was told by the server."""

    pushes: dict[int, dict[str, Any]]  # repository version -> the push answer
    batches: dict[int, list[dict[str, Any]]]  # repository version -> the ops answer's ok results


@pytest.mark.postgres
def test_the_audit_log_has_every_committed_change_once_in_one_line_of_seqs(
    database_servers: list[LiveServer], database_url: str
) -> None:
    a, b = database_servers
    users = [client_of(a).register(f"auditor{u}") for u in range(USERS)]
    tokens = [u["token"] for u in users]
    user_ids = [u["user"]["id"] for u in users]
    writers: dict[tuple[int, int], Writer] = {}
    lock = threading.Lock()

    def write(number: int) -> None:
        """User ``number // 2`` on side ``number % 2``: its own ids, alternating servers, pushes and ops mixed."""
        user, side = divmod(number, 2)
        mine = Writer({}, {})
        with lock:
            writers[user, side] = mine
        versions: dict[str, int] = {}  # this side's ids: live record versions
        deleted: dict[str, int] = {}  # and tombstones
        for n in range(AUDIT_ROUNDS):
            me = client_of((a, b)[(side + n) % 2], tokens[user])
            kind = n % 4
            if kind in (0, 2):  # a full push: new ids, a changed one, and a deleted one pushed again (skipped)
                items = {f"s{side}-n{n}-{j}": {"n": n, "j": j} for j in range(3)}
                changed = sorted(versions)[:1]
                items |= {record_id: {"changed": n} for record_id in changed}
                again = sorted(deleted)[:1]
                items |= {record_id: {"revived?": n} for record_id in again}
                answer = me.push({"items": items}, client_version=n)
                assert (answer["added"], answer["modified"], answer.get("skipped", 0)) == (3, len(changed), len(again))
                mine.pushes[answer["version"]] = answer
                for record_id in items:
                    if record_id not in deleted:
                        versions[record_id] = versions.get(record_id, 0) + 1
            elif kind == 1:  # ops: an update, a create, a delete, and a conflict that changes nothing
                live = sorted(versions)
                target, doomed = live[0], live[-1]
                created = f"s{side}-n{n}-op"
                operations = [
                    {"action": "update", "store": "items", "id": target, "data": {"op": n},
                     "expectedVersion": versions[target]},
                    {"action": "create", "store": "items", "entity_id": created, "data": {"op": n},
                     "expectedVersion": 0},
                    {"action": "delete", "store": "items", "entity_id": doomed, "expectedVersion": versions[doomed]},
                    {"action": "update", "store": "items", "entity_id": live[1], "data": {"never": n},
                     "expectedVersion": versions[live[1]] + 5},
                ]  # fmt: skip
                answer = send_ops(me, operations)
                assert (answer["applied"], answer["conflicts"]) == (3, 1), answer
                assert [r["ok"] for r in answer["results"]] == [True, True, True, False], answer
                mine.batches[answer["version"]] = answer["results"][:3]
                versions[target] += 1
                versions[created] = 1
                deleted[doomed] = versions.pop(doomed) + 1
            else:  # refused: a push with one bad store, a batch with one bad op, and a batch of conflicts only
                bad_push = {"clientVersion": n, "stores": {"items": {f"bad-{side}-{n}": {"x": 1}}, "bad\x00store": {}}}
                assert me.post("/api/sync", bad_push).status_code == 400
                bad_ops = [
                    {"action": "create", "store": "items", "entity_id": f"bad-{side}-{n}-op", "data": {"x": 1}},
                    {"action": "explode", "store": "items", "entity_id": "x", "data": {}},
                ]
                assert me.post("/api/sync/ops", {"operations": bad_ops}).status_code == 400
                record_id = sorted(versions)[0]
                conflicts: list[dict[str, Any]] = [
                    {"action": "create", "store": "items", "entity_id": record_id, "data": {"bad": n}},
                    {"action": "update", "store": "items", "entity_id": f"bad-{side}-{n}-never",
                     "data": {"bad": n}, "expectedVersion": 3},
                ]  # fmt: skip
                answer = send_ops(me, conflicts)
                assert (answer["applied"], answer["conflicts"]) == (0, 2), answer

    # The reader, meanwhile: each user's log from the last seq it saw, in small pages, through either server.
    seen: dict[int, list[dict[str, Any]]] = {u: [] for u in range(USERS)}
    writers_done = threading.Event()
    reader_failed: list[BaseException] = []
    reads = 0

    def read_once(user: int, server: LiveServer) -> int:
        since = seen[user][-1]["seq"] if seen[user] else 0
        page = ok(client_of(server, tokens[user]).get(f"/api/sync/ops?since={since}&limit=7"))
        assert page["count"] == len(page["ops"]) <= 7 and all(e["seq"] > since for e in page["ops"]), page
        seen[user] += page["ops"]
        return len(page["ops"])

    def reader() -> None:
        nonlocal reads
        try:
            while not writers_done.is_set():
                for user in range(USERS):
                    read_once(user, (a, b)[reads % 2])
                    reads += 1
            for user in range(USERS):
                while read_once(user, (a, b)[reads % 2]):
                    reads += 1
        except BaseException as exc:
            reader_failed.append(exc)

    reading = threading.Thread(target=reader)
    reading.start()
    try:
        in_threads(2 * USERS, write)
    finally:
        writers_done.set()
        reading.join(120)
    if reader_failed:
        raise reader_failed[0]

    # Server-wide: the batches' seqs run 1, 2, 3, ... without a gap or an overlap, whoever wrote them.
    batches = execute(
        database_url, 'SELECT seq, "end", user_id, action, repository_version FROM sync_auditbatch ORDER BY seq'
    )
    assert batches and batches[0][0] == 1, batches[:3]
    for before, after in itertools.pairwise(batches):
        assert before[0] < before[1] == after[0], f"a gap or an overlap of seqs between batches {before} and {after}"
    latest = batches[-1][1] - 1

    claimed: set[int] = set()
    for user in range(USERS):
        full = own_audit(client_of(a, tokens[user]))
        assert full == own_audit(client_of(b, tokens[user])), f"user {user}: the servers disagree about the log"
        assert_strictly_rising(full)
        assert seen[user] == full, f"user {user}: the reader paging with since did not get every entry exactly once"
        assert all(e["userId"] == user_ids[user] and e["username"] == f"auditor{user}" for e in full)
        assert ok(client_of(b, tokens[user]).get("/api/sync/ops?since=0&limit=1"))["latestSeq"] == latest
        seqs = {e["seq"] for e in full}
        assert not seqs & claimed, f"user {user}: seqs also given to another user"
        claimed |= seqs
        mine = [row for row in batches if row[2] == user_ids[user]]
        assert seqs == {s for row in mine for s in range(row[0], row[1])}, f"user {user}: log and batches differ"
        records = [e for e in full if e["store"] is not None]

        # Each committed version of the changelog, in order, is one run of entries: exactly its changes.
        changes = client_of((a, b)[user % 2], tokens[user]).changes(since=0)
        told = {**writers[user, 0].pushes, **writers[user, 1].pushes}
        batches_told = {**writers[user, 0].batches, **writers[user, 1].batches}
        committed = [entry["version"] for entry in changes["changes"]]
        assert committed == list(range(1, changes["currentVersion"] + 1)) == sorted(told.keys() | batches_told.keys())
        assert [row[4] for row in mine if row[3] == "records"] == committed, f"user {user}: batches out of order"
        record_versions: dict[tuple[str, str], int] = {}
        position = 0
        for entry in changes["changes"]:
            expected: list[tuple[str, str, str, int]] = []
            for listed, action in (("added", "create"), ("modified", "update"), ("deleted", "delete")):
                for change in entry.get(listed, []):
                    key = (change["store"], change["id"])
                    record_versions[key] = record_versions.get(key, 0) + 1
                    expected.append((action, *key, record_versions[key]))
            run = [change_of(e) for e in records[position : position + len(expected)]]
            position += len(expected)
            assert sorted(run) == sorted(expected), f"user {user}, version {entry['version']}: {run} != {expected}"
            version = entry["version"]
            if version in told:
                assert (len(entry["added"]), len(entry["modified"])) == (
                    told[version]["added"],
                    told[version]["modified"],
                )
            else:
                answered = [(r["action"], r["store"], r["entity_id"], r["version"]) for r in batches_told[version]]
                assert sorted(answered) == sorted(expected), f"user {user}, version {version}"
        assert position == len(records), f"user {user}: entries beyond the changelog: {records[position:]}"
        assert not any(e["entity_id"].startswith("bad-") for e in records), "a refused request was logged"
        state = whole_state(client_of(a, tokens[user]))
        assert not any(record_id.startswith("bad-") for _, record_id in state), "a refused request was applied"
    assert reads > 2 * USERS, f"the reader read {reads} pages only"


# --- 3. SIGKILL during ops batches -------------------------------------------------------------

KILLS = 2
KILL_THREADS = 3
FRESH = 12  # new records per batch besides A and B, so a batch's commit takes a while


def batch_ops(thread: int, k: int) -> list[dict[str, Any]]:
    """Batch ``k`` of ``thread``: creates A_k, B_k and the C_k,j; updates B_{k-1} and deletes A_{k-1}.

    Every op writes ``{"batch": "<thread>-<k>"}``, so the final state tells, op by op, whether the batch is there.
    """
    tag = {"batch": f"{thread}-{k}", "pad": "x" * 200}
    operations = [
        {"action": "create", "store": "crash", "entity_id": f"A-{thread}-{k}", "data": tag},
        {"action": "create", "store": "crash", "entity_id": f"B-{thread}-{k}", "data": tag},
        *(
            {"action": "create", "store": "crash", "entity_id": f"C-{thread}-{k}-{j}", "data": tag}
            for j in range(FRESH)
        ),
    ]
    if k > 0:
        operations += [
            {"action": "update", "store": "crash", "entity_id": f"B-{thread}-{k - 1}", "data": tag},
            {"action": "delete", "store": "crash", "entity_id": f"A-{thread}-{k - 1}"},
        ]
    return operations


def batch_presence(
    state: dict[tuple[str, str], dict[str, Any]], thread: int, sent: int
) -> dict[int, list[tuple[str, bool]]]:
    """For each batch of ``thread``, what each of its ops left says: ``(op, there?)``."""
    votes: dict[int, list[tuple[str, bool]]] = {k: [] for k in range(sent)}

    def get(name: str) -> dict[str, Any] | None:
        return state.get(("crash", name))

    def tag(k: int) -> str:
        return f"{thread}-{k}"

    for k in range(sent):
        a, b = get(f"A-{thread}-{k}"), get(f"B-{thread}-{k}")
        votes[k].append(("create A", a is not None))
        if a is not None and k + 1 < sent:  # the delete by batch k + 1 shows only when A_k was made
            if a.get("deleted"):
                assert a["version"] == 2, a
            else:
                assert a["version"] == 1 and a["data"]["batch"] == tag(k), a
            votes[k + 1].append(("delete A_k-1", bool(a.get("deleted"))))
        elif a is not None:
            assert not a.get("deleted") and a["version"] == 1 and a["data"]["batch"] == tag(k), a
        if b is None:
            made, updated = False, False
        else:
            assert not b.get("deleted"), b
            if b["version"] == 2:
                assert b["data"]["batch"] == tag(k + 1), b
                made, updated = True, True
            else:
                assert b["version"] == 1 and b["data"]["batch"] in (tag(k), tag(k + 1)), b
                made, updated = b["data"]["batch"] == tag(k), b["data"]["batch"] == tag(k + 1)
        votes[k].append(("create B", made))
        if k + 1 < sent:
            votes[k + 1].append(("update B_k-1", updated))
        else:
            assert not updated, b
        for j in range(FRESH):
            c = get(f"C-{thread}-{k}-{j}")
            if c is not None:
                assert not c.get("deleted") and c["version"] == 1 and c["data"]["batch"] == tag(k), c
            votes[k].append((f"create C{j}", c is not None))
    return votes


def expected_audit(thread: int, present: dict[int, bool]) -> list[tuple[str, str, str, int]]:
    """The audit log's changes of ``thread``'s batches that are there."""
    changes: list[tuple[str, str, str, int]] = []
    for k, there in present.items():
        if not there:
            continue
        fresh = [f"A-{thread}-{k}", f"B-{thread}-{k}", *(f"C-{thread}-{k}-{j}" for j in range(FRESH))]
        changes += [("create", "crash", name, 1) for name in fresh]
        if k > 0 and present[k - 1]:
            changes += [("update", "crash", f"B-{thread}-{k - 1}", 2), ("delete", "crash", f"A-{thread}-{k - 1}", 2)]
        elif k > 0:  # an update of an id never made applies as a create; a delete of it changes nothing
            changes.append(("create", "crash", f"B-{thread}-{k - 1}", 1))
    return changes


@pytest.mark.parametrize("storage", STORAGES)
def test_sigkill_during_ops_batches_keeps_every_batch_whole_or_absent(
    storage: str, request: pytest.FixtureRequest, live_server_factory: LiveServers
) -> None:
    # The module's servers, killed one at a time and restarted on the same data in their place.
    servers = servers_of(request, storage)
    if storage == "database":
        settings: dict[str, Any] = {"storage": "database", "database_url": request.getfixturevalue("database_url")}
    else:
        settings = {"workers": 4}
    token = client_of(servers[0]).register(f"crasher-{storage}")["token"]
    up = [threading.Event() for _ in servers]
    for event in up:
        event.set()
    stop = threading.Event()
    outcomes: dict[tuple[int, int], str] = {}  # "ack", or "lost" when no answer came
    answers: dict[tuple[int, int], dict[str, Any]] = {}
    odd: list[str] = []
    lock = threading.Lock()

    def sender(thread: int) -> None:
        k = 0
        side = thread % len(servers)
        while not stop.is_set():
            if not up[side].wait(120):
                pytest.fail("the server did not come back")
            me = client_of(servers[side], token)
            operations = batch_ops(thread, k)
            try:
                response = me.post("/api/sync/ops", {"operations": operations})
            except requests.RequestException:
                outcome = "lost"
            else:
                if response.status_code == 200:
                    answer = orjson.loads(response.content)
                    outcome = "ack"
                    with lock:
                        answers[thread, k] = answer
                else:  # a refusal is no crash: it must not happen at all
                    outcome = "lost"
                    with lock:
                        odd.append(f"batch {thread}-{k}: {response.status_code} {response.text[:300]}")
            with lock:
                outcomes[thread, k] = outcome
            k += 1

    killer_failed: list[BaseException] = []

    def killer(rng: random.Random) -> None:
        try:
            for kill in range(KILLS):
                time.sleep(rng.uniform(0.3, 2.0))
                side = kill % len(servers)
                up[side].clear()
                old = servers[side]
                old.kill()
                servers[side] = live_server_factory.start(**settings, env=ENV, data_dir=old.data_dir)
                up[side].set()
            time.sleep(0.5)
        except BaseException as exc:
            killer_failed.append(exc)
        finally:
            stop.set()
            for event in up:
                event.set()

    seed = random.SystemRandom().randrange(2**32)
    killing = threading.Thread(target=killer, args=(random.Random(seed),))
    killing.start()
    try:
        in_threads(KILL_THREADS, sender)
    finally:
        stop.set()
        killing.join(300)
    if killer_failed:
        raise killer_failed[0]
    assert odd == [], odd
    lost = sorted(key for key, outcome in outcomes.items() if outcome == "lost")
    acknowledged = sorted(key for key, outcome in outcomes.items() if outcome == "ack")
    assert len(acknowledged) > KILL_THREADS * 2, f"too few batches answered: {outcomes}"

    me = client_of(servers[0], token)
    audit_before_reading = own_audit(me)  # before anything reads the repository on the restarted server
    state = whole_state(me)
    assert all(whole_state(client_of(server, token)) == state for server in servers[1:])
    audit = own_audit(me)
    present: dict[tuple[int, int], bool] = {}
    for thread in range(KILL_THREADS):
        sent = sum(1 for t, _ in outcomes if t == thread)
        for k, votes in batch_presence(state, thread, sent).items():
            there = {vote for _, vote in votes}
            assert len(there) == 1, (
                f"batch {thread}-{k} ({outcomes[thread, k]}) is there in part: {votes} (kill seed {seed}, unanswered {lost})"
            )
            present[thread, k] = there.pop()
    assert [key for key in acknowledged if not present[key]] == [], f"acknowledged batches missing (seed {seed})"
    for key in acknowledged:
        answer = answers[key]
        assert answer["applied"] == len(batch_ops(*key)) and answer["conflicts"] == 0, answer
    known = {
        ("crash", op["entity_id"]) for thread, k in outcomes for op in batch_ops(thread, k) if op["action"] == "create"
    }
    assert set(state) <= known, f"records no batch made: {set(state) - known}"

    # One repository version per batch that is there; the acknowledged ones at the version they were told.
    latest = walk(me)[2]
    assert latest == sum(present.values()), f"version {latest} for {sum(present.values())} batches there"
    told = [answers[key]["version"] for key in acknowledged]
    assert len(set(told)) == len(told) and all(1 <= v <= latest for v in told), sorted(told)
    pulled = me.pull()
    assert pulled["version"] == latest
    live = {record_id: e["data"] for (_, record_id), e in state.items() if not e.get("deleted")}
    assert pulled["data"].get("crash", {}) == live, "the pull and the cursor disagree after the restart"

    # The audit log: every change of the batches that are there, exactly once; those of acknowledged ones at once.
    assert_strictly_rising(audit)
    changes = Counter(change_of(e) for e in audit if e["store"] is not None)
    expected: Counter[tuple[str, str, str, int]] = Counter()
    for thread in range(KILL_THREADS):
        expected.update(expected_audit(thread, {k: there for (t, k), there in present.items() if t == thread}))
    assert changes == expected, (
        f"audit log vs batches there: extra {changes - expected}, missing {expected - changes} (seed {seed})"
    )
    before = Counter(change_of(e) for e in audit_before_reading if e["store"] is not None)
    for thread, k in acknowledged:
        fresh = [("create", "crash", f"C-{thread}-{k}-{j}", 1) for j in range(FRESH)]
        assert all(before[change] == 1 for change in fresh), f"acknowledged batch {thread}-{k} not in the audit log"
