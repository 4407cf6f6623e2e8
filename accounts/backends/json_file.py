"""Token store in ``tokens.json`` in the data directory (the store's ``location`` option).

The file maps each token's SHA-256 digest to its user id and times:
``{"stamp": "<32 hex>", "tokens": {...}}``, the stamp new with every write
(``pzls_site.files``). Readers use a per-process copy that is valid while the
file keeps its identity and stamp, so authenticating a request costs an open
and a read of the file's first bytes; writers hold the file's lock
(``tokens.lock``), re-read, change and atomically replace it. Expired tokens
are dropped whenever the file is rewritten. A file without a stamp (written
by an earlier release) is read the same.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from accounts.backends.base import BaseTokenStore, TokenRecord
from pzls_site.clock import iso, parse_iso, utcnow
from pzls_site.exceptions import StorageError
from pzls_site.files import IdentityCache, atomic_write, exclusive_lock, new_stamp

Tokens = dict[str, dict[str, Any]]


def _record(digest: str, raw: dict[str, Any]) -> TokenRecord:
    return TokenRecord(
        digest=digest,
        user_id=raw["userId"],
        created=parse_iso(raw["created"]),
        last_used=parse_iso(raw["lastUsed"]),
        expires=parse_iso(raw["expires"]),
    )


def _raw(record: TokenRecord) -> dict[str, Any]:
    return {
        "userId": record.user_id,
        "created": iso(record.created),
        "lastUsed": iso(record.last_used),
        "expires": iso(record.expires),
    }


def _parse(raw: bytes) -> Tokens:
    if not raw.strip():
        return {}
    doc = orjson.loads(raw)
    return doc.get("tokens", {}) if isinstance(doc, dict) else {}


class JSONFileTokenStore(BaseTokenStore):
    """The default token store: one JSON file in the data directory ``location``."""

    def __init__(self, *, location: str | Path) -> None:
        self.path = Path(location) / "tokens.json"
        self.lock_path = self.path.with_suffix(".lock")
        self._cache = IdentityCache(max_entries=1)

    def _read(self) -> Tokens:
        try:
            _, tokens = self._cache.load(self.path, _parse)
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StorageError(f"cannot read {self.path}") from exc
        return tokens or {}

    def _update(self, change: Callable[[Tokens], Any]) -> Any:
        """Apply ``change`` to a private copy under the lock and write it back if it changed."""
        try:
            with exclusive_lock(self.lock_path):
                tokens = dict(self._read())
                before = len(tokens)
                result = change(tokens)
                now = iso(utcnow())
                expired = [d for d, raw in tokens.items() if raw["expires"] <= now]
                for digest in expired:
                    del tokens[digest]
                if result is not None or expired or len(tokens) != before:
                    # The stamp first: readers find it in the file's first bytes.
                    body = orjson.dumps({"stamp": new_stamp(), "tokens": tokens})
                    identity = atomic_write(self.path, body, exclusive=True)
                    self._cache.put(self.path, identity, tokens)
                return result
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}") from exc

    def add(self, record: TokenRecord) -> None:
        def change(tokens: Tokens) -> bool:
            tokens[record.digest] = _raw(record)
            return True

        self._update(change)

    def get(self, digest: str) -> TokenRecord | None:
        raw = self._read().get(digest)
        return _record(digest, raw) if raw else None

    def touch(self, digest: str, *, last_used: datetime, expires: datetime) -> None:
        def change(tokens: Tokens) -> bool | None:
            raw = tokens.get(digest)
            if raw is None:
                return None
            tokens[digest] = {**raw, "lastUsed": iso(last_used), "expires": iso(expires)}
            return True

        self._update(change)

    def revoke(self, digest: str) -> bool:
        def change(tokens: Tokens) -> bool | None:
            return True if tokens.pop(digest, None) is not None else None

        return bool(self._update(change))

    def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        def change(tokens: Tokens) -> int | None:
            doomed = [d for d, raw in tokens.items() if raw["userId"] == user_id and d != keep]
            for digest in doomed:
                del tokens[digest]
            return len(doomed) or None

        return self._update(change) or 0

    def list_user(self, user_id: str) -> list[TokenRecord]:
        records = [_record(d, raw) for d, raw in self._read().items() if raw["userId"] == user_id]
        return sorted(records, key=lambda r: r.created)

    def purge_expired(self, now: datetime) -> int:
        stamp = iso(now)

        def change(tokens: Tokens) -> int | None:
            doomed = [d for d, raw in tokens.items() if raw["expires"] <= stamp]
            for digest in doomed:
                del tokens[digest]
            return len(doomed) or None

        return self._update(change) or 0
