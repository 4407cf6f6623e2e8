"""Loading pluggable storage backends from settings, the way Django loads STORAGES.

A setting such as ``PZLS_TOKEN_STORE = {"BACKEND": "dotted.path.Class",
"OPTIONS": {...}}`` names the class and the keyword arguments it is built
with (every store takes its data directory as ``location``, as Django's
FileSystemStorage does). The handler imports the class lazily, keeps one
instance per process, and forgets it when its setting changes, so
``override_settings`` in tests swaps backends for real. It knows nothing of
any other setting: a backend's configuration is its OPTIONS.
"""

from __future__ import annotations

import contextlib
import inspect
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
        if setting == self.setting_name:
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
        options = config.get("OPTIONS", {})
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as exc:
            raise ImproperlyConfigured(
                f"{self.setting_name}: OPTIONS do not fit {config['BACKEND']!r}: {exc}"
            ) from None
        return cls(**options)

    def get(self) -> T:
        instance = self._instance
        if instance is None:
            with self._lock:
                if self._instance is None:
                    self._instance = self.build()
                instance = self._instance
        return instance
