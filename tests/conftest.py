"""Shared fixtures: a fresh data directory and database for every test, API clients, and live servers.

Test modules import helpers from tests/helpers.py, never from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from tests.helpers import Api, LiveServers, data_dir_settings


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, db: Any) -> Iterator[Path]:
    """Every test gets an empty data directory; the stores are rebuilt to use it."""
    directory = tmp_path / "data"
    directory.mkdir()
    with override_settings(**data_dir_settings(directory)):
        yield directory


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


@pytest.fixture(scope="module")
def live_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServers]:
    """Starts real servers for the module (``factory.start(...)``, see testkit.server) and stops them all after it."""
    with LiveServers(tmp_path_factory.mktemp("live")) as factory:
        yield factory
