"""Tables of the database repository store (``PZLS_STORAGE=database``).

Only ``sync.backends.database`` reads and writes them; everything else goes
through the repository store interface, so the file storage needs none of
these rows. One ``Repository`` per user carries the version and the counters
that make ``status`` and ETags cheap; ``Store`` and ``Record`` rows hold the
data in first-insertion order; ``ChangelogEntry`` rows the changelog.

A record row keeps the record exactly as it appears in the pull body (its id
as a JSON string, a colon, the JSON text the client sent), so a pull joins
stored texts instead of parsing and re-serialising anything, and a digest of
the record's text, so a re-push can tell unchanged records without reading them.

A repository names its user by id (the string the repository store contract
uses), not by a foreign key: the store serves any id, as the file store does,
and a deleted user's repository goes through the same ``post_delete`` handler
(``sync.signals``) whichever storage is in use. A foreign key would make
Django's deletion collector, and the admin site's delete confirmation, visit
every record row of the user.
"""

from __future__ import annotations

from django.db import models


class Repository(models.Model):
    """A user's repository: its version and the figures derived from its content.

    ``generation`` rises with every change of the pull body. It starts at a
    random number, so that with ``id`` (never reused within a database) it
    names one pull body for good, even across a database restored or
    re-imported under servers that cached bodies by that name.
    """

    user_id = models.CharField(max_length=64, unique=True)
    version = models.BigIntegerField(default=0)
    generation = models.BigIntegerField()
    # Insertion order of stores and records, shared so one counter serves both.
    next_seq = models.BigIntegerField(default=0)
    store_count = models.IntegerField(default=0)
    record_count = models.BigIntegerField(default=0)
    # Bytes of the pull body's "data" object; the pull body's size follows from it and the version.
    data_size = models.BigIntegerField(default=2)
    total_syncs = models.BigIntegerField(default=0)
    # Kept as the changelog wrote it (ISO 8601 with milliseconds and Z), not reparsed.
    # NULL until the first sync: the protocol's lastSync is null then, and "" would be a second "never".
    last_sync = models.CharField(max_length=64, null=True)  # noqa: DJ001
    # The last position given to a record change, and the name of this history (see sync.records).
    position = models.BigIntegerField(default=0)
    epoch = models.CharField(max_length=32, default="")

    class Meta:
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return f"repository of {self.user_id} (version {self.version})"


class Store(models.Model):
    """A named store of a repository; ``seq`` is its place in the pull."""

    # Lookups by repository use the two indexes below; a third would only slow writes.
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="stores", db_index=False)
    name = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    # Live records, and tombstones (so a store without any answers "which of these are tombstones" without a query).
    record_count = models.BigIntegerField(default=0)
    tombstone_count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "name"], name="sync_store_repository_name")]
        indexes = [models.Index(fields=["repository", "seq"], name="sync_store_repository_seq")]

    def __str__(self) -> str:
        return self.name


class Record(models.Model):
    """One record: its id within the store, its text in the pull body, and its place.

    ``item`` is ``"<id>":<record>`` with the record's JSON text as the client
    sent it: text, not a JSON column, because PostgreSQL's jsonb would reorder
    the record's keys and the pull must give back the client's bytes.
    ``digest`` is a digest of the record's text (not of ``item``).
    """

    # No foreign key constraints in the database: only ``sync.backends.database`` writes these rows, under
    # the repository's lock, and removes them with their store; PostgreSQL would otherwise check both keys
    # of every row of a large push at COMMIT (a deferred trigger per row and key), which costs more than
    # writing the rows.
    store = models.ForeignKey(
        Store, on_delete=models.CASCADE, related_name="records", db_index=False, db_constraint=False
    )
    key = models.CharField(max_length=256)
    item = models.TextField()
    digest = models.CharField(max_length=32)
    seq = models.BigIntegerField()
    # §7: the record's version, the repository version of its last change, its
    # place in the change order, and whether it is a tombstone (``item`` empty).
    version = models.BigIntegerField(default=1)
    changed = models.BigIntegerField(default=0)
    position = models.BigIntegerField(default=0)
    deleted = models.BooleanField(default=False)
    # The store's repository, repeated so a cursor walks one index in position order across stores.
    repository = models.ForeignKey(
        Repository, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["store", "key"], name="sync_record_store_key")]
        indexes = [
            # No (store, seq) index: a store's rows are read through the unique (store, key) one (a bitmap
            # scan, in table order) and sorted by seq in Python; one index fewer to write per new record.
            models.Index(fields=["repository", "position"], name="sync_record_repo_position"),
            # A store's tombstones, few as a rule, without visiting its live rows (PostgreSQL and SQLite).
            models.Index(fields=["store", "key"], condition=models.Q(deleted=True), name="sync_record_tombstones"),
        ]

    def __str__(self) -> str:
        return self.key


class ChangelogEntry(models.Model):
    """One changelog entry, as compact JSON text with ``version`` first (the files' line format)."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="changelog", db_index=False)
    version = models.BigIntegerField()
    entry = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["repository", "version"], name="sync_changelog_repository_version")
        ]
        verbose_name_plural = "changelog entries"

    def __str__(self) -> str:
        return f"version {self.version}"


class AuditBatch(models.Model):
    """Entries of the audit log (PROTOCOL.md §8.5), a batch per committed change set or account event.

    A batch holds ``count`` entries with seqs ``seq`` to ``end - 1``: a
    change set's one per record, in a compact ``payload`` (see
    ``sync.audit``) that expands on read, so a first push of 100,000 records
    writes one row. ``seq`` is server-wide: batches are numbered under the
    ``AuditCounter`` row's lock, held to the end of the transaction, so
    seqs rise in commit order and a reader paging with ``since`` never
    skips one that commits later. A change set's batch is named by the
    user, the repository's epoch and the version it made (unique), so
    writing it twice (a recovery racing the writer) keeps one.
    """

    seq = models.BigIntegerField(unique=True)
    end = models.BigIntegerField(db_index=True)
    timestamp = models.CharField(max_length=64)
    user_id = models.CharField(max_length=64)
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=32)
    # For an account event: the account acted on, and the address (null for a command).
    target_user_id = models.CharField(max_length=64, null=True)  # noqa: DJ001
    target_username = models.CharField(max_length=150, null=True)  # noqa: DJ001
    ip = models.CharField(max_length=64, null=True)  # noqa: DJ001
    epoch = models.CharField(max_length=32, null=True)  # noqa: DJ001
    repository_version = models.BigIntegerField(null=True)
    payload = models.TextField(default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "epoch", "repository_version"], name="sync_auditbatch_change_set"
            )
        ]
        indexes = [models.Index(fields=["user_id", "end"], name="sync_auditbatch_user_end")]
        verbose_name_plural = "audit batches"

    def __str__(self) -> str:
        return f"audit {self.seq}..{self.end - 1}"


class AuditCounter(models.Model):
    """The one row whose lock orders audit batches: ``next`` is the next seq to give."""

    next = models.BigIntegerField(default=1)

    def __str__(self) -> str:
        return f"next audit seq {self.next}"
