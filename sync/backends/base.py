"""The repository store contract.

Each user (by id string) has one repository: a version counter, named stores
of records, and a changelog with one entry per effective push. A store
serialises pushes of one user across threads and processes, makes a push
durable before returning, and never exposes half of a push. Pull order is
first-insertion order. Rules about what a valid push is live in the service
and ``sync.merge``; a store receives validated data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from sync.merge import MergePlan, RawStores

if TYPE_CHECKING:
    from sync.pullcache import PullCache

EMPTY_PULL = b'{"version":0,"data":{}}'

# The original's paging: ``changes`` returns at most this many entries, the newest.
CHANGES_PAGE = 50

_entry_encoder = msgspec.json.Encoder()


def entry_json(entry: Mapping[str, Any]) -> bytes:
    """A changelog entry as every store keeps it: compact JSON with ``version`` first.

    Version first lets a reader find it without parsing the line, and makes
    both storages answer ``changes`` with the same bytes. The ``added`` and
    ``modified`` lists may hold ``sync.merge.RecordRef``s, written as objects.
    """
    ordered = {"version": entry["version"], **{k: v for k, v in entry.items() if k != "version"}}
    return _entry_encoder.encode(ordered)


def push_entry(*, version: int, timestamp: str, client_version: int | None, plan: MergePlan) -> dict[str, Any]:
    """The changelog entry of a push that changed something (``plan``), as every store logs it."""
    return {
        "version": version,
        "timestamp": timestamp,
        "clientVersion": client_version,
        "added": plan.added,
        "modified": plan.modified,
        "action": "push",
    }


@dataclass(frozen=True)
class Repository:
    """A parsed repository: exactly what a pull returns. Treat ``data`` as read-only."""

    version: int
    data: dict[str, dict[str, Any]]


@dataclass
class PullSource:
    """A pull body and its tag, read consistently with each other.

    Exactly one of ``file`` (an open file positioned at the start, which the
    caller closes; sent with sendfile) and ``body`` is set.
    """

    tag: str
    size: int
    file: BinaryIO | None = None
    body: bytes | None = None

    def read(self) -> bytes:
        if self.body is not None:
            return self.body
        assert self.file is not None
        with self.file:
            return self.file.read()


@dataclass(frozen=True)
class PushResult:
    version: int
    added: int
    modified: int


@dataclass(frozen=True)
class ChangesPage:
    current_version: int
    pending: int
    entries: list[dict[str, Any]]


@dataclass(frozen=True)
class RepositorySummary:
    version: int
    stores: int
    records: int
    data_size_bytes: int
    total_syncs: int
    last_sync: str | None

    def as_json(self) -> dict[str, Any]:
        """The summary as ``GET /api/sync/status`` shows it (and the file store's sidecar keeps it)."""
        return {
            "version": self.version,
            "stores": self.stores,
            "records": self.records,
            "dataSizeBytes": self.data_size_bytes,
            "totalSyncs": self.total_syncs,
            "lastSync": self.last_sync,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RepositorySummary:
        """The summary ``as_json`` wrote; KeyError when a field is missing."""
        return cls(
            version=doc["version"],
            stores=doc["stores"],
            records=doc["records"],
            data_size_bytes=doc["dataSizeBytes"],
            total_syncs=doc["totalSyncs"],
            last_sync=doc["lastSync"],
        )


EMPTY_SUMMARY = RepositorySummary(
    version=0, stores=0, records=0, data_size_bytes=len(EMPTY_PULL), total_syncs=0, last_sync=None
)


class BaseRepositoryStore:
    """Interface every repository store implements.

    A store is built with the keyword ``location``, the data directory, and
    keeps its copies of pull bodies (plain and gzip, see ``sync.pullcache``)
    in ``pull_cache``; ``delete`` forgets them with the repository.
    """

    pull_cache: PullCache

    def pull_bytes(self, user_id: str) -> bytes:
        """The body of ``GET /api/sync``: ``{"version": N, "data": {...}}`` as compact JSON."""
        raise NotImplementedError

    def pull(self, user_id: str) -> PullSource:
        """The pull body with its tag, as one consistent read (see PullSource)."""
        raise NotImplementedError

    def pull_tag(self, user_id: str) -> str:
        """A short string that changes whenever the pull body changes (an HTTP ETag), cheaply."""
        raise NotImplementedError

    def load(self, user_id: str) -> Repository:
        """The parsed repository (version 0 and no stores when the user has none)."""
        raise NotImplementedError

    def push(
        self,
        user_id: str,
        stores: RawStores,
        *,
        client_version: int | None,
        timestamp: str,
        allowed: Callable[[], None] | None = None,
    ) -> PushResult:
        """Merge validated ``stores`` (records as JSON text, see ``sync.merge``) by its rules.

        If anything changed, raise the version by one and log it. Returns the
        (possibly unchanged) version and the counts. Durable on return.

        ``allowed``, when given, is called while the store holds the user's
        lock (the one ``delete`` takes), before anything is written: whatever
        it raises comes out of ``push``, and then nothing of the push is
        written and no file or row of the user is left that was not there
        before. The service passes a check that the user still exists and
        is active, so a push never outlives the deletion of its user.
        """
        raise NotImplementedError

    def changes(self, user_id: str, since: int) -> ChangesPage:
        """Changelog entries with version > ``since``: how many, and the newest CHANGES_PAGE of them in ascending order."""
        raise NotImplementedError

    def summary(self, user_id: str) -> RepositorySummary:
        """Version, store and record counts, size and sync history, cheaply (no full parse)."""
        raise NotImplementedError

    def replace(self, user_id: str, repository: Repository, changelog: Iterable[dict[str, Any]]) -> None:
        """Make ``repository`` and ``changelog`` the user's, replacing whatever was there (imports)."""
        raise NotImplementedError

    def delete(self, user_id: str) -> None:
        """Remove the user's repository, changelog and every file or row kept for them (caches, locks), entirely.

        Waits for a push of the user that holds the lock; idempotent.
        """
        raise NotImplementedError

    def changelog(self, user_id: str) -> list[dict[str, Any]]:
        """Every committed changelog entry of the user, oldest first (backups need all, not a page)."""
        raise NotImplementedError
