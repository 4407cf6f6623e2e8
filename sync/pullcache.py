"""Compressed copies of pull bodies, one per repository version, shared by the workers.

A pull over 256 KiB compressed with gzip is written once to
``DATA_DIR/pullcache/<user>-<tag>.json.gz`` (``tag`` changes with every change
of the pull body) and sent from there to every later client that accepts
gzip, until the repository changes. One worker compresses while the others
wait for its file, so no version is compressed twice. Smaller pulls are
compressed on the fly.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path

from django.conf import settings

from pzls_site.files import atomic_write, exclusive_lock
from sync.backends import PullSource

# Bodies up to this size are compressed on the fly: a file would cost more than it saves.
SMALL_BODY = 256 * 1024
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


def cached_path(*, user_id: str, tag: str) -> Path | None:
    """The compressed pull of this user at this tag, if some worker has made it."""
    path = _directory() / f"{user_id}-{tag}.json.gz"
    return path if path.exists() else None


def compress(*, user_id: str, source: PullSource) -> PullSource:
    """``source`` gzip-compressed, as bytes when small, else as a cached file made once per tag.

    Closes ``source``. Making a new cached file removes the user's older ones.
    """
    if source.size <= SMALL_BODY:
        body = b"".join(_gzip_chunks(source))
        return PullSource(tag=source.tag, size=len(body), body=body)
    directory = _directory()
    path = directory / f"{user_id}-{source.tag}.json.gz"
    with exclusive_lock(directory / f"{user_id}.lock"):
        if path.exists():
            if source.file is not None:
                source.file.close()
        else:
            atomic_write(path, _gzip_chunks(source), durable=False)
            for old in directory.glob(f"{user_id}-*.json.gz"):
                if old != path:
                    with contextlib.suppress(FileNotFoundError):
                        old.unlink()
    return open_cached(path, tag=source.tag)


def open_cached(path: Path, *, tag: str) -> PullSource:
    fh = open(path, "rb")  # noqa: SIM115 - the PullSource returned owns the file; its reader closes it
    return PullSource(tag=tag, size=os.fstat(fh.fileno()).st_size, file=fh)


def forget(*, user_id: str) -> None:
    """Remove every cached pull of a user (their repository is gone)."""
    directory = _directory()
    for path in [*directory.glob(f"{user_id}-*.json.gz"), directory / f"{user_id}.lock"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
