"""A small, real file system for tests of full and read-only disks: a tmpfs, mounted as root.

``tmpfs(path, size)`` mounts one at ``path`` for the ``with`` block; where
mounting is not allowed the test is skipped, except in CI (``CI=true``), where
it fails: these tests must run there. ``fill`` takes every free byte;
``read_only`` remounts it read-only (which stops root too, unlike permission bits).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or str(exc)
        message = f"cannot mount a tmpfs at {path} (needs root): {detail!r}"
        if IN_CI:
            pytest.fail(message + " (CI=true: these tests must run)")
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the file system has no byte left; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for block in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def read_only(path: Path, on: bool = True) -> None:
    _mount("-o", f"remount,{'ro' if on else 'rw'}", str(path))
