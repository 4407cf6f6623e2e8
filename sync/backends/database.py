"""Repository store in database tables (``PZLS_STORAGE=database``), for several servers over one database.

The tables are ``sync.models``: a ``Repository`` row per user (version, and
the counters that keep ``summary`` and ``pull_tag`` to one row read),
``Store`` and ``Record`` rows in first-insertion order, ``ChangelogEntry`` rows.

- A push runs in one transaction holding the repository row's lock
  (``SELECT ... FOR UPDATE``; on SQLite the IMMEDIATE transaction is the
  lock), so pushes of one user are serialised across worker processes and
  servers, and a crash leaves the repository exactly as it was.
- A record row holds the record as the pull body shows it, with a digest of
  the text the client sent. A re-push reads only the digests of the ids it
  names; texts are read (and compared by ``sync.merge``'s rules) only where
  a digest differs.
- A pull reads each store's rows in order through the (store, seq) index and
  joins their texts; nothing is parsed. The read is checked against the
  repository's generation, which every change raises, and retried (in the
  end under the row's lock) if a push landed meanwhile, so body and tag
  always belong together.
- Pull bodies of at least ``cache_min_bytes`` are kept under their tag in
  the pull cache (``sync.pullcache``, in the ``location`` directory), so later
  pulls of the same version are sent from the file as the file store sends
  its own. The cache is this server's, derived and disposable: a tag names one
  body for good (see ``sync.models.Repository``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import operator
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import orjson
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import F
from django.db.models.constants import OnConflict

from pzls_site.backends import database_errors
from pzls_site.exceptions import StorageError
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
from sync.depth import parse_repository
from sync.merge import RawStores, encode_stores, plan_merge
from sync.models import ChangelogEntry, Record, Store
from sync.models import Repository as RepositoryRow
from sync.pullcache import SMALL_BODY, PullCache

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


def text_digest(text: bytes | msgspec.Raw) -> str:
    """The digest stored beside a record: identical texts, identical digests (128 bits of SHA-256)."""
    return hashlib.sha256(text).hexdigest()[:32]


def _user(user_id: str) -> str | None:
    """The user id as stored; None for one no user can have (too long for the column)."""
    user_id = str(user_id)
    return user_id if 0 < len(user_id) <= _USER_ID_MAX else None


def _entry_text(entry: dict[str, Any]) -> str:
    return entry_json(entry).decode()


def _key_json(text: str) -> bytes:
    return orjson.dumps(text)


def _item(key: str, raw: bytes | msgspec.Raw) -> str:
    """A record as the pull body shows it: ``"<id>":<record text>``."""
    return _key_json(key).decode() + ":" + bytes(raw).decode()


# COPY's text format: a backslash and the characters that end fields or rows
# are escaped. A record's text may hold raw tabs, newlines and carriage
# returns as whitespace between its tokens; an id may hold backslashes.
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
_COPY_READ = 1 << 20


def _copy_field(text: str) -> str:
    for char, escaped in _COPY_ESCAPES:
        if char in text:
            text = text.replace(char, escaped)
    return text


def _copy_text(rows: list[tuple[int, str, str, str, int]]) -> bytes:
    """(store id, key, item, digest, seq) rows in PostgreSQL's COPY text format, UTF-8."""
    return "".join(
        [
            f"{store_id}\t{_copy_field(key)}\t{_copy_field(item)}\t{digest}\t{seq}\n"
            for store_id, key, item, digest, seq in rows
        ]
    ).encode()


def _pull_size(version: int, data_size: int) -> int:
    return len(b'{"version":%d,"data":' % version) + data_size + 1


def _tag(repository_id: int, generation: int) -> str:
    return f"{repository_id:x}-{generation:x}"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Changed(Exception):
    """A push landed while a pull was being read."""


class _Refused(Exception):
    """A push's ``allowed`` refused it under the lock (``reason`` is what it raised)."""

    def __init__(self, reason: Exception) -> None:
        super().__init__(str(reason))
        self.reason = reason


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
        # Pushes keep landing: read once more holding the row's lock, which waits for them.
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
        # finishes such a run in one pass.
        sql = f"SELECT {q('seq')}, {q('item')} FROM {q(Record._meta.db_table)} WHERE {q('store_id')} = %s"
        parts = [b'{"version":%d,"data":{' % version]
        with self._connection.cursor() as cursor:
            for n, (store_id, name) in enumerate(stores.values_list("id", "name")):
                cursor.execute(sql, [store_id])
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

    # --- writing -----------------------------------------------------------

    def _ensure_row(self, uid: str) -> None:
        """Create the user's repository row if there is none, before any lock is taken.

        Two first pushes at once: one inserts, the other's insert finds the row
        and does nothing. Done outside the push's transaction because InnoDB
        would otherwise hold gap locks from the failed ``SELECT ... FOR UPDATE``
        and deadlock the two inserts.
        """
        rows = RepositoryRow.objects.using(self.using)
        if not rows.filter(user_id=uid).exists():
            rows.bulk_create([RepositoryRow(user_id=uid, generation=secrets.randbits(62))], ignore_conflicts=True)

    def _locked(self, uid: str, allowed: Callable[[], None] | None = None) -> RepositoryRow:
        """The user's repository row (see ``_ensure_row``), locked until the transaction ends.

        ``allowed`` is asked once the lock is held (whatever it raises comes
        out wrapped in ``_Refused``), so it answers for the moment of the
        write: ``delete`` takes the same lock.
        """
        repo = RepositoryRow.objects.using(self.using).select_for_update().filter(user_id=uid).first()
        if allowed is not None:
            try:
                allowed()
            except Exception as exc:
                raise _Refused(exc) from exc
        if repo is None:  # deleted between _ensure_row and here: the user is going away
            raise StorageError("repository deleted during a write")
        return repo

    def _drop_if_unused(self, uid: str) -> None:
        """Remove the user's repository row if nothing was ever written to it (one ``_ensure_row``
        made for a push that was then refused): a refused user keeps no row."""
        with database_errors("write repository"):
            RepositoryRow.objects.using(self.using).filter(
                user_id=uid, version=0, store_count=0, total_syncs=0
            ).delete()

    def _stored_digests(self, store: Store, keys: list[str]) -> dict[str, str]:
        """key -> digest of the stored records among ``keys``."""
        records = Record.objects.using(self.using).filter(store=store)
        if len(keys) > _SCAN_THRESHOLD or len(keys) * 4 > store.record_count:
            wanted = set(keys)
            return {
                key: digest
                for key, digest in records.values_list("key", "digest").iterator(chunk_size=5000)
                if key in wanted
            }
        found: dict[str, str] = {}
        for chunk in _chunks(keys, _LOOKUP_CHUNK):
            found.update(records.filter(key__in=chunk).values_list("key", "digest"))
        return found

    def _stored_texts(self, store: Store, keys: list[str]) -> dict[str, bytes]:
        """key -> the stored record's JSON text, among ``keys``."""
        found: dict[str, bytes] = {}
        records = Record.objects.using(self.using).filter(store=store)
        for chunk in _chunks(keys, _LOOKUP_CHUNK):
            for key, item in records.filter(key__in=chunk).values_list("key", "item"):
                found[key] = item.encode()[len(_key_json(key)) + 1 :]
        return found

    def _write_records(self, rows: list[tuple[int, str, str, str, int]], *, replace_existing: bool) -> None:
        """Insert (store id, key, item, digest, seq) rows in multi-row statements.

        With ``replace_existing`` a row whose (store, key) exists gets the new
        item and digest and keeps its seq, its place in the pull. Django's
        bulk_create does the same but builds a model instance per row, which
        costs more than the database does for a large push.
        """
        if not rows:
            return
        connection = self._connection
        q = self._q
        columns = ("store_id", "key", "item", "digest", "seq")
        if not replace_existing and connection.vendor == "postgresql":
            # COPY loads new rows several times faster than INSERT statements.
            with connection.cursor() as cursor:
                cursor.copy_expert(
                    f"COPY {q(Record._meta.db_table)} ({', '.join(map(q, columns))}) FROM STDIN",
                    io.BytesIO(_copy_text(rows)),
                    size=_COPY_READ,
                )
            return
        head = f"INSERT INTO {q(Record._meta.db_table)} ({', '.join(map(q, columns))}) VALUES "
        tail = ""
        if replace_existing:
            tail = " " + connection.ops.on_conflict_suffix_sql(
                [Record._meta.get_field(name) for name in ("store", "key", "item", "digest", "seq")],
                OnConflict.UPDATE,
                ["item", "digest"],
                ["store_id", "key"],
            )
        max_params = connection.features.max_query_params
        per_statement = _BATCH if max_params is None else max(1, min(_BATCH, max_params // len(columns)))
        placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
        with connection.cursor() as cursor:
            start = 0
            while start < len(rows):
                # Also bounded by size: MySQL refuses statements past max_allowed_packet.
                end, size = start, 0
                while end < len(rows) and end - start < per_statement and size < _STATEMENT_BYTES:
                    size += len(rows[end][2])
                    end += 1
                batch = rows[start:end]
                cursor.execute(
                    head + ", ".join([placeholder] * len(batch)) + tail,
                    [value for row in batch for value in row],
                )
                start = end

    def push(
        self,
        user_id: str,
        stores: RawStores,
        *,
        client_version: int | None,
        timestamp: str,
        allowed: Callable[[], None] | None = None,
    ) -> PushResult:
        uid = _user(user_id)
        if uid is None:
            raise StorageError(f"not a user id: {user_id!r}")
        with database_errors("write repository"):
            self._ensure_row(uid)
        try:
            return self._push(uid, stores, client_version=client_version, timestamp=timestamp, allowed=allowed)
        except _Refused as refused:
            self._drop_if_unused(uid)
            raise refused.reason from None

    def _push(
        self,
        uid: str,
        stores: RawStores,
        *,
        client_version: int | None,
        timestamp: str,
        allowed: Callable[[], None] | None,
    ) -> PushResult:
        with database_errors("write repository"), transaction.atomic(using=self.using):
            repo = self._locked(uid, allowed)
            existing = {
                s.name: s for s in Store.objects.using(self.using).filter(repository=repo, name__in=list(stores))
            }
            # What plan_merge compares against: for ids whose digest matches,
            # the pushed text itself (equal, so unchanged, without a read);
            # for the others, the stored text.
            current: dict[str, dict[str, msgspec.Raw]] = {}
            old_sizes: dict[tuple[str, str], int] = {}
            digests: dict[str, dict[str, str]] = {}
            for name, records in stores.items():
                store = existing.get(name)
                pushed = {key: text_digest(raw) for key, raw in records.items()}
                digests[name] = pushed
                if store is None or not records:
                    continue
                stored = self._stored_digests(store, list(records))
                known: dict[str, msgspec.Raw] = {
                    key: records[key] for key, digest in stored.items() if pushed[key] == digest
                }
                differing = [key for key, digest in stored.items() if pushed[key] != digest]
                for key, text in self._stored_texts(store, differing).items():
                    known[key] = msgspec.Raw(text)
                    old_sizes[(name, key)] = len(text)
                current[name] = known
            plan = plan_merge(current, stores)
            if not plan.changed:
                return PushResult(version=repo.version, added=0, modified=0)

            version = repo.version + 1
            size = repo.data_size
            store_count = repo.store_count
            added_per_store: dict[str, int] = {}
            for item in plan.added:
                name = item.store
                if name not in existing:
                    store = Store.objects.using(self.using).create(repository=repo, name=name, seq=repo.next_seq)
                    repo.next_seq += 1
                    size += (1 if store_count else 0) + len(_key_json(name)) + 3  # ,"name":{}
                    store_count += 1
                    existing[name] = store
                added_per_store[name] = added_per_store.get(name, 0) + 1

            added: list[tuple[int, str, str, str, int]] = []
            for item in plan.added:
                name, key = item.store, item.id
                store = existing[name]
                raw = stores[name][key]
                separator = 1 if store.record_count else 0
                store.record_count += 1
                size += separator + len(_key_json(key)) + 1 + len(raw)
                added.append((store.pk, key, _item(key, raw), digests[name][key], repo.next_seq))
                repo.next_seq += 1
            modified: list[tuple[int, str, str, str, int]] = []
            for item in plan.modified:
                name, key = item.store, item.id
                raw = stores[name][key]
                size += len(raw) - old_sizes[(name, key)]
                # The seq here is never written: a modified record keeps its place.
                modified.append((existing[name].pk, key, _item(key, raw), digests[name][key], 0))
            self._write_records(added, replace_existing=False)
            self._write_records(modified, replace_existing=True)
            for name, count in added_per_store.items():
                Store.objects.using(self.using).filter(pk=existing[name].pk).update(
                    record_count=F("record_count") + count
                )

            entry = push_entry(version=version, timestamp=timestamp, client_version=client_version, plan=plan)
            ChangelogEntry.objects.using(self.using).create(repository=repo, version=version, entry=_entry_text(entry))
            repo.version = version
            repo.generation += 1
            repo.store_count = store_count
            repo.record_count += len(plan.added)
            repo.data_size = size
            repo.total_syncs += 1
            repo.last_sync = timestamp
            repo.save(using=self.using)
            return PushResult(version=version, added=len(plan.added), modified=len(plan.modified))

    def replace(self, user_id: str, repository: Repository, changelog: Iterable[dict[str, Any]]) -> None:
        uid = _user(user_id)
        if uid is None:
            raise StorageError(f"not a user id: {user_id!r}")
        # A later entry with the same version wins, as the later write.
        entries = {int(entry["version"]): entry for entry in changelog if int(entry["version"]) <= repository.version}
        data = encode_stores(repository.data)
        with database_errors("write repository"):
            self._ensure_row(uid)
        with database_errors("write repository"), transaction.atomic(using=self.using):
            repo = self._locked(uid)
            self._clear(repo)
            size = 2  # {}
            seq = 0
            records: list[tuple[int, str, str, str, int]] = []
            for s, (name, texts) in enumerate(data.items()):
                store = Store.objects.using(self.using).create(
                    repository=repo, name=name, seq=seq, record_count=len(texts)
                )
                seq += 1
                size += (1 if s else 0) + len(_key_json(name)) + 3
                for r, (key, raw) in enumerate(texts.items()):
                    size += (1 if r else 0) + len(_key_json(key)) + 1 + len(raw)
                    records.append((store.pk, key, _item(key, raw), text_digest(raw), seq))
                    seq += 1
            self._write_records(records, replace_existing=False)
            ordered = [entries[v] for v in sorted(entries)]
            ChangelogEntry.objects.using(self.using).bulk_create(
                [ChangelogEntry(repository=repo, version=int(e["version"]), entry=_entry_text(e)) for e in ordered],
                batch_size=_BATCH,
            )
            last = ordered[-1].get("timestamp") if ordered else None
            repo.version = repository.version
            repo.generation += 1
            repo.next_seq = seq
            repo.store_count = len(data)
            repo.record_count = sum(len(texts) for texts in data.values())
            repo.data_size = size
            repo.total_syncs = len(ordered)
            repo.last_sync = last if isinstance(last, str) else None
            repo.save(using=self.using)

    def _clear(self, repo: RepositoryRow) -> None:
        """Remove the repository's stores, records and changelog (the row itself stays, locked)."""
        Record.objects.using(self.using).filter(store__repository=repo).delete()
        Store.objects.using(self.using).filter(repository=repo).delete()
        ChangelogEntry.objects.using(self.using).filter(repository=repo).delete()

    def delete(self, user_id: str) -> None:
        uid = _user(user_id)
        if uid is None:
            return
        with database_errors("delete repository"), transaction.atomic(using=self.using):
            repo = RepositoryRow.objects.using(self.using).select_for_update().filter(user_id=uid).first()
            if repo is not None:
                self._clear(repo)
                repo.delete(using=self.using)
        self.pull_cache.forget(uid)
