"""The admin site at /admin/: who may log in, the users page and its actions,
the user page (sessions, password reset, repository, changelog), and the rule
that the server always keeps an active admin. Effects are checked through the
HTTP API, as a user of the server would notice them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.models import Role, User
from tests.helpers import Api

STAFF_ONLY = "Please enter the correct username and password for a staff account."


@pytest.fixture(autouse=True)
def plain_static_files(settings: Any) -> None:
    # The manifest of hashed names exists only after collectstatic (the live
    # server runs it); pages rendered in-process use plain names.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def browser(admin_api: Api) -> Client:
    """A browser session of the admin ``admin`` (registered first through the API)."""
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": "admin", "password": "adminpass"})
    assert response.status_code == 302 and response["Location"] == "/admin/", response.content
    return client


def user(username: str) -> User:
    return User.objects.get(username=username)


def change_url(username: str) -> str:
    return f"/admin/accounts/user/{user(username).pk}/change/"


def act(client: Client, action: str, *usernames: str, **extra: str):
    return client.post(
        "/admin/accounts/user/",
        {"action": action, "_selected_action": [str(user(name).pk) for name in usernames], **extra},
        follow=True,
    )


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def token_status(api: Api, token: str | None) -> int:
    return api.get("/api/auth/me", token=token).status_code


def module(html: str, module_id: str) -> str:
    """The admin page's ``<div class="module" id=...>`` section (up to its first closing div)."""
    match = re.search(rf'<div class="module" id="{module_id}">.*?</div>', html, re.S)
    assert match is not None, f"no {module_id} module on the page"
    return match.group(0)


# --- logging in ---------------------------------------------------------------


def test_an_analyst_with_the_right_password_is_refused_with_djangos_message(analyst_api: Api) -> None:
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": "analyst", "password": "analystpass"})
    assert response.status_code == 200
    assert STAFF_ONLY in response.content.decode()
    assert client.get("/admin/").status_code == 302  # still sent to the login page


def test_an_admin_logs_in_with_the_password_the_api_uses_and_any_case(admin_api: Api) -> None:
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": "ADMIN", "password": "adminpass"})
    assert response.status_code == 302
    page = client.get("/admin/")
    assert page.status_code == 200 and "PZLS administration" in page.content.decode()


def test_a_disabled_admin_cannot_log_in(admin_api: Api) -> None:
    other = Api()
    other.register("second", "secondpass")
    User.objects.filter(username="second").update(role=Role.ADMIN, is_active=False)
    response = Client().post("/admin/login/", {"username": "second", "password": "secondpass"})
    assert STAFF_ONLY in response.content.decode()


def test_an_admin_demoted_meanwhile_loses_the_admin_site(browser: Client) -> None:
    other = Api()
    other.register("second", "secondpass")
    User.objects.filter(username="second").update(role=Role.ADMIN)
    second = Client()
    second.post("/admin/login/", {"username": "second", "password": "secondpass"})
    assert second.get("/admin/accounts/user/").status_code == 200
    act(browser, "make_analyst", "second")
    assert second.get("/admin/accounts/user/").status_code == 302


# --- the users page -------------------------------------------------------------


def test_the_users_page_shows_role_state_and_repository_of_each_user(browser: Client, analyst_api: Api) -> None:
    analyst_api.push({"humans": {"h1": {"name": "A"}, "h2": {"name": "B"}}, "tags": {"t1": {}}})
    analyst_api.push({"humans": {"h3": {"name": "C"}}})
    last_sync = analyst_api.get("/api/sync/status").json()["account"]["lastSync"]
    page = browser.get("/admin/accounts/user/")
    assert page.status_code == 200
    row = page.context["cl"].result_list.get(username="analyst")
    html = page.content.decode()
    for header in ("Username", "Role", "Active", "Created", "Last login", "Repo version", "Records", "Last sync"):
        assert f">{header}<" in html
    cells = next(segment for segment in html.split("<tr") if str(row.pk) in segment)
    assert re.search(r'field-repository_version">2<', cells)
    assert re.search(r'field-record_count">4<', cells)
    assert last_sync in cells
    assert 'field-role">Analyst<' in cells


def test_search_by_username_and_filters_by_role_and_active(browser: Client, analyst_api: Api) -> None:
    Api().register("bob", "bobpass1")
    User.objects.filter(username="bob").update(is_active=False)

    def listed(query: str) -> set[str]:
        return {u.username for u in browser.get("/admin/accounts/user/" + query).context["cl"].result_list}

    assert listed("?q=ANAL") == {"analyst"}
    assert listed("?role__exact=admin") == {"admin"}
    assert listed("?role__exact=analyst") == {"analyst", "bob"}
    assert listed("?is_active__exact=0") == {"bob"}


def test_make_admin_and_make_analyst(browser: Client, analyst_api: Api) -> None:
    act(browser, "make_admin", "analyst")
    assert user("analyst").role == Role.ADMIN
    assert analyst_api.get("/api/admin/users").status_code == 200
    act(browser, "make_analyst", "analyst")
    assert user("analyst").role == Role.ANALYST
    assert analyst_api.get("/api/admin/users").status_code == 403


def test_the_last_active_admin_cannot_be_demoted_disabled_or_deleted(browser: Client, admin_api: Api) -> None:
    for action in ("make_analyst", "disable"):
        response = act(browser, action, "admin")
        assert "admin: The last active admin cannot be demoted, disabled or deleted" in messages_of(response)
    response = act(browser, "delete_selected", "admin")
    assert "admin: You cannot delete your own account" in messages_of(response)
    admin = user("admin")
    assert (admin.role, admin.is_active) == (Role.ADMIN, True)
    assert token_status(admin_api, admin_api.token) == 200


def test_demoting_every_admin_at_once_keeps_one(browser: Client) -> None:
    Api().register("second", "secondpass")
    User.objects.filter(username="second").update(role=Role.ADMIN)
    response = act(browser, "make_analyst", "admin", "second")
    roles = {u.username: u.role for u in User.objects.all()}
    assert sorted(roles.values()) == [Role.ADMIN, Role.ANALYST]
    assert any("The last active admin" in m for m in messages_of(response))


def test_disabling_signs_out_at_once_and_enabling_lets_the_user_log_in_again(browser: Client, analyst_api: Api) -> None:
    response = act(browser, "disable", "analyst")
    assert "Disabled: 1 user." in messages_of(response)
    assert token_status(analyst_api, analyst_api.token) == 401
    login = analyst_api.post("/api/auth/login", {"username": "analyst", "password": "analystpass"})
    assert login.status_code == 403
    act(browser, "enable", "analyst")
    login = analyst_api.post("/api/auth/login", {"username": "analyst", "password": "analystpass"})
    assert login.status_code == 200


def test_sign_out_everywhere_revokes_every_token_but_keeps_the_account(browser: Client, analyst_api: Api) -> None:
    second = analyst_api.post("/api/auth/login", {"username": "analyst", "password": "analystpass"}).json()["token"]
    response = act(browser, "sign_out_everywhere", "analyst")
    assert "Signed out 1 users everywhere (2 sessions revoked)." in messages_of(response)
    assert token_status(analyst_api, analyst_api.token) == 401
    assert token_status(analyst_api, second) == 401
    assert analyst_api.post("/api/auth/login", {"username": "analyst", "password": "analystpass"}).status_code == 200


def test_delete_asks_for_confirmation_then_removes_the_user_and_all_their_data(
    browser: Client, analyst_api: Api, data_dir: Path
) -> None:
    analyst_api.push({"humans": {"h1": {"name": "A"}}})
    uid = str(user("analyst").pk)
    assert {p.name for p in data_dir.glob(f"*{uid}*")} >= {f"repo_{uid}.json", f"changelog_{uid}.jsonl"}
    confirm = act(browser, "delete_selected", "analyst")
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "Are you sure you want to delete the selected user?" in html and "their repository and its changelog" in html
    assert User.objects.filter(username="analyst").exists()
    act(browser, "delete_selected", "analyst", post="yes")
    assert not User.objects.filter(username="analyst").exists()
    assert token_status(analyst_api, analyst_api.token) == 401
    assert list(data_dir.glob(f"*{uid}*")) == []


def test_the_delete_button_of_the_user_page_deletes_with_data(
    browser: Client, analyst_api: Api, data_dir: Path
) -> None:
    analyst_api.push({"humans": {"h1": {"name": "A"}}})
    uid = str(user("analyst").pk)
    url = f"/admin/accounts/user/{uid}/delete/"
    assert "their repository and its changelog" in browser.get(url).content.decode()
    browser.post(url, {"post": "yes"})
    assert not User.objects.filter(pk=uid).exists()
    assert list(data_dir.glob(f"*{uid}*")) == []
    # and an admin's own page offers no delete at all
    assert browser.get(f"/admin/accounts/user/{user('admin').pk}/delete/").status_code == 403


# --- the user page ----------------------------------------------------------------


def test_the_user_page_lists_sessions_by_short_id_and_never_shows_a_token(browser: Client, analyst_api: Api) -> None:
    second = analyst_api.post("/api/auth/login", {"username": "analyst", "password": "analystpass"}).json()["token"]
    html = browser.get(change_url("analyst")).content.decode()
    ids = re.findall(r'<tr id="session-([0-9a-f]{12})">', html)
    assert len(ids) == 2
    assert analyst_api.token is not None and analyst_api.token not in html and second not in html
    assert "Revoke" in html


def test_revoking_one_session_leaves_the_others(browser: Client, analyst_api: Api) -> None:
    second = analyst_api.post("/api/auth/login", {"username": "analyst", "password": "analystpass"}).json()["token"]
    html = browser.get(change_url("analyst")).content.decode()
    first_id = re.findall(r'<tr id="session-([0-9a-f]{12})">', html)[0]  # oldest first: the registration token
    response = browser.post(
        f"/admin/accounts/user/{user('analyst').pk}/sessions/revoke/", {"session": first_id}, follow=True
    )
    assert f"Session {first_id} of analyst revoked." in messages_of(response)
    assert token_status(analyst_api, analyst_api.token) == 401
    assert token_status(analyst_api, second) == 200
    assert f'id="session-{first_id}"' not in response.content.decode()


def test_revoking_needs_a_post(browser: Client, analyst_api: Api) -> None:
    assert browser.get(f"/admin/accounts/user/{user('analyst').pk}/sessions/revoke/").status_code == 405


def test_the_user_page_shows_the_repository_and_the_last_50_changelog_entries(
    browser: Client, analyst_api: Api
) -> None:
    for n in range(55):
        analyst_api.push({"humans": {f"h{n}": {"name": str(n)}}})
    analyst_api.push({"tags": {"t1": {}}})
    status = analyst_api.get("/api/sync/status").json()["account"]
    response = browser.get(change_url("analyst"))
    html = response.content.decode()
    repository = module(html, "repository")
    assert "<td>56</td>" in repository  # version
    assert "56 in 2 stores" in repository
    assert status["lastSync"] in repository
    stores = dict(response.context["repository_stores"])
    assert stores == {"humans": 55, "tags": 1}
    changelog = module(html, "changelog")
    assert "(newest 50 of 56)" in changelog
    versions = [int(v) for v in re.findall(r"<tr><td>(\d+)</td><td>\d{4}-", changelog)]
    assert versions == list(range(56, 6, -1))


def test_a_user_without_data_has_an_empty_repository_and_no_sessions(browser: Client, analyst_api: Api) -> None:
    browser.post(f"/admin/accounts/user/{user('analyst').pk}/sessions/revoke/", {"session": "all"})
    html = browser.get(change_url("analyst")).content.decode()
    assert "No active sessions." in html and "No syncs yet." in html and "0 in 0 stores" in html


def test_a_password_reset_takes_effect_for_the_api_and_signs_the_user_out(browser: Client, analyst_api: Api) -> None:
    url = f"/admin/accounts/user/{user('analyst').pk}/password/"
    assert 'href="../password/"' in browser.get(change_url("analyst")).content.decode()
    form = browser.get(url)
    assert form.status_code == 200
    # PZLS logs in by password only: no way to switch password login off here.
    assert 'name="usable_password"' not in form.content.decode()
    assert "unset-password" not in form.content.decode()
    short = browser.post(url, {"password1": "abc", "password2": "abc"})
    assert "Password must be at least 6 characters" in short.content.decode()
    response = browser.post(url, {"password1": "brandnew1", "password2": "brandnew1"}, follow=True)
    assert "Password changed successfully." in messages_of(response)
    assert token_status(analyst_api, analyst_api.token) == 401
    assert analyst_api.post("/api/auth/login", {"username": "analyst", "password": "analystpass"}).status_code == 401
    assert analyst_api.post("/api/auth/login", {"username": "analyst", "password": "brandnew1"}).status_code == 200


def test_the_user_form_changes_role_and_active_with_the_same_rules(browser: Client, analyst_api: Api) -> None:
    url = change_url("analyst")
    response = browser.post(url, {"username": "analyst", "role": "admin", "is_active": "on"}, follow=True)
    assert response.status_code == 200 and user("analyst").role == Role.ADMIN
    response = browser.post(url, {"username": "analyst", "role": "analyst"}, follow=True)
    assert (user("analyst").role, user("analyst").is_active) == (Role.ANALYST, False)
    assert token_status(analyst_api, analyst_api.token) == 401  # disabled through the form: signed out too


def test_the_user_form_refuses_to_demote_the_last_admin_or_take_a_name_in_another_case(
    browser: Client, analyst_api: Api
) -> None:
    response = browser.post(change_url("admin"), {"username": "admin", "role": "analyst", "is_active": "on"})
    assert response.status_code == 200
    assert "The last active admin cannot be demoted, disabled or deleted" in response.content.decode()
    assert user("admin").role == Role.ADMIN
    response = browser.post(change_url("analyst"), {"username": "ADMIN", "role": "analyst", "is_active": "on"})
    assert "Username already taken" in response.content.decode()
    assert User.objects.filter(username="analyst").exists()


def test_an_admin_adds_a_user_who_then_logs_in_through_the_api(browser: Client, api: Api) -> None:
    response = browser.post(
        "/admin/accounts/user/add/",
        {"username": "carol", "role": "analyst", "password1": "carolpass", "password2": "carolpass"},
        follow=True,
    )
    assert response.status_code == 200
    assert user("carol").role == Role.ANALYST
    login = api.post("/api/auth/login", {"username": "carol", "password": "carolpass"})
    assert login.status_code == 200 and login.json()["user"]["role"] == "analyst"
    dup = browser.post(
        "/admin/accounts/user/add/",
        {"username": "Carol", "role": "analyst", "password1": "x" * 8, "password2": "x" * 8},
    )
    assert "Username already taken" in dup.content.decode()
    short = browser.post(
        "/admin/accounts/user/add/", {"username": "dave", "role": "analyst", "password1": "abc", "password2": "abc"}
    )
    assert "Password must be at least 6 characters" in short.content.decode()
