"""Nesting depth: no stored record can break its repository.

A record may nest MAX_DEPTH (512) levels, counting containers: an object or
an array is a level, a scalar is none, the record itself is the first level
and brackets inside strings are text. A push, a legacy import and a restore
refuse a deeper record with 400 (or the command's error) naming the store and
the id, and write nothing; a record at the limit works everywhere, byte for
byte. A deeper record already stored (by an older release, or by hand) never
makes a pull, the changelog, status, resolve, export, the admin page or a
later push fail. Both storages where storage matters.
"""

from __future__ import annotations

import gzip
import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings

from accounts.models import User
from sync.backends import Repository, get_repository_store
from sync.depth import (
    _PART_LEVELS,
    MAX_DEPTH,
    decode_members,
    decode_repository,
    dumps,
    parse_repository,
    too_deep,
)
from sync.merge import json_equal, records_equal
from sync.services import dump_of
from tests.backends import REPOSITORY_BACKENDS
from tests.helpers import Api, data_dir_settings

pytestmark = pytest.mark.storage

LIMIT = 512
assert MAX_DEPTH == LIMIT  # the documented limit (PROTOCOL.md, README)

KINDS = ["array", "object", "mixed"]


def nested(depth: int, kind: str, leaf: bytes = b"") -> bytes:
    """JSON text of a value nesting exactly ``depth`` levels of arrays, objects or both in turn, around ``leaf``."""
    opening, closing = [], []
    for level in range(depth):
        array = kind == "array" or (kind == "mixed" and level % 2 == 0)
        if array:
            opening.append(b"[")
            closing.append(b"]")
        else:
            opening.append(b"{" if level == depth - 1 and not leaf else b'{"a":')
            closing.append(b"}")
    return b"".join(opening) + leaf + b"".join(reversed(closing))


def record(depth: int, kind: str = "array", leaf: bytes = b"") -> bytes:
    """A humans record nesting ``depth`` levels in all, the deep part in its tags."""
    return b'{"name":"Deep Diver","tags":' + nested(depth - 1, kind, leaf) + b"}"


def depth_of(value: Any) -> int:
    """The reference: containers on the longest path (a loop, not recursion)."""
    deepest, todo = 0, [(value, 1)] if isinstance(value, (dict, list)) else []
    while todo:
        item, level = todo.pop()
        deepest = max(deepest, level)
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                todo.append((child, level + 1))
    return deepest


def too_deep_message(store: str, record_id: str) -> str:
    return f"Malformed JSON: record {record_id!r} in store {store!r}: nesting too deep (limit {LIMIT} levels)"


NOT_A_RECORD = f"Malformed JSON: nesting too deep (limit {LIMIT} levels)"


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(params=REPOSITORY_BACKENDS, ids=["files", "database"])
def storage(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    with override_settings(**data_dir_settings(data_dir, sync_backend=request.param)):
        yield request.param


def post_raw(api: Api, url: str, body: bytes) -> Any:
    return api.post(url, data=body)


def push_raw(api: Api, store: str, record_id: str, text: bytes) -> Any:
    return post_raw(
        api,
        "/api/sync",
        b'{"clientVersion":0,"stores":{"' + store.encode() + b'":{"' + record_id.encode() + b'":' + text + b"}}}",
    )


def user_id(api: Api) -> str:
    return api.get("/api/auth/me").json()["user"]["id"]


def files(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file()}


class Unchanged:
    """Asserts on exit that the data directory, the users, the pull and the changelog are as they were."""

    def __init__(self, data_dir: Path, api: Api) -> None:
        self.data_dir, self.api = data_dir, api

    def state(self) -> tuple[Any, ...]:
        users = sorted(User.objects.values_list("pk", "username", "password"))
        pull = self.api.get("/api/sync").content
        changes = self.api.get("/api/sync/changes?since=0").content
        return files(self.data_dir), users, pull, changes

    def __enter__(self) -> Unchanged:
        self.before = self.state()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            assert self.state() == self.before, "a refused request wrote something"


@pytest.fixture
def seeded(admin_api: Api, storage: str) -> Api:
    """The admin with one record, h1, so a refused push has something to leave alone."""
    assert push_raw(admin_api, "humans", "h1", b'{"name":"John Smith"}').status_code == 200
    return admin_api


def refused(response: Any, error: str) -> None:
    assert (response.status_code, response.json()) == (400, {"error": error}), response.content[:300]


def pair_ids(resolution: dict[str, Any]) -> list[tuple[Any, Any]]:
    return [(m["entity1"]["id"], m["entity2"]["id"]) for m in resolution["results"]]


# --- measuring depth ----------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int, scalar_leaf: bool) -> Any:
    """A value nesting exactly ``depth`` levels, with siblings, strings full of brackets and escapes."""
    junk = ["[[{", "]}", '"[', "\\", "\\]", "x", "", "\u00e9[", '{"a":[']
    value: Any = rng.choice([*junk, 1, -2.5e-7, True, None, 18446744073709551615]) if scalar_leaf else []
    for _ in range(depth - (0 if scalar_leaf else 1)):
        # a sibling array is no deeper than the value beside it
        siblings = [rng.choice(junk), rng.randrange(10), [rng.choice(junk)] if isinstance(value, (dict, list)) else "s"]
        if rng.random() < 0.5:
            items = [*rng.sample(siblings, rng.randrange(3)), value]
            rng.shuffle(items)
            value = items
        else:
            value = {rng.choice(junk) + str(i): item for i, item in enumerate([*rng.sample(siblings, 2), value])}
    if not scalar_leaf and depth == 1:
        value = rng.choice([[], {}, ["[[["], {"k": "]]"}])
    return value


@pytest.mark.parametrize("seed", range(6))
def test_depth_is_measured_exactly_around_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    for depth in (1, 2, 3, LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 2, 700):
        for scalar_leaf in (False, True):
            value = _random_value(rng, depth, scalar_leaf)
            text = dumps(value)
            if rng.random() < 0.5:  # whitespace between tokens changes nothing
                text = text.replace(b",", b" ,\n\t").replace(b":", b" : ")
            assert depth_of(orjson.loads(text)) == depth
            for limit in (depth - 1, depth, depth + 1, LIMIT):
                assert (too_deep(text, limit) is not None) == (depth > limit), (depth, limit, text[:200])
                assert (too_deep(msgspec.Raw(text), limit) is not None) == (depth > limit)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "leaf", [b"", b"1", b'"]]}}"', b"123456789012345678901234567890"], ids=["empty", "number", "string", "bigint"]
)
def test_depth_counts_containers_only(kind: str, leaf: bytes) -> None:
    # simdjson counts a scalar as a level and refuses integers beyond 64 bits:
    # neither changes the answer.
    assert too_deep(nested(LIMIT, kind, leaf)) is None
    assert too_deep(nested(LIMIT + 1, kind, leaf)) == []


def test_brackets_in_strings_are_text() -> None:
    assert too_deep(b'{"a":"' + b"[" * 100_000 + b'"}') is None
    assert too_deep(b'{"a":"' + b"{" * 600 + b'\\"' + b"[" * 600 + b'"}') is None
    assert too_deep(b'["\\\\", "\\"[[[[", ' + nested(LIMIT - 1, "mixed") + b"]") is None
    assert too_deep(b'["\\\\", "\\"]]]]", ' + nested(LIMIT, "mixed") + b"]") == []


def test_the_way_to_a_deep_part_is_named() -> None:
    body = b'{"clientVersion":1, "stores" : {"h\\"s":{"ok":{},"r\\\\1" :' + nested(600, "object") + b"}}}"
    assert too_deep(body, LIMIT + 3, names=3) == ["stores", 'h"s', "r\\1"]
    assert too_deep(b'{"x":[' + nested(600, "array") + b"]}", LIMIT, names=2) == ["x", None]


def test_stored_texts_are_split_into_records_at_any_depth() -> None:
    deep = record(100_000, "mixed", b'"]"')
    text = b'{"version":7,"data":{"s":{"a":{"b":1},"d\\"":' + deep + b',"n":5,"l":[1]},"t":{}}}'
    version, data = decode_repository(text)
    assert version == 7
    assert {name: {k: bytes(v) for k, v in records.items()} for name, records in data.items()} == {
        "s": {"a": b'{"b":1}', 'd"': deep, "n": b"5", "l": b"[1]"},
        "t": {},
    }
    members = decode_members(b'{"a":{"b":1},"d":' + deep + b"}")
    assert {k: bytes(v) for k, v in members.items()} == {"a": b'{"b":1}', "d": deep}
    version, parsed = parse_repository(text)
    assert parsed["s"]["a"] == {"b": 1} and parsed["s"]["l"] == [1]
    assert isinstance(parsed["s"]['d"'], orjson.Fragment)  # too deep to parse: kept as its text
    assert orjson.dumps(parsed["s"]['d"']) == deep


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [1, 254, 255, _PART_LEVELS + 1, LIMIT, 3000, 100_000])
def test_dumps_writes_orjson_bytes_at_any_depth(kind: str, depth: int) -> None:
    # Long strings at every level make orjson's buffer grow while it writes
    # the parts: orjson 3.13 corrupts memory writing a Fragment more than
    # about 72 levels down, so a wrong _PART_LEVELS crashes here.
    long = "x" * (3000 if depth <= 3000 else 3)
    value: Any = long
    opening: list[bytes] = []
    closing = [orjson.dumps(long)]
    for level in range(depth):
        if kind == "array" or (kind == "mixed" and level % 2):
            value = [value, long] if level % 7 == 0 else [value]
            opening.append(b"[")
            closing.append(b',"' + long.encode() + b'"]' if level % 7 == 0 else b"]")
        else:
            value = {"k": value}
            opening.append(b'{"k":')
            closing.append(b"}")
    assert dumps(value) == b"".join(reversed(opening)) + b"".join(closing)


def test_equality_of_deep_records_is_exact() -> None:
    one = orjson.loads(nested(LIMIT - 1, "mixed", b'{"b":1.0,"a":[true]}'))
    same = orjson.loads(nested(LIMIT - 1, "mixed", b'{"a":[true],"b":1}'))
    other = orjson.loads(nested(LIMIT - 1, "mixed", b'{"a":[1],"b":1}'))
    assert json_equal(one, same)
    assert not json_equal(one, other)  # true is not 1, however deep
    # a stored text too deep to parse equals no pushed record
    assert not records_equal(msgspec.Raw(record(2000)), msgspec.Raw(record(3)), "humans", "h1")


# --- pushes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("leaf", [b"", b'"[[[[["'], ids=["empty", "string"])
def test_a_record_at_the_limit_is_stored_and_pulled_byte_for_byte(admin_api: Api, storage: str, kind: str, leaf: bytes):
    text = record(LIMIT, kind, leaf)
    response = push_raw(admin_api, "humans", "h1", text)
    assert response.status_code == 200 and response.json()["added"] == 1, response.content
    assert admin_api.get("/api/sync").content == b'{"version":1,"data":{"humans":{"h1":' + text + b"}}}"
    # the same value written differently is no modification; another value is one
    spaced = text.replace(b'"tags":', b'"tags" : ', 1)
    assert push_raw(admin_api, "humans", "h1", spaced).json()["modified"] == 0
    changed = record(LIMIT, kind, b"2" if leaf else b"")
    if changed != text:
        assert push_raw(admin_api, "humans", "h1", changed).json()["modified"] == 1
    assert admin_api.get("/api/sync/status").status_code == 200


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [LIMIT + 1, 600, 1000, 1025, 2000, 10_000, 100_000])
def test_a_record_past_the_limit_is_refused_naming_it(seeded: Api, data_dir: Path, kind: str, depth: int):
    for leaf in (b"", b"0"):
        with Unchanged(data_dir, seeded):
            # new, and replacing a stored record
            refused(push_raw(seeded, "humans", "h2", record(depth, kind, leaf)), too_deep_message("humans", "h2"))
            refused(push_raw(seeded, "humans", "h1", record(depth, kind, leaf)), too_deep_message("humans", "h1"))


def test_the_exact_path_refuses_a_deep_record_too(seeded: Api, data_dir: Path):
    # An integer beyond 64 bits sends the store down the one-by-one path.
    body = b'{"stores":{"humans":{"big":{"n":123456789012345678901234567890},"deep":' + record(LIMIT + 1) + b"}}}"
    with Unchanged(data_dir, seeded):
        refused(post_raw(seeded, "/api/sync", body), too_deep_message("humans", "deep"))
    body = (
        b'{"stores":{"humans":{"big":{"n":123456789012345678901234567890},"ok":' + record(LIMIT, "mixed", b"1") + b"}}}"
    )
    assert post_raw(seeded, "/api/sync", body).json()["added"] == 2


@pytest.mark.parametrize("depth", [LIMIT + 1, 1000, 100_000])
@pytest.mark.parametrize("field", ["clientVersion", "extra"])
def test_deep_values_beside_the_records_are_refused(seeded: Api, data_dir: Path, depth: int, field: str):
    body = b'{"' + field.encode() + b'":' + nested(depth, "mixed") + b',"stores":{"humans":{"h2":{}}}}'
    with Unchanged(data_dir, seeded):
        refused(post_raw(seeded, "/api/sync", body), NOT_A_RECORD)


def test_brackets_in_a_string_do_not_count(admin_api: Api) -> None:
    text = b'{"name":"' + b"[" * 100_000 + b"{" * 100_000 + b'"}'
    assert push_raw(admin_api, "humans", "h1", text).status_code == 200
    assert text in admin_api.get("/api/sync").content


# --- every endpoint that reads a body ----------------------------------------------------------

BODIES = {
    "/api/auth/register": lambda v: b'{"username":' + v + b',"password":"secret1"}',
    "/api/auth/login": lambda v: b'{"username":"admin","password":' + v + b"}",
    "/api/auth/change-password": lambda v: b'{"currentPassword":"adminpass","newPassword":' + v + b"}",
    "/api/query": lambda v: b'{"connectionString":' + v + b',"query":"SELECT 1"}',
    "/api/sync": lambda v: b'{"stores":{"humans":{"h2":{"tags":' + v + b"}}}}",
}


@pytest.mark.parametrize("url", list(BODIES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [LIMIT + 1, 1000, 1023, 1025, 10_000, 100_000])
def test_deep_bodies_are_400_on_every_endpoint_that_reads_one(
    seeded: Api, data_dir: Path, url: str, kind: str, depth: int
) -> None:
    with Unchanged(data_dir, seeded):
        for whole in (True, False):
            response = post_raw(seeded, url, nested(depth, kind) if whole else BODIES[url](nested(depth, kind)))
            assert response.status_code == 400, (url, depth, response.content[:200])
            body = response.json()
            assert body == (
                {"success": False, "error": body["error"]} if url == "/api/query" else {"error": body["error"]}
            )
            if url == "/api/sync":
                if not whole:
                    assert body["error"] == too_deep_message("humans", "h2")
                elif kind != "object":
                    assert body["error"] == "Request body must be a JSON object"
                elif depth > LIMIT + 1:  # {"a": ...}: a key that is ignored, holding a value too deep
                    assert body["error"] == NOT_A_RECORD
            elif depth > 1024:  # past what the request parser reads
                assert body["error"].startswith("Malformed JSON: depth limit exceeded"), body
    assert User.objects.count() == 1


# --- records at the limit work everywhere ----------------------------------------------------


def test_resolve_export_import_and_the_admin_page_work_at_the_limit(
    admin_api: Api, storage: str, tmp_path: Path, data_dir: Path
) -> None:
    deep_id = nested(LIMIT - 1, "mixed", b'"x"')
    first = (
        b'{"id":'
        + deep_id
        + b',"name":"John Smith","birthDate":"1980-01-01","tags":'
        + nested(LIMIT - 1, "array")
        + b"}"
    )
    second = b'{"name":"Jon Smith","birthDate":"1980-01-01","tags":["a",' + nested(LIMIT - 2, "object") + b"]}"
    body = b'{"stores":{"humans":{"h1":' + first + b',"h2":' + second + b"}}}"
    assert post_raw(admin_api, "/api/sync", body).status_code == 200
    pulled = admin_api.get("/api/sync").content
    assert pulled == b'{"version":1,"data":{"humans":{"h1":' + first + b',"h2":' + second + b"}}}"

    resolution = admin_api.get("/api/resolve?threshold=0.5")
    assert resolution.status_code == 200
    assert orjson.loads(resolution.content)["count"] == 1
    assert pair_ids(orjson.loads(resolution.content)) == [(orjson.loads(deep_id), "h2")]

    page = admin_page(admin_api)
    assert page.status_code == 200 and b"could not be read" not in page.content

    backup = tmp_path / "backup.jsonl"
    call_command("export_data", str(backup), stdout=io.StringIO())
    User.objects.all().delete()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with override_settings(**data_dir_settings(fresh)):
        call_command("import_data", str(backup), stdout=io.StringIO())
        client = Api()
        client.token = client.post("/api/auth/login", {"username": "admin", "password": "adminpass"}).json()["token"]
        assert client.get("/api/sync").content == pulled


def admin_page(api: Api) -> Any:
    browser = Client()
    assert browser.post("/admin/login/", {"username": "admin", "password": "adminpass"}).status_code == 302
    return browser.get(f"/admin/accounts/user/{user_id(api)}/change/")


# --- records past the limit stored before the limit existed ------------------------------------------

NAMED = b'{"name":"John Smith","birthDate":"1980-01-01"}'
TWIN = b'{"name":"John Smith","birthDate":"1980-01-01","nationality":"x"}'


def _put_in_place(api: Api, storage: str, data_dir: Path, deep: bytes, by_hand: bool) -> bytes:
    """Make a repository with a too-deep record as an older release (or a hand) left it; its pull body."""
    pull = b'{"version":3,"data":{"humans":{"h1":' + NAMED + b',"deep":' + deep + b',"h2":' + TWIN + b"}}}"
    uid = user_id(api)
    if by_hand:
        (data_dir / f"repo_{uid}.json").write_bytes(pull)
    else:
        data = {"humans": {"h1": orjson.Fragment(NAMED), "deep": orjson.Fragment(deep), "h2": orjson.Fragment(TWIN)}}
        get_repository_store().replace(uid, dump_of(Repository(version=3, data=data)), [])
    assert api.get("/api/sync").content == pull
    return pull


@pytest.mark.parametrize("depth", [LIMIT + 1, 1000, 2000, 100_000])
@pytest.mark.parametrize("by_hand", [False, True], ids=["through-the-store", "file-by-hand"])
def test_a_stored_record_past_the_limit_breaks_nothing(
    admin_api: Api, storage: str, data_dir: Path, tmp_path: Path, depth: int, by_hand: bool
) -> None:
    if by_hand and "json_file" not in storage:
        pytest.skip("the database storage has no file to write by hand")
    deep = b'{"id":' + nested(depth - 1, "mixed", b'"x"') + b',"name":"John Smith","birthDate":"1980-01-01"}'
    pull = _put_in_place(admin_api, storage, data_dir, deep, by_hand)

    gz = admin_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert gz.status_code == 200 and gzip.decompress(gz.content) == pull
    assert admin_api.get("/api/sync/changes?since=0").status_code == 200
    status = admin_api.get("/api/sync/status")
    assert status.status_code == 200 and status.json()["account"]["records"] == 3

    resolution = admin_api.get("/api/resolve")
    assert resolution.status_code == 200, resolution.content[:300]
    ids = pair_ids(orjson.loads(resolution.content))  # Python's json module stops at about 1000 levels
    assert ("h1", "h2") in ids
    # a record orjson can still read takes part, its deep id and all; a deeper one is left out
    assert len(ids) == (3 if depth <= 1000 else 1)

    page = admin_page(admin_api)
    assert page.status_code == 200 and b"could not be read" not in page.content and b"humans" in page.content

    backup = tmp_path / "backup.jsonl"
    call_command("export_data", str(backup), stdout=io.StringIO())
    assert deep in backup.read_bytes()
    User.objects.all().delete()
    with override_settings(**data_dir_settings(tmp_path)):  # an empty server refuses to restore what it could not hold
        with pytest.raises(CommandError, match="Line 3: record 'deep' in store 'humans': nesting too deep"):
            call_command("import_data", str(backup), stdout=io.StringIO())
        assert not User.objects.exists()


@pytest.mark.parametrize("depth", [LIMIT + 1, 1000, 2000, 100_000])
def test_later_pushes_work_beside_a_stored_record_past_the_limit(
    admin_api: Api, storage: str, data_dir: Path, depth: int
) -> None:
    deep = record(depth, "mixed", b"1")
    _put_in_place(admin_api, storage, data_dir, deep, by_hand=False)
    for n in range(3):  # the first push reads the whole file, the later ones its pieces
        response = push_raw(admin_api, "humans", "h3", b'{"name":"New %d"}' % n)
        assert response.status_code == 200, response.content
    assert deep in admin_api.get("/api/sync").content
    # pushing the deep record back unchanged changes nothing, where it is not deeper than a push may carry
    again = push_raw(admin_api, "humans", "deep", deep)
    if depth == LIMIT + 1:
        assert again.json()["modified"] == 0
    else:
        refused(again, too_deep_message("humans", "deep"))
    # it can be replaced by a record within the limit, not by another one past it
    refused(push_raw(admin_api, "humans", "deep", record(depth, "array")), too_deep_message("humans", "deep"))
    response = push_raw(admin_api, "humans", "deep", record(LIMIT))
    assert response.status_code == 200 and response.json()["modified"] == 1
    assert orjson.loads(admin_api.get("/api/sync").content)["data"]["humans"]["deep"] == orjson.loads(record(LIMIT))


# --- imports ------------------------------------------------------------------------------------


def legacy(text: bytes) -> bytes:
    """A legacy repo.json as the pre-authentication server wrote it (indented)."""
    return b'{\n  "version": 4,\n  "data": {\n    "humans": {\n      "h1": ' + text + b"\n    }\n  }\n}\n"


def test_a_legacy_repository_at_the_limit_is_adopted_and_imported(data_dir: Path, tmp_path: Path) -> None:
    text = record(LIMIT, "mixed", b"1.5")
    (data_dir / "repo.json").write_bytes(legacy(text))
    admin = Api()
    admin.register("admin", "adminpass")  # the first user adopts it
    assert admin.get("/api/sync").content == b'{"version":4,"data":{"humans":{"h1":' + text + b"}}}"
    path = tmp_path / "old" / "repo.json"
    path.parent.mkdir()
    path.write_bytes(legacy(text))
    analyst = Api()
    analyst.register("analyst", "analystpass")
    call_command("import_legacy_repo", "--path", str(path), "--user", "analyst", stdout=io.StringIO())
    assert analyst.get("/api/sync").content == admin.get("/api/sync").content


@pytest.mark.parametrize("depth", [LIMIT + 1, 1000])
def test_a_legacy_repository_past_the_limit_is_refused(data_dir: Path, tmp_path: Path, depth: int) -> None:
    (data_dir / "repo.json").write_bytes(legacy(record(depth)))
    admin = Api()
    admin.register("admin", "adminpass")  # registration goes on; the file stays for a later import
    assert admin.get("/api/sync").json() == {"version": 0, "data": {}}
    assert (data_dir / "repo.json").exists()
    for merge in ([], ["--merge"]):
        with pytest.raises(
            CommandError, match="record 'h1' in store 'humans': nesting too deep \\(limit 512 levels\\)"
        ):
            call_command("import_legacy_repo", "--user", "admin", *merge, stdout=io.StringIO())
    assert admin.get("/api/sync").json() == {"version": 0, "data": {}}


@pytest.mark.parametrize("depth", [LIMIT + 1, 1000, 2000])
def test_a_backup_with_a_record_past_the_limit_is_refused(admin_api: Api, tmp_path: Path, depth: int) -> None:
    assert push_raw(admin_api, "humans", "h1", b'{"tags":"PLACE"}').status_code == 200
    backup = tmp_path / "backup.jsonl"
    call_command("export_data", str(backup), stdout=io.StringIO())
    backup.write_bytes(backup.read_bytes().replace(b'"PLACE"', nested(depth - 1, "mixed")))
    User.objects.all().delete()
    with override_settings(**data_dir_settings(tmp_path)):
        with pytest.raises(CommandError, match="Line 3: record 'h1' in store 'humans': nesting too deep"):
            call_command("import_data", str(backup), stdout=io.StringIO())
        assert not User.objects.exists()
