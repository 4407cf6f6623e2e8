"""Repository store in database tables (``PZLS_STORAGE=database``), for several servers over one database.

The tables are ``sync.models``: a ``Repository`` row per user (version, last
position, epoch, and the counters that keep ``summary`` and ``pull_tag`` to
one row read), ``Store`` and ``Record`` rows in first-insertion order (a
tombstone is a ``Record`` row with ``deleted`` set and no text),
``ChangelogEntry`` rows; audit batches go to ``sync.audit``'s table.

- ``locked`` runs one transaction holding the repository row's lock
  (``SELECT ... FOR UPDATE``; on SQLite the IMMEDIATE transaction is the
  lock), so commits of one user are serialised across worker processes and
  servers, and a crash leaves the repository exactly as it was. A commit
  writes its records, the repository's counters, the changelog entry and
  last the audit batch (whose counter lock is then held for the shortest
  time) in that transaction. A repository row made for a write that commits
  nothing is rolled back with it.
- A record row holds the record as the pull body shows it, with a digest of
  the text the client sent. A re-push reads only the digests of the ids it
  names; texts are read (and compared by ``sync.merge``'s rules) only where
  a digest differs. New rows go in by COPY on PostgreSQL.
- A pull reads each store's live rows (through the unique (store, key)
  index, in table order), sorts them by seq and joins their texts; nothing
  is parsed. The read is checked against the repository's generation,
  which every change raises, and retried (in the end under the row's
  lock) if a commit landed meanwhile, so body and tag always belong together.
- A cursor walks the (repository, position) index: every record change
  takes the repository's next position, so rows come in the order of their
  last change.
- Pull bodies of at least ``cache_min_bytes`` are kept under their tag in
  the pull cache (``sync.pullcache``, in the ``location`` directory), so later
  pulls of the same version are sent from the file as the file store sends
  its own. The cache is this server's, derived and disposable: a tag names one
  body for good (see ``sync.models.Repository``).
"""

from __future__ import annotations

import hashlib
import logging
import operator
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import Any, cast

import msgspec
import orjson
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import BigIntegerField, Func
from django.db.models.constants import OnConflict

from pzls_site.backends import database_errors
from pzls_site.exceptions import StorageError
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
    Repository,
    RepositorySummary,
    WriteSnapshot,
    entry_json,
)
from sync.depth import parse_repository
from sync.merge import RawStores, StoredStore
from sync.models import ChangelogEntry, Record, Store
from sync.models import Repository as RepositoryRow
from sync.pullcache import SMALL_BODY, PullCache
from sync.records import CREATE, UPDATE, ChangeSet, RecordState, Snapshot

logger = logging.getLogger("pzls.sync")

# Ids per ``IN (...)`` lookup: under SQLite's oldest limit of 999 variables.
_LOOKUP_CHUNK = 900
# Naming more ids than this (or than a quarter of the store) reads the whole
# store's digests in one pass instead of looking the ids up in chunks.
_SCAN_THRESHOLD = 4000
# Rows per INSERT statement.
_BATCH = 1000
_STATEMENT_BYTES = 4 * 1024 * 1024
# Reads without a lock before a pull reads under the repository row's lock.
_OPTIMISTIC_READS = 3
_MAX_BIGINT = 2**63 - 1
_USER_ID_MAX = cast(int, RepositoryRow._meta.get_field("user_id").max_length)  # a CharField: it has one
_first, _second = operator.itemgetter(0), operator.itemgetter(1)

# The columns of a record row, in the order ``_Row`` holds them.
_COLUMNS = ("store_id", "key", "item", "digest", "seq", "version", "changed", "position", "deleted", "repository_id")
# (store id, key, item as UTF-8, digest, seq, version, changed, position, deleted, repository id)
_Row = tuple[int, str, bytes, str, int, int, int, int, bool, int]
# A write of an existing row keeps its seq (its place in the pull) unless it revives a tombstone.
_KEEP_PLACE = ("item", "digest", "version", "changed", "position", "deleted")
_MOVE = (*_KEEP_PLACE, "seq")


def text_digest(text: bytes | msgspec.Raw) -> str:
    """The digest stored beside a record: identical texts, identical digests (128 bits of SHA-256)."""
    return hashlib.sha256(text).hexdigest()[:32]


# The epoch of a repository that has no history yet (none, or a row made for a first write that has not
# committed): the first commit gives it its own, so a plan made before the row existed still holds.
NO_EPOCH = "0"


def new_epoch() -> str:
    """A name for a new history of a repository (16 hex digits)."""
    return secrets.token_hex(8)


def _user(user_id: str) -> str | None:
    """The user id as stored; None for one no user can have (too long for the column)."""
    user_id = str(user_id)
    return user_id if 0 < len(user_id) <= _USER_ID_MAX else None


def _entry_text(entry: Mapping[str, Any]) -> str:
    return entry_json(entry).decode()


def _key_json(text: str) -> bytes:
    return orjson.dumps(text)


def _item(key: str, raw: bytes | msgspec.Raw) -> bytes:
    """A record as the pull body shows it: ``"<id>":<record text>``."""
    return b"".join((_key_json(key), b":", raw))


def _item_text(key: str, item: str) -> bytes:
    """The record text of a stored ``item``."""
    return item.encode()[len(_key_json(key)) + 1 :]


# COPY's text format: a backslash and the characters that end fields or rows
# are escaped. A record's text may hold raw tabs, newlines and carriage
# returns as whitespace between its tokens; an id may hold backslashes.
_COPY_ESCAPES = ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r"))
_COPY_READ = 1 << 20
# Field and row ends while the rows are joined, escaped all at once, then made tabs and newlines: no valid
# record text, id or digest holds them (JSON allows no raw control character, ids and names none at all).
_FIELD, _END = b"\x1f", b"\x1e"
_COPY_ROW = b"\x1f".join([b"%d", b"%s", b"%s", b"%s", b"%d", b"%d", b"%d", b"%d", b"%s", b"%d"]) + b"\x1e"


def _copy_escape(text: bytes) -> bytes:
    for char, escaped in _COPY_ESCAPES:
        if char in text:
            text = text.replace(char, escaped)
    return text


def _copy_text(rows: list[_Row]) -> bytes:
    """Record rows in PostgreSQL's COPY text format, UTF-8."""
    body = b"".join(
        [
            _COPY_ROW
            % (
                store_id,
                key.encode(),
                item,
                digest.encode(),
                seq,
                version,
                changed,
                position,
                b"t" if dead else b"f",
                repo,
            )
            for store_id, key, item, digest, seq, version, changed, position, dead, repo in rows
        ]
    )
    if body.count(_FIELD) == 9 * len(rows) and body.count(_END) == len(rows):
        return _copy_escape(body).replace(_FIELD, b"\t").replace(_END, b"\n")
    # A text holds one of the two after all (not valid JSON): field by field.
    return b"".join(
        [
            b"\t".join(
                [
                    b"%d" % store_id,
                    _copy_escape(key.encode()),
                    _copy_escape(item),
                    digest.encode(),
                    b"%d\t%d\t%d\t%d" % (seq, version, changed, position),
                    b"t" if dead else b"f",
                    b"%d" % repo,
                ]
            )
            + b"\n"
            for store_id, key, item, digest, seq, version, changed, position, dead, repo in rows
        ]
    )


# Rows formatted at a time while PostgreSQL reads a COPY.
_COPY_ROWS = 1000


class _CopyStream:
    """Record rows as COPY text, formatted a chunk at a time as PostgreSQL reads them.

    The rows may be made lazily too (a large push's items and digests):
    Python then makes and formats the next rows while the server writes the
    last ones, on another core.
    """

    def __init__(self, rows: Iterable[_Row]) -> None:
        self._rows = iter(rows)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = list(islice(self._rows, _COPY_ROWS))
            if not chunk:
                break
            self._buffer += _copy_text(chunk)
        if size < 0 or len(self._buffer) <= size:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _pull_size(version: int, data_size: int) -> int:
    return len(b'{"version":%d,"data":' % version) + data_size + 1


def _tag(repository_id: int, generation: int) -> str:
    return f"{repository_id:x}-{generation:x}"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _store_bytes(items: int, live: int) -> int:
    """Bytes of a store's records in the pull body: ``items`` bytes of ``"id":text`` pieces, and their commas."""
    return items + max(live - 1, 0)


def _new_rows(
    store_id: int,
    ids: list[str],
    texts: list[msgspec.Raw],
    versions: list[int],
    seq: int,
    version: int,
    position: int,
    repository_id: int,
) -> Iterator[_Row]:
    """The rows of new ids, at the end of their store from ``seq`` on and in the change order after ``position``."""
    for n, (rid, text, record_version) in enumerate(zip(ids, texts, versions, strict=True), start=1):
        item = _item(rid, text)
        yield (
            store_id,
            rid,
            item,
            text_digest(text),
            seq + n - 1,
            record_version,
            version,
            position + n,
            False,
            repository_id,
        )


class _ByteLength(Func):
    """The length of a text column in bytes of UTF-8 (Django's ``Length`` counts characters)."""

    function = "OCTET_LENGTH"
    output_field = BigIntegerField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="LENGTH(CAST(%(expressions)s AS BLOB))", **extra)


class _Changed(Exception):
    """A commit landed while a pull was being read."""


_LIVE, _DEAD = "live", "dead"


class _DatabaseSnapshot(WriteSnapshot):
    """A snapshot of one repository's rows; one from ``locked`` (``writable``) commits once under the row lock.

    It remembers what it read (states, which ids are tombstones, the sizes of
    stored texts), so a commit of a change set planned on it looks up again
    only what the planning did not.
    """

    def __init__(
        self, owner: DatabaseRepositoryStore, head: RepositoryRow | None, stores: dict[str, Store], *, writable: bool
    ) -> None:
        self._owner = owner
        self._head = head
        self._stores = stores
        self._writable = writable
        self.committed = False
        self.version = head.version if head is not None else 0
        self.position = head.position if head is not None else 0
        self.epoch = head.epoch if head is not None else NO_EPOCH
        # Per store: states looked up (None: no row), every tombstone id (when all were read), ids known not
        # to be tombstones, and the byte sizes of live items whose text was read.
        self._states: dict[str, dict[str, RecordState | None]] = {}
        self._all_dead: dict[str, set[str]] = {}
        self._not_dead: dict[str, set[str]] = {}
        self._sizes: dict[str, dict[str, int]] = {}

    @property
    def _using(self) -> str:
        return self._owner.using

    def _records(self, store: Store) -> Any:
        return Record.objects.using(self._using).filter(store_id=store.pk)

    def _lookup(
        self, store: Store, keys: Collection[str], columns: tuple[str, ...], *, live: bool
    ) -> Iterator[tuple[Any, ...]]:
        """``columns`` (``key`` first) of the rows among ``keys``: chunked lookups, or one pass over the store."""
        records = self._records(store)
        if live:
            records = records.filter(deleted=False)
        rows = store.record_count + (0 if live else store.tombstone_count)
        if len(keys) > _SCAN_THRESHOLD or len(keys) * 4 > rows:
            wanted = keys if isinstance(keys, (set, Mapping)) else set(keys)
            return (row for row in records.values_list(*columns).iterator(chunk_size=5000) if row[0] in wanted)
        return (
            row
            for chunk in _chunks(list(keys), _LOOKUP_CHUNK)
            for row in records.filter(key__in=chunk).values_list(*columns)
        )

    def states(self, store: str, ids: Iterable[str]) -> dict[str, RecordState]:
        row = self._stores.get(store)
        if row is None:
            return {}
        known = self._states.setdefault(store, {})
        keys = list(dict.fromkeys(ids))
        # What this snapshot read already (a re-push's modified records, read with their texts) is not read again.
        missing = [key for key in keys if key not in known]
        if missing:
            found = {
                key: RecordState(version, changed, deleted)
                for key, version, changed, deleted in self._lookup(
                    row, missing, ("key", "version", "changed", "deleted"), live=False
                )
            }
            for key in missing:
                known[key] = found.get(key)
        return {key: state for key in keys if (state := known[key]) is not None}

    def texts(self, store: str, ids: Iterable[str]) -> dict[str, bytes]:
        row = self._stores.get(store)
        if row is None:
            return {}
        found: dict[str, bytes] = {}
        sizes = self._sizes.setdefault(store, {})
        known = self._states.setdefault(store, {})
        records = self._records(row).filter(deleted=False)
        for chunk in _chunks(list(dict.fromkeys(ids)), _LOOKUP_CHUNK):
            for key, item, version, changed in records.filter(key__in=chunk).values_list(
                "key", "item", "version", "changed"
            ):
                encoded = item.encode()
                sizes[key] = len(encoded)
                known[key] = RecordState(version, changed, False)
                found[key] = encoded[len(_key_json(key)) + 1 :]
        return found

    def tombstoned(self, store: str, ids: Collection[str]) -> set[str]:
        row = self._stores.get(store)
        if row is None or row.tombstone_count == 0 or not ids:
            return set()
        dead = self._all_dead.get(store)
        if dead is None and row.tombstone_count <= max(len(ids), _SCAN_THRESHOLD):
            # Few tombstones (the rule): all of them, through the partial index.
            dead = self._all_dead[store] = set(
                self._records(row).filter(deleted=True).values_list("key", flat=True).iterator(chunk_size=5000)
            )
        if dead is not None:
            return {key for key in ids if key in dead}
        keys = list(ids)
        found: set[str] = set()
        records = self._records(row).filter(deleted=True)
        for chunk in _chunks(keys, _LOOKUP_CHUNK):
            found.update(records.filter(key__in=chunk).values_list("key", flat=True))
        self._not_dead.setdefault(store, set()).update(key for key in keys if key not in found)
        return found

    def stored_for(self, incoming: RawStores) -> Mapping[str, StoredStore]:
        # For ids whose digest matches, the pushed text itself (equal, so
        # unchanged, without a read); for the others, the stored text.
        current: dict[str, StoredStore] = {}
        for name, records in incoming.items():
            row = self._stores.get(name)
            if row is None or not records:
                continue
            stored = dict(self._lookup(row, records, ("key", "digest"), live=True))
            sha256 = hashlib.sha256
            # text_digest, inlined: a re-push computes one per stored record it names.
            known: dict[str, msgspec.Raw] = {
                key: records[key] for key, digest in stored.items() if sha256(records[key]).hexdigest()[:32] == digest
            }
            differing = [key for key in stored if key not in known]
            for key, text in self.texts(name, differing).items():
                known[key] = msgspec.Raw(text)
            current[name] = known
        return current

    # --- committing ------------------------------------------------------------

    def commit(self, change_set: ChangeSet) -> None:
        if not self._writable:
            raise RuntimeError("a snapshot from reading() cannot commit")
        if self.committed:
            raise RuntimeError("a snapshot commits once")
        if change_set.version != self.version + 1:
            raise ValueError(f"change set of version {change_set.version} on a snapshot of version {self.version}")
        head = self._head
        assert head is not None  # a writable snapshot has its locked row
        owner = self._owner
        using = self._using
        position = self.position
        size = head.data_size
        store_count = head.store_count
        inserts: list[_Row] = []
        fresh: list[Iterator[_Row]] = []
        fresh_count = 0
        in_place: list[_Row] = []
        moves: list[_Row] = []
        counts: dict[int, Store] = {}  # by id: a store may have several writes
        version = change_set.version
        for write in change_set.writes:
            if not write.ids:
                continue
            name = write.store
            store = self._stores.get(name)
            if store is None:
                store = Store.objects.using(using).create(repository=head, name=name, seq=head.next_seq)
                head.next_seq += 1
                size += (1 if store_count else 0) + len(_key_json(name)) + 3  # ,"name":{}
                store_count += 1
                self._stores[name] = store
                priors: dict[str, tuple[str, int]] = {}
            else:
                priors = self._priors(store, write.ids, write.actions)
            live_before = live = store.record_count
            dead = store.tombstone_count
            items = 0  # change of the store's item bytes
            store_id, repository_id = store.pk, head.pk
            if not priors and all(action == CREATE for action in write.actions):
                # New ids only (a first push, new records): their rows are made as COPY reads them.
                count = len(write.ids)
                texts = cast(list[msgspec.Raw], write.texts)  # creates: all texts
                fresh.append(
                    _new_rows(
                        store_id, write.ids, texts, write.versions, head.next_seq, version, position, repository_id
                    )
                )
                fresh_count += count
                head.next_seq += count
                position += count
                live += count
                # Each item is "<id>":<text>.
                items += sum(map(len, map(_key_json, write.ids))) + count + sum(map(len, texts))
            else:
                for rid, text, record_version, action in zip(
                    write.ids, write.texts, write.versions, write.actions, strict=True
                ):
                    position += 1
                    kind, old = priors.get(rid, ("", 0))
                    if text is None:
                        if kind == _LIVE:
                            live, dead, items = live - 1, dead + 1, items - old
                        elif kind != _DEAD:
                            dead += 1
                        seq = 0 if kind else head.next_seq
                        row: _Row = (
                            store_id,
                            rid,
                            b"",
                            "",
                            seq,
                            record_version,
                            version,
                            position,
                            True,
                            repository_id,
                        )
                        (in_place if kind else inserts).append(row)
                        head.next_seq += 0 if kind else 1
                        continue
                    item = _item(rid, text)
                    digest = text_digest(text)
                    if kind == _LIVE and action != CREATE:
                        items += len(item) - old
                        in_place.append(
                            (store_id, rid, item, digest, 0, record_version, version, position, False, repository_id)
                        )
                        continue
                    if kind == _LIVE:
                        # Deleted and created again in one batch: revived, so at the end of its store.
                        items += len(item) - old
                        moves.append(
                            (
                                store_id,
                                rid,
                                item,
                                digest,
                                head.next_seq,
                                record_version,
                                version,
                                position,
                                False,
                                repository_id,
                            )
                        )
                        head.next_seq += 1
                        continue
                    live, items = live + 1, items + len(item)
                    row = (
                        store_id,
                        rid,
                        item,
                        digest,
                        head.next_seq,
                        record_version,
                        version,
                        position,
                        False,
                        repository_id,
                    )
                    head.next_seq += 1
                    if kind == _DEAD:
                        dead -= 1
                        moves.append(row)
                    else:
                        inserts.append(row)
            size += _store_bytes(items, live) - _store_bytes(0, live_before)
            store.record_count, store.tombstone_count = live, dead
            counts[store.pk] = store
        if inserts or fresh_count:
            owner._write_records(chain(inserts, *fresh), update=None)
        owner._write_records(in_place, update=_KEEP_PLACE)
        owner._write_records(moves, update=_MOVE)
        for store in counts.values():
            Store.objects.using(using).filter(pk=store.pk).update(
                record_count=store.record_count, tombstone_count=store.tombstone_count
            )
        head.version = version
        head.position = position
        head.generation += 1
        head.store_count = store_count
        head.record_count = sum(store.record_count for store in self._stores.values())
        head.data_size = size
        head.total_syncs += 1
        head.last_sync = change_set.timestamp
        if head.epoch == NO_EPOCH:
            head.epoch = new_epoch()  # a first commit: a new history
        head.save(using=using)
        ChangelogEntry.objects.using(using).create(
            repository=head, version=version, entry=_entry_text(change_set.entry)
        )
        batch = audit.pending_batch(change_set, user_id=head.user_id, epoch=head.epoch)
        if batch is not None:
            # Last: it takes the audit counter's lock, held until COMMIT.
            audit.insert(batch, using=using)
        self.version, self.position, self.epoch = version, position, head.epoch
        self.committed = True

    def _priors(self, store: Store, ids: list[str], actions: list[str]) -> dict[str, tuple[str, int]]:
        """(``_LIVE`` with the byte size of its item, or ``_DEAD``) of the ids that have a row; absent: none."""
        name = store.name
        known = self._states.get(name, {})
        sizes = self._sizes.get(name, {})
        all_dead = self._all_dead.get(name)
        not_dead = self._not_dead.get(name, set())
        out: dict[str, tuple[str, int]] = {}
        unknown: list[str] = []
        for rid, action in zip(ids, actions, strict=True):
            if rid in known:  # looked up while planning (every id of an ops batch)
                state = known[rid]
                if state is None:
                    continue
                if state.deleted:
                    out[rid] = (_DEAD, 0)
                elif rid in sizes:
                    out[rid] = (_LIVE, sizes[rid])
                else:
                    unknown.append(rid)
                continue
            if action == CREATE:
                # Not looked up: a push's new id, or a tombstone revived (a live id's create is an ops batch's).
                if store.tombstone_count == 0 or rid in not_dead or (all_dead is not None and rid not in all_dead):
                    continue
                if all_dead is not None:
                    out[rid] = (_DEAD, 0)
                    continue
            elif action == UPDATE and rid in sizes:
                out[rid] = (_LIVE, sizes[rid])
                continue
            unknown.append(rid)
        # Sizes, not texts: a change set planned on another snapshot (an optimistic push) knows none.
        records = self._records(store).annotate(size=_ByteLength("item"))
        for chunk in _chunks(unknown, _LOOKUP_CHUNK):
            for key, deleted, size in records.filter(key__in=chunk).values_list("key", "deleted", "size"):
                out[key] = (_DEAD, 0) if deleted else (_LIVE, size)
        return out


class DatabaseRepositoryStore(BaseRepositoryStore):
    """Repositories as rows of the database ``DATABASE_URL`` names.

    Options: ``location`` (the data directory, where the pull cache is),
    ``using`` (the database alias), ``cache_min_bytes`` (pull bodies at least
    this large are cached; None turns the cache off).
    """

    def __init__(
        self, *, location: str | Path, using: str = DEFAULT_DB_ALIAS, cache_min_bytes: int | None = SMALL_BODY
    ) -> None:
        self.using = using
        self.pull_cache = PullCache(Path(location) / "pullcache", min_bytes=cache_min_bytes, current_tag=self.pull_tag)

    @property
    def _connection(self) -> Any:
        return connections[self.using]

    def _q(self, name: str) -> str:
        return self._connection.ops.quote_name(name)

    # --- reading -----------------------------------------------------------

    def pull(self, user_id: str) -> PullSource:
        uid = _user(user_id)
        if uid is None:
            return PullSource(tag="empty", size=len(EMPTY_PULL), body=EMPTY_PULL)
        tag = self.pull_tag(uid)
        if tag == "empty":
            return PullSource(tag=tag, size=len(EMPTY_PULL), body=EMPTY_PULL)
        cached = self.pull_cache.open(uid, tag)
        if cached is not None:
            return cached
        with database_errors("read repository"):
            read = self._read(uid)
        if read is None:  # deleted meanwhile
            return PullSource(tag="empty", size=len(EMPTY_PULL), body=EMPTY_PULL)
        tag, body = read
        self.pull_cache.keep(uid, tag, body)
        return PullSource(tag=tag, size=len(body), body=body)

    def _read(self, uid: str) -> tuple[str, bytes] | None:
        """(tag, body) of the user's repository as of one moment; None when there is none."""
        for _ in range(_OPTIMISTIC_READS):
            try:
                return self._read_once(uid, locked=False)
            except _Changed:
                continue
        # Commits keep landing: read once more holding the row's lock, which waits for them.
        with transaction.atomic(using=self.using):
            return self._read_once(uid, locked=True)

    def _read_once(self, uid: str, *, locked: bool) -> tuple[str, bytes] | None:
        repositories = RepositoryRow.objects.using(self.using)
        if locked:
            repositories = repositories.select_for_update()
        head = repositories.filter(user_id=uid).values_list("id", "generation", "version").first()
        if head is None:
            return None
        repository_id, generation, version = head
        stores = Store.objects.using(self.using).filter(repository_id=repository_id).order_by("seq")
        q = self._q
        # Unordered, sorted here: without fresh statistics PostgreSQL would
        # sort 50 MB on disk, while rows come off the table almost in seq
        # order already (they are written in that order) and Python's sort
        # finishes such a run in one pass. Tombstones are no part of a pull.
        sql = (
            f"SELECT {q('seq')}, {q('item')} FROM {q(Record._meta.db_table)} "
            f"WHERE {q('store_id')} = %s AND {q('deleted')} = %s"
        )
        parts = [b'{"version":%d,"data":{' % version]
        with self._connection.cursor() as cursor:
            for n, (store_id, name) in enumerate(stores.values_list("id", "name")):
                cursor.execute(sql, [store_id, False])
                rows = sorted(cursor.fetchall(), key=_first)
                parts.append(b"%s%s:{" % (b"," if n else b"", _key_json(name)))
                parts.append(",".join(map(_second, rows)).encode())
                parts.append(b"}")
        parts.append(b"}}")
        if not locked:
            # Every change raises the generation: unchanged means the statements
            # above all read the same committed state.
            now = RepositoryRow.objects.using(self.using).filter(pk=repository_id).values_list("generation", flat=True)
            if list(now) != [generation]:
                raise _Changed
        return _tag(repository_id, generation), b"".join(parts)

    def pull_bytes(self, user_id: str) -> bytes:
        return self.pull(user_id).read()

    def pull_tag(self, user_id: str) -> str:
        uid = _user(user_id)
        if uid is None:
            return "empty"
        with database_errors("read repository"):
            row = RepositoryRow.objects.using(self.using).filter(user_id=uid).values_list("id", "generation").first()
        return "empty" if row is None else _tag(*row)

    def load(self, user_id: str) -> Repository:
        version, data = parse_repository(self.pull_bytes(user_id))
        return Repository(version=version, data=data)

    def _stores(self, head: RepositoryRow | None) -> dict[str, Store]:
        """The repository's store rows by name, in pull order."""
        if head is None:
            return {}
        rows = Store.objects.using(self.using).filter(repository_id=head.pk).order_by("seq")
        return {store.name: store for store in rows}

    @contextmanager
    def reading(self, user_id: str) -> Iterator[Snapshot]:
        uid = _user(user_id)
        with database_errors("read repository"):
            head = None if uid is None else RepositoryRow.objects.using(self.using).filter(user_id=uid).first()
            yield _DatabaseSnapshot(self, head, self._stores(head), writable=False)

    @contextmanager
    def locked(self, user_id: str, allowed: Callable[[], None] | None = None) -> Iterator[WriteSnapshot]:
        uid = _user(user_id)
        if uid is None:
            raise StorageError(f"not a user id: {user_id!r}")
        with database_errors("write repository"), transaction.atomic(using=self.using):
            head = self._lock(uid, create=True)
            assert head is not None
            if allowed is not None:
                # Under the lock, before anything is written: what it raises rolls back a row made just now.
                allowed()
            snapshot = _DatabaseSnapshot(self, head, self._stores(head), writable=True)
            yield snapshot
            if not snapshot.committed:
                # Nothing to keep, not even a repository row made for this write.
                transaction.set_rollback(True, using=self.using)

    def _lock(self, uid: str, *, create: bool) -> RepositoryRow | None:
        """The user's repository row, locked until the transaction ends (made first, with ``create``, if missing).

        A row another transaction is making and has not committed is waited
        for by the insert (on its unique user id), so two first writes of a
        user never both make one, and a ``delete`` never misses one.
        """
        rows = RepositoryRow.objects.using(self.using)
        for _ in range(3):
            head = rows.select_for_update().filter(user_id=uid).first()
            if head is not None or not create:
                return head
            rows.bulk_create(
                [RepositoryRow(user_id=uid, generation=secrets.randbits(62), epoch=NO_EPOCH)],
                ignore_conflicts=True,
            )
        raise StorageError("repository deleted during a write")

    def cursor(self, user_id: str, *, after: int, limit: int, store: str | None, deleted: bool) -> CursorPage:
        uid = _user(user_id)
        if uid is None:
            return CursorPage(entries=[], has_more=False, version=0, position=0, epoch=NO_EPOCH)
        # The head and the rows from one snapshot of the database: read apart, a commit between them could
        # move a record past the head, and a walk would end (hasMore false) without it.
        outermost = not self._connection.in_atomic_block
        with database_errors("read repository"), transaction.atomic(using=self.using):
            if outermost and self._connection.vendor == "postgresql":
                with self._connection.cursor() as c:
                    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            head = (
                RepositoryRow.objects.using(self.using)
                .filter(user_id=uid)
                .values_list("id", "version", "position", "epoch")
                .first()
            )
            if head is None:
                return CursorPage(entries=[], has_more=False, version=0, position=0, epoch=NO_EPOCH)
            repository_id, version, position, epoch = head
            names = dict(Store.objects.using(self.using).filter(repository_id=repository_id).values_list("id", "name"))
            q = self._q
            # Up to the head's position: the page belongs to the moment the head was read.
            sql = (
                f"SELECT {q('store_id')}, {q('key')}, {q('version')}, {q('changed')}, {q('position')}, "
                f"{q('item')}, {q('deleted')} FROM {q(Record._meta.db_table)} "
                f"WHERE {q('repository_id')} = %s AND {q('position')} > %s AND {q('position')} <= %s"
            )
            params: list[Any] = [repository_id, min(max(after, 0), _MAX_BIGINT), position]
            if store is not None:
                ids = [store_id for store_id, name in names.items() if name == store]
                if not ids:
                    return CursorPage(entries=[], has_more=False, version=version, position=position, epoch=epoch)
                sql += f" AND {q('store_id')} = %s"
                params.append(ids[0])
            if not deleted:
                sql += f" AND {q('deleted')} = %s"
                params.append(False)
            sql += f" ORDER BY {q('position')} LIMIT %s"
            params.append(max(limit, 0) + 1)
            with self._connection.cursor() as cursor:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
        entries = [
            CursorEntry(
                store=names[store_id],
                id=key,
                version=record_version,
                seq=changed,
                position=record_position,
                text=None if dead else _item_text(key, item),
            )
            for store_id, key, record_version, changed, record_position, item, dead in rows[:limit]
        ]
        return CursorPage(entries=entries, has_more=len(rows) > limit, version=version, position=position, epoch=epoch)

    def store_counts(self, user_id: str) -> tuple[int, list[tuple[str, int]]]:
        uid = _user(user_id)
        if uid is None:
            return 0, []
        q = self._q
        repo, stores = q(RepositoryRow._meta.db_table), q(Store._meta.db_table)
        with database_errors("read repository"), self._connection.cursor() as cursor:
            # One statement: the version and the counts from one snapshot.
            cursor.execute(
                f"SELECT r.version, s.name, s.record_count FROM {repo} r "
                f"LEFT JOIN {stores} s ON s.repository_id = r.id WHERE r.user_id = %s ORDER BY s.seq",
                [uid],
            )
            rows = cursor.fetchall()
        if not rows:
            return 0, []
        return rows[0][0], [(name, count) for _, name, count in rows if name is not None]

    def changes(self, user_id: str, since: int) -> ChangesPage:
        uid = _user(user_id)
        if uid is None:
            return ChangesPage(current_version=0, pending=0, entries=[])
        q = self._q
        repo, log = q(RepositoryRow._meta.db_table), q(ChangelogEntry._meta.db_table)
        with database_errors("read repository"), self._connection.cursor() as cursor:
            # One statement: the version, the count and the page from one snapshot.
            cursor.execute(
                f"SELECT r.version, e.entry, COUNT(e.id) OVER () "
                f"FROM {repo} r LEFT JOIN {log} e ON e.repository_id = r.id AND e.version > %s "
                f"WHERE r.user_id = %s ORDER BY e.version DESC LIMIT {CHANGES_PAGE}",
                [min(max(since, 0), _MAX_BIGINT), uid],
            )
            rows = cursor.fetchall()
        if not rows:
            return ChangesPage(current_version=0, pending=0, entries=[])
        entries = [orjson.loads(entry) for _, entry, _ in reversed(rows) if entry is not None]
        return ChangesPage(current_version=rows[0][0], pending=rows[0][2], entries=entries)

    def summary(self, user_id: str) -> RepositorySummary:
        uid = _user(user_id)
        if uid is None:
            return EMPTY_SUMMARY
        with database_errors("read repository"):
            row = RepositoryRow.objects.using(self.using).filter(user_id=uid).first()
        if row is None:
            return EMPTY_SUMMARY
        return RepositorySummary(
            version=row.version,
            stores=row.store_count,
            records=row.record_count,
            data_size_bytes=_pull_size(row.version, row.data_size),
            total_syncs=row.total_syncs,
            last_sync=row.last_sync,
        )

    def changelog(self, user_id: str) -> list[dict[str, Any]]:
        uid = _user(user_id)
        if uid is None:
            return []
        with database_errors("read repository"):
            texts = (
                ChangelogEntry.objects.using(self.using)
                .filter(repository__user_id=uid)
                .order_by("version")
                .values_list("entry", flat=True)
            )
            return [orjson.loads(text) for text in texts]

    def dump(self, user_id: str) -> RecordDump:
        uid = _user(user_id)
        if uid is None:
            return RecordDump(version=0, stores={}, tombstones={})
        # Under the lock: every store of one moment (a backup waits for a commit, and a commit for it).
        with database_errors("read repository"), transaction.atomic(using=self.using):
            head = self._lock(uid, create=False)
            if head is None:
                return RecordDump(version=0, stores={}, tombstones={})
            stores: dict[str, list[tuple[str, msgspec.Raw, int, int]]] = {}
            tombstones: dict[str, list[tuple[str, int, int]]] = {}
            for name, store in self._stores(head).items():
                rows = sorted(
                    Record.objects.using(self.using)
                    .filter(store_id=store.pk)
                    .values_list("seq", "key", "item", "version", "changed", "deleted")
                    .iterator(chunk_size=5000),
                    key=_first,
                )
                stores[name] = [
                    (key, msgspec.Raw(_item_text(key, item)), version, changed)
                    for _, key, item, version, changed, dead in rows
                    if not dead
                ]
                dead_rows = [(key, version, changed) for _, key, _, version, changed, dead in rows if dead]
                if dead_rows:
                    tombstones[name] = dead_rows
            return RecordDump(version=head.version, stores=stores, tombstones=tombstones)

    # --- writing -----------------------------------------------------------

    def _write_records(self, rows: Iterable[_Row], *, update: tuple[str, ...] | None) -> None:
        """Insert record rows (``_COLUMNS``): by COPY on PostgreSQL, else in multi-row statements.

        With ``update``, a row whose (store, key) exists gets those columns
        of the new one instead. Django's bulk_create does the same but
        builds a model instance per row, which costs more than the database
        does for a large push.
        """
        connection = self._connection
        q = self._q
        if update is None and connection.vendor == "postgresql":
            # COPY loads new rows several times faster than INSERT statements.
            with connection.cursor() as cursor:
                cursor.copy_expert(
                    f"COPY {q(Record._meta.db_table)} ({', '.join(map(q, _COLUMNS))}) FROM STDIN",
                    _CopyStream(rows),
                    size=_COPY_READ,
                )
            return
        rows = list(rows)
        if not rows:
            return
        head = f"INSERT INTO {q(Record._meta.db_table)} ({', '.join(map(q, _COLUMNS))}) VALUES "
        tail = ""
        if update is not None:
            tail = " " + connection.ops.on_conflict_suffix_sql(
                [Record._meta.get_field(name.removesuffix("_id")) for name in _COLUMNS],
                OnConflict.UPDATE,
                list(update),
                ["store_id", "key"],
            )
        max_params = connection.features.max_query_params
        width = len(_COLUMNS)
        per_statement = _BATCH if max_params is None else max(1, min(_BATCH, max_params // width))
        placeholder = "(" + ", ".join(["%s"] * width) + ")"
        with connection.cursor() as cursor:
            start = 0
            while start < len(rows):
                # Also bounded by size: MySQL refuses statements past max_allowed_packet.
                end, size = start, 0
                while end < len(rows) and end - start < per_statement and size < _STATEMENT_BYTES:
                    size += len(rows[end][2])
                    end += 1
                batch = rows[start:end]
                params: list[Any] = []
                for row in batch:
                    params.extend((row[0], row[1], row[2].decode(), *row[3:]))
                cursor.execute(head + ", ".join([placeholder] * len(batch)) + tail, params)
                start = end

    def replace(self, user_id: str, dump: RecordDump, changelog: Iterable[dict[str, Any]]) -> None:
        uid = _user(user_id)
        if uid is None:
            raise StorageError(f"not a user id: {user_id!r}")
        # A later entry with the same version wins, as the later write.
        entries = {int(entry["version"]): entry for entry in changelog if int(entry["version"]) <= dump.version}
        with database_errors("write repository"), transaction.atomic(using=self.using):
            head = self._lock(uid, create=True)
            assert head is not None
            self._clear(head)
            names = list(dump.stores) + [name for name in dump.tombstones if name not in dump.stores]
            size = 2  # {}
            seq = 0
            live_total = 0
            # (changed, n, row): positions follow the order of last change, pull order within one.
            rows: list[tuple[int, int, _Row]] = []
            for s, name in enumerate(names):
                live = dump.stores.get(name, [])
                dead = dump.tombstones.get(name, [])
                store = Store.objects.using(self.using).create(
                    repository=head, name=name, seq=seq, record_count=len(live), tombstone_count=len(dead)
                )
                seq += 1
                size += (1 if s else 0) + len(_key_json(name)) + 3
                items = 0
                for key, raw, version, changed in live:
                    item = _item(key, raw)
                    items += len(item)
                    row = (store.pk, key, item, text_digest(raw), seq, version, changed, 0, False, head.pk)
                    rows.append((changed, len(rows), row))
                    seq += 1
                for key, version, changed in dead:
                    rows.append((changed, len(rows), (store.pk, key, b"", "", seq, version, changed, 0, True, head.pk)))
                    seq += 1
                size += _store_bytes(items, len(live))
                live_total += len(live)
            rows.sort(key=lambda entry: entry[:2])
            records = [(*row[:7], n, *row[8:]) for n, (_, _, row) in enumerate(rows, start=1)]
            if records:
                self._write_records(records, update=None)
            ordered = [entries[v] for v in sorted(entries)]
            ChangelogEntry.objects.using(self.using).bulk_create(
                [ChangelogEntry(repository=head, version=int(e["version"]), entry=_entry_text(e)) for e in ordered],
                batch_size=_BATCH,
            )
            last = ordered[-1].get("timestamp") if ordered else None
            head.version = dump.version
            head.position = len(records)
            head.epoch = new_epoch()
            head.generation += 1
            head.next_seq = seq
            head.store_count = len(names)
            head.record_count = live_total
            head.data_size = size
            head.total_syncs = len(ordered)
            head.last_sync = last if isinstance(last, str) else None
            head.save(using=self.using)

    def purge(self, user_id: str, *, through_seq: int) -> int:
        uid = _user(user_id)
        if uid is None:
            return 0
        purged = 0
        with database_errors("write repository"), transaction.atomic(using=self.using):
            head = self._lock(uid, create=False)
            if head is None:
                return 0
            for store in self._stores(head).values():
                if store.tombstone_count == 0:
                    continue
                gone, _ = (
                    Record.objects.using(self.using)
                    .filter(store_id=store.pk, deleted=True, changed__lte=min(through_seq, _MAX_BIGINT))
                    .delete()
                )
                if gone:
                    Store.objects.using(self.using).filter(pk=store.pk).update(
                        tombstone_count=store.tombstone_count - gone
                    )
                    purged += gone
        return purged

    def _clear(self, head: RepositoryRow) -> None:
        """Remove the repository's stores, records and changelog (the row itself stays, locked)."""
        Record.objects.using(self.using).filter(repository_id=head.pk).delete()
        Store.objects.using(self.using).filter(repository_id=head.pk).delete()
        ChangelogEntry.objects.using(self.using).filter(repository_id=head.pk).delete()

    def delete(self, user_id: str) -> None:
        uid = _user(user_id)
        if uid is None:
            return
        with database_errors("delete repository"), transaction.atomic(using=self.using):
            # With ``create``: a first write making the row meanwhile is waited
            # for (see ``_lock``) rather than missed; a row made here goes too.
            head = self._lock(uid, create=True)
            if head is not None:
                self._clear(head)
                head.delete(using=self.using)
        self.pull_cache.forget(uid)
