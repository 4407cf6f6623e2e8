"""Crash-safe file primitives shared by the file backends.

ARCHITECTURE.md's rules live here once: atomic replace (temporary file in the
same directory, fsync, ``os.replace``, fsync of the directory), an exclusive
``fcntl`` lock on a separate lock file that every worker process honours, and
a per-process cache of parsed files keyed by file identity (inode, size,
mtime_ns), so a worker never serves a copy another worker has replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FileIdentity = tuple[int, int, int]


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _write_all(fd: int, chunks: list) -> None:
    """Write every chunk (anything with the buffer protocol) in order, many per system call."""
    i = 0
    while i < len(chunks):
        batch = chunks[i : i + _IOV_MAX]
        written = os.writev(fd, batch)
        for chunk in batch:
            size = len(chunk)
            if written >= size:
                written -= size
                i += 1
            else:
                # A short write: go on from inside this chunk.
                chunks = [memoryview(chunk)[written:], *chunks[i + 1 :]]
                i = 0
                break


def atomic_write(path: Path, data: bytes | list | Iterator, *, durable: bool = True) -> FileIdentity:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one.

    ``data`` may be a list of chunks (bytes or any buffer), written in order
    without joining them, or an iterator of chunks or of such lists, each
    written as it comes (so a large file never has to be in memory at once). With ``durable`` the
    new content and the rename are fsynced before returning. Returns the
    identity of the new file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if isinstance(data, list):
                _write_all(fd, data)
            elif isinstance(data, (bytes, bytearray, memoryview)):
                _write_all(fd, [data])
            else:
                for chunk in data:
                    _write_all(fd, chunk if isinstance(chunk, list) else [chunk])
            if durable:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def file_identity(path: Path) -> FileIdentity | None:
    """(inode, size, mtime_ns) of ``path``, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock shared by every process and thread on this machine.

    ``fcntl.flock`` excludes other processes. Threads of one process queue on
    a plain thread lock first, so they do not each hold an open descriptor
    while waiting in the kernel.

    The holder may remove the lock file as its very last step (a deleted
    user's lock goes with their data): whoever was waiting on the removed
    file finds, once it holds it, that the path no longer names it, and
    locks the file that is there now (creating it) instead.
    """
    key = str(lock_path)
    with _thread_locks_guard:
        tlock = _thread_locks.setdefault(key, threading.Lock())
    with tlock:
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _names(lock_path, fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is (still) the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


class IdentityCache:
    """A small LRU of parsed files, valid only while the file keeps its identity."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[FileIdentity, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, identity: FileIdentity) -> Any | None:
        key = str(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != identity:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, path: Path, identity: FileIdentity, value: Any) -> None:
        key = str(path)
        with self._lock:
            self._entries[key] = (identity, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def load(self, path: Path, parse: Callable[[bytes], Any]) -> tuple[FileIdentity | None, Any | None]:
        """Return (identity, parsed value) of ``path``; (None, None) when absent.

        Reads the file once and checks that its identity did not change while
        reading (an ``os.replace`` by another process in between), retrying if it did.
        """
        for _ in range(5):
            identity = file_identity(path)
            if identity is None:
                return None, None
            cached = self.get(path, identity)
            if cached is not None:
                return identity, cached
            try:
                with open(path, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    raw = fh.read()
            except FileNotFoundError:
                continue
            opened = (st.st_ino, st.st_size, st.st_mtime_ns)
            value = parse(raw)
            self.put(path, opened, value)
            return opened, value
        raise RuntimeError(f"{path} kept changing while being read")
