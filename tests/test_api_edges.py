"""PROTOCOL.md §1 at the edges: unknown /api/ URLs, odd methods and odd paths.

Every /api/ URL that no endpoint serves answers ``404 {"error": "Not found"}``
as JSON with CORS headers, whatever the method, the token and the path's
spelling; never Django's HTML CSRF page (Pazator would show "Unexpected
token '<'"). A URL that exists answers a method it does not serve, OPTIONS
outside a CORS preflight and unknown methods included, with 405 JSON (after
the 401 of a URL that needs a token). The in-process client enforces CSRF
checks as a browser-less client meets them on the real server; the live
server is asked too, since gunicorn decodes paths (``%2F``) its own way.
"""

from __future__ import annotations

import http.client
import socket

import orjson
import pytest
import requests
from django.http import HttpRequest, JsonResponse
from django.test import Client
from django.urls import include, path

from testkit.server import LiveServer
from tests.helpers import LiveServers

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PROPFIND", "FOO"]

# As a client writes them; the server sees them percent-decoded.
UNKNOWN_PATHS = [
    "/api",
    "/api/",
    "/api/nope",
    "/api/SYNC",
    "/api/%2F..%2F",
    "/api/sync%2F..%2Fnope",
    "/api/../api/x",
    "/api/%2e%2e/x",
    "/api//sync",
    "/api/sync//",
    "/api/%00",
    "/api/sync%00",
    "/api/%0A",
    "/api/sync%0A",
    "/api/%ff",
    "/api/%C3%A9",
    "/api/%E2%80%AE%F0%9F%98%80",
    "/api/sync/extra/junk",
    "/api/sync/changes/x",
    "/api/admin/users/x/y",
    "/api/sync.",
    "/api/sync/.",
    "/api/auth/login.json",
    "/api/sync%3F",
    "/api/sync;x",
    "/api/sync%20",
    "/api/" + "x" * 5000,
]


def authorizations(token: str) -> dict[str, dict[str, str]]:
    return {
        "no token": {},
        "valid token": {"HTTP_AUTHORIZATION": f"Bearer {token}"},
        "unknown token": {"HTTP_AUTHORIZATION": "Bearer 00000000-0000-4000-8000-000000000000"},
        "garbage": {"HTTP_AUTHORIZATION": "Basic \u00ff\u00fe garbage"},
    }


@pytest.fixture
def csrf_client() -> Client:
    """A client that meets CSRF checks as a real one does (Django's test client skips them by default)."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def token(admin_api) -> str:
    assert admin_api.token
    return admin_api.token


def assert_json_404(response, method: str, label: str) -> None:
    where = (method, label, response.status_code, response.content[:200])
    assert response.status_code == 404, where
    assert response["Content-Type"] == "application/json", where
    assert response.get("Access-Control-Allow-Origin") == "*", where
    assert b"csrf" not in response.content.lower(), where
    if method == "HEAD":
        assert response.content == b"", where
    else:
        assert orjson.loads(response.content) == {"error": "Not found"}, where


@pytest.mark.parametrize("url", UNKNOWN_PATHS)
@pytest.mark.parametrize("method", METHODS)
def test_unknown_api_url_is_json_404_for_every_method_and_token(csrf_client, token, method, url):
    for label, headers in authorizations(token).items():
        response = csrf_client.generic(method, url, b"{}", content_type="application/json", **headers)
        assert_json_404(response, method, label)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_unknown_api_url_is_404_also_for_a_browser_with_an_admin_session(admin_api, csrf_client, method):
    """A browser that holds the admin site's cookies still gets JSON, not a CSRF page."""
    csrf_client.cookies["sessionid"] = "whatever"
    csrf_client.cookies["csrftoken"] = "A" * 32
    response = csrf_client.generic(method, "/api/nope", b"{}", content_type="application/json", HTTP_ORIGIN="null")
    assert_json_404(response, method, "cookies")


@pytest.mark.parametrize("url", ["/api/nope", "/api", "/api/sync/extra"])
def test_options_without_preflight_headers_on_an_unknown_url_is_404(csrf_client, url):
    response = csrf_client.options(url, HTTP_ORIGIN="null")
    assert_json_404(response, "OPTIONS", "origin only")


def test_preflight_on_an_unknown_url_still_succeeds(csrf_client):
    response = csrf_client.options("/api/nope", HTTP_ORIGIN="null", HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert response.status_code == 200
    assert response.content == b""
    assert response["Access-Control-Allow-Origin"] == "*"


# --- known URLs: OPTIONS that is not a preflight, unknown methods ----------------------------

OPEN_URLS = {
    "/api/auth/register": "POST",
    "/api/auth/login": "POST",
    "/api/auth/health": "GET, HEAD",
    "/api/sync/status": "GET, HEAD",
    "/api/schema": "GET, HEAD",
    "/api/docs": "GET, HEAD",
}
PROTECTED_URLS = {
    "/api/sync": "GET, POST, HEAD",
    "/api/sync/changes": "GET, HEAD",
    "/api/auth/me": "GET, HEAD",
    "/api/auth/logout": "POST",
    "/api/auth/change-password": "POST",
    "/api/admin/users": "GET, HEAD",
    "/api/admin/users/00000000-0000-4000-8000-000000000000": "DELETE",
    "/api/resolve": "GET, HEAD",
    "/api/query": "POST",
}


def assert_json_error(response, status: int, error: str, where: object) -> None:
    assert response.status_code == status, (where, response.status_code, response.content[:200])
    assert response["Content-Type"] == "application/json", where
    assert response.get("Access-Control-Allow-Origin") == "*", where
    assert orjson.loads(response.content) == {"error": error}, where


@pytest.mark.parametrize("method", ["OPTIONS", "PROPFIND", "FOO", "TRACE"])
@pytest.mark.parametrize("url", list(OPEN_URLS))
def test_unserved_method_on_an_open_url_is_json_405_with_allow(csrf_client, token, url, method):
    for label, headers in authorizations(token).items():
        response = csrf_client.generic(method, url, HTTP_ORIGIN="null", **headers)
        assert_json_error(response, 405, "Method not allowed", (method, url, label))
        assert response["Allow"] == OPEN_URLS[url], (method, url, label)


@pytest.mark.parametrize("method", ["OPTIONS", "PROPFIND", "FOO"])
@pytest.mark.parametrize("url", list(PROTECTED_URLS))
def test_unserved_method_on_a_protected_url_is_401_first_then_405(csrf_client, token, url, method):
    for label in ("no token", "unknown token"):
        response = csrf_client.generic(method, url, **authorizations(token)[label])
        assert response.status_code == 401, (method, url, label, response.content)
        assert response["WWW-Authenticate"] == "Bearer"
        assert response["Content-Type"] == "application/json"
        assert response.get("Access-Control-Allow-Origin") == "*"
    response = csrf_client.generic(method, url, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_json_error(response, 405, "Method not allowed", (method, url))
    assert response["Allow"] == PROTECTED_URLS[url]


def test_allow_names_the_methods_a_client_can_use(admin_api):
    response = admin_api.client.put("/api/sync", HTTP_AUTHORIZATION=f"Bearer {admin_api.token}")
    assert_json_error(response, 405, "Method not allowed", "PUT /api/sync")
    assert response["Allow"] == "GET, POST, HEAD"
    assert admin_api.get("/api/sync")["Allow"] == "GET, POST, HEAD"


# --- CSRF: off for every /api/ URL, on for the admin site ------------------------------------


def plain_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"method": request.method})


# A plain Django view under /api/ (as the 404 catch-all is) and the same view elsewhere.
urlpatterns = [
    path("api/plain", plain_view),
    path("plain", plain_view),
    path("", include("pzls_site.urls")),
]


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_no_api_url_depends_on_a_csrf_cookie_not_even_a_plain_view(csrf_client, method):
    response = csrf_client.generic(method, "/api/plain", b"{}", content_type="application/json")
    assert response.status_code == 200, response.content[:200]
    assert response.json() == {"method": method}
    # The same view outside /api/ is still protected.
    assert csrf_client.generic(method, "/plain", b"{}", content_type="application/json").status_code == 403


def test_admin_login_without_a_csrf_token_is_still_403(csrf_client, admin_api):
    response = csrf_client.post("/admin/login/", {"username": "admin", "password": "adminpass"})
    assert response.status_code == 403
    assert b"CSRF" in response.content
    assert "sessionid" not in response.cookies


def test_known_api_urls_work_without_a_csrf_cookie(csrf_client):
    response = csrf_client.post(
        "/api/auth/register", {"username": "alice", "password": "secret1"}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    headers = {"HTTP_AUTHORIZATION": f"Bearer {response.json()['token']}"}
    response = csrf_client.post(
        "/api/sync", {"stores": {"humans": {"h1": {}}}}, content_type="application/json", **headers
    )
    assert response.status_code == 200, response.content
    response = csrf_client.post("/api/auth/logout", **headers)
    assert response.status_code == 200, response.content


# --- the real server -------------------------------------------------------------------------

LIVE_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "FOO"]
LIVE_PATHS = [
    "/api",
    "/api/nope",
    "/api/%2F..%2F",
    "/api/sync%2F..%2Fnope",
    "/api/../api/x",
    "/api//sync",
    "/api/%00",
    "/api/%0A",
    "/api/%ff",
    "/api/%C3%A9",
    "/api/sync/extra/junk",
    "/api/sync.",
    "/api/" + "x" * 4000,
]


@pytest.fixture(scope="module")
def live(live_server_factory: LiveServers) -> LiveServer:
    return live_server_factory.start(workers=1)


@pytest.fixture(scope="module")
def live_token(live: LiveServer) -> str:
    response = requests.post(
        f"{live.url}/api/auth/register", json={"username": "edge", "password": "secret1"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def raw_request(
    server: LiveServer, method: str, url: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """Send the path exactly as written (requests would normalise ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, url, body=b"{}", headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.live
@pytest.mark.parametrize("url", LIVE_PATHS, ids=lambda u: u[:40])
def test_live_unknown_api_url_is_json_404(live, live_token, url):
    tokens = {"none": {}, "valid": {"Authorization": f"Bearer {live_token}"}, "garbage": {"Authorization": "xx yy zz"}}
    for method in LIVE_METHODS:
        for label, headers in tokens.items():
            status, answer, body = raw_request(live, method, url, headers)
            where = (method, label, status, body[:200])
            assert status == 404, where
            assert answer["content-type"] == "application/json", where
            assert answer.get("access-control-allow-origin") == "*", where
            assert b"csrf" not in body.lower(), where
            if method == "HEAD":
                assert body == b"", where
            else:
                assert orjson.loads(body) == {"error": "Not found"}, where


@pytest.mark.live
def test_live_known_url_answers_odd_methods_with_json(live, live_token):
    for method in ("OPTIONS", "FOO", "PROPFIND"):
        status, answer, body = raw_request(live, method, "/api/sync/status", {})
        assert (status, orjson.loads(body)) == (405, {"error": "Method not allowed"}), method
        assert answer["allow"] == "GET, HEAD"
        status, answer, body = raw_request(live, method, "/api/sync", {})
        assert (status, orjson.loads(body)) == (401, {"error": "Authentication required"}), method
        status, answer, body = raw_request(live, method, "/api/sync", {"Authorization": f"Bearer {live_token}"})
        assert (status, orjson.loads(body)) == (405, {"error": "Method not allowed"}), method
        assert answer["allow"] == "GET, POST, HEAD"
        assert answer.get("access-control-allow-origin") == "*"


@pytest.mark.live
def test_live_admin_login_without_a_csrf_token_is_403(live):
    status, _, body = raw_request(live, "POST", "/admin/login/", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403
    assert b"CSRF" in body


@pytest.mark.live
@pytest.mark.parametrize("chunks", [b"zz\r\n{}\r\n0\r\n\r\n", b"-1\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n"])
def test_a_malformed_chunked_body_is_a_json_400(live: LiveServer, live_token: str, chunks: bytes) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as conn:
        conn.sendall(
            b"POST /api/sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + live_token.encode() + b"\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + chunks
        )
        answer = b""
        while part := conn.recv(65536):
            answer += part
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"application/json" in head.lower()
    assert b'"error": "Malformed chunked request body"' in body or b'"error":"Malformed chunked request body"' in body
