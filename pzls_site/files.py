"""Crash-safe file primitives shared by the file backends, and the data directory's rules.

ARCHITECTURE.md's rules live here once:

- Atomic replace: a temporary file in the same directory, fsync,
  ``os.replace``, fsync of the directory.
- An exclusive ``fcntl`` lock on a separate lock file that every worker
  process honours.
- A writer holds an ``flock`` on its temporary file while it writes it, so a
  clean-up (``remove_leftover``) never removes a live writer's file, only what
  a killed process left. A writer that holds the lock of the file it replaces
  uses one fixed temporary name (``.<name>.tmp``), so a leftover is reused by
  the next write instead of piling up; any other uses ``.<name>.<pid>.<thread>.tmp``.
- A per-process cache of parsed files keyed by the file's identity: inode,
  size, mtime_ns and the file's *stamp*, a random 128-bit value each writer
  puts at the head of a file it means to be cached (``{"stamp":"<32 hex>"``).
  A file replaced by another one, even in the same inode with the same size
  and mtime, has another stamp, so a worker never serves a copy another worker
  has replaced. The stamp costs one small read per lookup.
- The data directory is the server user's alone (``prepare_data_dir``): a
  0o077 umask for the whole process, the directory 0700, its files 0600.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("pzls")

# (inode, size, mtime_ns, stamp); the stamp is "" for a file that has none.
FileIdentity = tuple[int, int, int, str]

STAMP_PREFIX = b'{"stamp":"'
_STAMP = re.compile(rb'\{"stamp":"([0-9a-f]{32})"')
_STAMP_HEAD = len(STAMP_PREFIX) + 32 + 1

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


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


# --- temporary files ------------------------------------------------------------

# What a temporary file of PZLS is named: ``.<name>.tmp`` and
# ``.<name>.<pid>.<thread>.tmp`` (atomic_write, the health probe), and what
# earlier releases left: ``secret_key.tmp<pid>`` and tempfile's ``.health-<8>``.
_TEMPORARY_NAME = re.compile(r"^(?:\..+\.tmp|secret_key\.tmp\d+|\.health-[a-z0-9_]{8})$")


def is_temporary(name: str) -> bool:
    return _TEMPORARY_NAME.match(name) is not None


def temporary_path(path: Path, *, exclusive: bool = False) -> Path:
    """Where the temporary file of a write of ``path`` goes (see the module's docstring)."""
    if exclusive:
        return path.with_name(f".{path.name}.tmp")
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (st.st_dev, st.st_ino)


def _open_temporary(tmp: Path) -> int:
    """Open ``tmp`` empty for writing, holding its flock, so no clean-up removes it while it is written."""
    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A clean-up may have removed the name between the open and the
            # flock (it held the flock of a leftover we opened): start again.
            if _same_file(fd, tmp):
                os.ftruncate(fd, 0)
                if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE:  # a leftover of an earlier release
                    os.fchmod(fd, PRIVATE_FILE)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def remove_leftover(tmp: Path) -> bool:
    """Remove the temporary file ``tmp`` unless a live writer holds it; True when it was removed.

    A writer holds the flock of its temporary file from creating it until it
    is renamed or removed, and the kernel drops the flock of a killed
    process: a temporary file whose flock can be taken is a leftover.
    """
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone, or not a file (a symbolic link): nothing of ours
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # being written
        if not _same_file(fd, tmp):
            return False  # renamed into place, or replaced by a new writer's file, meanwhile
        os.unlink(tmp)
        return True
    finally:
        os.close(fd)


def atomic_write(
    path: Path,
    data: bytes | list | Iterator,
    *,
    durable: bool = True,
    exclusive: bool = False,
    before_rename: Callable[[FileIdentity], None] | None = None,
) -> FileIdentity:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one.

    ``data`` may be a list of chunks (bytes or any buffer), written in order
    without joining them, or an iterator of chunks or of such lists, each
    written as it comes (so a large file never has to be in memory at once). With ``durable`` the
    new content and the rename are fsynced before returning. ``exclusive``
    says the caller holds the lock every writer of ``path`` takes, so the
    temporary file may have one fixed name. Whatever fails before the rename
    leaves ``path`` as it was and no temporary file behind. Returns the
    identity of the new file. ``before_rename``, given, is called with that
    identity once the content is written (and fsynced), just before the
    rename: what it raises leaves ``path`` as it was (a file that names this
    one, written first, so it is durable before this one is).
    """
    tmp = temporary_path(path, exclusive=exclusive)
    fd = _open_temporary(tmp)
    try:
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
            if before_rename is not None:
                before_rename(identity)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    finally:
        os.close(fd)
    if durable:
        fsync_dir(path.parent)
    return identity


def probe_write(directory: Path) -> None:
    """Write, fsync and remove a small file in ``directory``; OSError when it cannot take a write."""
    tmp = directory / f".health.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = _open_temporary(tmp)
    try:
        try:
            _write_all(fd, [b"ok\n"])
            os.fsync(fd)
        finally:
            os.unlink(tmp)
    finally:
        os.close(fd)


# --- locks ----------------------------------------------------------------------------

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _open_lock_file(lock_path: Path) -> int:
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    except OSError as exc:
        # On a read-only file system nobody writes, but readers that lock
        # (a summary rebuilt under the lock) should still work.
        if exc.errno != errno.EROFS:
            raise
        return os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)


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
            fd = _open_lock_file(lock_path)
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


# --- the data directory ----------------------------------------------------------


def _make_private(path: Path, mode: int, *, follow: bool = False) -> None:
    """Give ``path`` ``mode``; a symbolic link is left alone unless ``follow`` (the data directory itself)."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass
    except OSError:
        logger.warning("cannot make %s readable by this user only", path, exc_info=True)


def prepare_data_dir(directory: Path) -> None:
    """Make ``directory`` the server user's alone and clear crash leftovers; run at every start.

    Sets the process umask to 0o077 (so whatever any library creates later,
    SQLite's ``-wal`` and ``-shm`` files included, is 0600 or 0700), creates
    the directory 0700 or makes an existing one 0700, whoever created it,
    and walks it (without following symbolic links): directories become
    0700, files 0600, and temporary files no live writer holds are removed.
    """
    os.umask(0o077)
    directory.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    _make_private(directory, PRIVATE_DIR, follow=True)
    for root, dirnames, filenames in os.walk(directory):
        here = Path(root)
        for name in dirnames:
            _make_private(here / name, PRIVATE_DIR)
        for name in filenames:
            path = here / name
            try:
                if is_temporary(name) and remove_leftover(path):
                    continue
            except OSError:
                logger.warning("cannot remove the leftover %s", path, exc_info=True)
            _make_private(path, PRIVATE_FILE)
