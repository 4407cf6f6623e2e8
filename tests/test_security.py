"""Security headers, DEBUG, the secret key and the admin site's cookies.

- Every answer, the middleware's early refusals and the admin site included,
  carries ``X-Content-Type-Options: nosniff``, a ``Referrer-Policy`` and a
  Content-Security-Policy: nothing at all for JSON, only this server's own
  scripts for the admin site and /api/docs. A real browser shows that those
  pages still work under it (no CSP violation).
- DEBUG is off unless PZLS_DEBUG says otherwise.
- The secret key is generated into the data directory on first run (0600),
  kept across restarts, different per installation, never a constant.
- The admin session cookie is HttpOnly and SameSite=Lax, and Secure when
  PZLS_HTTPS is set (TLS at the proxy, X-Forwarded-Proto from it).
"""

from __future__ import annotations

import re
import stat
from typing import Any

import pytest
import requests

from pzls_site.middleware import CSP_API, CSP_PAGES
from testkit.server import ROOT, LiveServer
from tests.helpers import LiveServers, chromium, settings_in_subprocess

NOSNIFF = "nosniff"
REFERRER = "same-origin"


def assert_security_headers(response: Any, csp: str) -> None:
    headers = response.headers
    assert headers["X-Content-Type-Options"] == NOSNIFF
    assert headers["Referrer-Policy"] == REFERRER
    assert headers["Content-Security-Policy"] == csp


def csp_directives(policy: str) -> dict[str, list[str]]:
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


# --- headers ---------------------------------------------------------------------


def test_api_answers_carry_the_headers_errors_and_early_refusals_included(admin_api, api, settings):
    token = {"HTTP_AUTHORIZATION": f"Bearer {admin_api.token}"}
    answers = {
        "health": api.client.get("/api/auth/health"),
        "pull": admin_api.get("/api/sync"),
        "401": api.client.get("/api/auth/me"),
        "404": api.client.get("/api/nope"),
        "405": api.client.delete("/api/auth/health"),
        "400": admin_api.client.post("/api/sync", b"{", content_type="application/json", **token),
        "413 early": api.client.generic("POST", "/api/sync", b"{}", "application/json", CONTENT_LENGTH=str(10**12)),
        "400 early": api.client.generic("POST", "/api/sync", b"{}", "application/json", CONTENT_LENGTH="x"),
        "preflight": api.client.options("/api/sync", HTTP_ORIGIN="null", HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST"),
        "schema": api.client.get("/api/schema"),
    }
    assert answers["413 early"].status_code == 413 and answers["400 early"].status_code == 400
    for name, response in answers.items():
        try:
            assert_security_headers(response, CSP_API)
        except AssertionError as exc:
            exc.add_note(f"the {name} answer")
            raise


def test_pages_carry_the_page_policy(admin_api, api):
    for url in ("/admin/login/", "/admin/", "/api/docs", "/api/docs?script="):
        response = api.client.get(url)
        assert response.status_code in (200, 302), url
        assert_security_headers(response, CSP_PAGES)
        assert response["X-Frame-Options"] == "DENY"
    # Anything else outside /api/ gets the strict policy.
    assert_security_headers(api.client.get("/nope"), CSP_API)


def test_page_policy_forbids_inline_and_foreign_scripts_and_framing():
    directives = csp_directives(CSP_PAGES)
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert directives["base-uri"] == ["'self'"]
    assert not any("unsafe-eval" in v or "*" in v or "http" in v for values in directives.values() for v in values)
    api = csp_directives(CSP_API)
    assert api["default-src"] == ["'none'"] and api["frame-ancestors"] == ["'none'"]


# --- settings from the environment ------------------------------------------------------


@pytest.mark.parametrize(
    "env,expected",
    [({}, "False"), ({"PZLS_DEBUG": "1"}, "True"), ({"PZLS_DEBUG": "off"}, "False"), ({"PZLS_DEBUG": ""}, "False")],
)
def test_debug_is_off_unless_pzls_debug(tmp_path, env, expected):
    assert settings_in_subprocess(tmp_path, "print(s.DEBUG)", **env) == expected


def test_secret_key_is_generated_into_the_data_directory_once(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(), second.mkdir()
    key = settings_in_subprocess(first, "print(s.SECRET_KEY)")
    key_file = first / "secret_key"
    assert key_file.read_text().strip() == key and len(key) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert settings_in_subprocess(first, "print(s.SECRET_KEY)") == key  # kept across restarts
    assert settings_in_subprocess(second, "print(s.SECRET_KEY)") != key  # one per installation
    assert [p.name for p in first.iterdir() if p.name.startswith("secret_key")] == ["secret_key"]


def test_secret_key_from_the_environment_writes_no_file(tmp_path):
    assert settings_in_subprocess(tmp_path, "print(s.SECRET_KEY)", PZLS_SECRET_KEY="k" * 60) == "k" * 60
    assert not (tmp_path / "secret_key").exists()


def test_no_secret_key_constant_in_the_code():
    source = (ROOT / "pzls_site" / "settings.py").read_text()
    assert "django-insecure" not in source
    assert re.search(r"SECRET_KEY\s*=\s*['\"]", source) is None


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, "True Lax False False None"),
        ({"PZLS_HTTPS": "1"}, "True Lax True True None"),
        ({"PZLS_HTTPS": "1", "PZLS_TRUSTED_PROXIES": "1"}, "True Lax True True ('HTTP_X_FORWARDED_PROTO', 'https')"),
        ({"PZLS_TRUSTED_PROXIES": "1"}, "True Lax False False None"),
    ],
)
def test_cookie_settings_follow_pzls_https(tmp_path, env, expected):
    code = (
        "print(s.SESSION_COOKIE_HTTPONLY, s.SESSION_COOKIE_SAMESITE, s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE, getattr(s, 'SECURE_PROXY_SSL_HEADER', None))"
    )
    assert settings_in_subprocess(tmp_path, code, **env) == expected


# --- the real server ------------------------------------------------------------------------


def admin_login(server: LiveServer, *, https: bool) -> requests.Response:
    """Log in to the admin site as the admin; the answer that sets the session cookie."""
    origin = f"{'https' if https else 'http'}://127.0.0.1:{server.port}"
    headers = {"X-Forwarded-Proto": "https"} if https else {}
    page = requests.get(f"{server.url}/admin/login/", headers=headers, timeout=30)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match is not None, "the login page has no CSRF token"
    csrf = match.group(1)
    # Sent by hand: a cookie marked Secure is rightly not sent by requests over plain HTTP.
    csrf_cookie = next(c for c in page.raw.headers.getlist("Set-Cookie") if c.startswith("csrftoken="))
    assert ("; Secure" in csrf_cookie) is https
    return requests.post(
        f"{server.url}/admin/login/?next=/admin/",
        data={"username": "root", "password": "rootpass", "csrfmiddlewaretoken": csrf},
        headers={**headers, "Referer": f"{origin}/admin/login/", "Origin": origin, "Cookie": csrf_cookie.split(";")[0]},
        allow_redirects=False,
        timeout=30,
    )


def session_cookie(response: requests.Response) -> str:
    cookies = [c for c in response.raw.headers.getlist("Set-Cookie") if c.startswith("sessionid=")]
    assert len(cookies) == 1, response.raw.headers.getlist("Set-Cookie")
    return cookies[0]


@pytest.fixture(scope="module")
def https_server(live_server_factory: LiveServers) -> LiveServer:
    """The server as run behind a TLS-terminating proxy on this machine (which sets X-Forwarded-Proto)."""
    server = live_server_factory.start(workers=1, env={"PZLS_HTTPS": "1", "PZLS_TRUSTED_PROXIES": "1"})
    server.client().register("root", "rootpass")
    return server


@pytest.mark.live
def test_admin_session_cookie_is_httponly_lax_and_secure_behind_tls(https_server):
    response = admin_login(https_server, https=True)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in session_cookie(response).split(";")}
    assert "httponly" in attributes and "secure" in attributes
    assert attributes["samesite"] == "SameSite=Lax"
    assert_security_headers(response, CSP_PAGES)


@pytest.mark.live
def test_live_server_has_debug_off_and_headers_on_static_files(https_server):
    response = requests.get(f"{https_server.url}/no-such-page", timeout=30)
    assert response.status_code == 404
    assert "URLconf" not in response.text and "Traceback" not in response.text  # Django's debug page
    assert_security_headers(response, CSP_API)
    static = requests.get(
        f"{https_server.url}/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js", timeout=30
    )
    assert static.status_code == 200
    assert static.headers["X-Content-Type-Options"] == NOSNIFF


@pytest.mark.live
@pytest.mark.browser
class TestPagesInABrowser:
    """The admin site and /api/docs work in Chromium under their CSP: no violation, the UI renders."""

    @pytest.fixture(autouse=True)
    def data_dir(self) -> None:
        """No per-test database: only the live server is used (Django refuses it under Playwright's loop)."""

    def test_no_csp_violations(self, live_server_factory: LiveServers) -> None:
        server = live_server_factory.start(workers=1)
        server.client().register("root", "rootpass")
        problems: list[str] = []
        with chromium() as browser:
            page = browser.new_context(base_url=server.url).new_page()
            page.set_default_timeout(15_000)
            # CSP violations are console errors; a missing file shows as an answer >= 400
            # (the browser's own /favicon.ico probe aside: PZLS has none at the root).
            page.on(
                "console",
                lambda m: (
                    problems.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "response",
                lambda r: (
                    problems.append(f"{r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico")
                    else None
                ),
            )
            page.goto("/admin/")
            page.fill("#id_username", "root")
            page.fill("#id_password", "rootpass")
            page.click("input[type=submit]")
            assert page.locator("#site-name").inner_text() == "PZLS administration"
            for url in ("/admin/accounts/user/", "/admin/accounts/user/?q=root"):
                page.goto(url)
                page.wait_for_load_state("networkidle")
            page.goto("/api/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            operations = page.locator(".opblock").count()
        assert operations >= 15
        assert not problems, problems
