"""Repository stores: where each user's stores, version and changelog live (contract in ``base.py``)."""

from pzls_site.backends import BackendHandler
from sync.backends.base import (
    BaseRepositoryStore,
    ChangesPage,
    CursorEntry,
    CursorPage,
    PullSource,
    PushResult,
    RecordDump,
    Repository,
    RepositorySummary,
    WriteSnapshot,
)

repository_stores: BackendHandler[BaseRepositoryStore] = BackendHandler("PZLS_SYNC_STORE", BaseRepositoryStore)


def get_repository_store() -> BaseRepositoryStore:
    """The configured repository store (one instance per process)."""
    return repository_stores.get()


__all__ = [
    "BaseRepositoryStore",
    "ChangesPage",
    "CursorEntry",
    "CursorPage",
    "PullSource",
    "PushResult",
    "RecordDump",
    "Repository",
    "RepositorySummary",
    "WriteSnapshot",
    "get_repository_store",
    "repository_stores",
]
