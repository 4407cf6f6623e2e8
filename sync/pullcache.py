"""Copies of pull bodies per (user, tag), plain and gzip, shared by the workers of one server.

Every repository store keeps its copies in one directory, ``<location>/pullcache/``:

- ``<user>.<tag>.json``: a pull body the database store read, so later pulls
  of that version are sent from the file (the file store needs none: its
  repository file is the body);
- ``<user>.<tag>.json.gz``: the body gzip-compressed, for clients that accept
  gzip. One worker compresses while the others wait for its file, so no
  version is compressed twice.

A tag names one body for good (it changes with every change of the body), so
a copy never goes stale. One clean-up rule: keeping a body for a user removes
that user's copies of every other tag, and ``forget`` removes all of a
user's copies and their lock file when their repository goes. A writer,
once its copy is in place, asks the store for the repository's current tag;
when the body it kept is no longer current (a push, or the repository
deleted while it was being read) it forgets the user's copies itself. Since
``forget`` runs after the repository is gone, either it sees the copy or the
writer sees the repository gone: a pull racing the deletion of its user
leaves nothing behind. Bodies under ``min_bytes`` are never
kept (a file would cost more than it saves); gzip compresses them on the fly.
Gzip copies are written under the user's lock (``<user>.lock``); writing any
copy also removes the temporary files a killed writer left for that user. The copies are derived
and disposable: the directory may be deleted at any time, and a copy that
cannot be written (a full disk) only costs the pull a compression on the fly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from pzls_site.files import PRIVATE_DIR, atomic_write, exclusive_lock, is_temporary, remove_leftover
from sync.backends.base import PullSource

logger = logging.getLogger("pzls.sync")

# Bodies below this size are not kept.
SMALL_BODY = 256 * 1024
# Level 1 compresses JSON about five-fold at a few hundred MB/s: the first pull
# after a push pays little, and the network saves most of what level 9 would.
GZIP_LEVEL = 1
_CHUNK = 1 << 20
# User ids and tags that may name a file (no dot: it separates them).
_FILE_SAFE = re.compile(r"^[0-9A-Za-z-]{1,128}$")
_PLAIN, _GZIP = ".json", ".json.gz"


def _gzip_chunks(source: PullSource) -> list[bytes]:
    """``source`` compressed, in pieces; closes its file."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip container
    chunks: list[bytes] = []
    if source.file is not None:
        with source.file:
            while block := source.file.read(_CHUNK):
                chunks.append(compressor.compress(block))
    else:
        chunks.append(compressor.compress(source.body or b""))
    chunks.append(compressor.flush())
    return chunks


def _open(path: Path, tag: str) -> PullSource | None:
    """The copy at ``path``, open; None when there is none (or it cannot be read: it is only a copy)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 (the caller sends and closes it)
    except OSError:
        return None
    return PullSource(tag=tag, size=os.fstat(fh.fileno()).st_size, file=fh)


class PullCache:
    """The pull bodies kept in ``directory``; ``min_bytes=None`` keeps none.

    ``current_tag(user_id)`` is the store's tag of the user's repository now
    (``pull_tag``); without it a kept body is never checked against it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        min_bytes: int | None = SMALL_BODY,
        current_tag: Callable[[str], str] | None = None,
    ) -> None:
        self.directory = directory
        self.min_bytes = min_bytes
        self.current_tag = current_tag

    def _path(self, user_id: str, tag: str, suffix: str) -> Path | None:
        """Where a body of this user and tag is kept; None when no file may be named so or caching is off."""
        if self.min_bytes is None or not (_FILE_SAFE.match(user_id) and _FILE_SAFE.match(tag)):
            return None
        return self.directory / f"{user_id}.{tag}{suffix}"

    def _worth_keeping(self, size: int) -> bool:
        return self.min_bytes is not None and size >= self.min_bytes

    def open(self, user_id: str, tag: str, *, gzip: bool = False) -> PullSource | None:
        """The kept body of this user at this tag (an open file the caller closes), or None."""
        path = self._path(user_id, tag, _GZIP if gzip else _PLAIN)
        return None if path is None else _open(path, tag)

    def keep(self, user_id: str, tag: str, body: bytes) -> None:
        """Keep a plain pull body if it is large enough; a failure only costs the next pull a read."""
        path = self._path(user_id, tag, _PLAIN)
        if path is None or not self._worth_keeping(len(body)):
            return
        try:
            self.directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            self._replace(user_id, tag, path, body, exclusive=False)
        except OSError:
            logger.warning("cannot keep a pull body in %s", self.directory, exc_info=True)

    def keep_chunks(self, user_id: str, tag: str, chunks: Iterator[bytes | memoryview], *, size: int) -> bool:
        """Keep a plain pull body of ``size`` bytes written from ``chunks`` as they come; whether it was kept."""
        path = self._path(user_id, tag, _PLAIN)
        if path is None or not self._worth_keeping(size):
            return False
        try:
            self.directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            self._replace(user_id, tag, path, chunks, exclusive=False)
        except OSError:
            logger.warning("cannot keep a pull body in %s", self.directory, exc_info=True)
            return False
        return True

    def gzip(self, user_id: str, source: PullSource) -> PullSource:
        """``source`` gzip-compressed: bytes when small, else a file kept once per tag. Closes ``source``."""
        path = self._path(user_id, source.tag, _GZIP)
        if path is None or not self._worth_keeping(source.size):
            return _compressed(source.tag, _gzip_chunks(source))
        with contextlib.ExitStack() as held:
            try:
                self.directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
                held.enter_context(exclusive_lock(self._lock_path(user_id)))
            except OSError:
                logger.warning("cannot keep a gzip pull body in %s", self.directory, exc_info=True)
                return _compressed(source.tag, _gzip_chunks(source))
            kept = _open(path, source.tag)
            if kept is not None:  # another worker compressed this version
                if source.file is not None:
                    source.file.close()
                return kept
            chunks = _gzip_chunks(source)
            try:
                self._replace(user_id, source.tag, path, chunks, exclusive=True)
            except OSError:
                logger.warning("cannot keep a gzip pull body in %s", self.directory, exc_info=True)
                return _compressed(source.tag, chunks)
        kept = _open(path, source.tag)
        if kept is None:  # a newer version's copy replaced it just now
            return _compressed(source.tag, chunks)
        return kept

    def _lock_path(self, user_id: str) -> Path:
        return self.directory / f"{user_id}.lock"

    def _replace(
        self,
        user_id: str,
        tag: str,
        path: Path,
        data: bytes | list[bytes] | Iterator[bytes | memoryview],
        *,
        exclusive: bool,
    ) -> None:
        """Write one copy (``exclusive``: under the user's lock); then the user's copies of every other tag go.

        If the body is no longer the repository's current one, every copy
        goes instead, this one included, and the lock file with them.
        """
        atomic_write(path, data, durable=False, exclusive=exclusive)
        if self.current_tag is not None and self.current_tag(user_id) != tag:
            self.forget(user_id)
        else:
            self._remove(user_id, keep=tag)

    def _remove(self, user_id: str, *, keep: str | None) -> None:
        """Remove the user's copies of every tag but ``keep``, and the temporary files no writer holds."""
        if not _FILE_SAFE.match(user_id):
            return
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name
            if name.startswith(f"{user_id}.") and _PLAIN in name:
                if name[len(user_id) + 1 :].split(".", 1)[0] != keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            elif name.startswith(f".{user_id}.") and is_temporary(name):
                remove_leftover(Path(entry.path))

    def forget(self, user_id: str) -> None:
        """Remove every copy of a user, their leftovers and their lock file (their repository is gone).

        The lock only spares a second compression; one removed while held
        is re-opened by whoever waits (see ``pzls_site.files.exclusive_lock``).
        """
        self._remove(user_id, keep=None)
        if _FILE_SAFE.match(user_id):
            with contextlib.suppress(FileNotFoundError):
                self._lock_path(user_id).unlink()


def _compressed(tag: str, chunks: list[bytes]) -> PullSource:
    body = b"".join(chunks)
    return PullSource(tag=tag, size=len(body), body=body)
