"""The calls Pazator makes, over HTTP to a live server or, in the test suite, through Django's test client.

``Calls`` holds what a client does (register, log in and out, push, pull, ...)
on top of two primitives, ``get`` and ``post``; ``Client`` provides them over
``requests`` for a live server. Each call checks for 200 and returns the parsed
answer; a test that expects a refusal uses ``get``/``post`` and looks at the
answer itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import orjson
import requests


class Answer(Protocol):
    """What both requests' and Django's test client's responses offer."""

    status_code: int

    @property
    def content(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def ok(response: Answer) -> Any:
    """The parsed body of a 200 JSON answer (anything else fails with the status and the start of the body)."""
    assert response.status_code == 200, (response.status_code, response.content[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers["Content-Type"]
    return orjson.loads(response.content)


def record_path(store: str, record_id: str) -> str:
    """The URL of one record (``/api/sync/records/<store>/<id>``), both names percent-encoded."""
    return f"/api/sync/records/{quote(store, safe='')}/{quote(record_id, safe='')}"


def query_string(params: Mapping[str, object]) -> str:
    """``?a=1&b=x`` of the parameters that are not None (empty when none is), values as ``str`` gives them."""
    given = {name: str(value) for name, value in params.items() if value is not None}
    return "?" + urlencode(given) if given else ""


class Calls(ABC):
    """One client of the API: its token and the calls it makes."""

    token: str | None

    @abstractmethod
    def get(self, path: str, *, token: str | None = None) -> Answer:
        """GET ``path`` with ``token`` (default: the client's own)."""

    @abstractmethod
    def post(self, path: str, body: Any = None, *, data: bytes | None = None, token: str | None = None) -> Answer:
        """POST ``body`` as JSON, or ``data``, bytes sent as they are (as application/json)."""

    def register(self, username: str = "alice", password: str = "secret1") -> dict[str, Any]:
        """Register and keep the new token; returns the answer (token and user)."""
        body: dict[str, Any] = ok(self.post("/api/auth/register", {"username": username, "password": password}))
        self.token = body["token"]
        return body

    def login(self, username: str = "alice", password: str = "secret1") -> dict[str, Any]:
        """Log in and keep the new token; returns the answer (token and user)."""
        body: dict[str, Any] = ok(self.post("/api/auth/login", {"username": username, "password": password}))
        self.token = body["token"]
        return body

    def logout(self) -> None:
        """Revoke the client's token."""
        ok(self.post("/api/auth/logout"))
        self.token = None

    def me(self) -> dict[str, Any]:
        return ok(self.get("/api/auth/me"))

    def push(
        self, stores: Mapping[str, Any] | None = None, client_version: object = 0, *, data: bytes | None = None
    ) -> dict[str, Any]:
        """Push ``stores`` with ``clientVersion`` (any JSON value), or a whole body already encoded (``data``)."""
        if data is not None:
            return ok(self.post("/api/sync", data=data))
        return ok(self.post("/api/sync", {"clientVersion": client_version, "stores": stores or {}}))

    def pull(self) -> dict[str, Any]:
        return ok(self.get("/api/sync"))

    def changes(self, since: object = None) -> dict[str, Any]:
        """``GET /api/sync/changes``, with ``?since=`` unless ``since`` is None."""
        query = "" if since is None else f"?since={since}"
        return ok(self.get(f"/api/sync/changes{query}"))

    def status(self) -> dict[str, Any]:
        return ok(self.get("/api/sync/status"))

    def ops(self, operations: list[Any]) -> dict[str, Any]:
        """``POST /api/sync/ops``: apply record operations; returns version, applied, conflicts and results."""
        return ok(self.post("/api/sync/ops", {"operations": operations}))

    def cursor(self, cursor: str | None = None, **params: object) -> dict[str, Any]:
        """One page of ``GET /api/sync/cursor`` after ``cursor`` (None: from the start), e.g. ``limit=``, ``store=``, ``deleted=``."""
        return ok(self.get("/api/sync/cursor" + query_string({"cursor": cursor, **params})))

    def sync_stores(self) -> dict[str, Any]:
        """``GET /api/sync/stores``: the live records per store."""
        return ok(self.get("/api/sync/stores"))

    def op_log(self, since: object = None, limit: object = None) -> dict[str, Any]:
        """``GET /api/sync/ops``: the caller's own audit entries after ``since``."""
        return ok(self.get("/api/sync/ops" + query_string({"since": since, "limit": limit})))

    def record(self, store: str, record_id: str) -> dict[str, Any]:
        """``GET /api/sync/records/<store>/<id>``: one live record with its version."""
        return ok(self.get(record_path(store, record_id)))


class Client(Calls):
    """A client of a live server over HTTP, with a bearer token and a connection of its own."""

    def __init__(
        self, url: str, token: str | None = None, *, session: requests.Session | None = None, timeout: float = 30
    ) -> None:
        self.url, self.token, self.timeout = url, token, timeout
        self.session = session or requests.Session()

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        """JSON content type and the bearer token (the client's own unless given), then ``extra``."""
        token = token if token is not None else self.token
        return {
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
            **extra,
        }

    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | Iterable[bytes] | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> requests.Response:
        return self.session.request(
            method,
            self.url + path,
            data=data,
            headers=self.headers(token, **(headers or {})),
            timeout=timeout or self.timeout,
            stream=stream,
        )

    def get(
        self,
        path: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        return self.request("GET", path, token=token, headers=headers, timeout=timeout)

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        data: bytes | Iterable[bytes] | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        """POST ``body`` as JSON, or ``data`` as it is: bytes or an iterable of chunks (sent chunked)."""
        payload = data if data is not None else orjson.dumps(body if body is not None else {})
        return self.request("POST", path, data=payload, token=token, headers=headers, timeout=timeout)

    def fetch(self, path: str, **headers: str) -> requests.Response:
        """GET and receive the whole answer as it comes on the wire, neither decompressed nor parsed.

        For timing a request: the body is read off the socket (``answer.raw``), nothing more.
        """
        answer = self.request("GET", path, headers=headers, stream=True)
        answer.raise_for_status()
        answer.raw.read(decode_content=False)
        return answer
