"""Repository store in JSON files under the data directory.

Per user (``<id>`` is the user's UUID):

- ``repo_<id>.json``: ``{"version": N, "data": {...}}`` compact, exactly the
  body of a pull, so a pull sends the file's bytes unparsed. Its version is
  the commit point of a push.
- ``changelog_<id>.jsonl``: one entry per line, appended and fsynced before
  the repository file is replaced. Lines with a version above the repository
  file's are leftovers of a crashed push: readers skip them and the next push
  cuts them off.
- ``repo_<id>.meta.json``: counts for ``status`` (stores, records, syncs), valid
  only for the repository file whose version and size it names; rebuilt when stale.
- ``repo_<id>.lock``: the lock every writer of this user holds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
from django.conf import settings

from pzls_site.exceptions import StorageError
from pzls_site.files import IdentityCache, atomic_write, exclusive_lock, file_identity, fsync_dir
from sync.backends.base import (
    CHANGES_PAGE,
    EMPTY_PULL,
    EMPTY_SUMMARY,
    BaseRepositoryStore,
    ChangesPage,
    PushResult,
    Repository,
    RepositorySummary,
)
from sync.merge import plan_merge

_USER_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_VERSION_PREFIX = re.compile(rb'^\{"version":(\d+)[,}]')
_TAIL_BLOCK = 1 << 16


def _line_version(line: bytes) -> int | None:
    """The version of a changelog line as this store writes it; None for a torn or foreign line."""
    match = _VERSION_PREFIX.match(line)
    if match is None or not line.endswith(b"}"):
        return None
    return int(match.group(1))


def _entry_line(entry: dict[str, Any]) -> bytes:
    # "version" first, so a line's version can be read without parsing it.
    ordered = {"version": entry["version"], **{k: v for k, v in entry.items() if k != "version"}}
    return orjson.dumps(ordered) + b"\n"


def _parse_repository(raw: bytes) -> Repository:
    doc = orjson.loads(raw)
    return Repository(version=int(doc["version"]), data=doc["data"])


class JSONFileRepositoryStore(BaseRepositoryStore):
    """The default repository store: a few files per user in the data directory."""

    def __init__(self, directory: str | Path | None = None, cache_entries: int = 4) -> None:
        self.directory = Path(directory) if directory else Path(settings.PZLS_DATA_DIR)
        self._cache = IdentityCache(max_entries=cache_entries)

    # --- paths -------------------------------------------------------------

    def _path(self, user_id: str, kind: str) -> Path:
        if not _USER_ID.match(user_id):
            raise ValueError(f"not a user id: {user_id!r}")
        names = {
            "repo": f"repo_{user_id}.json",
            "changelog": f"changelog_{user_id}.jsonl",
            "meta": f"repo_{user_id}.meta.json",
            "lock": f"repo_{user_id}.lock",
        }
        return self.directory / names[kind]

    # --- reading -----------------------------------------------------------

    def pull_bytes(self, user_id: str) -> bytes:
        try:
            return self._path(user_id, "repo").read_bytes()
        except FileNotFoundError:
            return EMPTY_PULL
        except OSError as exc:
            raise StorageError("cannot read repository") from exc

    def pull_tag(self, user_id: str) -> str:
        # Every commit writes a new file, so its identity changes with every push.
        identity = file_identity(self._path(user_id, "repo"))
        if identity is None:
            return "empty"
        return "-".join(f"{n:x}" for n in identity)

    def load(self, user_id: str) -> Repository:
        path = self._path(user_id, "repo")
        try:
            _, repo = self._cache.load(path, _parse_repository)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"cannot read {path}") from exc
        return repo if repo is not None else Repository(version=0, data={})

    def _committed_version(self, user_id: str) -> int | None:
        """The repository file's version, read from its first bytes; None when there is none."""
        try:
            with open(self._path(user_id, "repo"), "rb") as fh:
                head = fh.read(32)
        except FileNotFoundError:
            return None
        match = _VERSION_PREFIX.match(head)
        if match is None:
            raise StorageError("repository file does not start with its version")
        return int(match.group(1))

    def _changelog_lines(self, user_id: str, committed: int) -> Iterator[tuple[int, bytes]]:
        """(version, line) of every committed changelog entry, oldest first."""
        try:
            raw = self._path(user_id, "changelog").read_bytes()
        except FileNotFoundError:
            return
        for line in raw.split(b"\n"):
            version = _line_version(line)
            if version is not None and version <= committed:
                yield version, line

    def changes(self, user_id: str, since: int) -> ChangesPage:
        committed = self._committed_version(user_id) or 0
        pending = [line for version, line in self._changelog_lines(user_id, committed) if version > since]
        entries = [orjson.loads(line) for line in pending[-CHANGES_PAGE:]]
        return ChangesPage(current_version=committed, pending=len(pending), entries=entries)

    def summary(self, user_id: str) -> RepositorySummary:
        identity = file_identity(self._path(user_id, "repo"))
        if identity is None:
            return EMPTY_SUMMARY
        meta = self._read_meta(user_id)
        if meta and meta.version == self._committed_version(user_id) and meta.data_size_bytes == identity[1]:
            return meta
        return self._rebuild_summary(user_id)

    def _read_meta(self, user_id: str) -> RepositorySummary | None:
        try:
            meta = orjson.loads(self._path(user_id, "meta").read_bytes())
            return RepositorySummary(
                version=meta["version"],
                stores=meta["stores"],
                records=meta["records"],
                data_size_bytes=meta["dataSizeBytes"],
                total_syncs=meta["totalSyncs"],
                last_sync=meta["lastSync"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _rebuild_summary(self, user_id: str) -> RepositorySummary:
        with exclusive_lock(self._path(user_id, "lock")):
            repo = self.load(user_id)
            total, last = 0, None
            for _, line in self._changelog_lines(user_id, repo.version):
                total += 1
                last = line
            last_sync = orjson.loads(last).get("timestamp") if last else None
            return self._write_meta(user_id, repo, total_syncs=total, last_sync=last_sync)

    def _write_meta(self, user_id: str, repo: Repository, *, total_syncs: int, last_sync: str | None) -> RepositorySummary:
        size = file_identity(self._path(user_id, "repo"))
        summary = RepositorySummary(
            version=repo.version,
            stores=len(repo.data),
            records=sum(len(records) for records in repo.data.values()),
            data_size_bytes=size[1] if size else len(EMPTY_PULL),
            total_syncs=total_syncs,
            last_sync=last_sync,
        )
        meta = {
            "version": summary.version,
            "stores": summary.stores,
            "records": summary.records,
            "dataSizeBytes": summary.data_size_bytes,
            "totalSyncs": summary.total_syncs,
            "lastSync": summary.last_sync,
        }
        # Derivable from the other files, so it need not be fsynced.
        atomic_write(self._path(user_id, "meta"), orjson.dumps(meta), durable=False)
        return summary

    # --- writing -----------------------------------------------------------

    def push(
        self, user_id: str, stores: dict[str, dict[str, Any]], *, client_version: int | None, timestamp: str
    ) -> PushResult:
        try:
            with exclusive_lock(self._path(user_id, "lock")):
                repo = self.load(user_id)
                plan = plan_merge(repo.data, stores)
                if not plan.changed:
                    return PushResult(version=repo.version, added=0, modified=0)
                version = repo.version + 1
                entry = {
                    "version": version,
                    "timestamp": timestamp,
                    "clientVersion": client_version,
                    "added": plan.added,
                    "modified": plan.modified,
                    "action": "push",
                }
                self._append_changelog(user_id, _entry_line(entry), committed=repo.version)
                new_repo = Repository(version=version, data={**repo.data, **plan.new_stores})
                self._commit(user_id, new_repo)
                previous = self._read_meta(user_id)
                if previous is not None and previous.version == repo.version:
                    total_syncs = previous.total_syncs + 1
                else:
                    total_syncs = self._count_syncs(user_id, version)
                self._write_meta(user_id, new_repo, total_syncs=total_syncs, last_sync=timestamp)
                return PushResult(version=version, added=len(plan.added), modified=len(plan.modified))
        except OSError as exc:
            raise StorageError("cannot write repository") from exc

    def _count_syncs(self, user_id: str, committed: int) -> int:
        return sum(1 for _ in self._changelog_lines(user_id, committed))

    def _commit(self, user_id: str, repo: Repository) -> None:
        """Replace the repository file (the commit point) and remember the parsed copy."""
        path = self._path(user_id, "repo")
        identity = atomic_write(path, orjson.dumps({"version": repo.version, "data": repo.data}))
        self._cache.put(path, identity, repo)

    def _append_changelog(self, user_id: str, line: bytes, *, committed: int) -> None:
        """Cut off leftovers of a crashed push, append ``line`` and fsync it."""
        path = self._path(user_id, "changelog")
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._truncate_leftovers(fd, committed)
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)

    @staticmethod
    def _truncate_leftovers(fd: int, committed: int) -> None:
        """Drop a torn last line and any lines with a version above ``committed``."""
        end = os.fstat(fd).st_size
        truncated = False
        while end > 0:
            start = _line_start(fd, end)
            line = os.pread(fd, end - start, start)
            version = _line_version(line.rstrip(b"\n")) if line.endswith(b"\n") else None
            if version is not None and version <= committed:
                break
            end = start
            truncated = True
        if truncated:
            os.ftruncate(fd, end)
            os.fsync(fd)

    def replace(self, user_id: str, repository: Repository, changelog: Iterable[dict[str, Any]]) -> None:
        try:
            with exclusive_lock(self._path(user_id, "lock")):
                lines = [_entry_line(entry) for entry in changelog if int(entry["version"]) <= repository.version]
                atomic_write(self._path(user_id, "changelog"), lines or [b""])
                self._commit(user_id, repository)
                last = orjson.loads(lines[-1]).get("timestamp") if lines else None
                self._write_meta(user_id, repository, total_syncs=len(lines), last_sync=last)
        except OSError as exc:
            raise StorageError("cannot write repository") from exc

    def delete(self, user_id: str) -> None:
        lock = self._path(user_id, "lock")
        with exclusive_lock(lock):
            for kind in ("repo", "changelog", "meta"):
                path = self._path(user_id, kind)
                self._cache.discard(path)
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
        try:
            lock.unlink()
        except FileNotFoundError:
            pass

    def changelog(self, user_id: str) -> list[dict[str, Any]]:
        committed = self._committed_version(user_id) or 0
        return [orjson.loads(line) for _, line in self._changelog_lines(user_id, committed)]


def _line_start(fd: int, end: int) -> int:
    """Offset of the first byte of the line whose last byte is at ``end - 1``."""
    pos = end - 1  # skip the line's own newline, if it has one
    while pos > 0:
        block_start = max(0, pos - _TAIL_BLOCK)
        block = os.pread(fd, pos - block_start, block_start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return block_start + newline + 1
        pos = block_start
    return 0
