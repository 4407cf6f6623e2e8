"""Token stores: where bearer-token digests live (see ``base.py`` for the contract)."""

from accounts.backends.base import BaseTokenStore, TokenRecord
from pzls_site.backends import BackendHandler

token_stores: BackendHandler[BaseTokenStore] = BackendHandler("PZLS_TOKEN_STORE", BaseTokenStore)


def get_token_store() -> BaseTokenStore:
    """The configured token store (one instance per process)."""
    return token_stores.get()


__all__ = ["BaseTokenStore", "TokenRecord", "get_token_store", "token_stores"]
