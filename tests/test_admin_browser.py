"""The admin site in a real browser (Playwright driving Debian's Chromium) against
the real server (gunicorn, whitenoise, collected static files), as an admin
uses it. Every effect is then checked through the HTTP API, the way the
affected user's Pazator would notice it. Screenshots of the users page and a
user page go to tests/artifacts/ (git-ignored) for a human to look at.

One server and one browser serve the whole module; each test uses its own users.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from testkit.server import ROOT, LiveServer
from tests.helpers import LiveServers, chromium

if TYPE_CHECKING:  # for the annotations; playwright itself is imported when a browser is launched
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.live, pytest.mark.browser]

ARTIFACTS = ROOT / "tests" / "artifacts"
STAFF_ONLY = "Please enter the correct username and password for a staff account."


def login_status(server: LiveServer, username: str, password: str) -> int:
    """The status an API login with these credentials gets."""
    return server.client().post("/api/auth/login", {"username": username, "password": password}).status_code


def token_status(server: LiveServer, token: str) -> int:
    return server.client(token).get("/api/auth/me").status_code


@pytest.fixture(autouse=True)
def data_dir() -> None:
    """Replaces conftest's per-test database and data directory: these tests
    touch neither, only the live server's own. (Django refuses database access
    while Playwright's event loop runs in the same thread.)"""


@pytest.fixture(scope="module")
def server(live_server_factory: LiveServers) -> LiveServer:
    live = live_server_factory.start()
    # The first account registered is the admin, as on a new installation.
    live.client().register("root", "rootpass")
    return live


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    """A fresh browser context (no cookies) for each test."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def log_in(page: Page, username: str, password: str) -> None:
    page.goto("/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


@pytest.fixture
def admin(page: Page) -> Page:
    """The admin, logged in, on the admin site's index page."""
    log_in(page, "root", "rootpass")
    assert page.locator("#site-name").inner_text() == "PZLS administration"
    return page


def find_user(page: Page, username: str) -> None:
    page.goto("/admin/accounts/user/")
    page.fill("#searchbar", username)
    page.press("#searchbar", "Enter")
    page.wait_for_url(re.compile(r"\?q="))


def run_action(page: Page, username: str, action: str) -> None:
    find_user(page, username)
    page.locator("#result_list tbody tr", has_text=username).locator("input.action-select").check()
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")


def messages(page: Page) -> str:
    return page.locator("ul.messagelist").inner_text()


def test_the_admin_sites_css_is_served_by_the_production_server(page: Page, server: LiveServer) -> None:
    stylesheets: list[tuple[str, int]] = []
    page.on("response", lambda r: stylesheets.append((r.url, r.status)) if r.url.endswith(".css") else None)
    page.goto("/admin/login/")
    page.wait_for_load_state("load")
    base = [(url, status) for url, status in stylesheets if "/static/admin/css/base." in url]
    assert base and all(status == 200 for _, status in stylesheets), stylesheets
    # collectstatic gave the file a content hash, so whitenoise lets browsers keep it forever
    url = base[0][0]
    assert re.search(r"/base\.[0-9a-f]{12}\.css$", url), url
    response = requests.get(url, headers={"Accept-Encoding": "gzip"}, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/css")
    assert "immutable" in response.headers["Cache-Control"]
    # Django's styling is applied: the header bar is not an unstyled default
    assert page.evaluate("getComputedStyle(document.querySelector('#header')).display") == "flex"


def test_an_analyst_cannot_log_in(page: Page, server: LiveServer) -> None:
    server.client().register("anna", "annapass")
    log_in(page, "anna", "annapass")
    assert STAFF_ONLY in page.locator(".errornote").inner_text()
    page.goto("/admin/accounts/user/")
    assert "/admin/login/" in page.url


def test_disabling_a_user_signs_them_out_at_once(admin: Page, server: LiveServer, artifacts: Path) -> None:
    token = server.client().register("dora", "dorapass")["token"]
    assert token_status(server, token) == 200
    find_user(admin, "dora")
    assert admin.locator("#result_list tbody tr").count() == 1
    admin.screenshot(path=str(artifacts / "admin-users-page.png"), full_page=True)
    run_action(admin, "dora", "disable")
    assert "Disabled: 1 user." in messages(admin)
    assert token_status(server, token) == 401
    assert login_status(server, "dora", "dorapass") == 403


def test_revoking_one_session_on_the_user_page(admin: Page, server: LiveServer, artifacts: Path) -> None:
    first = server.client().register("erin", "erinpass")["token"]
    erin = server.client()
    second = erin.login("erin", "erinpass")["token"]
    erin.push({"humans": {"h1": {"name": "Erin's"}}})
    find_user(admin, "erin")
    admin.click("#result_list a:text-is('erin')")
    html = admin.content()
    assert first not in html and second not in html  # sessions are named by a digest prefix only
    assert admin.locator("#sessions tbody tr").count() == 2
    assert "1 in 1 store" in admin.locator("#repository").inner_text()
    admin.screenshot(path=str(artifacts / "admin-user-page.png"), full_page=True)
    public_id = hashlib.sha256(first.encode()).hexdigest()[:12]
    admin.locator(f"#session-{public_id} input[type=submit]").click()
    assert f"Session {public_id} of erin revoked." in messages(admin)
    assert token_status(server, first) == 401
    assert token_status(server, second) == 200


def test_resetting_a_password(admin: Page, server: LiveServer) -> None:
    token = server.client().register("fay", "oldpass1")["token"]
    find_user(admin, "fay")
    admin.click("#result_list a:text-is('fay')")
    admin.get_by_role("link", name="Reset password").click()
    admin.fill("#id_password1", "newpass22")
    admin.fill("#id_password2", "newpass22")
    admin.click("input[name=set-password]")
    assert "Password changed successfully." in messages(admin)
    assert login_status(server, "fay", "oldpass1") == 401
    assert login_status(server, "fay", "newpass22") == 200
    assert token_status(server, token) == 401  # a reset signs the user out everywhere


def test_deleting_a_user_with_all_their_data(admin: Page, server: LiveServer) -> None:
    gus = server.client()
    token = gus.register("gus", "guspass1")["token"]
    gus.push({"cases": {"c1": {"title": "Gus's case"}}})
    user_id = server.client().login("gus", "guspass1")["user"]["id"]
    assert {p.name for p in server.data_dir.glob(f"*{user_id}*")} >= {
        f"repo_{user_id}.json",
        f"changelog_{user_id}.jsonl",
    }
    run_action(admin, "gus", "delete_selected")
    assert "their repository and its changelog" in admin.locator("#content").inner_text()
    admin.locator("#content form input[type=submit]").click()
    assert "Successfully deleted 1 user." in messages(admin)
    assert token_status(server, token) == 401
    assert login_status(server, "gus", "guspass1") == 401
    assert list(server.data_dir.glob(f"*{user_id}*")) == []


def test_artifacts_are_not_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/tests/artifacts/" in ignored
    if shutil.which("git") and (ROOT / ".git").exists():
        assert os.system(f"git -C {ROOT} check-ignore -q tests/artifacts/x.png") == 0
