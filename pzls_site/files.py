"""Crash-safe file primitives shared by the file backends.

ARCHITECTURE.md's rules live here once:

- Atomic replace: a temporary file in the same directory, fsync,
  ``os.replace``, fsync of the directory.
- An exclusive ``fcntl`` lock on a separate lock file that every worker
  process honours.
- A per-process cache of parsed files keyed by the file's identity: inode,
  size, mtime_ns and the file's *stamp*, a random 128-bit value each writer
  puts at the head of a file it means to be cached (``{"stamp":"<32 hex>"``).
  A file replaced by another one, even in the same inode with the same size
  and mtime, has another stamp, so a worker never serves a copy another worker
  has replaced. The stamp costs one small read per lookup.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# (inode, size, mtime_ns, stamp); the stamp is "" for a file that has none.
FileIdentity = tuple[int, int, int, str]

STAMP_PREFIX = b'{"stamp":"'
_STAMP = re.compile(rb'\{"stamp":"([0-9a-f]{32})"')
_STAMP_HEAD = len(STAMP_PREFIX) + 32 + 1


def new_stamp() -> str:
    """A fresh stamp: 32 hex digits, never the same twice."""
    return secrets.token_hex(16)


def stamp_of(fd: int) -> str:
    """The stamp at the head of an open file; "" when it has none (a file of an earlier release)."""
    match = _STAMP.match(os.pread(fd, _STAMP_HEAD, 0))
    return match.group(1).decode() if match else ""


def identity_of(fd: int) -> FileIdentity:
    """The identity of an open file."""
    st = os.fstat(fd)
    return (st.st_ino, st.st_size, st.st_mtime_ns, stamp_of(fd))


def file_identity(path: Path) -> FileIdentity | None:
    """The identity of ``path``, or None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return identity_of(fd)
    finally:
        os.close(fd)


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
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
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
            identity = identity_of(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return identity


# --- locks ----------------------------------------------------------------------------

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock shared by every process and thread on this machine.

    ``fcntl.flock`` excludes other processes. Threads of one process queue on
    a plain thread lock first, so they do not each hold an open descriptor
    while waiting in the kernel.
    """
    key = str(lock_path)
    with _thread_locks_guard:
        tlock = _thread_locks.setdefault(key, threading.Lock())
    with tlock:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# --- the cache of parsed files ---------------------------------------------------------


def _read_all(fd: int, size: int) -> bytes:
    parts, offset = [], 0
    while block := os.pread(fd, max(size - offset, 1 << 16), offset):
        parts.append(block)
        offset += len(block)
    return b"".join(parts)


class IdentityCache:
    """A small LRU of parsed files, valid only while the file keeps its identity (stamp included)."""

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

        The identity and the content come from one open file, so they belong
        together even while another process replaces ``path``. A cached copy
        costs an open, an fstat and a read of the file's first bytes.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, None
        try:
            identity = identity_of(fd)
            cached = self.get(path, identity)
            if cached is not None:
                return identity, cached
            raw = _read_all(fd, identity[1])
        finally:
            os.close(fd)
        value = parse(raw)
        self.put(path, identity, value)
        return identity, value
