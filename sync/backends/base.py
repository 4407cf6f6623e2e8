"""The repository store contract: a few storage primitives, no rules.

Each user (by id string) has one repository: a version counter, named stores
of records (each with a version, a seq and a position, see ``sync.records``),
tombstones, and a changelog with one entry per committed change set. The
service plans every change (``sync.records``) against a ``Snapshot`` that
the store reads, and hands the store one ``ChangeSet`` to commit under the
user's lock, as Django's session and cache backends leave their logic to the
base and keep a backend to a few primitives. A store serialises the commits
of one user across threads and processes, makes a commit durable (change set,
changelog entry, audit entries) before returning, never exposes half of one,
and assigns positions in commit order. Pull order is first-insertion order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from sync.records import ChangeSet, Snapshot

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
    skipped: int = 0


@dataclass(frozen=True)
class CursorEntry:
    """One entity of a cursor page: a live record (``text``) or a tombstone (``text`` None)."""

    store: str
    id: str
    version: int
    seq: int
    position: int
    text: bytes | None


@dataclass(frozen=True)
class CursorPage:
    """Entities with positions after the one asked, in position order, and where the repository stands."""

    entries: list[CursorEntry]
    has_more: bool
    version: int
    position: int
    epoch: str


@dataclass
class RecordDump:
    """A repository with its record states, as backups carry it and ``replace`` takes it.

    ``stores`` maps each store to (id, text, version, seq) rows in pull
    order; ``tombstones`` each store to (id, version, seq) rows.
    """

    version: int
    stores: dict[str, list[tuple[str, msgspec.Raw, int, int]]]
    tombstones: dict[str, list[tuple[str, int, int]]]


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


class WriteSnapshot(Snapshot):
    """The snapshot a store gives under the user's lock: current until the lock goes; ``commit`` once."""

    def commit(self, change_set: ChangeSet) -> None:
        """Commit ``change_set`` (its version is this snapshot's + 1): durable on return, all or nothing."""
        raise NotImplementedError


class BaseRepositoryStore:
    """Interface every repository store implements.

    A store is built with the keyword ``location``, the data directory, and
    keeps its copies of pull bodies (plain and gzip, see ``sync.pullcache``)
    in ``pull_cache``; ``delete`` forgets them with the repository.
    """

    pull_cache: PullCache

    # --- reading ---------------------------------------------------------------------

    def pull(self, user_id: str) -> PullSource:
        """The body of ``GET /api/sync`` (``{"version": N, "data": {...}}``, compact) with its tag, read consistently."""
        raise NotImplementedError

    def pull_tag(self, user_id: str) -> str:
        """A short string that changes whenever the pull body changes (an HTTP ETag), cheaply."""
        raise NotImplementedError

    def pull_bytes(self, user_id: str) -> bytes:
        return self.pull(user_id).read()

    def load(self, user_id: str) -> Repository:
        """The parsed repository (version 0 and no stores when the user has none)."""
        from sync.depth import parse_repository

        version, data = parse_repository(self.pull_bytes(user_id))
        return Repository(version=version, data=data)

    def reading(self, user_id: str) -> AbstractContextManager[Snapshot]:
        """A snapshot of the repository for planning without the lock (it may be overtaken meanwhile)."""
        raise NotImplementedError

    def locked(self, user_id: str, allowed: Callable[[], None] | None = None) -> AbstractContextManager[WriteSnapshot]:
        """Hold the user's lock (the one ``delete`` takes) and give the current snapshot, to plan and commit.

        ``allowed``, when given, is called first under the lock, before
        anything is written or created: whatever it raises comes out, and
        then no file or row of the user is left that was not there before.
        """
        raise NotImplementedError

    def cursor(self, user_id: str, *, after: int, limit: int, store: str | None, deleted: bool) -> CursorPage:
        """Up to ``limit`` entities with positions above ``after``, oldest change first (tombstones if ``deleted``)."""
        raise NotImplementedError

    def store_counts(self, user_id: str) -> tuple[int, list[tuple[str, int]]]:
        """The repository version and each store's live records, in pull order."""
        raise NotImplementedError

    def changes(self, user_id: str, since: int) -> ChangesPage:
        """Changelog entries with version > ``since``: how many, and the newest CHANGES_PAGE of them in ascending order."""
        raise NotImplementedError

    def changelog(self, user_id: str) -> list[dict[str, Any]]:
        """Every committed changelog entry of the user, oldest first (backups need all, not a page)."""
        raise NotImplementedError

    def summary(self, user_id: str) -> RepositorySummary:
        """Version, store and record counts, size and sync history, cheaply (no full parse)."""
        raise NotImplementedError

    def dump(self, user_id: str) -> RecordDump:
        """Every record and tombstone with its state (backups)."""
        raise NotImplementedError

    # --- writing ---------------------------------------------------------------------

    def replace(self, user_id: str, dump: RecordDump, changelog: Iterable[dict[str, Any]]) -> None:
        """Make ``dump`` and ``changelog`` the user's repository, replacing whatever was there, as a new history
        (a new epoch: cursors issued before restart from the beginning). Imports and restores."""
        raise NotImplementedError

    def purge(self, user_id: str, *, through_seq: int) -> int:
        """Remove the tombstones deleted at repository version ``through_seq`` or earlier; how many went.

        No version changes: a purge is not a change of any record.
        """
        raise NotImplementedError

    def delete(self, user_id: str) -> None:
        """Remove the user's repository, changelog and every file or row kept for them (caches, locks), entirely.

        Waits for a commit of the user that holds the lock; idempotent.
        """
        raise NotImplementedError
