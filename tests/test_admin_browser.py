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

from tests.liveserver import ROOT, LiveServer

if TYPE_CHECKING:  # for the annotations; playwright itself is imported when a browser is launched
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STAFF_ONLY = "Please enter the correct username and password for a staff account."


def api_register(server: LiveServer, username: str, password: str) -> str:
    response = requests.post(
        f"{server.url}/api/auth/register", json={"username": username, "password": password}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def api_login(server: LiveServer, username: str, password: str) -> requests.Response:
    return requests.post(f"{server.url}/api/auth/login", json={"username": username, "password": password}, timeout=30)


def api_me(server: LiveServer, token: str) -> int:
    return requests.get(
        f"{server.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ).status_code


@pytest.fixture(autouse=True)
def data_dir() -> None:
    """Replaces conftest's per-test database and data directory: these tests
    touch neither, only the live server's own. (Django refuses database access
    while Playwright's event loop runs in the same thread.)"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("admin-browser") / "data", workers=2)
    live.start()
    # The first account registered is the admin, as on a new installation.
    api_register(live, "root", "rootpass")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists() and os.environ.get("CI") != "true":
        pytest.skip(f"{CHROMIUM} is not installed (make test installs it; CI always runs these tests)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def page(chromium: Browser, server: LiveServer) -> Iterator[Page]:
    """A fresh browser context (no cookies) for each test."""
    context = chromium.new_context(base_url=server.url, viewport={"width": 1440, "height": 900})
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
    api_register(server, "anna", "annapass")
    log_in(page, "anna", "annapass")
    assert STAFF_ONLY in page.locator(".errornote").inner_text()
    page.goto("/admin/accounts/user/")
    assert "/admin/login/" in page.url


def test_disabling_a_user_signs_them_out_at_once(admin: Page, server: LiveServer, artifacts: Path) -> None:
    token = api_register(server, "dora", "dorapass")
    assert api_me(server, token) == 200
    find_user(admin, "dora")
    assert admin.locator("#result_list tbody tr").count() == 1
    admin.screenshot(path=str(artifacts / "admin-users-page.png"), full_page=True)
    run_action(admin, "dora", "disable")
    assert "Disabled: 1 user." in messages(admin)
    assert api_me(server, token) == 401
    assert api_login(server, "dora", "dorapass").status_code == 403


def test_revoking_one_session_on_the_user_page(admin: Page, server: LiveServer, artifacts: Path) -> None:
    first = api_register(server, "erin", "erinpass")
    second = api_login(server, "erin", "erinpass").json()["token"]
    requests.post(
        f"{server.url}/api/sync",
        json={"clientVersion": 0, "stores": {"humans": {"h1": {"name": "Erin's"}}}},
        headers={"Authorization": f"Bearer {second}"},
        timeout=30,
    ).raise_for_status()
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
    assert api_me(server, first) == 401
    assert api_me(server, second) == 200


def test_resetting_a_password(admin: Page, server: LiveServer) -> None:
    token = api_register(server, "fay", "oldpass1")
    find_user(admin, "fay")
    admin.click("#result_list a:text-is('fay')")
    admin.get_by_role("link", name="Reset password").click()
    admin.fill("#id_password1", "newpass22")
    admin.fill("#id_password2", "newpass22")
    admin.click("input[name=set-password]")
    assert "Password changed successfully." in messages(admin)
    assert api_login(server, "fay", "oldpass1").status_code == 401
    assert api_login(server, "fay", "newpass22").status_code == 200
    assert api_me(server, token) == 401  # a reset signs the user out everywhere


def test_deleting_a_user_with_all_their_data(admin: Page, server: LiveServer) -> None:
    token = api_register(server, "gus", "guspass1")
    requests.post(
        f"{server.url}/api/sync",
        json={"clientVersion": 0, "stores": {"cases": {"c1": {"title": "Gus's case"}}}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).raise_for_status()
    user_id = api_login(server, "gus", "guspass1").json()["user"]["id"]
    assert {p.name for p in server.data_dir.glob(f"*{user_id}*")} >= {
        f"repo_{user_id}.json",
        f"changelog_{user_id}.jsonl",
    }
    run_action(admin, "gus", "delete_selected")
    assert "their repository and its changelog" in admin.locator("#content").inner_text()
    admin.locator("#content form input[type=submit]").click()
    assert "Successfully deleted 1 user." in messages(admin)
    assert api_me(server, token) == 401
    assert api_login(server, "gus", "guspass1").status_code == 401
    assert list(server.data_dir.glob(f"*{user_id}*")) == []


def test_artifacts_are_not_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/tests/artifacts/" in ignored
    if shutil.which("git") and (ROOT / ".git").exists():
        assert os.system(f"git -C {ROOT} check-ignore -q tests/artifacts/x.png") == 0
