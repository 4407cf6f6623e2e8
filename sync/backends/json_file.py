"""Repository store in JSON files in the data directory (the store's ``location`` option).

Per user (``<id>`` is the user's UUID):

- ``repo_<id>.json``: a stamp line ``{"stamp":"<32 hex>"}`` (new with every
  write, see ``pzls_site.files``), then ``{"version": N, "data": {...}}``
  compact, exactly the body of a pull, so a pull sends the rest of the file
  itself (sendfile). Its version is the commit point of a push. A file
  without the stamp line (written by an earlier release) is read the same,
  and the next write gives it one.
- ``changelog_<id>.jsonl``: one entry per line, appended and fsynced before
  the repository file is replaced. Lines with a version above the repository
  file's are leftovers of a crashed push: readers skip them and the next push
  cuts them off.
- ``repo_<id>.meta.json``: counts for ``status`` (stores, records, syncs), valid
  only for the repository file whose version and size it names; rebuilt when
  stale. It also names the exact file it was written for (inode, size,
  mtime, stamp) and where that file's pieces of 512 records lie.
- ``repo_<id>.lock``: the lock every writer of this user holds. Holding it,
  a writer also removes the temporary files a killed writer of this user left;
  the lock file goes when the writer leaves no repository file (a deleted user
  leaves no file).

A push never parses records into Python objects: the repository file is
read into record texts (``msgspec.Raw`` views of the file's bytes), a piece
at a time when the sidecar describes the file, merged with the pushed texts,
and the new file is written piece by piece with those texts put in as they
are. So a push holds its body and about one piece of the stored repository,
not two copies of the repository.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
import orjson

from pzls_site.exceptions import StorageError
from pzls_site.files import (
    FileIdentity,
    atomic_write,
    exclusive_lock,
    file_identity,
    fsync_dir,
    identity_of,
    new_stamp,
    remove_leftover,
    temporary_path,
)
from sync.backends.base import (
    CHANGES_PAGE,
    EMPTY_PULL,
    EMPTY_SUMMARY,
    BaseRepositoryStore,
    ChangesPage,
    PullSource,
    PushResult,
    Repository,
    RepositorySummary,
    entry_json,
    push_entry,
)
from sync.depth import decode_members, decode_repository, parse_repository
from sync.merge import MergePlan, RawStores, apply_plan, encode_stores, plan_merge
from sync.pullcache import PullCache

logger = logging.getLogger("pzls.sync")

_USER_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_VERSION_PREFIX = re.compile(rb'^\{"version":(\d+)[,}]')
_BLOCK = 1 << 20
# The first line of a repository file: its stamp (pzls_site.files), then the pull body.
_STAMP_LINE = len(b'{"stamp":"%s"}\n' % new_stamp().encode())


def _stamp_line() -> bytes:
    return b'{"stamp":"%s"}\n' % new_stamp().encode()


def _body_offset(identity: FileIdentity) -> int:
    """Where the pull body starts in a repository file of this identity (0 in a file without a stamp)."""
    return _STAMP_LINE if identity[3] else 0


def _line_version(line: bytes) -> int | None:
    """The version of a changelog line as this store writes it; None for a torn or foreign line."""
    match = _VERSION_PREFIX.match(line)
    if match is None or not line.endswith(b"}"):
        return None
    return int(match.group(1))


def _head_version(fd: int, offset: int) -> int | None:
    """The version at the head of the pull body of an open repository file, which starts at ``offset``."""
    match = _VERSION_PREFIX.match(os.pread(fd, 32, offset))
    return None if match is None else int(match.group(1))


def _entry_line(entry: dict[str, Any]) -> list[bytes]:
    """A changelog line as its text and its newline, not joined (a first push's entry names every record)."""
    return [entry_json(entry), b"\n"]


_repo_encoder = msgspec.json.Encoder()
# Records per piece of a repository file: about 250 KB of text, so a push
# holds one small piece of the stored repository at a time, never a copy.
_RECORDS_PER_PIECE = 512

# Where each piece's records lie in a repository file, per store: [start, end)
# byte offsets of ``"id":{...},"id":{...}`` runs, as the writer made them.
Layout = dict[str, list[list[int]]]


def repository_chunks(
    version: int, stores: Iterable[tuple[str, Iterable[tuple[str, msgspec.Raw]]]], layout: Layout | None = None
) -> Iterator[bytes | memoryview]:
    """A repository file in pieces: a new stamp line, then the pull body ``{"version":N,"data":{...}}``.

    ``stores`` gives each store's (id, text) pairs in order; they are taken
    ``_RECORDS_PER_PIECE`` at a time, so only one piece is in memory at once.
    msgspec writes ``Raw`` texts without a Python call per record; joined,
    the pieces after the stamp line are exactly
    ``msgspec.json.encode({"version": version, "data": data})``, each record's
    text put in as it is. Each piece's place in the file is recorded in ``layout``.
    """
    stamp = _stamp_line()
    yield stamp
    head = b'{"version":%d,"data":{' % version
    yield head
    offset = len(stamp) + len(head)
    for position, (name, items) in enumerate(stores):
        opening = (b"," if position else b"") + _repo_encoder.encode(name) + b":{"
        yield opening
        offset += len(opening)
        pieces: list[list[int]] = []
        remaining = iter(items)
        while batch := dict(islice(remaining, _RECORDS_PER_PIECE)):
            if pieces:
                yield b","
                offset += 1
            members = memoryview(_repo_encoder.encode(batch))[1:-1]  # without the braces
            pieces.append([offset, offset + len(members)])
            yield members
            offset += len(members)
        if layout is not None:
            layout[name] = pieces
        yield b"}"
        offset += 1
    yield b"}}"


def _items(data: RawStores) -> Iterator[tuple[str, Iterable[tuple[str, msgspec.Raw]]]]:
    return ((name, records.items()) for name, records in data.items())


class _LayoutMismatch(StorageError):
    """The sidecar's layout does not fit the file it names (edited by hand?): read the file whole."""


class _Pieces:
    """One stored store read piece by piece from an open repository file (iterable again and again)."""

    def __init__(self, fd: int, spans: list[list[int]]) -> None:
        self.fd, self.spans = fd, spans

    def __iter__(self) -> Iterator[dict[str, msgspec.Raw]]:
        for start, end in self.spans:
            # The piece's members read straight between a pair of braces.
            text = bytearray(end - start + 2)
            text[0], text[-1] = 0x7B, 0x7D
            if os.preadv(self.fd, [memoryview(text)[1:-1]], start) != end - start:
                raise _LayoutMismatch("repository file is shorter than its layout says")
            try:
                yield decode_members(text)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise _LayoutMismatch("repository file does not match its layout") from exc


class _Committed:
    """The committed repository file, open: its version, identity, counts and stores.

    With a layout that describes this very file (same identity) the stores
    are read piece by piece as they are iterated; without one (no sidecar
    yet, or a stale one) the whole file is decoded once. ``total_syncs`` is
    the sidecar's count when the sidecar is of this version, else None.
    Close it when done.
    """

    def __init__(self, store: JSONFileRepositoryStore, user_id: str, *, use_layout: bool = True) -> None:
        self.fd: int | None = None
        self.version, self.records = 0, 0
        self.identity: FileIdentity | None = None
        self.total_syncs: int | None = None
        self.stores: dict[str, Any] = {}
        try:
            self.fd = os.open(store._path(user_id, "repo"), os.O_RDONLY)
        except FileNotFoundError:
            return
        self.identity = identity_of(self.fd)
        offset = _body_offset(self.identity)
        meta = store._read_meta_doc(user_id) or {}
        layout = meta.get("layout") if use_layout and meta.get("file") == list(self.identity) else None
        if layout is not None and _head_version(self.fd, offset) == meta.get("version"):
            self.version, self.records = meta["version"], meta["records"]
            self.stores = {name: _Pieces(self.fd, spans) for name, spans in layout.items()}
        else:
            try:
                self.version, self.stores = decode_repository(os.pread(self.fd, self.identity[1] - offset, offset))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.close()
                raise StorageError("repository file is not a repository") from exc
            self.records = sum(len(records) for records in self.stores.values())
        if meta.get("version") == self.version and isinstance(meta.get("totalSyncs"), int):
            self.total_syncs = meta["totalSyncs"]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _reverse_lines(fd: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the lines in the first ``end`` bytes of ``fd``, newest first.

    A newline ends a line; a last line without one (torn) is yielded too.
    Reads blocks from the end, so the newest entries cost the least.
    """
    line_end = end
    if end > 0 and os.pread(fd, 1, end - 1) == b"\n":
        line_end = end - 1
    buf, buf_start = b"", end
    while True:
        newline = buf.rfind(b"\n", 0, line_end - buf_start)
        if newline >= 0:
            line_start = buf_start + newline + 1
            yield line_start, buf[line_start - buf_start : line_end - buf_start]
            line_end = line_start - 1
            continue
        if buf_start == 0:
            if line_end > 0:
                yield 0, buf[:line_end]
            return
        read_start = max(0, buf_start - _BLOCK)
        buf = os.pread(fd, buf_start - read_start, read_start) + buf[: line_end - buf_start]
        buf_start = read_start


class JSONFileRepositoryStore(BaseRepositoryStore):
    """The default repository store: a few files per user in the data directory ``location``.

    A pull sends the repository file itself; only gzip-compressed copies go
    to the pull cache.
    """

    def __init__(self, *, location: str | Path) -> None:
        self.directory = Path(location)
        self.pull_cache = PullCache(self.directory / "pullcache", current_tag=self.pull_tag)

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

    @contextlib.contextmanager
    def _locked(self, user_id: str) -> Iterator[None]:
        """Hold the user's lock, first removing the temporary files a killed writer of this
        user left. Leaving with no repository file (deleted, or a first push
        refused), the lock file is removed too, as the last step under it."""
        lock = self._path(user_id, "lock")
        with exclusive_lock(lock):
            self._remove_leftovers(user_id)
            try:
                yield
            finally:
                if not self._path(user_id, "repo").exists():
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()

    # --- reading -----------------------------------------------------------

    def pull(self, user_id: str) -> PullSource:
        try:
            fh = open(self._path(user_id, "repo"), "rb")  # noqa: SIM115 - the PullSource returned owns the file; its reader closes it
        except FileNotFoundError:
            return PullSource(tag="empty", size=len(EMPTY_PULL), body=EMPTY_PULL)
        except OSError as exc:
            raise StorageError("cannot read repository") from exc
        try:
            identity = identity_of(fh.fileno())
            offset = _body_offset(identity)
            fh.seek(offset)
        except OSError as exc:
            fh.close()
            raise StorageError("cannot read repository") from exc
        return PullSource(tag=_tag(identity), size=identity[1] - offset, file=fh)

    def pull_bytes(self, user_id: str) -> bytes:
        return self.pull(user_id).read()

    def pull_tag(self, user_id: str) -> str:
        identity = file_identity(self._path(user_id, "repo"))
        return "empty" if identity is None else _tag(identity)

    def load(self, user_id: str) -> Repository:
        try:
            with open(self._path(user_id, "repo"), "rb") as fh:
                offset = _body_offset(identity_of(fh.fileno()))
                raw = fh.read()
        except FileNotFoundError:
            return Repository(version=0, data={})
        try:
            version, data = parse_repository(memoryview(raw)[offset:])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError("repository file is not a repository") from exc
        return Repository(version=version, data=data)

    def _records(self, user_id: str) -> tuple[int, RawStores, FileIdentity | None]:
        """The committed version, every record's text (not parsed) and the identity of the file read."""
        try:
            with open(self._path(user_id, "repo"), "rb") as fh:
                identity = identity_of(fh.fileno())
                raw = fh.read()
        except FileNotFoundError:
            return 0, {}, None
        try:
            version, data = decode_repository(memoryview(raw)[_body_offset(identity) :])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StorageError("repository file is not a repository") from exc
        return version, data, identity

    def _committed_version(self, user_id: str) -> int | None:
        """The repository file's version, read from its first bytes; None when there is none."""
        head = self._head(user_id)
        return None if head is None else head[1]

    def _head(self, user_id: str) -> tuple[FileIdentity, int] | None:
        """The repository file's identity and version, from one open file; None when there is none."""
        try:
            fd = os.open(self._path(user_id, "repo"), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            identity = identity_of(fd)
            version = _head_version(fd, _body_offset(identity))
        finally:
            os.close(fd)
        if version is None:
            raise StorageError("repository file does not start with its version")
        return identity, version

    def _committed_lines_newest_first(self, user_id: str, committed: int) -> Iterator[tuple[int, bytes]]:
        """(version, line) of committed changelog entries, newest first, read from the end."""
        try:
            fd = os.open(self._path(user_id, "changelog"), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            for _, line in _reverse_lines(fd, os.fstat(fd).st_size):
                version = _line_version(line)
                if version is not None and version <= committed:
                    yield version, line
        finally:
            os.close(fd)

    def changes(self, user_id: str, since: int) -> ChangesPage:
        committed = self._committed_version(user_id) or 0
        page: list[bytes] = []
        pending = 0
        for version, line in self._committed_lines_newest_first(user_id, committed):
            if version <= since:
                break
            pending += 1
            if len(page) < CHANGES_PAGE:
                page.append(line)
        return ChangesPage(
            current_version=committed, pending=pending, entries=[orjson.loads(line) for line in reversed(page)]
        )

    def changelog(self, user_id: str) -> list[dict[str, Any]]:
        committed = self._committed_version(user_id) or 0
        lines = [line for _, line in self._committed_lines_newest_first(user_id, committed)]
        return [orjson.loads(line) for line in reversed(lines)]

    def summary(self, user_id: str) -> RepositorySummary:
        head = self._head(user_id)
        if head is None:
            return EMPTY_SUMMARY
        identity, version = head
        doc = self._read_meta_doc(user_id) or {}
        try:
            meta = RepositorySummary.from_json(doc)
        except (KeyError, TypeError):
            return self._rebuild_summary(user_id)
        # A stamped file's sidecar must name that very file; one of an
        # earlier release is trusted by version and size, as that release did.
        names_it = doc.get("file") == list(identity) if identity[3] else True
        if names_it and meta.version == version and meta.data_size_bytes == identity[1] - _body_offset(identity):
            return meta
        return self._rebuild_summary(user_id)

    def _read_meta_doc(self, user_id: str) -> dict[str, Any] | None:
        try:
            meta = orjson.loads(self._path(user_id, "meta").read_bytes())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _rebuild_summary(self, user_id: str) -> RepositorySummary:
        with self._locked(user_id):
            version, data, identity = self._records(user_id)
            if identity is None:  # deleted meanwhile: no sidecar for a repository that is gone
                return EMPTY_SUMMARY
            total, last = 0, None
            for _, line in self._committed_lines_newest_first(user_id, version):
                if last is None:
                    last = line
                total += 1
            last_sync = orjson.loads(last).get("timestamp") if last else None
            return self._write_meta(
                user_id,
                version,
                stores=len(data),
                records=sum(len(records) for records in data.values()),
                total_syncs=total,
                last_sync=last_sync,
                identity=identity,
            )

    def _write_meta(
        self,
        user_id: str,
        version: int,
        *,
        stores: int,
        records: int,
        total_syncs: int,
        last_sync: str | None,
        identity: FileIdentity | None,
        layout: Layout | None = None,
    ) -> RepositorySummary:
        """Write the sidecar: the counts ``status`` shows for ``identity``'s file and, given, where its pieces lie.

        The sidecar is derived from the other files: it is not fsynced, and
        when it cannot be written (a full disk) the old one stays, which names
        another file and is ignored.
        """
        summary = RepositorySummary(
            version=version,
            stores=stores,
            records=records,
            data_size_bytes=identity[1] - _body_offset(identity) if identity else len(EMPTY_PULL),
            total_syncs=total_syncs,
            last_sync=last_sync,
        )
        meta = summary.as_json()
        if identity is not None:
            meta["file"] = list(identity)
            if layout is not None:
                meta["layout"] = layout
        try:
            atomic_write(self._path(user_id, "meta"), orjson.dumps(meta), durable=False, exclusive=True)
        except OSError:
            logger.warning("cannot write the sidecar of user %s", user_id, exc_info=True)
        return summary

    def _remove_leftovers(self, user_id: str) -> None:
        """Remove the temporary files a killed writer of this user left (the caller holds the user's lock)."""
        for kind in ("repo", "meta", "changelog"):
            remove_leftover(temporary_path(self._path(user_id, kind), exclusive=True))

    # --- writing -----------------------------------------------------------

    def push(
        self,
        user_id: str,
        stores: RawStores,
        *,
        client_version: int | None,
        timestamp: str,
        allowed: Callable[[], None] | None = None,
    ) -> PushResult:
        # Merge (which validates the records) before taking the lock: a push
        # that is refused or changes nothing touches no file, and writers hold
        # the lock only to write. A push that landed in between is seen by
        # the file's identity, and the merge is done again on top of it. The
        # stored repository is read a piece at a time (see _Committed), once
        # to plan and once to write, from the same open file. ``allowed`` is
        # asked first under the lock, which ``delete`` holds too.
        path = self._path(user_id, "repo")
        committed, plan = self._plan(user_id, stores)
        try:
            if not plan.changed:
                return PushResult(version=committed.version, added=0, modified=0)
            with self._locked(user_id):
                if allowed is not None:
                    allowed()
                if file_identity(path) != committed.identity:
                    committed.close()
                    committed, plan = self._plan(user_id, stores)
                    if not plan.changed:
                        return PushResult(version=committed.version, added=0, modified=0)
                version = committed.version
                new_version = version + 1
                entry = push_entry(version=new_version, timestamp=timestamp, client_version=client_version, plan=plan)
                appended = self._append_changelog(user_id, _entry_line(entry), committed=version)
                layout: Layout = {}
                try:
                    identity = atomic_write(
                        path,
                        repository_chunks(new_version, apply_plan(committed.stores, stores, plan), layout),
                        exclusive=True,
                    )
                except BaseException:
                    # Not committed (a full disk, say): the push changes nothing, its changelog line goes too.
                    with contextlib.suppress(OSError):
                        if file_identity(path) == committed.identity:
                            self._cut_changelog(user_id, *appended)
                    raise
                if committed.total_syncs is not None:
                    total_syncs = committed.total_syncs + 1
                else:
                    total_syncs = sum(1 for _ in self._committed_lines_newest_first(user_id, new_version))
                self._write_meta(
                    user_id,
                    new_version,
                    stores=len(layout),
                    records=committed.records + len(plan.added),
                    total_syncs=total_syncs,
                    last_sync=timestamp,
                    identity=identity,
                    layout=layout,
                )
                return PushResult(version=new_version, added=len(plan.added), modified=len(plan.modified))
        except OSError as exc:
            raise StorageError("cannot write repository") from exc
        finally:
            committed.close()

    def _plan(self, user_id: str, stores: RawStores) -> tuple[_Committed, MergePlan]:
        """The committed repository, open, and what merging ``stores`` over it changes."""
        committed = _Committed(self, user_id)
        try:
            try:
                return committed, plan_merge(committed.stores, stores)
            except _LayoutMismatch:
                logger.warning("sidecar of user %s does not fit its repository file: reading the file whole", user_id)
                committed.close()
                committed = _Committed(self, user_id, use_layout=False)
                return committed, plan_merge(committed.stores, stores)
        except BaseException:
            committed.close()
            raise

    def _append_changelog(self, user_id: str, line: list[bytes], *, committed: int) -> tuple[int, bool]:
        """Cut off leftovers of a crashed push, append ``line`` (its chunks in order) and fsync it.

        Returns the changelog's size before the line and whether the file was
        created, which ``_cut_changelog`` takes to undo the append; an append
        that fails undoes itself.
        """
        path = self._path(user_id, "changelog")
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._truncate_leftovers(fd, committed)
            size = os.fstat(fd).st_size
            try:
                for chunk in line:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    self._cut_changelog(user_id, size, created)
                raise
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)
        return size, created

    def _cut_changelog(self, user_id: str, size: int, created: bool) -> None:
        """Take the changelog back to ``size`` bytes, or away when the push created it (under the lock)."""
        path = self._path(user_id, "changelog")
        if created:
            path.unlink(missing_ok=True)
            return
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _truncate_leftovers(fd: int, committed: int) -> None:
        """Drop a torn last line and any lines with a version above ``committed``."""
        size = os.fstat(fd).st_size
        keep = size
        for offset, line in _reverse_lines(fd, size):
            torn = offset + len(line) >= size  # no newline after it
            version = _line_version(line)
            if not torn and version is not None and version <= committed:
                break
            keep = offset
        if keep < size:
            os.ftruncate(fd, keep)
            os.fsync(fd)

    def replace(self, user_id: str, repository: Repository, changelog: Iterable[dict[str, Any]]) -> None:
        try:
            with self._locked(user_id):
                entries = [entry for entry in changelog if int(entry["version"]) <= repository.version]
                atomic_write(
                    self._path(user_id, "changelog"),
                    [chunk for entry in entries for chunk in _entry_line(entry)] or [b""],
                    exclusive=True,
                )
                data = encode_stores(repository.data)
                layout: Layout = {}
                identity = atomic_write(
                    self._path(user_id, "repo"),
                    repository_chunks(repository.version, _items(data), layout),
                    exclusive=True,
                )
                last = entries[-1].get("timestamp") if entries else None
                self._write_meta(
                    user_id,
                    repository.version,
                    stores=len(data),
                    records=sum(len(records) for records in data.values()),
                    total_syncs=len(entries),
                    last_sync=last,
                    identity=identity,
                    layout=layout,
                )
        except OSError as exc:
            raise StorageError("cannot write repository") from exc

    def delete(self, user_id: str) -> None:
        # The repository file first: a reader that finds it gone finds no
        # repository, whatever else is still there. The lock file goes last,
        # under the lock (see _locked).
        try:
            with self._locked(user_id):
                for kind in ("repo", "changelog", "meta"):
                    with contextlib.suppress(FileNotFoundError):
                        self._path(user_id, kind).unlink()
        except OSError as exc:
            raise StorageError("cannot delete repository") from exc
        self.pull_cache.forget(user_id)


def _tag(identity: FileIdentity) -> str:
    # Every commit writes a new file with a new stamp, so its identity changes
    # with every push; a file without a stamp keeps the tag it had.
    inode, size, mtime_ns, stamp = identity
    return "-".join([f"{inode:x}", f"{size:x}", f"{mtime_ns:x}", *([stamp] if stamp else [])])
