"""The OpenAPI description: served at /api/schema, browsable at /api/docs, complete, and true.

"Complete" is checked against the URL resolver: every routed /api/ URL and
every method its view answers is described. "True" is checked on real answers:
a session that goes through every endpoint, success and failure, validates each
answer's status, headers and body against the description. The fuzz tests
(tests/test_fuzz.py) then hold the live server to it with generated requests.
"""

from __future__ import annotations

import copy
import gzip
import re
from typing import Any

import jsonschema
import orjson
import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from drf_spectacular.validation import validate_schema

from pzls_site import views as site_views
from pzls_site.env import Rate

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def schema(api) -> dict[str, Any]:
    response = api.client.get("/api/schema")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    return response.json()


# --- serving ------------------------------------------------------------------


def test_schema_is_valid_openapi_3(schema):
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "PZLS API"
    validate_schema(schema)


def test_schema_generates_without_warnings(tmp_path):
    # Any view drf-spectacular cannot describe (a body it has to guess) fails here.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").stat().st_size > 0


@pytest.mark.parametrize("header", ["Bearer not-a-token", "Basic YWRtaW46YWRtaW4=", "Bearer"])
def test_schema_is_public_whatever_authorization_says(api, header):
    response = api.client.get("/api/schema", HTTP_AUTHORIZATION=header)
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")


@pytest.mark.parametrize("url", ["/api/schema", "/api/docs"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_schema_and_docs_answer_other_methods_with_json_405(api, url, method):
    response = getattr(api.client, method)(url, content_type="application/json")
    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "Method not allowed"}


def test_trailing_slash_and_neighbours(api):
    assert api.client.get("/api/schema/").status_code == 200
    assert api.client.get("/api/docs/").status_code == 200
    for url in ("/api/schemas", "/api/schema/x", "/api/docsx"):
        response = api.client.get(url)
        assert (response.status_code, response.json()) == (404, {"error": "Not found"}), url


def test_docs_page_uses_only_this_servers_files(api):
    response = api.client.get("/api/docs")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert '<div id="swagger-ui"></div>' in page
    # Every script and stylesheet comes from this server: no CDN (offline
    # installations, and the page's CSP of 'self'), no inline script.
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(source.startswith("/") for source in sources), sources
    assert "/api/docs?script=" in sources
    assert re.search(r"<script>(?!</script>)", page) is None
    script = api.client.get("/api/docs?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert "/api/schema" in script.content.decode()


# --- complete -------------------------------------------------------------------


def _api_routes() -> list[tuple[str, URLPattern]]:
    """(regex, pattern) of every URL pattern routed under /api/, includes flattened."""
    found: list[tuple[str, URLPattern]] = []

    def walk(patterns: list, prefix: str) -> None:
        for entry in patterns:
            regex = prefix + entry.pattern.regex.pattern.lstrip("^")
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, regex)
            elif regex.startswith("api"):
                found.append((regex, entry))

    walk(get_resolver().url_patterns, "")
    return found


def test_the_resolver_walk_finds_the_api(schema):
    regexes = [regex for regex, _ in _api_routes()]
    assert len(regexes) >= 15
    assert "api/sync/?$" in regexes and "api/schema/?$" in regexes


def test_every_routed_api_url_and_method_is_in_the_schema(schema):
    """Each routed /api/ pattern is the target of a path in the schema, with every method its view implements."""
    described: dict[Any, set[str]] = {}
    for path, operations in schema["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "3f1c0000-0000-4000-8000-000000000000", path)
        match = resolve(concrete)
        described.setdefault(match.func, set()).update(m for m in operations if m in HTTP_METHODS)
    missing = []
    for regex, pattern in _api_routes():
        if pattern.callback is site_views.api_not_found:
            continue  # the catch-all: every other /api/ URL is 404, which is not an endpoint
        view_class = getattr(pattern.callback, "view_class", None)
        methods = {m for m in HTTP_METHODS if view_class is not None and hasattr(view_class, m)}
        assert methods, f"{regex} routes to a view without HTTP methods"
        if pattern.callback not in described:
            missing.append(f"{regex} (all of {sorted(methods)})")
        elif methods - described[pattern.callback]:
            missing.append(f"{regex} {sorted(methods - described[pattern.callback])}")
    assert not missing, "routed but not described: " + ", ".join(missing)


def test_schema_paths_are_written_as_clients_write_them(schema):
    assert all(path.startswith("/api/") and not path.endswith("/") for path in schema["paths"])
    assert set(schema["paths"]) >= {
        "/api/auth/register", "/api/auth/login", "/api/auth/logout", "/api/auth/me", "/api/auth/change-password",
        "/api/auth/health", "/api/sync", "/api/sync/changes", "/api/sync/status", "/api/resolve", "/api/query",
        "/api/admin/users", "/api/admin/users/{user_id}", "/api/schema", "/api/docs",
    }  # fmt: skip


def _operations(schema: dict[str, Any]):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def _error_body(response: dict[str, Any]) -> str:
    return response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_every_operation_documents_its_errors(schema):
    for path, method, operation in _operations(schema):
        responses = operation["responses"]
        where = f"{method.upper()} {path}"
        assert _error_body(responses["500"]) == "Error", where
        protected = operation.get("security") == [{"bearerAuth": []}]
        if protected:
            assert {"401", "403"} <= set(responses), where
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True, where
            assert _error_body(responses["401"]) == "Error", where
        if "requestBody" in operation:
            assert operation["requestBody"]["required"] is True, where
            assert {"400", "413", "415"} <= set(responses), where
        for code, response in responses.items():
            if int(code) >= 400:
                expected = {
                    ("/api/query", "400"): "QueryFailure",
                    ("/api/query", "403"): "QueryFailure",
                    ("/api/auth/health", "503"): "HealthUnavailable",
                    ("/api/sync/records/{store}/{record_id}", "412"): "PreconditionFailed",
                }.get((path, code), "Error")
                assert _error_body(response) == expected, f"{where} {code}"


def test_error_bodies_are_exactly_the_protocols(schema):
    schemas = schema["components"]["schemas"]
    assert schemas["Error"]["required"] == ["error"]
    assert schemas["Error"]["additionalProperties"] is False
    assert schemas["QueryFailure"]["properties"]["success"]["enum"] == [False]
    assert set(schemas["User"]["properties"]) == {"id", "username", "role", "createdAt"}
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"],
    }


# --- true -------------------------------------------------------------------------


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema (``type`` lists / ``anyOf`` with null)."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        if "type" in node:
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    node.pop("example", None)
    return node


class Conformance:
    """Checks answers against the description, and remembers which operations and statuses it saw."""

    def __init__(self, schema: dict[str, Any]) -> None:
        document = _json_schema(copy.deepcopy(schema))
        self.document = document
        self.seen: set[tuple[str, str, str]] = set()

    def check(self, path: str, method: str, response: Any) -> None:
        operation = self.document["paths"][path][method]
        code = str(response.status_code)
        assert code in operation["responses"], (
            f"{method.upper()} {path} answered undocumented {code}: {response.content[:200]!r}"
        )
        documented = operation["responses"][code]
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert response.has_header(name), f"{method.upper()} {path} {code} lacks {name}"
                jsonschema.validate(response[name], header["schema"])
        content = documented.get("content")
        if not content:
            assert response.content == b"", f"{method.upper()} {path} {code} has a body"
        else:
            media_type, spec = next(iter(content.items()))
            assert response["Content-Type"].split(";")[0] == media_type
            if media_type == "application/json":
                validator = jsonschema.Draft4Validator(
                    {**spec["schema"], "components": self.document["components"]},
                    format_checker=jsonschema.FormatChecker(),
                )
                raw = response.content
                if response.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = orjson.loads(raw)
                errors = sorted(validator.iter_errors(body), key=str)
                assert not errors, f"{method.upper()} {path} {code}: {errors[0].message} in {body!r}"
        self.seen.add((path, method, code))


def put(api: Any, path: str, body: Any, **extra: Any) -> Any:
    """A PUT of ``body`` as JSON with the client's token."""
    return api.client.put(
        path, orjson.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api.token}", **extra
    )


def test_real_answers_conform_to_the_description(schema, api, admin_api, analyst_api, settings):
    """Every endpoint, its success and its documented failures, answered by the real views."""
    settings.PZLS_LOGIN_RATE = Rate(limit=3, period_s=60)
    c = Conformance(schema)
    admin, analyst = admin_api, analyst_api

    c.check("/api/auth/health", "get", api.get("/api/auth/health"))
    c.check("/api/schema", "get", api.get("/api/schema"))
    response = api.client.get("/api/docs")
    assert response.status_code == 200 and "text/html" in response["Content-Type"]
    c.seen.add(("/api/docs", "get", "200"))

    c.check(
        "/api/auth/register", "post", api.post("/api/auth/register", {"username": "carol", "password": "carolpass"})
    )
    c.check(
        "/api/auth/register", "post", api.post("/api/auth/register", {"username": "CAROL", "password": "carolpass"})
    )
    c.check("/api/auth/register", "post", api.post("/api/auth/register", {"username": "dave", "password": "x"}))
    c.check("/api/auth/register", "post", api.client.post("/api/auth/register", "name=x", content_type="text/plain"))
    settings.PZLS_REGISTRATION = "closed"
    c.check("/api/auth/register", "post", api.post("/api/auth/register", {"username": "erin", "password": "erinpass"}))
    settings.PZLS_REGISTRATION = "open"
    settings.PZLS_MAX_BODY_MB = 0.0001
    settings.PZLS_MAX_BODY_BYTES = 100
    c.check("/api/auth/register", "post", api.post("/api/auth/register", {"username": "x" * 200, "password": "p" * 10}))
    settings.PZLS_MAX_BODY_BYTES = 50 * 1024 * 1024

    c.check("/api/auth/login", "post", api.post("/api/auth/login", {"username": "carol", "password": "carolpass"}))
    c.check("/api/auth/login", "post", api.post("/api/auth/login", {"username": "carol", "password": "wrong!"}))
    c.check("/api/auth/login", "post", api.post("/api/auth/login", {"username": "carol", "password": "wrong!"}))
    c.check("/api/auth/login", "post", api.post("/api/auth/login", {"username": "carol", "password": "wrong!"}))
    c.check("/api/auth/login", "post", api.client.post("/api/auth/login", b"{", content_type="application/json"))

    c.check("/api/auth/me", "get", analyst.get("/api/auth/me"))
    c.check("/api/auth/me", "get", api.get("/api/auth/me", token="not-a-token"))

    people = {
        "humans": {
            "h1": {"name": "John Smith", "birthDate": "1980-01-01", "tags": ["x", "y"]},
            "h2": {"name": "Jon Smith", "birthDate": "1980-01-01", "tags": ["x"], "id": 7},
        },
        "others": {"o1": {"name": "Acme", "nationality": None}},
    }
    c.check("/api/sync", "post", analyst.post("/api/sync", {"clientVersion": 0, "stores": people}))
    c.check("/api/sync", "post", analyst.post("/api/sync", {"clientVersion": None, "data": {"cases": {"c1": {}}}}))
    c.check("/api/sync", "post", analyst.post("/api/sync", {"stores": {"humans": {"h1": []}}}))
    c.check(
        "/api/sync",
        "post",
        analyst.client.post("/api/sync", "x", content_type="text/plain", HTTP_AUTHORIZATION=f"Bearer {analyst.token}"),
    )
    c.check("/api/sync", "post", api.post("/api/sync", {"stores": {}}))
    pull = analyst.get("/api/sync")
    c.check("/api/sync", "get", pull)
    c.check("/api/sync", "get", analyst.get("/api/sync", HTTP_IF_NONE_MATCH=pull["ETag"]))
    c.check("/api/sync", "get", analyst.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip"))
    c.check("/api/sync/changes", "get", analyst.get("/api/sync/changes?since=0"))
    c.check("/api/sync/changes", "get", analyst.get("/api/sync/changes?since=abc"))
    c.check("/api/sync/status", "get", analyst.get("/api/sync/status"))
    c.check("/api/sync/status", "get", api.get("/api/sync/status", token="bogus"))
    matches = analyst.get("/api/resolve?threshold=0.1")
    assert matches.json()["count"] == 1
    c.check("/api/resolve", "get", matches)
    c.check("/api/resolve", "get", analyst.get("/api/resolve?threshold=2"))

    # Record-level sync (§7): ops, one record, the cursor, stores, the caller's audit entries.
    ops_url = "/api/sync/ops"
    batch = {
        "operations": [
            {"action": "update", "store": "humans", "entity_id": "h1", "data": {"name": "John Smith"}},
            {"action": "create", "store": "humans", "id": "h1", "data": {"name": "x"}},
            {"action": "delete", "store": "humans", "entity_id": "h2", "expectedVersion": 1},
            {"action": "delete", "store": "humans", "entity_id": "never", "expectedVersion": None},
            {"action": "update", "store": "cases", "entity_id": "c9", "data": {}, "expectedVersion": 0},
        ]
    }
    answer = analyst.post(ops_url, batch)
    assert answer.status_code == 200 and answer.json()["conflicts"] == 1, answer.content
    c.check(ops_url, "post", answer)
    c.check(ops_url, "post", analyst.post(ops_url, {"operations": [{"action": "create", "store": "humans"}]}))
    c.check(ops_url, "post", analyst.post(ops_url, {"operations": []}))
    c.check(ops_url, "post", analyst.client.post(ops_url, b"{", content_type="application/json",
                                                 HTTP_AUTHORIZATION=f"Bearer {analyst.token}"))  # fmt: skip
    c.check(ops_url, "post", api.post(ops_url, batch))
    c.check(ops_url, "get", analyst.get(ops_url + "?since=0&limit=3"))
    c.check(ops_url, "get", analyst.get(ops_url + "?limit=0"))
    record_url = "/api/sync/records/{store}/{record_id}"
    one = analyst.get("/api/sync/records/humans/h1")
    c.check(record_url, "get", one)
    c.check(record_url, "get", analyst.get("/api/sync/records/humans/h1", HTTP_IF_NONE_MATCH=one["ETag"]))
    c.check(record_url, "get", analyst.get("/api/sync/records/humans/h2"))
    c.check(record_url, "get", analyst.get("/api/sync/records/humans/a%01b"))
    c.check(record_url, "put", put(analyst, "/api/sync/records/humans/h1", {"name": "J"}, HTTP_IF_MATCH=one["ETag"]))
    c.check(record_url, "put", put(analyst, "/api/sync/records/humans/h1", {"name": "K"}, HTTP_IF_MATCH='"1"'))
    c.check(record_url, "put", put(analyst, "/api/sync/records/humans/h9", {"n": 1}, HTTP_IF_NONE_MATCH="*"))
    c.check(record_url, "put", put(analyst, "/api/sync/records/humans/h9", {"n": 1}, HTTP_IF_NONE_MATCH="*"))
    c.check(record_url, "put", put(analyst, "/api/sync/records/humans/h9", [1]))
    c.check(record_url, "put", put(analyst, "/api/sync/records/humans/h9", {"n": 1}, HTTP_IF_MATCH="abc"))
    c.check(record_url, "delete", analyst.delete("/api/sync/records/humans/h9", HTTP_IF_MATCH="7"))
    c.check(record_url, "delete", analyst.delete("/api/sync/records/humans/h9", HTTP_IF_MATCH="x"))
    c.check(record_url, "delete", analyst.delete("/api/sync/records/humans/h9"))
    c.check(record_url, "delete", analyst.delete("/api/sync/records/humans/never"))
    page = analyst.get("/api/sync/cursor?limit=2&deleted=1")
    c.check("/api/sync/cursor", "get", page)
    assert page.json()["hasMore"] is True
    c.check("/api/sync/cursor", "get", analyst.get(f"/api/sync/cursor?deleted=1&cursor={page.json()['nextCursor']}"))
    c.check("/api/sync/cursor", "get", analyst.get("/api/sync/cursor?store=humans"))
    c.check("/api/sync/cursor", "get", analyst.get("/api/sync/cursor?cursor=garbage"))
    c.check("/api/sync/stores", "get", analyst.get("/api/sync/stores"))
    c.check("/api/sync/stores", "get", api.get("/api/sync/stores"))
    skipped = analyst.post("/api/sync", {"stores": {"humans": {"h2": {"name": "back"}}}})
    assert skipped.json().get("skipped") == 1, skipped.content
    c.check("/api/sync", "post", skipped)

    c.check(
        "/api/query",
        "post",
        analyst.post("/api/query", {"connectionString": "postgres://u:p@h/db", "query": "SELECT 1"}),
    )
    c.check("/api/query", "post", admin.post("/api/query", {"connectionString": "ftp://u:p@h/db", "query": "SELECT 1"}))
    c.check(
        "/api/query", "post", api.post("/api/query", {"connectionString": "postgres://u:p@h/db", "query": "SELECT 1"})
    )

    c.check("/api/admin/users", "get", admin.get("/api/admin/users"))
    c.check("/api/admin/users", "get", analyst.get("/api/admin/users"))
    users = {u["username"]: u["id"] for u in admin.get("/api/admin/users").json()["users"]}
    c.check("/api/admin/users/{user_id}", "delete", admin.delete(f"/api/admin/users/{users['admin']}"))
    c.check("/api/admin/users/{user_id}", "delete", admin.delete("/api/admin/users/nobody"))
    c.check("/api/admin/users/{user_id}", "delete", admin.delete(f"/api/admin/users/{users['carol']}"))

    c.check(
        "/api/auth/change-password",
        "post",
        analyst.post("/api/auth/change-password", {"currentPassword": "nope!!", "newPassword": "newpass1"}),
    )
    c.check(
        "/api/auth/change-password",
        "post",
        analyst.post("/api/auth/change-password", {"currentPassword": "analystpass", "newPassword": "new"}),
    )
    c.check(
        "/api/auth/change-password",
        "post",
        analyst.post("/api/auth/change-password", {"currentPassword": "analystpass", "newPassword": "newpass1"}),
    )
    c.check("/api/auth/logout", "post", analyst.post("/api/auth/logout"))
    c.check("/api/auth/logout", "post", analyst.post("/api/auth/logout"))

    expected = (
        {("/api/auth/register", "post", code) for code in ("200", "400", "403", "409", "413", "415")}
        | {("/api/auth/login", "post", code) for code in ("200", "400", "401", "429")}
        | {
            ("/api/sync", "get", "304"),
            ("/api/resolve", "get", "400"),
            ("/api/query", "post", "400"),
            ("/api/query", "post", "401"),
            ("/api/query", "post", "403"),
            ("/api/admin/users", "get", "403"),
            ("/api/admin/users/{user_id}", "delete", "200"),
            ("/api/admin/users/{user_id}", "delete", "400"),
            ("/api/admin/users/{user_id}", "delete", "404"),
            ("/api/auth/change-password", "post", "403"),
            ("/api/auth/logout", "post", "401"),
            ("/api/sync/ops", "post", "200"),
            ("/api/sync/ops", "post", "400"),
            ("/api/sync/ops", "post", "401"),
            ("/api/sync/ops", "get", "400"),
            ("/api/sync/records/{store}/{record_id}", "get", "304"),
            ("/api/sync/records/{store}/{record_id}", "get", "404"),
            ("/api/sync/records/{store}/{record_id}", "put", "412"),
            ("/api/sync/records/{store}/{record_id}", "delete", "412"),
            ("/api/sync/cursor", "get", "400"),
        }
    )
    assert expected <= c.seen, expected - c.seen
    assert {(path, method) for path, method, _ in c.seen} == {(p, m) for p, m, _ in _operations(schema)}
