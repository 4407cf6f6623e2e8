"""The token store contract.

A token store keeps one record per issued bearer token, keyed by the token's
SHA-256 hex digest; the token itself is never stored. Expiry and renewal are
the service's rules (``accounts.services``); a store only keeps the times it
is given. Every method is safe to call from several threads and processes at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class TokenRecord:
    """One issued token, as stored."""

    digest: str
    user_id: str
    created: datetime
    last_used: datetime
    expires: datetime

    @property
    def public_id(self) -> str:
        """A short id that names the token in the admin site and logs without revealing it."""
        return self.digest[:12]


class BaseTokenStore:
    """Interface every token store implements."""

    def add(self, record: TokenRecord) -> None:
        """Store a newly issued token."""
        raise NotImplementedError

    def get(self, digest: str) -> TokenRecord | None:
        """The record for ``digest``, or None when no such token is stored."""
        raise NotImplementedError

    def touch(self, digest: str, *, last_used: datetime, expires: datetime) -> None:
        """Record a use of the token and its new expiry; a no-op if it was revoked meanwhile."""
        raise NotImplementedError

    def revoke(self, digest: str) -> bool:
        """Forget one token. True if it was stored."""
        raise NotImplementedError

    def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        """Forget every token of a user except the one whose digest is ``keep``. Returns how many."""
        raise NotImplementedError

    def list_user(self, user_id: str) -> list[TokenRecord]:
        """Every stored token of a user, oldest first."""
        raise NotImplementedError

    def purge_expired(self, now: datetime) -> int:
        """Forget every token whose expiry has passed. Returns how many."""
        raise NotImplementedError
