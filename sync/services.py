"""Sync rules: validating pushes, pulls, the changelog, status, and legacy adoption.

Views call these; storage is reached only through the configured repository
store (``sync.backends``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings

from accounts.services import user_require_active
from pzls_site.clock import iso, utcnow
from pzls_site.exceptions import BadRequest, MalformedJSON
from pzls_site.json import is_blank
from sync.backends import ChangesPage, PullSource, PushResult, Repository, RepositorySummary, get_repository_store
from sync.merge import InvalidStores, MalformedBody, check_depths, decode_push, encode_stores, validate_stores

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


def repository_push(*, user_id: str, body: bytes | bytearray) -> PushResult:
    """Validate a push body (JSON bytes) and merge it, all or nothing.

    The body's shape is checked here; its records as the store merges them
    (``sync.merge.plan_merge``), before anything is written. A push whose
    user was deleted meanwhile is 401 ``Invalid or expired token`` (as their
    revoked token is from then on), one whose user was disabled 403.
    """
    if is_blank(body):
        raise BadRequest("No data provided")
    try:
        push = decode_push(body)
        return get_repository_store().push(
            user_id,
            push.stores,
            client_version=push.client_version,
            timestamp=iso(utcnow()),
            # Asked under the repository lock: a user deleted (or disabled) since
            # the request was authenticated gets 401 (403) and nothing is written.
            allowed=lambda: user_require_active(user_id=user_id),
        )
    except MalformedBody as exc:
        raise MalformedJSON(str(exc)) from None
    except InvalidStores as exc:
        raise BadRequest(str(exc)) from None


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
    get_repository_store().replace(user_id, repository, changelog)
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
        result = store.push(user_id, encode_stores(repository.data), client_version=None, timestamp=iso(utcnow()))
    else:
        store.replace(user_id, repository, changelog)
        result = PushResult(version=repository.version, added=sum(len(s) for s in repository.data.values()), modified=0)
    if path.resolve() == data_dir / "repo.json":
        _retire(path)
        if changelog_path.exists():
            _retire(changelog_path)
    logger.info("imported legacy repository %s into user %s (now version %s)", path, user_id, result.version)
    return result
