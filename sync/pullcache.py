"""Compressed copies of pull bodies, one per repository version, shared by the workers.

A pull compressed with gzip is written once to ``DATA_DIR/pullcache/<user>-<tag>.json.gz``
(``tag`` changes with every change of the pull body) and sent from there to
every later client that accepts gzip, until the repository changes. One
worker compresses while the others wait for its file, so no version is
compressed twice.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path

from django.conf import settings

from pzls_site.files import atomic_write, exclusive_lock
from sync.backends import PullSource

# Level 1 compresses JSON about five-fold at a few hundred MB/s: the first pull
# after a push pays little, and the network saves most of what level 9 would.
GZIP_LEVEL = 1
_CHUNK = 1 << 20


def _directory() -> Path:
    directory = Path(settings.PZLS_DATA_DIR) / "pullcache"
    directory.mkdir(exist_ok=True)
    return directory


def _gzip_chunks(source: PullSource) -> list[bytes]:
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


def gzip_path(*, user_id: str, source: PullSource) -> Path:
    """The gzip file of ``source`` (a user's pull at one tag), compressing it if nobody has yet.

    Closes ``source``. Older copies of the user's pulls are removed.
    """
    directory = _directory()
    path = directory / f"{user_id}-{source.tag}.json.gz"
    if path.exists():
        if source.file is not None:
            source.file.close()
        return path
    with exclusive_lock(directory / f"{user_id}.lock"):
        if not path.exists():
            atomic_write(path, _gzip_chunks(source), durable=False)
            for old in directory.glob(f"{user_id}-*.json.gz"):
                if old != path:
                    with contextlib.suppress(FileNotFoundError):
                        old.unlink()
        elif source.file is not None:
            source.file.close()
    return path


def forget(*, user_id: str) -> None:
    """Remove every cached pull of a user (their repository is gone)."""
    directory = _directory()
    for path in [*directory.glob(f"{user_id}-*.json.gz"), directory / f"{user_id}.lock"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
