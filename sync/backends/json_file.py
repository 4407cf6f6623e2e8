"""Repository store in JSON files in the data directory (the store's ``location`` option).

Per user (``<id>`` is the user's UUID):

- ``repo_<id>.json``, the **snapshot**: a stamp line ``{"stamp":"<32 hex>"}``
  (new with every write, see ``pzls_site.files``), then ``{"version": N,
  "data": {...}}`` compact, exactly the body of a pull at version N, so a
  pull of a repository with nothing journalled sends the file itself
  (sendfile). A file without the stamp line, or without its index (written
  by an earlier release), is read the same and rewritten with both on first
  use: every record version 1, last changed at N.
- ``repo_<id>.<stamp>.idx``, the snapshot's **index**, one per snapshot,
  named by its stamp: a header line (epoch, version, last position, the
  counts ``status`` shows), then per store the ids in pull order with each
  record's version, seq, position and the byte range of its member in the
  snapshot, the store's tombstones, and the change order. A new snapshot's
  index is written (durably) before the snapshot takes the name, and the old
  index goes after: a crash in between leaves the old pair whole. Record
  versions and tombstones live only here and in the journal: the index is
  data, not a cache.
- ``repo_<id>.journal``, the **journal**: change sets committed after the
  snapshot, one line each, after a line naming the snapshot's stamp they
  follow. A change set is committed when its line is fsynced; a torn last
  line was never committed. A journal that names another stamp (a snapshot
  written since) is obsolete.
- ``changelog_<id>.jsonl``: one entry per line, appended and fsynced before
  the commit. Lines with a version above the committed one are leftovers of
  a crashed commit: readers skip them and the next commit cuts them off.
- ``repo_<id>.lock``: the lock every writer of this user holds; the lock file
  goes when the writer leaves no snapshot (a deleted user leaves no file).

So a commit costs what it changes: a small change set (an op, a re-push that
changes 1 % of the records) is one journal line; a large one (a first push),
or one that would make the journal large beside the snapshot, writes a new
snapshot and index instead (then the journal is obsolete). A pull of a
repository with a journal is the snapshot's unchanged byte ranges with the
journalled records put in, kept once per version in the pull cache.

Each worker keeps the state of recently used repositories in memory (the
index with the journal applied), checked against the snapshot's identity
and the journal's size on every use, so a read costs two ``stat`` calls and
a commit of one record a journal line.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import operator
import os
import re
import secrets
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from itertools import accumulate, groupby, repeat
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
from sync import audit
from sync.backends.base import (
    CHANGES_PAGE,
    EMPTY_PULL,
    EMPTY_SUMMARY,
    BaseRepositoryStore,
    ChangesPage,
    CursorEntry,
    CursorPage,
    PullSource,
    RecordDump,
    RepositorySummary,
    WriteSnapshot,
    entry_json,
)
from sync.depth import decode_members, decode_repository
from sync.merge import RawStores, StoredStore
from sync.pullcache import PullCache
from sync.records import CREATE, DELETE, ChangeSet, RecordState, StoreWrite

logger = logging.getLogger("pzls.sync")

_USER_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_VERSION_PREFIX = re.compile(rb'^\{"version":(\d+)[,}]')
_BLOCK = 1 << 20
_STAMP_LINE = len(b'{"stamp":"%s"}\n' % new_stamp().encode())
# Records per piece when a store's texts are read for a push.
_RECORDS_PER_PIECE = 512
# A change set goes to the journal unless the journal would pass this share of the snapshot (or this floor).
_JOURNAL_SHARE = 8
_JOURNAL_FLOOR = 1 << 20
# Texts closer than this in a snapshot are read in one call, up to _RUN_MAX bytes a call.
_NEARBY = 64 * 1024
_RUN_MAX = 4 << 20
# Stale positions the change order carries before it is copied without them.
_STALE_FLOOR = 4096
# Repository states kept per worker: at most this many, holding at most this many rows and tombstones
# in all (about 28 MB per 100,000 records) beside the one in use.
_STATES = 8
_STATE_ROWS = 150_000

_encoder = msgspec.json.Encoder()


def _stamp_line(stamp: str) -> bytes:
    return b'{"stamp":"%s"}\n' % stamp.encode()


def _body_offset(identity: FileIdentity) -> int:
    """Where the pull body starts in a snapshot of this identity (0 in a file without a stamp)."""
    return _STAMP_LINE if identity[3] else 0


def _line_version(line: bytes) -> int | None:
    """The version of a changelog line as this store writes it; None for a torn or foreign line."""
    match = _VERSION_PREFIX.match(line)
    if match is None or not line.endswith(b"}"):
        return None
    return int(match.group(1))


def _reverse_lines(fd: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the lines in the first ``end`` bytes of ``fd``, newest first (a torn last line too)."""
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


def _simple(ids: list[str]) -> bool:
    """Whether every id is written as a JSON string by just quoting it (ASCII, nothing to escape)."""
    joined = "".join(ids)
    # isprintable: no control character (ASCII's are 0x00-0x1f and 0x7f), which msgspec would escape.
    return joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined


def _member_heads(ids: list[str]) -> list[int]:
    """The length of each id written as a JSON string with its colon (``"id":``), as msgspec writes it."""
    if _simple(ids):
        return list(map((3).__add__, map(len, ids)))
    return [len(_encoder.encode(record_id)) + 1 for record_id in ids]


def _heads_total(ids: list[str]) -> int:
    """``sum(_member_heads(ids))`` without the list."""
    if _simple(ids):
        return sum(map(len, ids)) + 3 * len(ids)
    return sum(len(_encoder.encode(record_id)) + 1 for record_id in ids)


def _key_length(record_id: str) -> int:
    return len(_encoder.encode(record_id))


# --- the index file ----------------------------------------------------------------------


class _StoreIndex(msgspec.Struct, array_like=True):
    name: str
    ids: list[str]
    versions: list[int]
    seqs: list[int]
    positions: list[int]
    starts: list[int]
    ends: list[int]
    # The length of each member's ``"id":`` (its text starts there).
    heads: list[int]
    tomb_ids: list[str]
    tomb_versions: list[int]
    tomb_seqs: list[int]
    tomb_positions: list[int]


class _Header(msgspec.Struct):
    stamp: str
    epoch: str
    version: int
    position: int
    records: int
    stores: int
    totalSyncs: int
    lastSync: str | None
    dataSize: int


class _Body(msgspec.Struct, array_like=True):
    stores: list[_StoreIndex]
    order_positions: list[int]
    order_stores: list[int]
    order_refs: list[int]


_header_decoder = msgspec.json.Decoder(_Header)
_body_decoder = msgspec.json.Decoder(_Body)


# --- journal lines -------------------------------------------------------------------------


class _JournalWrite(msgspec.Struct, array_like=True):
    store: str
    ids: list[str]
    versions: list[int]
    actions: str
    texts: list[msgspec.Raw]


class _JournalLine(msgspec.Struct):
    version: int
    position: int
    timestamp: str
    summary: tuple[int, int, int, str | None, int]  # records, stores, totalSyncs, lastSync, dataSize
    writes: list[_JournalWrite]
    audit: dict[str, Any] | None = None


class _JournalHead(msgspec.Struct):
    journal: str  # the stamp of the snapshot it follows


_journal_decoder = msgspec.json.Decoder(_JournalLine)


class _JournalSummary(msgspec.Struct):
    version: int
    summary: tuple[int, int, int, str | None, int]


_journal_summary_decoder = msgspec.json.Decoder(_JournalSummary)
_NULL = msgspec.Raw(b"null")


# --- a repository's state in memory -------------------------------------------------------------


class _Rows:
    """One store: its records in pull order (the snapshot's, then those added since) and its tombstones.

    Rows below ``body_rows`` are members of the snapshot (``starts``/``ends``
    give their byte ranges); rows in ``dead`` were deleted since the
    snapshot and rows in ``mem`` have a text from the journal, held here.
    """

    __slots__ = (
        "body_rows",
        "dead",
        "ends",
        "heads",
        "ids",
        "live",
        "mem",
        "members",
        "name",
        "positions",
        "row_of",
        "seqs",
        "starts",
        "tombs",
        "versions",
    )  # fmt: skip

    def __init__(self, name: str) -> None:
        self.name = name
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.versions = array("q")
        self.seqs = array("q")
        self.positions = array("q")
        self.starts = array("q")
        self.ends = array("q")
        self.heads = array("H")
        self.body_rows = 0
        self.dead: set[int] = set()
        self.mem: dict[int, msgspec.Raw] = {}
        self.tombs: dict[str, tuple[int, int, int]] = {}
        self.live = 0
        # Bytes of the live members ``"id":text`` (without the commas between them).
        self.members = 0

    @classmethod
    def from_index(cls, index: _StoreIndex) -> _Rows:
        rows = cls(index.name)
        rows.ids = index.ids
        rows.row_of = {record_id: row for row, record_id in enumerate(index.ids)}
        rows.versions = array("q", index.versions)
        rows.seqs = array("q", index.seqs)
        rows.positions = array("q", index.positions)
        rows.starts = array("q", index.starts)
        rows.ends = array("q", index.ends)
        rows.heads = array("H", index.heads)
        rows.body_rows = rows.live = len(index.ids)
        rows.members = sum(index.ends) - sum(index.starts)
        rows.tombs = {
            tid: (v, s, p)
            for tid, v, s, p in zip(
                index.tomb_ids, index.tomb_versions, index.tomb_seqs, index.tomb_positions, strict=True
            )
        }
        return rows


class _State:
    """A repository as a worker holds it: the snapshot's index with the journal applied."""

    def __init__(self) -> None:
        self.identity: FileIdentity | None = None  # the snapshot's
        self.fd: int | None = None  # the snapshot, open
        self.journal: tuple[int, int] | None = None  # (inode, bytes applied) of the journal
        self.epoch = "0"
        self.version = 0
        self.snapshot_version = 0
        self.position = 0
        self.stores: dict[str, _Rows] = {}
        self.order_positions = array("q")
        self.stale: set[int] = set()  # positions of the order no longer any record's (see _unorder)
        self.order_stores: list[str] = []
        self.order_ids: list[str] = []
        self.total_syncs = 0
        self.last_sync: str | None = None
        self.pending_audit: dict[str, Any] | None = None
        self.lock = threading.RLock()
        # ``size`` as of the end of the last use (read without the lock, by the cache's bound).
        self.held = 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @property
    def size(self) -> int:
        """Rows and tombstones held, a measure of the memory the state takes."""
        return sum(len(rows.ids) + len(rows.tombs) for rows in self.stores.values())

    @property
    def records(self) -> int:
        return sum(rows.live for rows in self.stores.values())

    @property
    def data_size(self) -> int:
        """The size of the pull body."""
        data = 2 + max(len(self.stores) - 1, 0)
        for name, rows in self.stores.items():
            data += len(_encoder.encode(name)) + 3 + rows.members + max(rows.live - 1, 0)
        return len(b'{"version":%d,"data":}' % self.version) + data

    @property
    def journalled(self) -> bool:
        return self.version != self.snapshot_version

    # --- reading texts ---

    def text(self, rows: _Rows, row: int) -> bytes | msgspec.Raw:
        kept = rows.mem.get(row)
        if kept is not None:
            return kept
        assert self.fd is not None
        start = rows.starts[row] + rows.heads[row]
        end = rows.ends[row]
        text = os.pread(self.fd, end - start, start)
        if len(text) != end - start:
            raise StorageError("repository file is shorter than its index says")
        return text

    def read_texts(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        """The texts of these (store, row)s, the snapshot's read in runs of nearby bytes, not one call each."""
        out: dict[tuple[str, int], bytes] = {}
        spans: list[tuple[int, int, str, int]] = []
        for name, row in wanted:
            rows = self.stores[name]
            kept = rows.mem.get(row)
            if kept is not None:
                out[name, row] = bytes(kept)
            else:
                spans.append((rows.starts[row] + rows.heads[row], rows.ends[row], name, row))
        spans.sort()
        i = 0
        while i < len(spans):
            j, first, last = i, spans[i][0], spans[i][1]
            while j + 1 < len(spans) and spans[j + 1][0] - last < _NEARBY and spans[j + 1][1] - first < _RUN_MAX:
                j += 1
                last = max(last, spans[j][1])
            assert self.fd is not None
            block = memoryview(_pread_all(self.fd, first, last - first))
            for start, end, name, row in spans[i : j + 1]:
                out[name, row] = bytes(block[start - first : end - first])
            i = j + 1
        return out

    def pieces(self, rows: _Rows) -> _Pieces:
        return _Pieces(self, rows)

    # --- the change order ---

    def _unorder(self, positions: list[int]) -> None:
        """Take these positions out of the change order (each is in it).

        They are only marked (``stale``, which readers of the order skip) until
        they are a quarter of it; then the order is copied without them, in slices.
        """
        self.stale.update(positions)
        if len(self.stale) > max(_STALE_FLOOR, len(self.order_positions) // 4):
            self.compact_order()

    def compact_order(self) -> None:
        """The change order without its stale positions."""
        if not self.stale:
            return
        order = self.order_positions
        cuts = sorted(bisect.bisect_left(order, position) for position in self.stale)
        kept_positions, kept_stores, kept_ids = array("q"), [], []
        start = 0
        for cut in [*cuts, len(order)]:
            if start < cut:
                kept_positions.extend(order[start:cut])
                kept_stores.extend(self.order_stores[start:cut])
                kept_ids.extend(self.order_ids[start:cut])
            start = cut + 1
        self.order_positions, self.order_stores, self.order_ids = kept_positions, kept_stores, kept_ids
        self.stale = set()

    # --- applying a change set ---

    def apply(self, change_set: ChangeSet, *, keep_texts: bool) -> None:
        """Apply ``change_set`` to this state (``keep_texts``: copy the texts, which then outlive the request)."""
        superseded: list[int] = []
        position = self.position
        new_positions: list[int] = []
        new_stores: list[str] = []
        new_ids: list[str] = []
        for write in change_set.writes:
            rows = self.stores.get(write.store)
            if rows is None:
                rows = self.stores[write.store] = _Rows(write.store)
            if _all_new(rows, write):
                self._append_new(rows, write, position, change_set.version, keep_texts)
                count = len(write.ids)
                new_positions.extend(range(position + 1, position + count + 1))
                new_stores.extend([write.store] * count)
                new_ids.extend(write.ids)
                position += count
                continue
            for record_id, text, version, action in zip(
                write.ids, write.texts, write.versions, write.actions, strict=True
            ):
                position += 1
                row = rows.row_of.get(record_id)
                if row is not None and action == CREATE:  # revived within one batch: a new place at the end
                    superseded.append(rows.positions[row])
                    rows.members -= _key_length(record_id) + 1 + len(self.text(rows, row))
                    rows.dead.add(row)
                    rows.mem.pop(row, None)
                    del rows.row_of[record_id]
                    rows.live -= 1
                    row = None
                elif row is None:
                    tomb = rows.tombs.pop(record_id, None)
                    if tomb is not None:
                        superseded.append(tomb[2])
                else:
                    superseded.append(rows.positions[row])
                if action == DELETE:
                    if row is not None:
                        rows.members -= _key_length(record_id) + 1 + len(self.text(rows, row))
                        rows.dead.add(row)
                        rows.mem.pop(row, None)
                        del rows.row_of[record_id]
                        rows.live -= 1
                    rows.tombs[record_id] = (version, change_set.version, position)
                elif row is not None:
                    assert text is not None
                    rows.members += len(text) - len(self.text(rows, row))
                    rows.mem[row] = msgspec.Raw(bytes(text)) if keep_texts else text
                    rows.versions[row] = version
                    rows.seqs[row] = change_set.version
                    rows.positions[row] = position
                else:
                    assert text is not None
                    row = len(rows.ids)
                    rows.ids.append(record_id)
                    rows.row_of[record_id] = row
                    rows.versions.append(version)
                    rows.seqs.append(change_set.version)
                    rows.positions.append(position)
                    rows.starts.append(-1)
                    rows.ends.append(-1)
                    rows.heads.append(0)
                    rows.mem[row] = msgspec.Raw(bytes(text)) if keep_texts else text
                    rows.members += _key_length(record_id) + 1 + len(text)
                    rows.live += 1
                new_positions.append(position)
                new_stores.append(write.store)
                new_ids.append(record_id)
        self._unorder(superseded)
        self.order_positions.extend(new_positions)
        self.order_stores.extend(new_stores)
        self.order_ids.extend(new_ids)
        self.position = position
        self.version = change_set.version
        self.total_syncs += 1
        self.last_sync = change_set.timestamp

    def hold(self, rows: _Rows, record_id: str, text: msgspec.Raw, version: int, seq: int, position: int) -> None:
        """Add a record read from elsewhere (an earlier release's file, a dump) at the end of its store."""
        rows.row_of[record_id] = len(rows.ids)
        rows.ids.append(record_id)
        rows.versions.append(version)
        rows.seqs.append(seq)
        rows.positions.append(position)
        rows.starts.append(-1)
        rows.ends.append(-1)
        rows.heads.append(0)
        rows.mem[len(rows.ids) - 1] = text
        rows.live += 1
        rows.members += _key_length(record_id) + 1 + len(text)
        self.order_positions.append(position)
        self.order_stores.append(rows.name)
        self.order_ids.append(record_id)

    @staticmethod
    def _append_new(rows: _Rows, write: StoreWrite, position: int, seq: int, keep_texts: bool) -> None:
        """Add a store write of new records only, in bulk (a first push)."""
        count, first = len(write.ids), len(rows.ids)
        rows.ids.extend(write.ids)
        rows.row_of.update(zip(write.ids, range(first, first + count), strict=True))
        rows.versions.extend(write.versions)
        rows.seqs.extend([seq] * count)
        rows.positions.extend(range(position + 1, position + count + 1))
        rows.starts.extend(array("q", [-1]) * count)
        rows.ends.extend(array("q", [-1]) * count)
        rows.heads.extend(array("H", [0]) * count)
        texts = [msgspec.Raw(bytes(t)) for t in write.texts] if keep_texts else write.texts  # type: ignore[arg-type]
        rows.mem.update(zip(range(first, first + count), texts, strict=True))  # type: ignore[arg-type]
        rows.members += _heads_total(write.ids) + sum(map(len, texts))  # type: ignore[arg-type]
        rows.live += count

    # --- the pull body ---

    def body_chunks(self, layout: dict[str, _StoreIndex] | None = None) -> Iterator[bytes | memoryview]:
        """The pull body ``{"version":N,"data":{...}}`` in pieces: the snapshot's unchanged ranges, the rest written.

        With ``layout``, each store's rows as written (their new byte ranges
        in a file that starts with a stamp line) are put there.
        """
        head = b'{"version":%d,"data":{' % self.version
        offset = (_STAMP_LINE if layout is not None else 0) + len(head)
        yield head
        first_store = True
        for name, rows in self.stores.items():
            opening = (b"" if first_store else b",") + _encoder.encode(name) + b":{"
            first_store = False
            yield opening
            offset += len(opening)
            written = _StoreIndex(name, [], [], [], [], [], [], [], [], [], [], [])
            first = True
            for kind, a, b in _runs(rows):
                if kind == "span":
                    # Rows a..b unchanged and together in the snapshot: copied as they are.
                    start, end = rows.starts[a], rows.ends[b]
                    if not first:
                        yield b","
                        offset += 1
                    first = False
                    assert self.fd is not None
                    chunk = _pread_all(self.fd, start, end - start)
                    yield chunk
                    if layout is not None:
                        delta = offset - start
                        written.starts.extend([s + delta for s in rows.starts[a : b + 1]])
                        written.ends.extend([e + delta for e in rows.ends[a : b + 1]])
                        written.heads.extend(rows.heads[a : b + 1])
                        _copy_meta(written, rows, a, b)
                    offset += len(chunk)
                else:
                    ids = [rows.ids[r] for r in range(a, b + 1)]
                    texts = [rows.mem[r] for r in range(a, b + 1)]
                    if not first:
                        yield b","
                        offset += 1
                    first = False
                    members = memoryview(_encoder.encode(dict(zip(ids, texts, strict=True))))[1:-1]
                    yield members
                    if layout is not None:
                        member_heads = _member_heads(ids)
                        written.heads.extend(member_heads)
                        lengths = list(map(operator.add, member_heads, map(len, texts)))
                        starts = list(accumulate(map(operator.add, lengths[:-1], repeat(1)), initial=offset))
                        written.starts.extend(starts)
                        written.ends.extend(map(operator.add, starts, lengths))
                        _copy_meta(written, rows, a, b)
                    offset += len(members)
            yield b"}"
            offset += 1
            if layout is not None:
                for tid, (v, s, p) in rows.tombs.items():
                    written.tomb_ids.append(tid)
                    written.tomb_versions.append(v)
                    written.tomb_seqs.append(s)
                    written.tomb_positions.append(p)
                layout[name] = written
        yield b"}}"


def _order_refs(state: _State, maps: dict[str, dict[str, int]]) -> list[int]:
    """Each entry of the change order as its row (or -1 - its tombstone) in the store as written, run by run."""
    refs: list[int] = []
    at = 0
    for name, run in groupby(state.order_stores):
        count = sum(1 for _ in run)
        refs.extend(map(maps[name].__getitem__, state.order_ids[at : at + count]))
        at += count
    return refs


def _all_new(rows: _Rows, write: StoreWrite) -> bool:
    """Whether a store write only creates ids the store has never seen (no row, no tombstone)."""
    return (
        write.actions.count(CREATE) == len(write.actions)
        and rows.row_of.keys().isdisjoint(write.ids)
        and rows.tombs.keys().isdisjoint(write.ids)
    )


def _as_raw(text: bytes | msgspec.Raw) -> msgspec.Raw:
    return text if isinstance(text, msgspec.Raw) else msgspec.Raw(text)


def _copy_meta(written: _StoreIndex, rows: _Rows, a: int, b: int) -> None:
    written.ids.extend(rows.ids[a : b + 1])
    written.versions.extend(rows.versions[a : b + 1])
    written.seqs.extend(rows.seqs[a : b + 1])
    written.positions.extend(rows.positions[a : b + 1])


def _runs(rows: _Rows) -> Iterator[tuple[str, int, int]]:
    """The live rows of a store, in order, as runs: ("span", a, b), rows unchanged and together in the snapshot,
    and ("mem", a, b), rows whose texts are held here (at most a piece's worth per run)."""
    total, body_rows = len(rows.ids), rows.body_rows
    if not rows.dead and len(rows.mem) == total - body_rows and (not rows.mem or min(rows.mem) >= body_rows):
        # Nothing changed in the snapshot's rows: they are one range; the rest were added since.
        if body_rows:
            yield "span", 0, body_rows - 1
        for a in range(body_rows, total, _RECORDS_PER_PIECE):
            yield "mem", a, min(a + _RECORDS_PER_PIECE, total) - 1
        return
    dirty = sorted(rows.dead.union(rows.mem))
    start = 0
    mem_start = mem_end = -1
    for row in [*dirty, total]:
        clean_end = min(row, body_rows)
        if start < clean_end:
            if mem_start >= 0:
                yield "mem", mem_start, mem_end
                mem_start = -1
            yield "span", start, clean_end - 1
        if row >= total:
            break
        if row not in rows.dead:
            if mem_start >= 0 and (mem_end != row - 1 or mem_end - mem_start + 1 >= _RECORDS_PER_PIECE):
                yield "mem", mem_start, mem_end
                mem_start = -1
            if mem_start < 0:
                mem_start = row
            mem_end = row
        start = row + 1
    if mem_start >= 0:
        yield "mem", mem_start, mem_end


def _pread_all(fd: int, start: int, size: int) -> bytes:
    parts, done = [], 0
    while done < size:
        block = os.pread(fd, size - done, start + done)
        if not block:
            raise StorageError("repository file is shorter than its index says")
        parts.append(block)
        done += len(block)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _Pieces:
    """A stored store's live texts, piece by piece, iterable again and again; ``compare`` for ``plan_merge``."""

    def __init__(self, state: _State, rows: _Rows) -> None:
        self.state, self.rows = state, rows

    def compare(self, records: Mapping[str, msgspec.Raw]) -> tuple[list[str], dict[str, msgspec.Raw]]:
        """The pushed ids the store lacks, and the stored texts of those whose text differs.

        Stored texts are compared where they lie in the snapshot, a piece of
        rows read at a time, without decoding the store.
        """
        rows, state = self.rows, self.state
        row_of, mem, body_rows = rows.row_of, rows.mem, rows.body_rows
        new_ids: list[str] = []
        changed: dict[str, msgspec.Raw] = {}
        pieces: dict[int, list[tuple[str, int, msgspec.Raw]]] = {}
        for record_id, raw in records.items():
            row = row_of.get(record_id)
            if row is None:
                new_ids.append(record_id)
                continue
            kept = mem.get(row)
            if kept is not None:
                if kept != raw:
                    changed[record_id] = kept
            elif rows.ends[row] - rows.starts[row] - rows.heads[row] != len(raw):
                changed[record_id] = msgspec.Raw(bytes(state.text(rows, row)))
            else:
                piece = pieces.get(row // _RECORDS_PER_PIECE)
                if piece is None:
                    piece = pieces[row // _RECORDS_PER_PIECE] = []
                piece.append((record_id, row, raw))
        starts, ends, heads = rows.starts, rows.ends, rows.heads
        assert state.fd is not None or not pieces
        for number, members in pieces.items():
            first = number * _RECORDS_PER_PIECE
            last = min(first + _RECORDS_PER_PIECE, body_rows) - 1
            base = starts[first]
            view = memoryview(_pread_all(state.fd, base, ends[last] - base))  # type: ignore[arg-type]
            for record_id, row, raw in members:
                text = view[starts[row] + heads[row] - base : ends[row] - base]
                if text != raw:
                    changed[record_id] = msgspec.Raw(bytes(text))
        return new_ids, changed

    def __iter__(self) -> Iterator[Mapping[str, msgspec.Raw]]:
        rows, state = self.rows, self.state
        for a in range(0, rows.body_rows, _RECORDS_PER_PIECE):
            b = min(a + _RECORDS_PER_PIECE, rows.body_rows) - 1
            start, end = rows.starts[a], rows.ends[b]
            text = bytearray(end - start + 2)
            text[0], text[-1] = 0x7B, 0x7D
            assert state.fd is not None
            if os.preadv(state.fd, [memoryview(text)[1:-1]], start) != end - start:
                raise StorageError("repository file is shorter than its index says")
            try:
                piece = decode_members(text)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise StorageError("repository file does not match its index") from exc
            for row in range(a, b + 1):
                if row in rows.dead:
                    piece.pop(rows.ids[row], None)
                elif row in rows.mem:
                    piece[rows.ids[row]] = _as_raw(rows.mem[row])
            yield piece
        extra = {rows.ids[r]: _as_raw(rows.mem[r]) for r in range(rows.body_rows, len(rows.ids)) if r not in rows.dead}
        if extra:
            yield extra


class _FileSnapshot(WriteSnapshot):
    def __init__(self, store: JSONFileRepositoryStore, user_id: str, state: _State, *, locked: bool) -> None:
        self.store, self.user_id, self.state, self.locked = store, user_id, state, locked
        self.version, self.position, self.epoch = state.version, state.position, state.epoch
        self.committed = False
        self.batch: audit.PendingBatch | None = None  # the committed change set's, to go into the audit log

    def states(self, store: str, ids: Iterable[str]) -> dict[str, RecordState]:
        rows = self.state.stores.get(store)
        if rows is None:
            return {}
        out: dict[str, RecordState] = {}
        for record_id in ids:
            row = rows.row_of.get(record_id)
            if row is not None:
                out[record_id] = RecordState(rows.versions[row], rows.seqs[row], False)
            else:
                tomb = rows.tombs.get(record_id)
                if tomb is not None:
                    out[record_id] = RecordState(tomb[0], tomb[1], True)
        return out

    def texts(self, store: str, ids: Iterable[str]) -> dict[str, bytes]:
        rows = self.state.stores.get(store)
        if rows is None:
            return {}
        out: dict[str, bytes] = {}
        for record_id in ids:
            row = rows.row_of.get(record_id)
            if row is not None:
                out[record_id] = bytes(self.state.text(rows, row))
        return out

    def tombstoned(self, store: str, ids: Collection[str]) -> set[str]:
        rows = self.state.stores.get(store)
        if rows is None or not rows.tombs:
            return set()
        return rows.tombs.keys() & set(ids)

    def stored_for(self, incoming: RawStores) -> Mapping[str, StoredStore]:
        return {name: self.state.pieces(rows) for name, rows in self.state.stores.items() if name in incoming}

    def commit(self, change_set: ChangeSet) -> None:
        if not self.locked or self.committed:
            raise RuntimeError("commit needs the lock, once")
        self.committed = True
        self.batch = self.store._commit(self.user_id, self.state, change_set)


# --- the store ------------------------------------------------------------------------------------


class JSONFileRepositoryStore(BaseRepositoryStore):
    """The default repository store: a few files per user in the data directory ``location``."""

    def __init__(self, *, location: str | Path) -> None:
        self.directory = Path(location)
        self.pull_cache = PullCache(self.directory / "pullcache", current_tag=self.pull_tag)
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._guard = threading.Lock()

    # --- paths -------------------------------------------------------------

    def _path(self, user_id: str, kind: str) -> Path:
        if not _USER_ID.match(user_id):
            raise ValueError(f"not a user id: {user_id!r}")
        names = {
            "repo": f"repo_{user_id}.json",
            "journal": f"repo_{user_id}.journal",
            "changelog": f"changelog_{user_id}.jsonl",
            "meta": f"repo_{user_id}.meta.json",
            "lock": f"repo_{user_id}.lock",
        }
        return self.directory / names[kind]

    def _index_path(self, user_id: str, stamp: str) -> Path:
        """The index of the snapshot with this stamp: each snapshot has its own, so the one in use is never
        overwritten before its snapshot is (a crash in between leaves the old pair whole)."""
        return self._path(user_id, "repo").with_name(f"repo_{user_id}.{stamp}.idx")

    def _remove_indexes(self, user_id: str, *, keep: str | None) -> None:
        """Remove the user's indexes but ``keep``'s, and their temporary files (under the user's lock)."""
        prefix, dot_prefix = f"repo_{user_id}.", f".repo_{user_id}."
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name
            if name.startswith(prefix) and name.endswith(".idx") and name != f"{prefix}{keep}.idx":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            elif name.startswith(dot_prefix) and name.endswith(".idx.tmp"):
                remove_leftover(Path(entry.path))

    @contextlib.contextmanager
    def _flock(self, user_id: str) -> Iterator[None]:
        """Hold the user's lock, first removing the temporary files a killed writer left; leaving with no
        snapshot (deleted, or a first commit refused), the lock file goes too, as the last step under it."""
        lock = self._path(user_id, "lock")
        with exclusive_lock(lock):
            for kind in ("repo", "journal", "meta", "changelog"):
                remove_leftover(temporary_path(self._path(user_id, kind), exclusive=True))
            try:
                yield
            finally:
                if not self._path(user_id, "repo").exists():
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()

    # --- the state ---------------------------------------------------------------

    def _cached(self, user_id: str) -> _State:
        with self._guard:
            state = self._states.get(user_id)
            if state is None:
                state = self._states[user_id] = _State()
            self._states.move_to_end(user_id)
            evicted = []
            while len(self._states) > 1 and (
                len(self._states) > _STATES or sum(kept.held for kept in self._states.values()) > _STATE_ROWS
            ):
                evicted.append(self._states.popitem(last=False)[1])
        for old in evicted:  # outside the guard: its holder may be waiting for the guard
            with old.lock:
                old.close()
                old.identity = None
        return state

    def _forget_state(self, user_id: str) -> None:
        with self._guard:
            state = self._states.pop(user_id, None)
        if state is not None:
            with state.lock:
                state.close()
                state.identity = None

    def _current(self, user_id: str, state: _State, *, locked: bool) -> None:
        """Bring ``state`` (whose lock the caller holds) up to what is on disk.

        A snapshot without an index (an earlier release's) is upgraded when
        the caller holds the user's lock; otherwise _NeedsLock is raised.
        """
        identity = file_identity(self._path(user_id, "repo"))
        if identity is None:
            self._reset(state)
            return
        if identity != state.identity or (locked and state.fd is None):  # (or an upgrade not written yet)
            if not self._load(user_id, state):
                if not self._earlier_release(user_id, identity):
                    logger.error("the snapshot of user %s has no readable index", user_id)
                    raise StorageError("repository index missing or unreadable")
                if not locked:
                    raise _NeedsLock()
                self._upgrade(user_id, state)
            return
        self._replay(user_id, state)

    @staticmethod
    def _reset(state: _State) -> None:
        state.close()
        fresh = _State()
        for name in ("identity", "fd", "journal", "epoch", "version", "snapshot_version", "position", "stores",
                     "order_positions", "stale", "order_stores", "order_ids", "total_syncs", "last_sync", "pending_audit"):  # fmt: skip
            setattr(state, name, getattr(fresh, name))

    def _load(self, user_id: str, state: _State) -> bool:
        """Load the snapshot and its index into ``state``; False when the snapshot has no index (an upgrade is due)."""
        try:
            fd = os.open(self._path(user_id, "repo"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._reset(state)
            return True
        try:
            identity = identity_of(fd)
            header, body, pending = self._read_index(user_id, identity[3])
        except BaseException:
            os.close(fd)
            raise
        if header is None or body is None:
            os.close(fd)
            return False
        self._reset(state)
        state.fd, state.identity = fd, identity
        state.epoch, state.version, state.snapshot_version = header.epoch, header.version, header.version
        state.position = header.position
        state.total_syncs, state.last_sync = header.totalSyncs, header.lastSync
        state.pending_audit = pending
        state.stores = {index.name: _Rows.from_index(index) for index in body.stores}
        names = [index.name for index in body.stores]
        lists = [(index.ids, index.tomb_ids) for index in body.stores]
        state.order_positions = array("q", body.order_positions)
        state.order_stores = [names[s] for s in body.order_stores]
        state.order_ids = [lists[s][0][r] if r >= 0 else lists[s][1][-r - 1] for s, r in
                           zip(body.order_stores, body.order_refs, strict=True)]  # fmt: skip
        state.journal = None
        self._replay(user_id, state)
        return True

    def _read_index(self, user_id: str, stamp: str) -> tuple[_Header | None, _Body | None, dict[str, Any] | None]:
        """The index of the snapshot with ``stamp``: its header, its body and the audit batch of the commit
        that wrote it (lines 1 to 3); Nones when there is none."""
        if not stamp:
            return None, None, None
        try:
            raw = self._index_path(user_id, stamp).read_bytes()
        except FileNotFoundError:
            return None, None, None
        first = raw.find(b"\n")
        second = raw.find(b"\n", first + 1)
        try:
            header = _header_decoder.decode(raw[:first])
            if header.stamp != stamp or second < 0:
                return None, None, None
            body = _body_decoder.decode(memoryview(raw)[first + 1 : second])
            pending = msgspec.json.decode(memoryview(raw)[second + 1 :], type=dict[str, Any] | None)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.error("the index of user %s cannot be read: rebuilding it from the snapshot", user_id)
            return None, None, None
        return header, body, pending

    def _header(self, user_id: str, stamp: str) -> _Header | None:
        """Only the first line of the index of the snapshot with ``stamp`` (the counts): a small read."""
        if not stamp:
            return None
        try:
            fd = os.open(self._index_path(user_id, stamp), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            head = os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        newline = head.find(b"\n")
        try:
            header = _header_decoder.decode(head[:newline]) if newline > 0 else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return header if header is not None and header.stamp == stamp else None

    def _journal_summary(self, user_id: str, stamp: str) -> tuple[int, tuple[int, int, int, str | None, int]] | None:
        """The version and counts of the last commit in the journal that follows the snapshot ``stamp``."""
        try:
            fd = os.open(self._path(user_id, "journal"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            head = os.pread(fd, 256, 0)
            newline = head.find(b"\n")
            try:
                if newline < 0 or msgspec.json.decode(head[:newline], type=_JournalHead).journal != stamp:
                    return None
            except (msgspec.DecodeError, msgspec.ValidationError):
                return None
            size = os.fstat(fd).st_size
            for offset, line in _reverse_lines(fd, size):
                if offset <= newline or offset + len(line) >= size:
                    continue  # the head line, or a torn last line (never committed)
                summary = _journal_summary_decoder.decode(line)
                return summary.version, summary.summary
            return None
        finally:
            os.close(fd)

    def _replay(self, user_id: str, state: _State) -> None:
        """Apply the journal lines ``state`` has not seen (the journal must follow the state's snapshot)."""
        try:
            fd = os.open(self._path(user_id, "journal"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if state.journalled:  # the journal went: a new snapshot replaced it (and we saw the old one)
                raise _Stale() from None
            return
        try:
            st = os.fstat(fd)
            applied = state.journal[1] if state.journal and state.journal[0] == st.st_ino else None
            if applied is None and state.journalled:
                raise _Stale()
            if applied is not None and applied == st.st_size:
                return
            start = applied or 0
            raw = _pread_all(fd, start, st.st_size - start) if st.st_size > start else b""
        finally:
            os.close(fd)
        offset = start
        if start == 0:
            newline = raw.find(b"\n")
            if newline < 0:
                return
            try:
                head = msgspec.json.decode(raw[:newline], type=_JournalHead)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return
            if state.identity is None or head.journal != state.identity[3]:
                return  # an obsolete journal: it follows another snapshot
            offset = newline + 1
        view = memoryview(raw)
        while True:
            newline = raw.find(b"\n", offset - start)
            if newline < 0:
                break  # a torn last line, or nothing more: never committed
            line = _journal_decoder.decode(view[offset - start : newline])
            if line.version > state.version:
                _apply_line(state, line)
            offset = start + newline + 1
        state.journal = (st.st_ino, offset)

    def _refresh(self, user_id: str, state: _State, *, locked: bool) -> None:
        for attempt in range(3):
            try:
                self._current(user_id, state, locked=locked)
                return
            except _Stale:
                state.identity = None
                if attempt == 2:
                    raise StorageError("repository changed while being read") from None

    @contextlib.contextmanager
    def _state(self, user_id: str, *, locked: bool) -> Iterator[_State]:
        """The user's state, current, with its lock held. Without the user's lock, a repository that must be
        upgraded first is upgraded under it (taken before the state's lock, as writers take them)."""
        state = self._cached(user_id)
        needs_lock = False
        with state.lock:
            try:
                self._refresh(user_id, state, locked=locked)
            except _NeedsLock:
                needs_lock = True
            else:
                try:
                    yield state
                except BaseException:
                    if locked:  # a commit that failed may have left the state half applied
                        state.identity = None
                    raise
                finally:
                    state.held = state.size
        if needs_lock:
            with self._flock(user_id), state.lock:
                try:
                    self._refresh(user_id, state, locked=True)
                except OSError:
                    if state.identity is None or state.fd is not None:
                        raise
                    # A disk that takes no write (full, read-only): an earlier release's snapshot is read as it is.
                    logger.warning("cannot upgrade the repository of user %s yet", user_id, exc_info=True)
                try:
                    yield state
                finally:
                    state.held = state.size

    # --- the contract: reading -------------------------------------------------------

    @contextlib.contextmanager
    def reading(self, user_id: str) -> Iterator[_FileSnapshot]:
        with self._state(user_id, locked=False) as state:
            missing = self._missing_audit(state)
            try:
                yield _FileSnapshot(self, user_id, state, locked=False)
            except BaseException:
                if missing is not None:  # kept for the next reader
                    state.pending_audit = missing.as_json()
                raise
        self._insert_audit(missing)

    @contextlib.contextmanager
    def locked(self, user_id: str, allowed: Callable[[], None] | None = None) -> Iterator[_FileSnapshot]:
        try:
            with self._flock(user_id):
                if allowed is not None:
                    allowed()
                with self._state(user_id, locked=True) as state:
                    missing = self._missing_audit(state)
                    snapshot = _FileSnapshot(self, user_id, state, locked=True)
                    yield snapshot
        except OSError as exc:
            raise StorageError("cannot write repository") from exc
        # Audit batches go into Django's database only once the user's lock (and the state's) is released:
        # a writer that holds that database (deleting the user) while it waits for the lock must never be
        # waited for under it. Until then the commit keeps its batch (the journal line or the index), and
        # whoever reads that commit next puts it in.
        self._insert_audit(missing)
        batch = snapshot.batch
        if batch is not None:
            audit.insert(batch)
            with state.lock:
                if state.pending_audit is not None and state.pending_audit.get("version") == batch.version:
                    state.pending_audit = None

    def pull(self, user_id: str) -> PullSource:
        try:
            with self._state(user_id, locked=False) as state:
                if state.identity is None:
                    return PullSource(tag="empty", size=len(EMPTY_PULL), body=EMPTY_PULL)
                tag = self._tag_of(user_id, state.identity)
                if not state.journalled:
                    fh = open(self._path(user_id, "repo"), "rb")  # noqa: SIM115 - the PullSource owns it
                    if identity_of(fh.fileno()) != state.identity:  # replaced since: read again
                        fh.close()
                        raise _Stale()
                    offset = _body_offset(state.identity)
                    fh.seek(offset)
                    return PullSource(tag=tag, size=state.identity[1] - offset, file=fh)
                kept = self.pull_cache.open(user_id, tag)
                if kept is not None:
                    return kept
                # The snapshot's unchanged ranges with the journalled records put in, kept once per tag.
                if self.pull_cache.keep_chunks(user_id, tag, state.body_chunks(), size=state.data_size):
                    kept = self.pull_cache.open(user_id, tag)
                    if kept is not None:
                        return kept
                body = b"".join(state.body_chunks())
                return PullSource(tag=tag, size=len(body), body=body)
        except _Stale:
            return self.pull(user_id)
        except OSError as exc:
            raise StorageError("cannot read repository") from exc

    def pull_tag(self, user_id: str) -> str:
        identity = file_identity(self._path(user_id, "repo"))
        return "empty" if identity is None else self._tag_of(user_id, identity)

    def _tag_of(self, user_id: str, identity: FileIdentity) -> str:
        tag = _tag(identity)
        try:
            st = os.stat(self._path(user_id, "journal"))
        except FileNotFoundError:
            return tag
        return f"{tag}-j{st.st_ino:x}-{st.st_size:x}"

    def cursor(self, user_id: str, *, after: int, limit: int, store: str | None, deleted: bool) -> CursorPage:
        with self._state(user_id, locked=False) as state:
            picked: list[tuple[str, str, int, int, int, int]] = []  # store, id, version, seq, position, row
            at = bisect.bisect_right(state.order_positions, after)
            positions, stores, ids, stale = state.order_positions, state.order_stores, state.order_ids, state.stale
            has_more = False
            for i in range(at, len(positions)):
                if stale and positions[i] in stale:
                    continue
                name = stores[i]
                if store is not None and name != store:
                    continue
                rows = state.stores[name]
                record_id = ids[i]
                row = rows.row_of.get(record_id)
                if row is None and not deleted:
                    continue
                if len(picked) >= limit:
                    has_more = True
                    break
                if row is not None:
                    picked.append((name, record_id, rows.versions[row], rows.seqs[row], positions[i], row))
                else:
                    version, seq, _ = rows.tombs[record_id]
                    picked.append((name, record_id, version, seq, positions[i], -1))
            texts = state.read_texts([(name, row) for name, _, _, _, _, row in picked if row >= 0])
            entries = [
                CursorEntry(name, rid, version, seq, position, texts[name, row] if row >= 0 else None)
                for name, rid, version, seq, position, row in picked
            ]
            return CursorPage(entries, has_more, state.version, state.position, state.epoch)

    def store_counts(self, user_id: str) -> tuple[int, list[tuple[str, int]]]:
        with self._state(user_id, locked=False) as state:
            return state.version, [(name, rows.live) for name, rows in state.stores.items()]

    def dump(self, user_id: str) -> RecordDump:
        with self.reading(user_id) as snapshot:
            state = snapshot.state
            stores: dict[str, list[tuple[str, msgspec.Raw, int, int]]] = {}
            for name, rows in state.stores.items():
                out = stores[name] = []
                for piece in state.pieces(rows):
                    for record_id, text in piece.items():
                        row = rows.row_of[record_id]
                        out.append((record_id, msgspec.Raw(bytes(text)), rows.versions[row], rows.seqs[row]))
            tombstones = {
                name: [(tid, v, s) for tid, (v, s, _) in rows.tombs.items()]
                for name, rows in state.stores.items()
                if rows.tombs
            }
            return RecordDump(version=state.version, stores=stores, tombstones=tombstones)

    def summary(self, user_id: str) -> RepositorySummary:
        # From the index's first line and the journal's last line, without loading the repository (the
        # admin's list of users asks for everyone's); a snapshot of an earlier release is loaded (upgraded).
        identity = file_identity(self._path(user_id, "repo"))
        if identity is None:
            return EMPTY_SUMMARY
        header = self._header(user_id, identity[3])
        if header is not None:
            last = self._journal_summary(user_id, identity[3])
            if last is not None and last[0] > header.version:
                records, stores, total_syncs, last_sync, data_size = last[1]
                return RepositorySummary(last[0], stores, records, data_size, total_syncs, last_sync)
            return RepositorySummary(
                header.version, header.stores, header.records, header.dataSize, header.totalSyncs, header.lastSync
            )
        with self._state(user_id, locked=False) as state:
            if state.identity is None:
                return EMPTY_SUMMARY
            return RepositorySummary(
                version=state.version,
                stores=len(state.stores),
                records=state.records,
                data_size_bytes=state.data_size,
                total_syncs=state.total_syncs,
                last_sync=state.last_sync,
            )

    def _committed_version(self, user_id: str) -> int:
        with self._state(user_id, locked=False) as state:
            return state.version

    def _committed_lines_newest_first(self, user_id: str, committed: int) -> Iterator[tuple[int, bytes]]:
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
        committed = self._committed_version(user_id)
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
        committed = self._committed_version(user_id)
        lines = [line for _, line in self._committed_lines_newest_first(user_id, committed)]
        return [orjson.loads(line) for line in reversed(lines)]

    # --- the contract: writing ------------------------------------------------------------

    def _commit(self, user_id: str, state: _State, change_set: ChangeSet) -> audit.PendingBatch | None:
        """Commit ``change_set`` on ``state`` (current, under the user's lock): the changelog line, then the
        journal line or a new snapshot (the commit point), then the audit batch."""
        if change_set.version != state.version + 1:
            raise StorageError("change set does not follow the repository")
        if state.identity is None:
            state.epoch = secrets.token_hex(8)  # a new repository: a new history
        batch = audit.pending_batch(change_set, user_id=user_id, epoch=state.epoch)
        appended = self._append_changelog(user_id, [entry_json(change_set.entry), b"\n"], committed=state.version)
        committed = False
        try:
            snapshot_size = state.identity[1] if state.identity else 0
            journal_size = state.journal[1] if state.journal else 0
            change_size = sum(sum(map(len, filter(None, w.texts))) for w in change_set.writes)
            limit = max(_JOURNAL_FLOOR, snapshot_size // _JOURNAL_SHARE)
            if state.identity is None or journal_size + change_size > limit:
                state.apply(change_set, keep_texts=False)
                self._write_snapshot(user_id, state, pending_audit=batch)
                committed = True
            else:
                state.apply(change_set, keep_texts=True)
                journal = self._append_journal(user_id, state, change_set, batch)
                committed = True
                state.journal = journal
        except BaseException:
            if not committed:
                with contextlib.suppress(OSError):
                    self._cut_changelog(user_id, *appended)
            state.identity = None
            raise
        # Until the batch is in the log the state keeps it, so a failed insert is made again on next use.
        state.pending_audit = batch.as_json() if batch is not None else None
        return batch

    @staticmethod
    def _missing_audit(state: _State) -> audit.PendingBatch | None:
        """The last commit's audit batch if the log may lack it (a writer killed after committing), to insert
        once the locks are released; the state forgets it."""
        pending = state.pending_audit
        if pending is None:
            return None
        state.pending_audit = None
        batch = audit.PendingBatch.from_json(pending)
        return batch if batch.version == state.version and batch.epoch == state.epoch else None

    @staticmethod
    def _insert_audit(batch: audit.PendingBatch | None) -> None:
        if batch is not None and not audit.recorded(batch.user_id, batch.epoch, batch.version):
            audit.insert(batch)

    def _reload(self, user_id: str, state: _State) -> None:
        """Read ``state`` back from the files just written (under the user's lock)."""
        state.identity = None
        self._refresh(user_id, state, locked=True)

    def _append_journal(
        self, user_id: str, state: _State, change_set: ChangeSet, batch: audit.PendingBatch | None
    ) -> tuple[int, int]:
        """Append the change set's line to the journal, fsynced: the commit point. The journal's (inode, size)."""
        # ``state`` has the change set applied already: the line's counts are the repository's after it.
        line = _JournalLine(
            version=change_set.version,
            position=state.position,
            timestamp=change_set.timestamp,
            summary=(state.records, len(state.stores), state.total_syncs, state.last_sync, state.data_size),
            writes=[
                _JournalWrite(
                    w.store, w.ids, w.versions, "".join(w.actions), [t if t is not None else _NULL for t in w.texts]
                )
                for w in change_set.writes
            ],
            audit=batch.as_json() if batch is not None else None,
        )
        text = _encoder.encode(line) + b"\n"
        path = self._path(user_id, "journal")
        assert state.identity is not None
        if state.journal is None:
            head = _encoder.encode(_JournalHead(journal=state.identity[3])) + b"\n"
            identity = atomic_write(path, [head, text], exclusive=True)
            return identity[0], len(head) + len(text)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, state.journal[1])  # a torn line of a crashed commit goes
            view = memoryview(text)
            offset = state.journal[1]
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, state.journal[1])
            raise
        finally:
            os.close(fd)
        return state.journal[0], state.journal[1] + len(text)

    def _write_snapshot(self, user_id: str, state: _State, *, pending_audit: audit.PendingBatch | None) -> None:
        """Write ``state`` (current, with anything journalled applied) as a new snapshot and index, durably,
        and make ``state`` describe them. The body is written as it is made (never whole in memory); the
        index, which names the new stamp, is made durable before the new snapshot takes the old one's name."""
        stamp = new_stamp()
        layout: dict[str, _StoreIndex] = {}
        epoch = state.epoch if state.epoch != "0" else secrets.token_hex(8)
        pending = pending_audit.as_json() if pending_audit is not None else None

        state.compact_order()

        def write_index(identity: FileIdentity) -> None:
            maps: dict[str, dict[str, int]] = {}
            for name, written in layout.items():
                rows = state.stores[name]
                mapping = (
                    dict(rows.row_of) if not rows.dead else dict(zip(written.ids, range(len(written.ids)), strict=True))
                )
                mapping.update(zip(written.tomb_ids, range(-1, -len(written.tomb_ids) - 1, -1), strict=True))
                maps[name] = mapping
            store_index = {name: i for i, name in enumerate(layout)}
            body = _Body(
                stores=list(layout.values()),
                order_positions=list(state.order_positions),  # compacted above
                order_stores=list(map(store_index.__getitem__, state.order_stores)),
                order_refs=_order_refs(state, maps),
            )
            header = _Header(
                stamp=stamp,
                epoch=epoch,
                version=state.version,
                position=state.position,
                records=state.records,
                stores=len(layout),
                totalSyncs=state.total_syncs,
                lastSync=state.last_sync,
                dataSize=identity[1] - _STAMP_LINE,
            )
            atomic_write(
                self._index_path(user_id, stamp),
                [_encoder.encode(header), b"\n", _encoder.encode(body), b"\n", _encoder.encode(pending)],
                exclusive=True,
            )

        def chunks() -> Iterator[bytes | memoryview]:
            yield _stamp_line(stamp)
            yield from state.body_chunks(layout)

        identity = atomic_write(self._path(user_id, "repo"), chunks(), exclusive=True, before_rename=write_index)
        # Committed. What follows only tidies up and describes the new files: if it fails, the state is
        # read again from them on next use.
        try:
            with contextlib.suppress(FileNotFoundError):
                self._path(user_id, "journal").unlink()
            self._remove_indexes(user_id, keep=stamp)
            fd = os.open(self._path(user_id, "repo"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            state.identity = None
            return
        if identity_of(fd) != identity:
            os.close(fd)
            state.identity = None
            return
        state.close()
        state.fd, state.identity = fd, identity
        for name, written in layout.items():
            rows = state.stores[name]
            if rows.dead:
                state.stores[name] = _Rows.from_index(written)
                continue
            rows.starts, rows.ends = array("q", written.starts), array("q", written.ends)
            rows.heads = array("H", written.heads)
            rows.mem.clear()
            rows.body_rows = len(rows.ids)
        state.epoch, state.snapshot_version, state.journal, state.pending_audit = epoch, state.version, None, pending

    def _earlier_release(self, user_id: str, identity: FileIdentity) -> bool:
        """Whether a snapshot without its index was written by an earlier release (then it is upgraded).

        Earlier releases wrote no index and no journal, and a stamped file with
        a sidecar (``.meta.json``). A snapshot of this release that lost its
        index (by hand) is refused instead: versions and tombstones live there.
        """
        if not identity[3] or self._path(user_id, "meta").exists():
            return True
        if self._path(user_id, "journal").exists():
            return False
        prefix = f"repo_{user_id}."
        return not any(e.name.startswith(prefix) and e.name.endswith(".idx") for e in os.scandir(self.directory))

    def _upgrade(self, user_id: str, state: _State) -> None:
        """Give a snapshot written by an earlier release (no index) its index, under the user's lock."""
        path = self._path(user_id, "repo")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self._reset(state)
            return
        identity = file_identity(path)
        offset = _body_offset(identity) if identity else 0
        try:
            version, data = decode_repository(memoryview(raw)[offset:])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StorageError("repository file is not a repository") from exc
        entries = sum(1 for _ in self._committed_lines_newest_first(user_id, version))
        last = next(self._committed_lines_newest_first(user_id, version), None)
        self._reset(state)
        state.epoch = secrets.token_hex(8)
        position = 0
        for name, records in data.items():
            rows = state.stores[name] = _Rows(name)
            for record_id, text in records.items():
                position += 1
                state.hold(rows, record_id, text, 1, version, position)
        state.version = state.snapshot_version = version
        state.position = position
        state.total_syncs = entries
        state.last_sync = orjson.loads(last[1]).get("timestamp") if last else None
        try:
            self._write_snapshot(user_id, state, pending_audit=None)
        except OSError:
            state.identity = identity  # as read, for readers only (see _state): a writer upgrades it first
            raise
        with contextlib.suppress(OSError):
            self._path(user_id, "meta").unlink()  # the earlier release's sidecar
        logger.info("upgraded the repository of user %s to the record index (version %s)", user_id, version)

    def _append_changelog(self, user_id: str, line: list[bytes], *, committed: int) -> tuple[int, bool]:
        """Cut off leftovers of a crashed commit, append ``line`` and fsync it; (size before, created) to undo it."""
        path = self._path(user_id, "changelog")
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
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
        path = self._path(user_id, "changelog")
        if created:
            path.unlink(missing_ok=True)
            return
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
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
            torn = offset + len(line) >= size
            version = _line_version(line)
            if not torn and version is not None and version <= committed:
                break
            keep = offset
        if keep < size:
            os.ftruncate(fd, keep)
            os.fsync(fd)

    def replace(self, user_id: str, dump: RecordDump, changelog: Iterable[dict[str, Any]]) -> None:
        try:
            with self._flock(user_id):
                entries = [entry for entry in changelog if int(entry["version"]) <= dump.version]
                atomic_write(
                    self._path(user_id, "changelog"),
                    [chunk for entry in entries for chunk in (entry_json(entry), b"\n")] or [b""],
                    exclusive=True,
                )
                state = self._cached(user_id)
                with state.lock:
                    self._reset(state)
                    state.epoch = secrets.token_hex(8)
                    position = 0
                    for name, records in dump.stores.items():
                        rows = state.stores[name] = _Rows(name)
                        for record_id, text, version, seq in records:
                            position += 1
                            state.hold(rows, record_id, text, version, seq, position)
                    for name, tombs in dump.tombstones.items():
                        rows = state.stores.setdefault(name, _Rows(name))
                        for record_id, version, seq in tombs:
                            position += 1
                            rows.tombs[record_id] = (version, seq, position)
                            state.order_positions.append(position)
                            state.order_stores.append(name)
                            state.order_ids.append(record_id)
                    state.version = state.snapshot_version = dump.version
                    state.position = position
                    state.total_syncs = len(entries)
                    state.last_sync = entries[-1].get("timestamp") if entries else None
                    with contextlib.suppress(FileNotFoundError):
                        self._path(user_id, "journal").unlink()
                    try:
                        self._write_snapshot(user_id, state, pending_audit=None)
                    except BaseException:
                        state.identity = None
                        raise
        except OSError as exc:
            raise StorageError("cannot write repository") from exc

    def purge(self, user_id: str, *, through_seq: int) -> int:
        with self.locked(user_id) as snapshot:
            state = snapshot.state
            if state.identity is None:
                return 0
            gone: list[int] = []
            for rows in state.stores.values():
                for tid, (_, seq, position) in list(rows.tombs.items()):
                    if seq <= through_seq:
                        del rows.tombs[tid]
                        gone.append(position)
            if not gone:
                return 0
            state._unorder(gone)
            try:
                self._write_snapshot(user_id, state, pending_audit=None)
            except BaseException:
                state.identity = None
                raise
            return len(gone)

    def delete(self, user_id: str) -> None:
        try:
            with self._flock(user_id):
                for kind in ("repo", "journal", "changelog", "meta"):
                    with contextlib.suppress(FileNotFoundError):
                        self._path(user_id, kind).unlink()
                self._remove_indexes(user_id, keep=None)
                self._forget_state(user_id)
        except OSError as exc:
            raise StorageError("cannot delete repository") from exc
        self.pull_cache.forget(user_id)


class _NeedsLock(Exception):
    """The snapshot must be upgraded, which needs the user's lock."""


class _Stale(Exception):
    """The state saw a journal that has since been replaced: load again from the files."""


def _apply_line(state: _State, line: _JournalLine) -> None:
    from sync.records import ChangeSet as _ChangeSet
    from sync.records import StoreWrite

    writes = [
        StoreWrite(
            w.store,
            w.ids,
            [None if bytes(t) == b"null" else msgspec.Raw(bytes(t)) for t in w.texts],
            w.versions,
            list(w.actions),
        )
        for w in line.writes
    ]
    change_set = _ChangeSet(version=line.version, timestamp=line.timestamp, writes=writes, entry={})
    state.apply(change_set, keep_texts=True)
    state.total_syncs, state.last_sync = line.summary[2], line.summary[3]
    state.pending_audit = line.audit


def _tag(identity: FileIdentity) -> str:
    inode, size, mtime_ns, stamp = identity
    return "-".join([f"{inode:x}", f"{size:x}", f"{mtime_ns:x}", *([stamp] if stamp else [])])
