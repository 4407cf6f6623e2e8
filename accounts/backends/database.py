"""Token store in a database table (``PZLS_STORAGE=database``): one ``accounts.Token`` row per token.

Every server sharing the database sees a token issued or revoked by any
other at once: there is no per-process copy to go stale. Only the SHA-256
digest of a token is stored. Expired rows are purged whenever a token is
issued, as the file store drops them whenever it rewrites its file.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import QuerySet

from accounts.backends.base import BaseTokenStore, TokenRecord
from accounts.models import Token
from pzls_site.backends import database_errors

_FIELDS = ("digest", "user_id", "created", "last_used", "expires")
# Expired rows purged per token issued (``purge_tokens`` takes any number).
_PURGE_BATCH = 1000


def _record(row: tuple) -> TokenRecord:
    digest, user_id, created, last_used, expires = row
    return TokenRecord(digest=digest, user_id=user_id, created=created, last_used=last_used, expires=expires)


class DatabaseTokenStore(BaseTokenStore):
    """Tokens as rows of the database ``DATABASE_URL`` names.

    Options: ``location``, the data directory every store is given (this one
    keeps nothing there), and ``using``, the database alias.
    """

    def __init__(self, *, location: str | Path, using: str = DEFAULT_DB_ALIAS) -> None:
        self.location = Path(location)
        self.using = using

    def _tokens(self) -> QuerySet[Token]:
        return Token.objects.using(self.using)

    def add(self, record: TokenRecord) -> None:
        with database_errors("write tokens"), transaction.atomic(using=self.using):
            # Measured on the issuing clock, the service's, like every other time here.
            expired = self._tokens().filter(expires__lte=record.created)
            if connections[self.using].features.has_select_for_update_skip_locked:
                # A token is issued inside its user's account transaction: rows
                # another one is revoking right now are left to the next purge,
                # so two transactions never wait on each other's rows.
                locked = expired.select_for_update(skip_locked=True).values_list("pk", flat=True)
                doomed = list(locked[:_PURGE_BATCH])
                expired = self._tokens().filter(pk__in=doomed)
            expired.delete()
            self._tokens().create(
                digest=record.digest,
                user_id=record.user_id,
                created=record.created,
                last_used=record.last_used,
                expires=record.expires,
            )

    def get(self, digest: str) -> TokenRecord | None:
        with database_errors("read tokens"):
            row = self._tokens().filter(digest=digest).values_list(*_FIELDS).first()
        return _record(row) if row else None

    def touch(self, digest: str, *, last_used: datetime, expires: datetime) -> None:
        # An UPDATE of a revoked (deleted) row changes nothing: no resurrection.
        with database_errors("write tokens"):
            self._tokens().filter(digest=digest).update(last_used=last_used, expires=expires)

    def revoke(self, digest: str) -> bool:
        with database_errors("write tokens"):
            deleted, _ = self._tokens().filter(digest=digest).delete()
        return deleted > 0

    def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        tokens = self._tokens().filter(user_id=user_id)
        if keep is not None:
            tokens = tokens.exclude(digest=keep)
        with database_errors("write tokens"):
            deleted, _ = tokens.delete()
        return deleted

    def list_user(self, user_id: str) -> list[TokenRecord]:
        with database_errors("read tokens"):
            rows = list(self._tokens().filter(user_id=user_id).order_by("created", "id").values_list(*_FIELDS))
        return [_record(row) for row in rows]

    def purge_expired(self, now: datetime) -> int:
        with database_errors("write tokens"):
            deleted, _ = self._tokens().filter(expires__lte=now).delete()
        return deleted
