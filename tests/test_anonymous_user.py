"""PZLS_ANONYMOUS_USER: token-less calls to GET /api/resolve and POST /api/query act as one account.

Pazator's resolver and pipeline connector send no Authorization header. With
the setting, a request to exactly these two URLs that has no such header acts
as the named account; a request with the header follows the bearer rules
(a bad token stays 401), and every other URL ignores the setting. The query
tests that need a real database are in tests/test_query.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.authentication import AnonymousAccountAuthentication
from accounts.models import User
from query.views import QueryView
from resolve.views import ResolveView
from tests.helpers import Api, assert_error

pytestmark = pytest.mark.storage

# Two humans close enough to match at the default threshold, and two others for bob.
SAME = {"birthDate": "1980-01-01", "nationality": "GB"}
ALICE_HUMANS = {"h1": {"name": "John Smith", **SAME}, "h2": {"name": "Jon Smith", **SAME}}
BOB_HUMANS = {"b1": {"name": "Maria Garcia", **SAME}, "b2": {"name": "Mario Garcia", **SAME}}
OUTSIDE_THE_ALLOW_LIST = "postgres://reader:secret@192.0.2.1:5432/warehouse"
HOST_REFUSED = {"success": False, "error": "Host 192.0.2.1 port 5432 is not in PZLS_QUERY_ALLOWED_HOSTS"}


def as_anonymous(username: str | None = "alice", **more: Any) -> override_settings:
    return override_settings(PZLS_ANONYMOUS_USER=username, PZLS_QUERY_ALLOWED_HOSTS=["db.internal"], **more)


def assert_401(response, message: str = "Authentication required") -> None:
    assert_error(response, 401, message)
    assert response["WWW-Authenticate"] == "Bearer"


def push(api: Api, humans: dict[str, Any]) -> None:
    response = api.post("/api/sync", {"clientVersion": 0, "stores": {"humans": humans}})
    assert response.status_code == 200, response.content


def query(api: Api, **extra: Any):
    return api.post("/api/query", {"connectionString": OUTSIDE_THE_ALLOW_LIST, "query": "SELECT 1"}, **extra)


@pytest.fixture
def alice() -> Api:
    """alice (the first account, so an admin) with a likely duplicate in her repository."""
    client = Api()
    client.register("alice", "secret1")
    push(client, ALICE_HUMANS)
    return client


@pytest.fixture
def bob(alice: Api) -> Api:
    """bob (an analyst) with a likely duplicate of his own."""
    client = Api()
    client.register("bob", "secret2")
    push(client, BOB_HUMANS)
    return client


def resolved_ids(response) -> list[set[str]]:
    assert response.status_code == 200, response.content
    return [{r["entity1"]["id"], r["entity2"]["id"]} for r in response.json()["results"]]


# --- resolve and query without a token ---------------------------------------------------


def test_without_the_setting_token_less_calls_are_401_as_before(alice):
    assert_401(Api().get("/api/resolve"))
    assert_401(query(Api()))


def test_token_less_resolve_reads_the_named_accounts_repository(alice, bob):
    with as_anonymous("alice"):
        anonymous = Api().get("/api/resolve?threshold=0.6")
    assert resolved_ids(anonymous) == [{"h1", "h2"}]
    # Exactly what alice gets with her token, and nothing of bob's.
    assert anonymous.content == alice.get("/api/resolve?threshold=0.6").content
    with as_anonymous("bob"):
        assert resolved_ids(Api().get("/api/resolve")) == [{"b1", "b2"}]


def test_the_account_is_found_regardless_of_case_as_at_login(alice):
    with as_anonymous("ALICE"):
        assert resolved_ids(Api().get("/api/resolve")) == [{"h1", "h2"}]


def test_token_less_query_runs_as_the_account_under_its_policy(alice, bob):
    # alice is an admin: the query gets as far as the host allow-list.
    with as_anonymous("alice"):
        response = query(Api())
    assert response.status_code == 403 and response.json() == HOST_REFUSED
    # bob is an analyst: PZLS_QUERY_ROLES applies to him as to his token.
    with as_anonymous("bob"):
        response = query(Api())
        assert response.status_code == 403
        assert response.json() == {"success": False, "error": "Running queries is not allowed for the analyst role"}
    with as_anonymous("bob", PZLS_QUERY_ROLES=["admin", "analyst"]):
        response = query(Api())
        assert response.status_code == 403 and response.json() == HOST_REFUSED


def test_a_missing_account_is_401(alice):
    with as_anonymous("nobody"):
        assert_401(Api().get("/api/resolve"))
        assert_401(query(Api()))


def test_a_disabled_account_is_401_and_again_good_when_enabled(alice, bob):
    User.objects.filter(username="bob").update(is_active=False)
    with as_anonymous("bob"):
        assert_401(Api().get("/api/resolve"))
        assert_401(query(Api()))
    User.objects.filter(username="bob").update(is_active=True)
    with as_anonymous("bob"):
        assert resolved_ids(Api().get("/api/resolve")) == [{"b1", "b2"}]


def test_an_account_created_after_start_up_is_used_from_then_on():
    with as_anonymous("carol"):
        assert_401(Api().get("/api/resolve"))
        carol = Api()
        carol.register("carol", "secret3")
        push(carol, ALICE_HUMANS)
        assert resolved_ids(Api().get("/api/resolve")) == [{"h1", "h2"}]


@pytest.mark.parametrize(
    "header,message",
    [
        ("Bearer not-a-token", "Invalid or expired token"),
        ("Bearer 00000000-0000-4000-8000-000000000000", "Invalid or expired token"),
        ("Basic YWxpY2U6c2VjcmV0MQ==", "Authorization header must be: Bearer <token>"),
        ("Bearer", "Authorization header must be: Bearer <token>"),
        ("", "Authentication required"),
    ],
)
def test_a_request_with_an_authorization_header_never_becomes_the_account(alice, header, message):
    with as_anonymous("alice"):
        assert_401(Api().client.get("/api/resolve", HTTP_AUTHORIZATION=header), message)
        assert_401(query(Api(), HTTP_AUTHORIZATION=header), message)


def test_a_good_token_is_its_own_user_not_the_account(alice, bob):
    with as_anonymous("alice"):
        assert resolved_ids(bob.get("/api/resolve")) == [{"b1", "b2"}]
        response = query(bob)
        assert response.status_code == 403
        assert response.json()["error"] == "Running queries is not allowed for the analyst role"
    # Disabling bob revokes his tokens: his old one is 401, never alice's account.
    bob_user = User.objects.get(username="bob")
    bob_user.is_active = False
    bob_user.save()
    with as_anonymous("alice"):
        assert_401(bob.get("/api/resolve"), "Invalid or expired token")
        assert_401(query(bob), "Invalid or expired token")


# --- every other URL ignores the setting ---------------------------------------------------

OTHER_URLS = [
    ("get", "/api/sync", None),
    ("post", "/api/sync", {"clientVersion": 0, "stores": {"humans": {"x": {"name": "intruder"}}}}),
    ("get", "/api/sync/changes?since=0", None),
    ("get", "/api/sync/status", None),
    ("get", "/api/auth/me", None),
    ("post", "/api/auth/logout", None),
    ("post", "/api/auth/change-password", {"currentPassword": "secret1", "newPassword": "taken-over"}),
    ("get", "/api/admin/users", None),
    ("delete", "/api/admin/users/00000000-0000-4000-8000-000000000000", None),
]


def call(method: str, url: str, body: Any) -> Any:
    api = Api()
    return api.post(url, body) if method == "post" else getattr(api, method)(url)


@pytest.mark.parametrize("method,url,body", OTHER_URLS, ids=[f"{m} {u}" for m, u, _ in OTHER_URLS])
def test_other_urls_answer_a_token_less_call_as_without_the_setting(alice, method, url, body):
    without = call(method, url, body)
    with as_anonymous("alice"):
        with_setting = call(method, url, body)
    assert with_setting.status_code == without.status_code
    if url == "/api/sync/status":
        assert with_setting.status_code == 200 and with_setting.json()["account"] is None
        assert {k: v for k, v in with_setting.json().items() if k != "uptime"} == {
            k: v for k, v in without.json().items() if k != "uptime"
        }
    else:
        assert_401(with_setting)
        assert with_setting.content == without.content
    # Nothing of alice's changed: her repository and her password are as they were.
    assert alice.get("/api/sync").json()["version"] == 1
    assert Api().post("/api/auth/login", {"username": "alice", "password": "secret1"}).status_code == 200


def _views(resolver: URLResolver) -> list[Any]:
    found = []
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            found += _views(pattern)
        elif isinstance(pattern, URLPattern):
            found.append(getattr(pattern.callback, "cls", None) or getattr(pattern.callback, "view_class", None))
    return found


def test_only_resolve_and_query_accept_the_account():
    accepting = {
        view
        for view in _views(get_resolver())
        if view is not None and AnonymousAccountAuthentication in getattr(view, "authentication_classes", [])
    }
    assert accepting == {ResolveView, QueryView}


# --- browsers, the schema ------------------------------------------------------------------


def test_a_browser_page_from_file_can_read_the_answers(alice):
    """Pazator opened from file:// sends Origin: null and no credentials; the answers must be readable."""
    with as_anonymous("alice"):
        response = Api().get("/api/resolve?threshold=0.6", HTTP_ORIGIN="null")
        assert resolved_ids(response) == [{"h1", "h2"}]
        assert response["Access-Control-Allow-Origin"] == "*"
        # The pipeline's POST with Content-Type: application/json is preflighted first.
        preflight = Api().client.options(
            "/api/query",
            HTTP_ORIGIN="null",
            HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
            HTTP_ACCESS_CONTROL_REQUEST_HEADERS="content-type",
        )
        assert preflight.status_code == 200
        assert preflight["Access-Control-Allow-Origin"] == "*"
        assert "content-type" in preflight["Access-Control-Allow-Headers"].lower()
        response = query(Api(), HTTP_ORIGIN="null")
        assert response.json() == HOST_REFUSED
        assert response["Access-Control-Allow-Origin"] == "*"


def _security(schema: dict[str, Any], path: str, method: str) -> Any:
    return schema["paths"][path][method].get("security")


def test_the_schema_says_a_token_is_optional_only_where_and_while_it_is(alice):
    bearer: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    schema = Api().get("/api/schema").json()
    assert _security(schema, "/api/resolve", "get") == bearer
    assert _security(schema, "/api/query", "post") == bearer
    with as_anonymous("alice"):
        schema = Api().get("/api/schema").json()
    assert _security(schema, "/api/resolve", "get") == [*bearer, {}]
    assert _security(schema, "/api/query", "post") == [*bearer, {}]
    assert _security(schema, "/api/sync", "get") == bearer
    assert _security(schema, "/api/auth/me", "get") == bearer
