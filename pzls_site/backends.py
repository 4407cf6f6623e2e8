"""Loading pluggable storage backends from settings, the way Django loads STORAGES.

A setting such as ``PZLS_TOKEN_STORE = {"BACKEND": "dotted.path.Class",
"OPTIONS": {...}}`` names the class; the handler imports it lazily, keeps one
instance per process, and forgets it when the setting (or the data directory)
changes, so ``override_settings`` in tests swaps backends for real.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DatabaseError
from django.utils.module_loading import import_string

from pzls_site.exceptions import StorageError

T = TypeVar("T")


@contextlib.contextmanager
def database_errors(what: str) -> Iterator[None]:
    """For database backends: a database failure becomes StorageError, so views never see a driver's error."""
    try:
        yield
    except DatabaseError as exc:
        raise StorageError(f"cannot {what}") from exc


class BackendHandler(Generic[T]):
    """One lazily created backend instance chosen by a ``{"BACKEND", "OPTIONS"}`` setting."""

    def __init__(self, setting_name: str, base_class: type[T]) -> None:
        self.setting_name = setting_name
        self.base_class = base_class
        self._instance: T | None = None
        self._lock = threading.Lock()
        setting_changed.connect(self._on_setting_changed, weak=False)

    def _on_setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting in (self.setting_name, "PZLS_DATA_DIR", "PZLS_TOKEN_TTL_HOURS"):
            self.reset()

    def reset(self) -> None:
        with self._lock:
            self._instance = None

    def build(self) -> T:
        config = getattr(settings, self.setting_name, None)
        if not isinstance(config, dict) or "BACKEND" not in config:
            raise ImproperlyConfigured(f"{self.setting_name} must be a dict with a BACKEND key")
        try:
            cls = import_string(config["BACKEND"])
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"{self.setting_name}: could not import backend {config['BACKEND']!r}: {exc}"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, self.base_class)):
            raise ImproperlyConfigured(
                f"{self.setting_name}: {config['BACKEND']!r} is not a {self.base_class.__name__}"
            )
        return cls(**config.get("OPTIONS", {}))

    def get(self) -> T:
        instance = self._instance
        if instance is None:
            with self._lock:
                if self._instance is None:
                    self._instance = self.build()
                instance = self._instance
        return instance
