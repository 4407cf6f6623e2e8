"""Account changes racing each other on the real server, on both storages.

Each test runs against a server started as ``make run`` starts it (gunicorn,
several worker processes), once with the files storage (SQLite for the
accounts) and once with the database storage on a throwaway PostgreSQL
database. Two requests are sent at the same moment (a barrier releases two
threads whose connections are already open, so they land on two workers),
many times over, and whatever order the server took them in, the outcome
must be one a serial order gives:

- two password changes with the same current password: exactly one 200 and
  one 403, and the winner's token and new password work, nothing of the loser's;
- a password change racing a logout, a disable, a role change or a delete of
  the same user: each answer and what is stored afterwards agree with one order;
- a user deleted while big pushes (and gzip pulls) of theirs are under way:
  every push got 200 or 401 ``Invalid or expired token``, and once the delete
  has answered no file, token or row of the user is left, on either storage.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from testkit.database import execute
from testkit.server import LiveServer
from tests.helpers import LiveServers

pytestmark = pytest.mark.live

# Each round costs several scrypt hashes (registration, logins, changes): the
# double change, the race the protocol states, gets twice the rounds.
ROUNDS = 10
DOUBLE_CHANGE_ROUNDS = 20
ADMIN_PASSWORD = "adminpass"
INVALID_TOKEN = {"error": "Invalid or expired token"}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


class Site:
    """One running server and how to look into its storage."""

    def __init__(self, server: LiveServer, storage: str, database_url: str | None) -> None:
        self.server, self.storage, self.database_url = server, storage, database_url
        self.url = server.url
        self.admin_token = self.register("admin", ADMIN_PASSWORD)["token"]
        self.browser = self.admin_site_session()

    def post(self, path: str, body: Any = None, token: str | None = None, **kw: Any) -> requests.Response:
        headers = auth(token) if token else {"Content-Type": "application/json"}
        return requests.post(self.url + path, data=orjson.dumps(body or {}), headers=headers, timeout=60, **kw)

    def register(self, username: str, password: str) -> dict[str, Any]:
        response = self.post("/api/auth/register", {"username": username, "password": password})
        assert response.status_code == 200, response.text
        return response.json()

    def login(self, username: str, password: str) -> requests.Response:
        return self.post("/api/auth/login", {"username": username, "password": password})

    def me(self, token: str) -> requests.Response:
        return requests.get(self.url + "/api/auth/me", headers=auth(token), timeout=60)

    def admin_site_session(self) -> requests.Session:
        session = requests.Session()
        session.get(self.url + "/admin/login/", timeout=60)
        response = session.post(
            self.url + "/admin/login/?next=/admin/",
            data={
                "username": "admin",
                "password": ADMIN_PASSWORD,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
                "next": "/admin/",
            },
            allow_redirects=False,
            timeout=60,
        )
        assert response.status_code == 302 and response.headers["Location"] == "/admin/", response.text
        return session

    def admin_action(self, session: requests.Session, action: str, user_id: str) -> requests.Response:
        """An action of the admin site's users page on one user, as the browser posts it."""
        return session.post(
            self.url + "/admin/accounts/user/",
            data={
                "action": action,
                "_selected_action": user_id,
                "index": "0",
                "select_across": "0",
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            allow_redirects=False,
            timeout=60,
        )

    # --- what is stored of a user ---------------------------------------------------

    def traces_of(self, user_id: str) -> list[str]:
        """Every file naming or holding the user's id, and every row of any table holding it."""
        forms = [user_id, user_id.replace("-", "")]
        found = []
        for path in self.server.data_dir.rglob("*"):
            if any(form in path.name for form in forms):
                found.append(f"file {path.name}")
            elif path.is_file() and not path.name.startswith("db.sqlite3"):
                content = path.read_bytes()
                if any(form.encode() in content for form in forms):
                    found.append(f"{path.name} holds the id")
        if self.database_url is None:
            found += sqlite_rows_holding(self.server.data_dir / "db.sqlite3", forms)
        else:
            found += postgresql_rows_holding(self.database_url, forms)
        return found


# The audit log records what a user did and keeps it after the user is gone (PROTOCOL.md §8.5).
KEPT_HISTORY = {"sync_auditbatch"}


def sqlite_rows_holding(path: Path, forms: list[str]) -> list[str]:
    found = []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if row[0] not in KEPT_HISTORY
        ]
        for table in tables:
            for column in [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]:
                for form in forms:
                    sql = f'SELECT COUNT(*) FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE ?'
                    if connection.execute(sql, (f"%{form}%",)).fetchone()[0]:
                        found.append(f"row of {table} by {column}")
    finally:
        connection.close()
    return found


def postgresql_rows_holding(url: str, forms: list[str]) -> list[str]:
    found = []
    columns = execute(
        url,
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND data_type IN ('uuid', 'text', 'character varying', 'character')",
    )
    for table, column in columns:
        if table in KEPT_HISTORY:
            continue
        for form in forms:
            rows = execute(url, f'SELECT COUNT(*) FROM "{table}" WHERE "{column}"::text LIKE %s', (f"%{form}%",))
            if rows[0][0]:
                found.append(f"row of {table} by {column}")
    # Rows of a repository hang off its id, not the user's: none may be left without one.
    for table in ("sync_store", "sync_changelogentry"):
        orphans = execute(
            url, f"SELECT COUNT(*) FROM {table} WHERE repository_id NOT IN (SELECT id FROM sync_repository)"
        )
        if orphans[0][0]:
            found.append(f"rows of {table} without a repository")
    return found


@pytest.fixture(scope="module", params=["files", pytest.param("database", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, live_server_factory: LiveServers) -> Site:
    live = live_server_factory.start(
        storage=request.param,
        workers=3,
        env={"PZLS_LOGIN_RATE": "100000/minute", "PZLS_AUTH_RATE_PER_ADDRESS": "100000/minute"},
    )
    return Site(live, request.param, live.database_url)


def at_once(*requests_: Callable[[], requests.Response]) -> list[requests.Response]:
    """Send the requests from threads released together; their answers in the same order."""
    barrier = threading.Barrier(len(requests_))
    answers: list[Any] = [None] * len(requests_)

    def run(n: int) -> None:
        barrier.wait()
        try:
            answers[n] = requests_[n]()
        except BaseException as exc:  # reported below, with the others
            answers[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(requests_))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for answer in answers:
        if not isinstance(answer, requests.Response):
            raise AssertionError(f"a request failed: {answer!r}")
    return answers


def warm(session: requests.Session, site: Site) -> requests.Session:
    """Open the session's connection now, so that the barrier releases requests, not handshakes."""
    session.get(site.url + "/api/auth/health", timeout=60)
    return session


def change_password(
    site: Site, session: requests.Session, token: str, current: str, new: str
) -> Callable[[], requests.Response]:
    body = orjson.dumps({"currentPassword": current, "newPassword": new})
    return lambda: session.post(site.url + "/api/auth/change-password", data=body, headers=auth(token), timeout=60)


def post(session: requests.Session, url: str, token: str) -> Callable[[], requests.Response]:
    return lambda: session.post(url, headers=auth(token), timeout=60)


def admin_action(site: Site, action: str, user_id: str) -> Callable[[], requests.Response]:
    return lambda: site.admin_action(site.browser, action, user_id)


def delete_user(site: Site, session: requests.Session, user_id: str) -> Callable[[], requests.Response]:
    url = f"{site.url}/api/admin/users/{user_id}"
    return lambda: session.delete(url, headers=auth(site.admin_token), timeout=60)


def error_of(response: requests.Response) -> Any:
    return response.json() if response.headers.get("Content-Type", "").startswith("application/json") else None


# --- password change against password change -------------------------------------------


def test_two_password_changes_with_the_same_current_password_give_one_200_and_one_403(site: Site) -> None:
    for n in range(DOUBLE_CHANGE_ROUNDS):
        name = f"twice{n}"
        site.register(name, "old-pass")
        tokens = [site.login(name, "old-pass").json()["token"] for _ in range(2)]
        news = ["new-pass-a", "new-pass-b"]
        with requests.Session() as a, requests.Session() as b:
            answers = at_once(
                change_password(site, warm(a, site), tokens[0], "old-pass", news[0]),
                change_password(site, warm(b, site), tokens[1], "old-pass", news[1]),
            )
        statuses = [r.status_code for r in answers]
        assert sorted(statuses) == [200, 403], (n, [r.text for r in answers])
        winner, loser = (0, 1) if statuses[0] == 200 else (1, 0)
        assert error_of(answers[loser]) == {"error": "Current password is incorrect"}
        assert site.me(tokens[winner]).status_code == 200
        assert site.me(tokens[loser]).status_code == 401  # the winner signed every other token out
        assert site.login(name, news[winner]).status_code == 200
        assert site.login(name, news[loser]).status_code == 401
        assert site.login(name, "old-pass").status_code == 401


# --- password change against logout, disable, role change, delete ----------------------


def race_setup(site: Site, prefix: str, n: int) -> tuple[str, str, str]:
    name = f"{prefix}{n}"
    registered = site.register(name, "old-pass")
    return name, registered["user"]["id"], registered["token"]


def test_a_password_change_racing_a_logout_of_its_token(site: Site) -> None:
    for n in range(ROUNDS):
        name, _, token = race_setup(site, "logout", n)
        with requests.Session() as a, requests.Session() as b:
            change, logout = at_once(
                change_password(site, warm(a, site), token, "old-pass", "new-pass"),
                post(warm(b, site), site.url + "/api/auth/logout", token),
            )
        assert logout.status_code == 200, logout.text
        assert site.me(token).status_code == 401  # logged out, whatever happened first
        if change.status_code == 200:
            assert site.login(name, "new-pass").status_code == 200
            assert site.login(name, "old-pass").status_code == 401
        else:
            assert change.status_code == 401 and error_of(change) == INVALID_TOKEN, change.text
            assert site.login(name, "old-pass").status_code == 200
            assert site.login(name, "new-pass").status_code == 401


def test_a_password_change_racing_a_disable(site: Site) -> None:
    for n in range(ROUNDS):
        name, user_id, token = race_setup(site, "disable", n)
        with requests.Session() as a:
            change, disable = at_once(
                change_password(site, warm(a, site), token, "old-pass", "new-pass"),
                admin_action(site, "disable", user_id),
            )
        assert disable.status_code == 302, disable.text
        if change.status_code == 200:
            current, other = "new-pass", "old-pass"
        else:
            assert change.status_code == 403 and error_of(change) == {"error": "Account disabled"}, change.text
            current, other = "old-pass", "new-pass"
        assert site.me(token).status_code == 401  # disabling signed the user out
        response = site.login(name, current)
        assert response.status_code == 403 and response.json() == {"error": "Account disabled"}
        assert site.login(name, other).status_code == 401
        assert site.admin_action(site.browser, "enable", user_id).status_code == 302
        assert site.login(name, current).status_code == 200
        assert site.login(name, other).status_code == 401


def test_a_password_change_racing_a_role_change(site: Site) -> None:
    for n in range(ROUNDS):
        name, user_id, token = race_setup(site, "promote", n)
        with requests.Session() as a:
            change, promote = at_once(
                change_password(site, warm(a, site), token, "old-pass", "new-pass"),
                admin_action(site, "make_admin", user_id),
            )
        assert promote.status_code == 302, promote.text
        assert change.status_code == 200, change.text  # a role change never stands in its way
        me = site.me(token)
        assert me.status_code == 200 and me.json()["user"]["role"] == "admin"
        assert site.login(name, "new-pass").json()["user"]["role"] == "admin"
        assert site.login(name, "old-pass").status_code == 401


def test_a_password_change_racing_the_deletion_of_its_user(site: Site) -> None:
    for n in range(ROUNDS):
        name, user_id, token = race_setup(site, "gone", n)
        with requests.Session() as a, requests.Session() as b:
            change, delete = at_once(
                change_password(site, warm(a, site), token, "old-pass", "new-pass"),
                delete_user(site, warm(b, site), user_id),
            )
        assert delete.status_code == 200, delete.text
        if change.status_code != 200:
            assert change.status_code == 401 and error_of(change) == INVALID_TOKEN, change.text
        assert site.me(token).status_code == 401
        assert site.login(name, "new-pass").status_code == 401
        assert site.login(name, "old-pass").status_code == 401
        assert site.traces_of(user_id) == []


# --- deleting a user while their big pushes run ------------------------------------------


def push_until_refused(site: Site, token: str, worker: int, answers: list, acknowledged: threading.Event) -> None:
    """Push about 1.5 MB of new records at a time (every push writes, and takes a while) until one is refused."""
    with requests.Session() as session:
        for n in range(200):
            stores = {"humans": {f"w{worker}-p{n}-r{r}": {"name": f"P {r}", "notes": "x" * 1000} for r in range(1500)}}
            response = session.post(
                site.url + "/api/sync", data=orjson.dumps({"stores": stores}), headers=auth(token), timeout=120
            )
            answers.append((response.status_code, error_of(response)))  # list.append is atomic
            if response.status_code != 200:
                return
            acknowledged.set()


def pull_gzip_until_refused(site: Site, token: str, answers: list) -> None:
    """Pull compressed (the pull cache keeps a copy of bodies this large) until refused."""
    deadline = time.monotonic() + 240
    with requests.Session() as session:
        while time.monotonic() < deadline:
            response = session.get(
                site.url + "/api/sync", headers={**auth(token), "Accept-Encoding": "gzip"}, timeout=120
            )
            answers.append((response.status_code, error_of(response) if response.status_code != 200 else None))
            if response.status_code != 200:
                return


def test_deleting_a_user_while_big_pushes_run_leaves_nothing_of_theirs(site: Site) -> None:
    for round_ in range(3):
        name, user_id, token = race_setup(site, "pushy", round_)
        answers: list[tuple[int, Any]] = []
        pulls: list[tuple[int, Any]] = []
        acknowledged = threading.Event()
        threads = [
            threading.Thread(target=push_until_refused, args=(site, token, worker, answers, acknowledged))
            for worker in range(6)
        ]
        threads.append(threading.Thread(target=pull_gzip_until_refused, args=(site, token, pulls)))
        for thread in threads:
            thread.start()
        assert acknowledged.wait(120), "no push went through before the delete"
        time.sleep(0.2 * round_)  # a different moment of the pushes each round
        with requests.Session() as session:
            response = delete_user(site, session, user_id)()
        assert response.status_code == 200, response.text
        for thread in threads:
            thread.join(300)
        assert not any(thread.is_alive() for thread in threads)
        refused = [answer for answer in answers if answer[0] != 200]
        assert len(refused) == 6  # every pusher ended on its first refusal
        assert all(answer == (401, INVALID_TOKEN) for answer in refused), refused
        assert pulls[-1] == (401, INVALID_TOKEN) and all(status == 200 for status, _ in pulls[:-1]), pulls[-3:]
        assert site.traces_of(user_id) == []
        assert site.login(name, "old-pass").status_code == 401
