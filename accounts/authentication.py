"""Bearer-token authentication for DRF.

A missing header leaves the request anonymous (the permission check then
answers 401); a header that is not ``Bearer <token>`` or a token that is no
good answers 401 with ``WWW-Authenticate: Bearer``; a disabled account 403.
``AnonymousAccountAuthentication`` lets the two views Pazator calls without a
token (resolve, query) act as the account ``PZLS_ANONYMOUS_USER`` names.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts import services
from accounts.models import User
from pzls_site.exceptions import NotAuthenticated, NotFound


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None when there is no header.

    Raises NotAuthenticated when the header is present but not a bearer token.
    """
    header = get_authorization_header(request)
    if not header:
        return None
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        raise NotAuthenticated("Authorization header must be: Bearer <token>")
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise NotAuthenticated("Invalid or expired token") from None


class BearerTokenAuthentication(BaseAuthentication):
    """``request.user`` is the token's user; ``request.auth`` is the token's digest."""

    def authenticate(self, request: Request) -> tuple[User, str] | None:
        token = bearer_token(request)
        if token is None:
            return None
        return services.token_authenticate(token=token)

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class AnonymousAccountAuthentication(BaseAuthentication):
    """A request without an ``Authorization`` header acts as the account ``PZLS_ANONYMOUS_USER`` names.

    Only for the views listed after ``BearerTokenAuthentication``: a request
    with the header, good or bad, is the bearer rules' alone, so a bad token
    is 401 and never becomes this account. While the setting is unset, or the
    account (found regardless of case, as at login) is missing or disabled,
    the request stays anonymous and gets 401 as without it.
    """

    def authenticate(self, request: Request) -> tuple[User, None] | None:
        username = settings.PZLS_ANONYMOUS_USER
        if not username or "HTTP_AUTHORIZATION" in request.META:
            return None
        try:
            user = services.user_find(username=username)
        except NotFound:
            return None
        return (user, None) if user.is_active else None


#: The authentication of the views Pazator's resolver and pipelines call without a token.
TOKEN_OR_ANONYMOUS_ACCOUNT = [BearerTokenAuthentication, AnonymousAccountAuthentication]


def optional_user(request: Request) -> User | None:
    """The caller's user when the request carries a good token, else None (never an error)."""
    try:
        token = bearer_token(request)
        if token is None:
            return None
        user, _ = services.token_authenticate(token=token)
    except Exception:  # an optional token that is no good is simply absent
        return None
    return user


def request_user(request: Request | HttpRequest) -> User:
    """The authenticated user of a request, for views that require one.

    Behind IsAuthenticated (and in the admin site, which lets only active
    staff in) there always is one; without it the caller is told to log in,
    never served as somebody else.
    """
    user = request.user
    if not isinstance(user, User):
        raise NotAuthenticated()
    return user


def request_token_digest(request: Request) -> str:
    """The digest of the bearer token a request was authenticated with (``request.auth``)."""
    digest = request.auth
    if not isinstance(digest, str):
        raise NotAuthenticated()
    return digest
