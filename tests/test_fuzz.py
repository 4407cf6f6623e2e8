"""Schema-driven fuzzing of the live server (gunicorn, as ``make run`` starts it).

Requests are generated from the server's own /api/schema by schemathesis, both
fitting the description (positive) and breaking it (negative), and sent as an
admin and as an analyst. Every answer must:

- not be a 5xx;
- have a documented status, content type, headers and body (the description
  is the contract PROTOCOL.md gives, see tests/test_schema.py);
- for a request that breaks the description, be a 4xx;
- for a GET that fits it, succeed (a valid threshold or since is never refused);
- when it is a 4xx, leave the data directory as it was: same files, same
  bytes, same rows in the database.

Requests that legitimately change state are kept meaningful rather than
excluded: a logout is sent with a fresh token of the same account (a second
login), so the fuzzer's own token survives it; a password change keeps the
calling token valid by the protocol, and the fuzzer remembers the new password
for its next login.
DELETE /api/admin/users/{id} is fuzzed too; the generated ids never name the
fuzzer's own accounts (its own id answers 400, the analyst's is never
generated), so the two roles survive the run.

``make test`` runs PZLS_FUZZ_EXAMPLES (default 60) examples per role and mode,
derandomised so a run is reproducible; ``make fuzz`` runs many more, random.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from testkit.client import Client
from testkit.server import LiveServer
from tests.helpers import LiveServers, snapshot

pytestmark = [pytest.mark.live, pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("PZLS_FUZZ_EXAMPLES", "60"))
RANDOM = os.environ.get("PZLS_FUZZ_RANDOM", "") == "1"

SERVER_ENV = {
    # Failed logins are fuzzed by the hundred; the limit itself is tested in test_accounts.
    "PZLS_LOGIN_RATE": "1000000/minute",
    # Registrations too, all from 127.0.0.1; the per-address limit is tested in test_accounts.
    "PZLS_AUTH_RATE_PER_ADDRESS": "1000000/minute",
    # A token's "last used" is written back at most once per interval, on any
    # authenticated request (rejected ones too); over a run it must not look
    # like a write by the rejected request.
    "PZLS_TOKEN_RENEW_INTERVAL_S": "86400",
    # /api/query may only reach a host that cannot exist: the policy path, the
    # parser and the connect failure are fuzzed, no real database is touched,
    # and a connect never stalls the run.
    "PZLS_QUERY_ALLOWED_HOSTS": "pzls-fuzz.invalid",
    "PZLS_QUERY_CONNECT_TIMEOUT_S": "1",
    "PZLS_QUERY_TIMEOUT_S": "2",
}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class Account:
    """One of the fuzzer's logins, whose token stays valid for the whole run."""

    def __init__(self, server: LiveServer, username: str, password: str) -> None:
        self.client = server.client()
        self.username, self.password = username, password
        registered = self.client.register(username, password)
        self.token, self.id = registered["token"], registered["user"]["id"]

    def fresh_token(self) -> str:
        """Another token of this account (a second login), for a logout to revoke."""
        return Client(self.client.url).login(self.username, self.password)["token"]

    def after(self, path: str, status: int, body: Any) -> None:
        if status == 200 and path == "/api/auth/change-password":
            self.password = body["newPassword"]  # the calling token stays valid, a later login needs this


@pytest.fixture(scope="module")
def server(live_server_factory: LiveServers) -> LiveServer:
    return live_server_factory.start(env=SERVER_ENV)


@pytest.fixture(scope="module")
def accounts(server: LiveServer) -> dict[str, Account]:
    admin = Account(server, "fuzz-admin", "adminpass")
    analyst = Account(server, "fuzz-analyst", "analystpass")
    # Something to pull, resolve and modify: two near-duplicates each.
    for account in (admin, analyst):
        account.client.push(
            {
                "humans": {
                    "h1": {"name": "John Smith", "birthDate": "1980-01-01"},
                    "h2": {"name": "Jon Smith", "birthDate": "1980-01-01"},
                }
            }
        )
    return {"admin": admin, "analyst": analyst}


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> Any:
    schema = schemathesis.openapi.from_url(f"{server.url}/api/schema")
    schema.config.checks.negative_data_rejection.expected_statuses = [
        "400",
        "401",
        "403",
        "404",
        "409",
        "413",
        "415",
        "429",
    ]
    return schema


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def fuzz_settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def _may_refuse(case: Any, status: int) -> bool:
    """A GET that fits the description but names something that need not exist: a generated record id (404),
    a generated cursor (only the server's own are valid: 400), or one that answers 304 to its If-None-Match."""
    if case.path == "/api/sync/records/{store}/{record_id}":
        return status in (304, 404)
    if case.path == "/api/sync/cursor":
        return status == 400 and bool((case.query or {}).get("cursor"))
    return False


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
@pytest.mark.parametrize("role", ["admin", "analyst"])
def test_generated_requests(
    server: LiveServer, accounts: dict[str, Account], api_schema: Any, role: str, mode: GenerationMode
) -> None:
    account = accounts[role]
    ops = operations(api_schema)
    # The token is fixed at generation, so that negative cases never count a
    # header the test replaces as one of their "invalid" parts.
    fixed = {"Authorization": f"Bearer {account.token}"}
    strategies = {op.label: op.as_strategy(generation_mode=mode, headers=fixed) for op in ops}
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    seen: set[str] = set()

    @given(data=st.data())
    @fuzz_settings()
    def run(data: st.DataObject) -> None:
        label = data.draw(st.sampled_from(sorted(strategies)), label="operation")
        case = data.draw(strategies[label], label="case")
        seen.add(label)
        sent = {"Authorization": f"Bearer {account.fresh_token()}"} if case.path == "/api/auth/logout" else {}
        before = snapshot(server.data_dir)
        response = case.call(base_url=server.url, headers=sent, timeout=30)
        case.validate_response(response, checks=checks, headers={**fixed, **sent})
        status = response.status_code
        if 400 <= status < 500:
            assert snapshot(server.data_dir) == before, f"{label} answered {status} but changed the data directory"
        if (
            mode is GenerationMode.POSITIVE
            and case.method == "GET"
            and case.path not in ("/api/admin/users", "/api/sync")
            and not _may_refuse(case, status)
        ):
            assert status == 200, f"{label} refused valid input: {status} {response.text[:300]}"
        account.after(case.path, status, case.body)
        # The fuzzer's own token still works, whatever the request did.
        account.client.me()

    run()
    if mode is GenerationMode.POSITIVE:
        expected = {op.label for op in ops}
    else:  # only a body or a query parameter can be made invalid (a free string path id or header cannot)
        expected = {
            op.label for op in ops if op.body or any(p.location.value == "query" for p in op.iter_parameters())
        }  # fmt: skip
    if 10 * len(ops) <= EXAMPLES:
        assert seen >= expected, f"never exercised: {sorted(expected - seen)}"
    log = server.log_path.read_text(errors="replace")
    for marker in ("Traceback", " ERROR ", "[ERROR]", "[CRITICAL]"):
        assert marker not in log, log[-5000:]
