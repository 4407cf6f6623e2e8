"""PROTOCOL.md §1: the general rules every /api/ answer follows.

Errors are ``{"error": ...}`` everywhere (also for URLs DRF never sees), 401
means only "this token is no good" and carries ``WWW-Authenticate: Bearer``,
403 is for forbidden actions, bodies over the limit are 413, malformed JSON
is 400, every /api/ answer carries CORS headers and preflights need no token,
and timestamps look like JavaScript's ``toISOString()``.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC
from unittest import mock

import pytest
from django.test import override_settings

from tests.helpers import Api, assert_error

pytestmark = pytest.mark.storage

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

PROTECTED = [
    ("get", "/api/sync"),
    ("post", "/api/sync"),
    ("get", "/api/sync/changes"),
    ("get", "/api/auth/me"),
    ("post", "/api/auth/logout"),
    ("post", "/api/auth/change-password"),
    ("get", "/api/admin/users"),
    ("delete", "/api/admin/users/00000000-0000-4000-8000-000000000000"),
    ("get", "/api/resolve"),
    ("post", "/api/query"),
]


# --- unknown URLs and wrong methods ---------------------------------------------


@pytest.mark.parametrize(
    "url", ["/api", "/api/", "/api/nope", "/api/auth", "/api/auth/nope", "/api/sync/nope/deeper", "/api/sync/changes/x"]
)
@pytest.mark.parametrize("method", ["get", "post", "delete", "put", "patch"])
def test_unknown_api_url_is_json_404_for_every_method(api, url, method):
    response = getattr(api.client, method)(url, content_type="application/json")
    assert_error(response, 404, "Not found")


def test_unknown_api_url_is_404_with_a_token_too(admin_api):
    assert_error(admin_api.get("/api/does-not-exist"), 404, "Not found")


def test_unknown_api_url_with_a_bad_token_is_still_404_not_401(api):
    assert_error(api.get("/api/does-not-exist", token="not-a-token"), 404, "Not found")


@pytest.mark.parametrize(
    "method,url",
    [
        ("get", "/api/auth/register"),
        ("delete", "/api/auth/register"),
        ("get", "/api/auth/login"),
        ("put", "/api/auth/login"),
        ("delete", "/api/auth/health"),
        ("post", "/api/auth/health"),
        ("post", "/api/sync/status"),
    ],
)
def test_wrong_method_on_open_url_is_405(api, method, url):
    response = getattr(api.client, method)(url, content_type="application/json")
    assert_error(response, 405, "Method not allowed")


@pytest.mark.parametrize(
    "method,url",
    [
        ("delete", "/api/sync"),
        ("put", "/api/sync"),
        ("patch", "/api/sync"),
        ("post", "/api/sync/changes"),
        ("get", "/api/auth/logout"),
        ("post", "/api/auth/me"),
        ("get", "/api/auth/change-password"),
        ("post", "/api/admin/users"),
        ("get", "/api/admin/users/00000000-0000-4000-8000-000000000000"),
    ],
)
def test_wrong_method_on_protected_url_is_405_with_a_token(admin_api, method, url):
    response = getattr(admin_api.client, method)(
        url, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}"
    )
    assert_error(response, 405, "Method not allowed")


def test_wrong_method_changes_nothing(admin_api):
    admin_api.post("/api/sync", {"stores": {"humans": {"h1": {"name": "A"}}}})
    before = admin_api.get("/api/sync").content
    response = admin_api.client.delete("/api/sync", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}")
    assert_error(response, 405, "Method not allowed")
    assert admin_api.get("/api/sync").content == before


# --- errors are {"error"}: never DRF's detail, never HTML, never a traceback --------------


def test_unsupported_content_type_is_an_error_object(admin_api):
    response = admin_api.client.post(
        "/api/sync", "stores=1", content_type="text/plain", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}"
    )
    assert response.status_code == 415
    assert_error(response, 415)
    assert admin_api.pull() == {"version": 0, "data": {}}


@pytest.mark.parametrize("accept", ["text/html", "text/plain", "application/xml", "*/*"])
def test_answers_are_json_whatever_accept_says(admin_api, accept):
    response = admin_api.get("/api/auth/me", HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["user"]["username"] == "admin"
    assert_error(admin_api.get("/api/nowhere", HTTP_ACCEPT=accept), 404, "Not found")


def test_body_that_is_not_an_object_is_400(admin_api):
    for payload in (b"[]", b'"stores"', b"42", b"null", b"true"):
        response = admin_api.post("/api/sync", data=payload)
        assert_error(response, 400)
    assert admin_api.pull() == {"version": 0, "data": {}}


def test_unexpected_error_in_a_view_is_500_without_details(admin_api):
    with mock.patch("sync.services.get_repository_store", side_effect=RuntimeError("secret detail /etc/passwd")):
        response = admin_api.get("/api/sync")
    assert_error(response, 500, "Internal server error")
    assert b"secret detail" not in response.content
    assert b"Traceback" not in response.content
    assert response["Access-Control-Allow-Origin"] == "*"


def test_unexpected_error_in_a_view_is_logged_with_its_traceback(admin_api, caplog):
    # What the client is not told, the operator must find in the log.
    with mock.patch("sync.services.get_repository_store", side_effect=RuntimeError("secret detail /etc/passwd")):
        admin_api.get("/api/sync")
    [logged] = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert logged.getMessage().startswith("Unhandled error in ")
    assert "RuntimeError: secret detail /etc/passwd" in caplog.text


def test_unexpected_error_outside_drf_is_json_500(api):
    # The catch-all /api/ view is plain Django; an error in it must still answer JSON.
    with mock.patch("pzls_site.views.json_error", side_effect=RuntimeError("boom")):
        response = api.get("/api/nowhere")
    assert_error(response, 500, "Internal server error")
    assert b"boom" not in response.content


# --- authentication: 401 only for a bad token, with WWW-Authenticate ------------------


@pytest.mark.parametrize("method,url", PROTECTED)
def test_protected_url_without_token_is_401_with_www_authenticate(api, method, url):
    response = getattr(api.client, method)(url, content_type="application/json")
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("method,url", PROTECTED)
@pytest.mark.parametrize(
    "header",
    [
        "Bearer 3f1c0a52-3c1e-4c8e-9a53-6c1e1b1d2f00",  # well-formed, never issued
        "Bearer nonsense",
        "Bearer",
        "Bearer a b",
        "Basic YWxpY2U6c2VjcmV0MQ==",
        "Token 3f1c0a52-3c1e-4c8e-9a53-6c1e1b1d2f00",
    ],
)
def test_protected_url_with_bad_authorization_is_401(admin_api, method, url, header):
    response = getattr(admin_api.client, method)(url, content_type="application/json", HTTP_AUTHORIZATION=header)
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == "Bearer"


def test_revoked_token_is_401_with_www_authenticate(admin_api):
    token = admin_api.token
    assert admin_api.post("/api/auth/logout").status_code == 200
    response = admin_api.get("/api/sync", token=token)
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == "Bearer"


def test_rejected_push_without_token_writes_nothing(admin_api, api):
    response = api.post("/api/sync", {"stores": {"humans": {"h1": {"name": "A"}}}})
    assert_error(response, 401)
    assert admin_api.pull() == {"version": 0, "data": {}}


def test_forbidden_is_403_not_401(analyst_api):
    response = analyst_api.get("/api/admin/users")
    assert_error(response, 403)
    # The token is still good: a 403 must not log the user out.
    assert analyst_api.get("/api/auth/me").status_code == 200


# --- malformed JSON ----------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"username": ',
        b"{username: 'x'}",
        b'{"a": 1,}',
        b'{"stores": {"s": {"i": {"x": NaN}}}}',
        b'{"stores": {"s": {"i": {"x": Infinity}}}}',
        b'{"a": "\xff\xfe"}',
        b'{"a": "\\ud800"}',
        b'{"a": 1} trailing',
    ],
)
def test_malformed_json_is_400_and_writes_nothing(admin_api, payload):
    response = admin_api.post("/api/sync", data=payload)
    text = assert_error(response, 400)
    assert text.startswith("Malformed JSON: ") and len(text) > len("Malformed JSON: ")
    assert admin_api.pull() == {"version": 0, "data": {}}


def test_malformed_json_on_register_creates_nobody(api):
    response = api.post("/api/auth/register", data=b'{"username": "alice", "password": "secret1"')
    assert assert_error(response, 400).startswith("Malformed JSON: ")
    assert api.get("/api/sync/status").json()["registeredUsers"] == 0


def test_malformed_json_on_login_is_400(admin_api):
    response = Api().post("/api/auth/login", data=b"{")  # without the admin's token, as a client logging in
    assert assert_error(response, 400).startswith("Malformed JSON: ")


# --- body size limit ---------------------------------------------------------------


def _push_of_size(size: int) -> bytes:
    """A valid push body of exactly ``size`` bytes."""
    head, tail = b'{"stores":{"s":{"r":{"x":"', b'"}}}}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


@override_settings(PZLS_MAX_BODY_MB=1, PZLS_MAX_BODY_BYTES=1048576)
def test_body_over_limit_is_413_and_writes_nothing(admin_api):
    response = admin_api.post("/api/sync", data=_push_of_size(1048577))
    assert_error(response, 413, "Request body too large (limit 1 MiB)")
    assert response["Access-Control-Allow-Origin"] == "*"
    assert admin_api.pull() == {"version": 0, "data": {}}


@override_settings(PZLS_MAX_BODY_MB=1, PZLS_MAX_BODY_BYTES=1048576)
def test_body_exactly_at_limit_is_accepted(admin_api):
    response = admin_api.post("/api/sync", data=_push_of_size(1048576))
    assert response.status_code == 200, response.content
    assert response.json()["added"] == 1


@override_settings(PZLS_MAX_BODY_MB=1, PZLS_MAX_BODY_BYTES=1048576)
def test_register_over_limit_is_413_and_creates_nobody(api):
    body = b'{"username": "alice", "password": "' + b"p" * 1048576 + b'"}'
    response = api.post("/api/auth/register", data=body)
    assert_error(response, 413, "Request body too large (limit 1 MiB)")
    assert api.get("/api/sync/status").json()["registeredUsers"] == 0


def test_default_limit_text_is_50_mib(admin_api):
    # The Content-Length alone is enough to refuse; the body is never read.
    response = admin_api.post("/api/sync", data=_push_of_size(100), CONTENT_LENGTH=str(50 * 1024 * 1024 + 1))
    assert_error(response, 413, "Request body too large (limit 50 MiB)")
    assert admin_api.pull() == {"version": 0, "data": {}}


@override_settings(PZLS_MAX_BODY_MB=1, PZLS_MAX_BODY_BYTES=1048576)
def test_body_over_limit_is_refused_by_the_parser_without_content_length():
    # A body whose length the boundary cannot see (no Content-Length) is counted while it is read.
    import io

    from pzls_site.exceptions import BodyTooLarge
    from pzls_site.json import ORJSONParser

    with pytest.raises(BodyTooLarge) as info:
        ORJSONParser().parse(io.BytesIO(_push_of_size(1048577)))
    assert info.value.status_code == 413
    assert info.value.message == "Request body too large (limit 1 MiB)"


def test_invalid_content_length_is_400(admin_api):
    response = admin_api.post("/api/sync", data=b"{}", CONTENT_LENGTH="abc")
    assert_error(response, 400)


# --- CORS ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/sync",
        "/api/sync/changes",
        "/api/sync/status",
        "/api/auth/login",
        "/api/auth/register",
        "/api/auth/change-password",
        "/api/admin/users",
        "/api/admin/users/whatever",
        "/api/resolve",
        "/api/query",
        "/api/not-a-route",
    ],
)
@pytest.mark.parametrize("origin", ["null", "https://pazator.example"])
def test_preflight_for_any_api_url_succeeds_without_token(api, url, origin):
    response = api.client.options(
        url,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type",
    )
    assert 200 <= response.status_code < 300, (response.status_code, response.content)
    assert response["Access-Control-Allow-Origin"] in ("*", origin)
    methods = {m.strip().upper() for m in response["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods
    headers = {h.strip().lower() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= headers


@pytest.mark.parametrize("request_method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_preflight_allows_every_protocol_method(api, request_method):
    response = api.client.options("/api/sync", HTTP_ORIGIN="null", HTTP_ACCESS_CONTROL_REQUEST_METHOD=request_method)
    assert 200 <= response.status_code < 300
    assert request_method in {m.strip().upper() for m in response["Access-Control-Allow-Methods"].split(",")}


def _cors_cases(admin_api, analyst_api, origin_headers):
    t_admin = {"HTTP_AUTHORIZATION": f"Bearer {admin_api.token}"}
    t_analyst = {"HTTP_AUTHORIZATION": f"Bearer {analyst_api.token}"}
    c = admin_api.client
    j = "application/json"
    return {
        "200 pull": c.get("/api/sync", content_type=j, **t_admin, **origin_headers),
        "200 status": c.get("/api/sync/status", content_type=j, **origin_headers),
        "200 health": c.get("/api/auth/health", content_type=j, **origin_headers),
        "400 no data": c.post("/api/sync", {}, format="json", **t_admin, **origin_headers),
        "400 malformed": c.generic("POST", "/api/sync", b"{", content_type=j, **t_admin, **origin_headers),
        "401 no token": c.get("/api/sync", content_type=j, **origin_headers),
        "401 bad login": c.post(
            "/api/auth/login", {"username": "admin", "password": "wrong-pw"}, format="json", **origin_headers
        ),
        "403 analyst": c.get("/api/admin/users", content_type=j, **t_analyst, **origin_headers),
        "404 unknown": c.get("/api/nowhere", content_type=j, **origin_headers),
        "404 user": c.delete(
            "/api/admin/users/00000000-0000-4000-8000-000000000000", content_type=j, **t_admin, **origin_headers
        ),
        "405": c.delete("/api/sync", content_type=j, **t_admin, **origin_headers),
        "409": c.post(
            "/api/auth/register", {"username": "ADMIN", "password": "secret1"}, format="json", **origin_headers
        ),
        "413": c.generic(
            "POST",
            "/api/sync",
            b"{}",
            content_type=j,
            CONTENT_LENGTH=str(60 * 1024 * 1024),
            **t_admin,
            **origin_headers,
        ),
    }


@pytest.mark.parametrize("origin_headers", [{}, {"HTTP_ORIGIN": "null"}, {"HTTP_ORIGIN": "https://app.example"}])
def test_every_api_answer_carries_cors_header_errors_included(admin_api, analyst_api, origin_headers):
    for name, response in _cors_cases(admin_api, analyst_api, origin_headers).items():
        assert response.status_code == int(name.split()[0]), (name, response.status_code, response.content)
        assert response.get("Access-Control-Allow-Origin") == "*", name


def test_preflight_with_a_bad_token_still_succeeds(api):
    response = api.client.options(
        "/api/sync", HTTP_ORIGIN="null", HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET", HTTP_AUTHORIZATION="Bearer junk"
    )
    assert 200 <= response.status_code < 300
    assert response["Access-Control-Allow-Origin"] == "*"


def test_non_api_urls_do_not_get_cors(api):
    response = api.client.get("/admin/login/", HTTP_ORIGIN="null")
    assert "Access-Control-Allow-Origin" not in response


@override_settings(CORS_ALLOW_ALL_ORIGINS=False, CORS_ALLOWED_ORIGINS=["https://app.example"])
def test_narrowed_cors_allows_only_listed_origins(admin_api, analyst_api):
    good = {"HTTP_ORIGIN": "https://app.example"}
    for name, response in _cors_cases(admin_api, analyst_api, good).items():
        assert response.status_code == int(name.split()[0]), (name, response.status_code)
        assert response.get("Access-Control-Allow-Origin") == "https://app.example", name
    bad = {"HTTP_ORIGIN": "https://evil.example"}
    for name, response in _cors_cases(admin_api, analyst_api, bad).items():
        assert "Access-Control-Allow-Origin" not in response, name


# --- timestamps ----------------------------------------------------------------------


def test_timestamps_are_iso_utc_with_milliseconds_and_z(admin_api, analyst_api):
    created = admin_api.get("/api/auth/me").json()["user"]["createdAt"]
    assert ISO_MS_Z.match(created), created
    admin_api.post("/api/sync", {"clientVersion": 0, "stores": {"humans": {"h1": {"name": "A"}}}})
    entry = admin_api.get("/api/sync/changes?since=0").json()["changes"][0]
    assert ISO_MS_Z.match(entry["timestamp"]), entry
    account = admin_api.get("/api/sync/status").json()["account"]
    assert ISO_MS_Z.match(account["lastSync"]), account
    assert admin_api.post("/api/auth/login", {"username": "admin", "password": "adminpass"}).status_code == 200
    for row in admin_api.get("/api/admin/users").json()["users"]:
        assert ISO_MS_Z.match(row["createdAt"]), row
        assert row["lastLogin"] is None or ISO_MS_Z.match(row["lastLogin"]), row
        assert row["lastSync"] is None or ISO_MS_Z.match(row["lastSync"]), row
    rows = {r["username"]: r for r in admin_api.get("/api/admin/users").json()["users"]}
    assert ISO_MS_Z.match(rows["admin"]["lastLogin"])
    assert ISO_MS_Z.match(rows["admin"]["lastSync"])


def test_iso_formats_like_javascript():
    from datetime import datetime, timedelta, timezone

    from pzls_site.clock import iso

    moment = datetime(2026, 5, 17, 10, 4, 5, 123999, tzinfo=UTC)
    assert iso(moment) == "2026-05-17T10:04:05.123Z"
    assert iso(moment.astimezone(timezone(timedelta(hours=2)))) == "2026-05-17T10:04:05.123Z"
    assert iso(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


# --- bodies: clients send Content-Type: application/json on GET too ---------------------


def test_get_with_json_content_type_and_empty_body_works(admin_api):
    response = admin_api.client.get(
        "/api/sync", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}"
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")


def test_trailing_slash_is_accepted(admin_api):
    assert admin_api.get("/api/sync/").status_code == 200
    assert admin_api.get("/api/sync/status/").status_code == 200
    assert admin_api.get("/api/auth/me/").status_code == 200


def test_push_over_djangos_own_upload_limit_but_under_ours_is_accepted(admin_api):
    # Django refuses request.body past DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB);
    # the API's limit is PZLS_MAX_BODY_MB (50 MiB) and must be the only one.
    body = _push_of_size(3 * 1024 * 1024)
    response = admin_api.post("/api/sync", data=body)
    assert response.status_code == 200, response.content
    assert len(admin_api.get("/api/sync").content) > 3 * 1024 * 1024 - 100


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json;charset=UTF-8"])
def test_json_content_type_with_charset_is_accepted(admin_api, content_type):
    response = admin_api.client.generic(
        "POST",
        "/api/sync",
        b'{"stores": {"humans": {"h1": {"name": "\xc3\xa9"}}}}',
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {admin_api.token}",
    )
    assert response.status_code == 200, response.content
    assert admin_api.pull()["data"] == {"humans": {"h1": {"name": "é"}}}
