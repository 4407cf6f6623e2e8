"""Account rules: registration, login, tokens, passwords, and user administration.

Services are keyword-only and talk to storage through the token store
(``accounts.backends``) and the User model. Tokens are random UUID4 strings
shown to the client once; only their SHA-256 digest is stored.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import ratelimit
from accounts.backends import TokenRecord, get_token_store
from accounts.models import USERNAME_MAX_LENGTH, RegistrationGate, Role, User, has_control_characters, username_key
from pzls_site.clock import utcnow
from pzls_site.exceptions import BadRequest, Conflict, Forbidden, NotAuthenticated, NotFound, TooManyRequests

logger = logging.getLogger("pzls.accounts")

PASSWORD_MIN_LENGTH = 6
PASSWORD_MAX_LENGTH = 4096
INVALID_CREDENTIALS = "Invalid username or password"


# --- validation ------------------------------------------------------------


def validate_username(username: object) -> str:
    if username is None or username == "":
        raise BadRequest("Username is required")
    if not isinstance(username, str):
        raise BadRequest("Username must be a string")
    if len(username) > USERNAME_MAX_LENGTH:
        raise BadRequest(f"Username must be at most {USERNAME_MAX_LENGTH} characters")
    if has_control_characters(username):
        raise BadRequest("Username must not contain control characters")
    if not username.strip():
        raise BadRequest("Username is required")
    return username


def validate_password(password: object, *, label: str = "Password") -> str:
    if password is None:
        raise BadRequest(f"{label} is required")
    if not isinstance(password, str):
        raise BadRequest(f"{label} must be a string")
    if len(password) < PASSWORD_MIN_LENGTH:
        raise BadRequest(f"{label} must be at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise BadRequest(f"{label} must be at most {PASSWORD_MAX_LENGTH} characters")
    return password


# --- tokens ------------------------------------------------------------------


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _token_ttl() -> timedelta:
    return timedelta(hours=settings.PZLS_TOKEN_TTL_HOURS)


def token_issue(*, user: User) -> str:
    """Create a token for ``user`` and return it; the store keeps only its digest."""
    token = str(uuid.uuid4())
    now = utcnow()
    get_token_store().add(
        TokenRecord(digest=token_digest(token), user_id=str(user.pk), created=now, last_used=now, expires=now + _token_ttl())
    )
    return token


def token_record_for(*, token: str) -> TokenRecord | None:
    """The live record of ``token``, renewing its expiry (written at most once per renew interval)."""
    store = get_token_store()
    digest = token_digest(token)
    record = store.get(digest)
    if record is None:
        return None
    now = utcnow()
    if record.expires <= now:
        store.revoke(digest)
        return None
    if (now - record.last_used).total_seconds() >= settings.PZLS_TOKEN_RENEW_INTERVAL_S:
        store.touch(digest, last_used=now, expires=now + _token_ttl())
    return record


def token_authenticate(*, token: str) -> tuple[User, str]:
    """The user a bearer token belongs to, and the token's digest.

    Raises NotAuthenticated (401) for an unknown, revoked or expired token and
    Forbidden (403) when the account is disabled.
    """
    record = token_record_for(token=token)
    if record is None:
        raise NotAuthenticated("Invalid or expired token")
    user = User.objects.filter(pk=record.user_id).first()
    if user is None:
        get_token_store().revoke(record.digest)
        raise NotAuthenticated("Invalid or expired token")
    if not user.is_active:
        raise Forbidden("Account disabled")
    return user, record.digest


def token_revoke(*, digest: str) -> None:
    get_token_store().revoke(digest)


def user_revoke_tokens(*, user_id: str, keep_digest: str | None = None) -> int:
    """Sign a user out everywhere (but the token whose digest is ``keep_digest``)."""
    return get_token_store().revoke_user(str(user_id), keep=keep_digest)


# --- registration and login ------------------------------------------------------


def user_register(*, username: object, password: object) -> tuple[str, User]:
    """Create an account and return (token, user).

    The first account ever is an admin, every later one an analyst. The
    registration gate row serialises registrations, so two simultaneous first
    registrations cannot both become admin. The first registration also takes
    over a legacy single-user repository, if one is in the data directory.
    """
    if settings.PZLS_REGISTRATION == "closed":
        raise Forbidden("Registration is closed")
    username = validate_username(username)
    password = validate_password(password)
    password_hash = make_password(password)  # slow; done before taking the gate
    from sync import services as sync_services

    try:
        with transaction.atomic():
            RegistrationGate.objects.get_or_create(pk=1)
            RegistrationGate.objects.select_for_update().get(pk=1)
            if User.objects.filter(username_key=username_key(username)).exists():
                raise Conflict("Username already taken")
            first = not User.objects.exists()
            user = User(username=username, role=Role.ADMIN if first else Role.ANALYST, password=password_hash)
            user.save()
            if first:
                sync_services.repository_adopt_legacy(user_id=str(user.pk))
    except IntegrityError:
        raise Conflict("Username already taken") from None
    return token_issue(user=user), user


def _client_key(username: str, client_ip: str) -> str:
    return f"{client_ip}|{username_key(username)}"


def user_login(*, username: object, password: object, client_ip: str) -> tuple[str, User]:
    """Check credentials and return (token, user). Rate limited per client address and username."""
    if not isinstance(username, str) or not username or not isinstance(password, str) or not password:
        raise BadRequest("Username and password are required")
    if len(username) > USERNAME_MAX_LENGTH or len(password) > PASSWORD_MAX_LENGTH:
        raise NotAuthenticated(INVALID_CREDENTIALS)
    wait = ratelimit.hit(_client_key(username, client_ip), ratelimit.parse_rate(settings.PZLS_LOGIN_RATE))
    if wait is not None:
        raise TooManyRequests(f"Too many login attempts; try again in {wait} seconds", retry_after=wait)
    user = User.objects.filter(username_key=username_key(username)).first()
    if user is None:
        make_password(password)  # spend the same time as a real check
        raise NotAuthenticated(INVALID_CREDENTIALS)
    if not user.check_password(password):
        raise NotAuthenticated(INVALID_CREDENTIALS)
    if not user.is_active:
        raise Forbidden("Account disabled")
    user.last_login = timezone.now()
    user.save(update_fields=["last_login"])
    return token_issue(user=user), user


def user_change_password(*, user: User, current_password: object, new_password: object, keep_digest: str) -> None:
    """Change a password after checking the current one; revoke every other token of the user."""
    if not isinstance(current_password, str) or not current_password:
        raise BadRequest("Current password is required")
    new_password = validate_password(new_password, label="New password")
    if not user.check_password(current_password):
        raise Forbidden("Current password is incorrect")
    user.set_password(new_password)
    user.save(update_fields=["password"])
    user_revoke_tokens(user_id=str(user.pk), keep_digest=keep_digest)


# --- administration -------------------------------------------------------------


def user_get(*, user_id: object) -> User:
    try:
        uid = uuid.UUID(str(user_id))
    except ValueError:
        raise NotFound("User not found") from None
    user = User.objects.filter(pk=uid).first()
    if user is None:
        raise NotFound("User not found")
    return user


def user_delete(*, actor: User, user_id: object) -> None:
    """Delete a user with their tokens, repository and changelog (see ``accounts.signals``)."""
    user = user_get(user_id=user_id)
    if user.pk == actor.pk:
        raise BadRequest("You cannot delete your own account")
    user.delete()
