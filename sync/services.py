"""Sync rules: validating pushes, pulls, the changelog, status, and legacy adoption.

Views call these; storage is reached only through the configured repository
store (``sync.backends``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import orjson
from django.conf import settings

from accounts.services import user_require_active, user_username
from pzls_site.clock import iso, utcnow
from pzls_site.exceptions import BadRequest, MalformedJSON, NotFound, PreconditionFailed
from pzls_site.json import is_blank
from sync import audit as audit_log
from sync import cursor as cursors
from sync.backends import (
    BaseRepositoryStore,
    ChangesPage,
    PullSource,
    PushResult,
    RecordDump,
    Repository,
    RepositorySummary,
    get_repository_store,
)
from sync.merge import (
    InvalidStores,
    MalformedBody,
    RawStores,
    check_depths,
    check_store_name,
    decode_push,
    encode_stores,
    validate_stores,
)
from sync.ops import InvalidOps, check_names, decode_ops, decode_record
from sync.records import AuditContext, Op, OpsOutcome, PushOutcome, Snapshot, plan_ops, plan_push

_Outcome = TypeVar("_Outcome", PushOutcome, OpsOutcome)

logger = logging.getLogger("pzls.sync")

_STARTED = time.monotonic()


def uptime_seconds() -> float:
    return round(time.monotonic() - _STARTED, 3)


def repository_pull(*, user_id: str) -> PullSource:
    """The body of ``GET /api/sync`` with its tag (an open file or bytes; see PullSource)."""
    return get_repository_store().pull(user_id)


def repository_pull_tag(*, user_id: str) -> str:
    """A tag that changes whenever the pull body changes (the pull's ETag)."""
    return get_repository_store().pull_tag(user_id)


def repository_pull_gzip(*, user_id: str) -> PullSource:
    """The pull body gzip-compressed, with its tag; a large body is compressed at most once per tag."""
    store = get_repository_store()
    kept = store.pull_cache.open(user_id, store.pull_tag(user_id), gzip=True)
    if kept is not None:
        return kept
    return store.pull_cache.gzip(user_id, store.pull(user_id))


def repository_load(*, user_id: str) -> Repository:
    """The user's parsed repository (read-only), for resolve and the admin site."""
    return get_repository_store().load(user_id)


def _audit_context(user_id: str, actor: AuditContext | None) -> AuditContext:
    """Who acts, for the audit log: the view's actor (with the client's address), else the user by id (a command)."""
    return actor or AuditContext(user_id=user_id, username=user_username(user_id=user_id), ip=None)


def _commit(
    user_id: str,
    plan: Callable[[Snapshot], _Outcome],
    *,
    optimistic: bool,
    store: BaseRepositoryStore | None = None,
    check_user: bool = True,
) -> _Outcome:
    """Plan a change against the repository and commit it under the user's lock, the one way every change is made.

    ``optimistic`` plans first without the lock (a full push: the lock is
    then held only to write) and plans again under the lock if another
    commit landed meanwhile; otherwise (ops, per-record writes) the plan is
    made under the lock. A plan that changes nothing commits nothing. The
    user is asked for under the lock: one deleted (or disabled) since the
    request was authenticated gets 401 (403) and nothing is written.
    """
    store = store or get_repository_store()
    planned: tuple[int, str] | None = None
    if optimistic:
        with store.reading(user_id) as snapshot:
            outcome = plan(snapshot)
            if outcome.change_set is None:
                return outcome
            planned = (snapshot.version, snapshot.epoch)
    allowed = (lambda: user_require_active(user_id=user_id)) if check_user else None
    with store.locked(user_id, allowed=allowed) as current:
        if planned != (current.version, current.epoch):
            outcome = plan(current)
        if outcome.change_set is not None:
            current.commit(outcome.change_set)
    return outcome


def repository_push(*, user_id: str, body: bytes | bytearray, actor: AuditContext | None = None) -> PushResult:
    """Validate a push body (JSON bytes) and merge it, all or nothing (§3, with §7.1's tombstones).

    The body's shape is checked here; its records as they are merged
    (``sync.merge.plan_merge``), before anything is written.
    """
    if is_blank(body):
        raise BadRequest("No data provided")
    try:
        push = decode_push(body)
        audit = _audit_context(user_id, actor)
        outcome = _commit(
            user_id,
            lambda snapshot: plan_push(
                snapshot, push.stores, timestamp=iso(utcnow()), client_version=push.client_version, audit=audit
            ),
            optimistic=True,
        )
    except MalformedBody as exc:
        raise MalformedJSON(str(exc)) from None
    except InvalidStores as exc:
        raise BadRequest(str(exc)) from None
    return PushResult(version=outcome.version, added=outcome.added, modified=outcome.modified, skipped=outcome.skipped)


def push_records(
    *,
    user_id: str,
    stores: RawStores,
    client_version: int | None = None,
    timestamp: str | None = None,
    actor: AuditContext | None = None,
    store: BaseRepositoryStore | None = None,
    check_user: bool = True,
) -> PushResult:
    """Merge already decoded ``stores`` as a full push would (imports, commands; ``store`` and
    ``check_user=False`` let tests drive a store of their own for ids no user has)."""
    audit = actor or (_audit_context(user_id, None) if check_user else AuditContext(user_id, "", None))
    when = timestamp or iso(utcnow())
    outcome = _commit(
        user_id,
        lambda snapshot: plan_push(snapshot, stores, timestamp=when, client_version=client_version, audit=audit),
        optimistic=True,
        store=store,
        check_user=check_user,
    )
    return PushResult(version=outcome.version, added=outcome.added, modified=outcome.modified, skipped=outcome.skipped)


def _apply_ops(user_id: str, ops: list[Op], actor: AuditContext | None) -> OpsOutcome:
    audit = _audit_context(user_id, actor)
    return _commit(
        user_id, lambda snapshot: plan_ops(snapshot, ops, timestamp=iso(utcnow()), audit=audit), optimistic=False
    )


def repository_ops(*, user_id: str, body: bytes | bytearray, actor: AuditContext | None = None) -> dict[str, Any]:
    """An ops batch (§7.2): validated whole, then applied in order as one commit; conflicts are results, not errors."""
    if is_blank(body):
        raise BadRequest("No data provided")
    try:
        ops = decode_ops(body)
    except MalformedBody as exc:
        raise MalformedJSON(str(exc)) from None
    except InvalidOps as exc:
        raise BadRequest(str(exc)) from None
    outcome = _apply_ops(user_id, ops, actor)
    applied = sum(1 for result in outcome.results if result["ok"])
    return {
        "version": outcome.version,
        "applied": applied,
        "conflicts": len(outcome.results) - applied,
        "results": outcome.results,
    }


@dataclass(frozen=True)
class RecordRead:
    store: str
    record_id: str
    version: int
    text: bytes


def _names(store: str, record_id: str) -> None:
    try:
        check_names(store, record_id)
    except InvalidOps as exc:
        raise BadRequest(str(exc)) from None


def record_get(*, user_id: str, store: str, record_id: str) -> RecordRead:
    """One live record (§7.3); NotFound for a tombstone or an id never seen."""
    _names(store, record_id)
    with get_repository_store().reading(user_id) as snapshot:
        state = snapshot.states(store, [record_id]).get(record_id)
        text = snapshot.texts(store, [record_id]).get(record_id) if state and not state.deleted else None
    if state is None or text is None:
        raise NotFound(f"No record {record_id!r} in store {store!r}")
    return RecordRead(store, record_id, state.version, text)


def _precondition(
    snapshot: Snapshot, store: str, record_id: str, *, if_match: list[int] | None, if_none_match: bool
) -> None:
    """Raise PreconditionFailed when the record's state does not meet the request's conditions.

    ``if_match``: the versions one of which the record must have (an empty
    list: ``*``, any live record); ``if_none_match``: the record must not be live.
    """
    state = snapshot.states(store, [record_id]).get(record_id)
    live = state is not None and not state.deleted
    current = 0 if state is None else state.version
    failed = (if_none_match and live) or (
        if_match is not None and (not live if not if_match else current not in if_match)
    )
    if failed:
        text = snapshot.texts(store, [record_id]).get(record_id) if live else None
        raise PreconditionFailed(
            extra={"serverVersion": current, "serverData": None if text is None else orjson.Fragment(text)}
        )


def _record_write(
    user_id: str, op: Op, *, actor: AuditContext | None, if_match: list[int] | None, if_none_match: bool
) -> int:
    audit = _audit_context(user_id, actor)

    def plan(snapshot: Snapshot) -> OpsOutcome:
        _precondition(snapshot, op.store, op.record_id, if_match=if_match, if_none_match=if_none_match)
        as_update = Op(action="update" if op.action != "delete" else "delete", store=op.store,
                       record_id=op.record_id, data=op.data, expected=None)  # fmt: skip
        return plan_ops(snapshot, [as_update], timestamp=iso(utcnow()), audit=audit)

    outcome = _commit(user_id, plan, optimistic=False)
    return int(outcome.results[0]["version"])


def record_put(
    *,
    user_id: str,
    store: str,
    record_id: str,
    body: bytes | bytearray,
    if_match: list[int] | None = None,
    if_none_match: bool = False,
    actor: AuditContext | None = None,
) -> int:
    """Create or replace one record (§7.3), under its conditions; the record's version after."""
    _names(store, record_id)
    if is_blank(body):
        raise BadRequest("No data provided")
    try:
        text = decode_record(body, store, record_id)
    except MalformedBody as exc:
        raise MalformedJSON(str(exc)) from None
    except InvalidOps as exc:
        raise BadRequest(str(exc)) from None
    op = Op(action="update", store=store, record_id=record_id, data=text, expected=None)
    return _record_write(user_id, op, actor=actor, if_match=if_match, if_none_match=if_none_match)


def record_delete(
    *, user_id: str, store: str, record_id: str, if_match: list[int] | None = None, actor: AuditContext | None = None
) -> int:
    """Delete one record (§7.3): its tombstone's version (an id already gone: no change, its version as it is)."""
    _names(store, record_id)
    op = Op(action="delete", store=store, record_id=record_id, data=None, expected=None)
    return _record_write(user_id, op, actor=actor, if_match=if_match, if_none_match=False)


CURSOR_LIMIT_DEFAULT = 500
CURSOR_LIMIT_MAX = 5000


def repository_cursor(*, user_id: str, cursor: str | None, limit: int, store: str | None, deleted: bool) -> bytes:
    """A page of the incremental pull (§7.4), as the answer's JSON (records put in as they are stored)."""
    if store is not None:
        try:
            check_store_name(store)
        except InvalidStores as exc:
            raise BadRequest(str(exc)) from None
    repository = get_repository_store()
    try:
        if cursor:
            cursors.decode(cursor)
    except cursors.InvalidCursor:
        raise BadRequest("Invalid cursor") from None
    summary = repository.cursor(user_id, after=0, limit=0, store=store, deleted=deleted)
    after = cursors.resume(cursor, epoch=summary.epoch, position=summary.position)
    page = repository.cursor(user_id, after=after, limit=limit, store=store, deleted=deleted)
    if page.epoch != summary.epoch:  # replaced in between: read this history from its start
        page = repository.cursor(user_id, after=0, limit=limit, store=store, deleted=deleted)
    end = page.entries[-1].position if page.entries else max(after, page.position if not page.has_more else after)
    entities = [
        _Entity(e.store, e.id, e.version, e.seq, msgspec.Raw(e.text))
        if e.text is not None
        else _Tombstone(e.store, e.id, e.version, e.seq)
        for e in page.entries
    ]
    return _cursor_encoder.encode(_CursorAnswer(entities, cursors.encode(page.epoch, end), page.has_more, page.version))


class _Entity(msgspec.Struct, gc=False):
    store: str
    id: str
    version: int
    seq: int
    data: msgspec.Raw


class _Tombstone(msgspec.Struct, gc=False):
    store: str
    id: str
    version: int
    seq: int
    deleted: bool = True
    data: None = None


class _CursorAnswer(msgspec.Struct, gc=False):
    entities: list[_Entity | _Tombstone]
    nextCursor: str
    hasMore: bool
    latestSeq: int


_cursor_encoder = msgspec.json.Encoder()


def repository_stores(*, user_id: str) -> dict[str, Any]:
    version, counts = get_repository_store().store_counts(user_id)
    return {
        "stores": [{"store": name, "count": count} for name, count in counts],
        "total": sum(count for _, count in counts),
        "latestSeq": version,
    }


def own_audit(*, user_id: str, since: int, limit: int) -> dict[str, Any]:
    """The caller's own audit entries (§7.5)."""
    page = audit_log.read(since=since, limit=limit, user_id=user_id)
    return {"ops": page.entries, "count": len(page.entries), "latestSeq": page.latest}


def purge_tombstones(*, older_than_days: float, user_ids: list[str]) -> int:
    """Remove tombstones of deletes older than ``older_than_days`` days in these repositories; how many went."""
    cutoff = iso(utcnow() - timedelta(days=older_than_days))
    store = get_repository_store()
    removed = 0
    for user_id in user_ids:
        through = 0
        for entry in store.changelog(user_id):
            if str(entry.get("timestamp") or "") <= cutoff:
                through = int(entry["version"])
        if through:
            removed += store.purge(user_id, through_seq=through)
    return removed


def repository_changes(*, user_id: str, since: int) -> ChangesPage:
    return get_repository_store().changes(user_id, since)


def repository_summary(*, user_id: str) -> RepositorySummary:
    return get_repository_store().summary(user_id)


def repository_summaries(*, user_ids: list[str]) -> dict[str, RepositorySummary]:
    store = get_repository_store()
    return {user_id: store.summary(user_id) for user_id in user_ids}


def repository_delete(*, user_id: str) -> None:
    get_repository_store().delete(user_id)


# --- the pre-authentication server's single repository ----------------------


def _legacy_changelog(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    doc = orjson.loads(path.read_bytes())
    if isinstance(doc, dict):
        doc = doc.get("changelog", doc.get("changes", doc.get("entries", [])))
    if not isinstance(doc, list):
        raise ValueError("changelog.json is not a list of entries")
    entries = [e for e in doc if isinstance(e, dict) and isinstance(e.get("version"), int)]
    return sorted(entries, key=lambda e: e["version"])


def legacy_repository_read(path: Path) -> Repository:
    """Read and validate a legacy ``{"version": N, "data": {...}}`` file.

    Its records are held to a push's rules of depth too (MalformedBody, a
    ValueError) and come back as their compact texts (``orjson.Fragment``).
    """
    doc = orjson.loads(path.read_bytes())
    if not isinstance(doc, dict) or not isinstance(doc.get("data", {}), dict):
        raise ValueError(f"{path} is not a {{version, data}} repository")
    version = doc.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"{path} has no valid version")
    texts = encode_stores(validate_stores(doc.get("data", {})))
    del doc
    check_depths(texts)
    data = {
        name: {rid: orjson.Fragment(bytes(text)) for rid, text in records.items()} for name, records in texts.items()
    }
    return Repository(version=version, data=data)


def dump_of(repository: Repository) -> RecordDump:
    """A repository without record states (a legacy file, a first-edition backup): every record at version 1,
    last changed at the repository's version."""
    texts = encode_stores(repository.data)
    return RecordDump(
        version=repository.version,
        stores={
            name: [(rid, text, 1, repository.version) for rid, text in records.items()]
            for name, records in texts.items()
        },
        tombstones={},
    )


def _retire(path: Path) -> None:
    """Rename a migrated legacy file out of the way, never deleting it."""
    target = path.with_name(path.name + ".migrated")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.migrated.{n}")
    path.rename(target)


def repository_adopt_legacy(*, user_id: str) -> bool:
    """Make ``DATA_DIR/repo.json`` (and ``changelog.json``) this user's repository, once.

    Called for the first user ever registered. A legacy file that cannot be
    read is left where it is, untouched, and the problem is logged: the
    registration goes on and the file can be imported later.
    """
    data_dir = Path(settings.PZLS_DATA_DIR)
    repo_path, changelog_path = data_dir / "repo.json", data_dir / "changelog.json"
    if not repo_path.exists():
        return False
    try:
        repository = legacy_repository_read(repo_path)
        changelog = _legacy_changelog(changelog_path)
    except (OSError, ValueError, InvalidStores) as exc:
        logger.error("legacy repository %s not migrated: %s", repo_path, exc)
        return False
    get_repository_store().replace(user_id, dump_of(repository), changelog)
    _retire(repo_path)
    if changelog_path.exists():
        _retire(changelog_path)
    logger.info("migrated legacy repository (version %s) to user %s", repository.version, user_id)
    return True


def repository_import_legacy(*, user_id: str, path: Path | None = None, merge: bool = False) -> PushResult:
    """Import a legacy ``{"version", "data"}`` file into a user's repository (``import_legacy_repo``).

    ``path`` defaults to ``DATA_DIR/repo.json``. Into an empty repository the
    file is taken over as the automatic first-registration migration does:
    its version, its data and the ``changelog.json`` beside it. A non-empty
    repository is refused (Conflict) unless ``merge``: then the legacy
    records go over the existing ones as one ordinary push, so clients see
    one new version. The data directory's own legacy files are renamed
    afterwards, so they are never adopted a second time.
    """
    from pzls_site.exceptions import Conflict, NotFound

    data_dir = Path(settings.PZLS_DATA_DIR).resolve()
    path = Path(path) if path is not None else data_dir / "repo.json"
    if not path.is_file():
        raise NotFound(f"No legacy repository at {path}")
    changelog_path = path.with_name("changelog.json")
    try:
        repository = legacy_repository_read(path)
        changelog = _legacy_changelog(changelog_path)
    except (OSError, ValueError) as exc:
        # InvalidStores and orjson's decode error are ValueErrors too.
        raise BadRequest(f"Cannot read legacy repository {path}: {exc}") from None
    store = get_repository_store()
    current = store.summary(user_id)
    if current.version > 0 or current.records > 0:
        if not merge:
            raise Conflict(
                f"The user already has a repository (version {current.version}, {current.records} records); "
                "use --merge to push the legacy records over it"
            )
        result = push_records(user_id=user_id, stores=encode_stores(repository.data))
    else:
        store.replace(user_id, dump_of(repository), changelog)
        result = PushResult(version=repository.version, added=sum(len(s) for s in repository.data.values()), modified=0)
    if path.resolve() == data_dir / "repo.json":
        _retire(path)
        if changelog_path.exists():
            _retire(changelog_path)
    logger.info("imported legacy repository %s into user %s (now version %s)", path, user_id, result.version)
    return result
