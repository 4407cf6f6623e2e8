"""Sync: each user's private repository of stores, push, pull, changelog and status."""

from django.apps import AppConfig


class SyncConfig(AppConfig):
    name = "sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from sync import signals  # noqa: F401  (connects the handlers)
