"""Shared fixtures: a fresh data directory and database for every test, and API clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from pzls_site.env import store_settings


def data_dir_settings(
    directory: Path, *, token_backend: str | None = None, sync_backend: str | None = None
) -> dict[str, Any]:
    """Settings that put the data directory and both stores in ``directory``.

    Each store keeps the backend it has unless one is named.
    """
    token_store, sync_store = store_settings(
        "files",
        directory,
        token_backend=token_backend or settings.PZLS_TOKEN_STORE["BACKEND"],
        sync_backend=sync_backend or settings.PZLS_SYNC_STORE["BACKEND"],
    )
    return {"PZLS_DATA_DIR": directory, "PZLS_TOKEN_STORE": token_store, "PZLS_SYNC_STORE": sync_store}


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, db: Any) -> Iterator[Path]:
    """Every test gets an empty data directory; the stores are rebuilt to use it."""
    directory = tmp_path / "data"
    directory.mkdir()
    with override_settings(**data_dir_settings(directory)):
        yield directory


class Api:
    """A thin JSON client for the API, as Pazator talks to it."""

    def __init__(self) -> None:
        self.client = APIClient()
        self.token: str | None = None

    # Any: spread into the test client's **extra (WSGI environ keys), which mypy would match against its named arguments.
    def _headers(self, token: str | None) -> dict[str, Any]:
        token = token if token is not None else self.token
        return {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def get(self, url: str, *, token: str | None = None, **extra: Any):
        return self.client.get(url, content_type="application/json", **self._headers(token), **extra)

    def post(self, url: str, body: Any = None, *, token: str | None = None, **extra: Any):
        return self.client.post(url, body if body is not None else {}, format="json", **self._headers(token), **extra)

    def delete(self, url: str, *, token: str | None = None, **extra: Any):
        return self.client.delete(url, content_type="application/json", **self._headers(token), **extra)

    def register(self, username: str = "alice", password: str = "secret1") -> dict[str, Any]:
        response = self.post("/api/auth/register", {"username": username, "password": password})
        assert response.status_code == 200, response.content
        body = response.json()
        self.token = body["token"]
        return body


@pytest.fixture
def api() -> Api:
    return Api()


@pytest.fixture
def admin_api() -> Api:
    """A client logged in as the first (admin) user."""
    client = Api()
    client.register("admin", "adminpass")
    return client


@pytest.fixture
def analyst_api(admin_api: Api) -> Api:
    """A client logged in as an analyst (registered after the admin)."""
    client = Api()
    client.register("analyst", "analystpass")
    return client
