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
from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import ratelimit
from accounts.backends import TokenRecord, get_token_store
from accounts.models import RegistrationGate, Role, User, username_fits, username_key, username_refusal
from accounts.signals import user_created
from pzls_site.clock import utcnow
from pzls_site.exceptions import BadRequest, Conflict, Forbidden, NotAuthenticated, NotFound, TooManyRequests

logger = logging.getLogger("pzls.accounts")

PASSWORD_MIN_LENGTH = 6
PASSWORD_MAX_LENGTH = 4096
INVALID_CREDENTIALS = "Invalid username or password"


# --- validation ------------------------------------------------------------


def validate_username(username: object) -> str:
    """The username of a new account, or BadRequest saying why not (``accounts.models.username_refusal``)."""
    if username is None or username == "":
        raise BadRequest("Username is required")
    if not isinstance(username, str):
        raise BadRequest("Username must be a string")
    refusal = username_refusal(username)
    if refusal is not None:
        raise BadRequest(refusal)
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
    try:
        password.encode("utf-8")  # what the hasher does; an unpaired surrogate cannot be
    except UnicodeEncodeError:
        raise BadRequest(f"{label} must be valid Unicode text (no unpaired surrogates)") from None
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
        TokenRecord(
            digest=token_digest(token), user_id=str(user.pk), created=now, last_used=now, expires=now + _token_ttl()
        )
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


INVALID_TOKEN = "Invalid or expired token"
WRONG_CURRENT_PASSWORD = "Current password is incorrect"
ACCOUNT_DISABLED = "Account disabled"


def token_authenticate(*, token: str) -> tuple[User, str]:
    """The user a bearer token belongs to, and the token's digest.

    Raises NotAuthenticated (401) for an unknown, revoked or expired token and
    Forbidden (403) when the account is disabled.
    """
    record = token_record_for(token=token)
    if record is None:
        raise NotAuthenticated(INVALID_TOKEN)
    user = User.objects.filter(pk=record.user_id).first()
    if user is None:
        get_token_store().revoke(record.digest)
        raise NotAuthenticated(INVALID_TOKEN)
    if not user.is_active:
        raise Forbidden(ACCOUNT_DISABLED)
    return user, record.digest


def _token_is_live(digest: str) -> bool:
    record = get_token_store().get(digest)
    return record is not None and record.expires > utcnow()


def token_purge_expired() -> int:
    """Forget every expired token (``manage.py purge_tokens``). Returns how many."""
    return get_token_store().purge_expired(utcnow())


# --- one user's account changes, one at a time ------------------------------------
#
# Every change of an account (password, logout, sign-outs, role and active
# flag, deletion) and every token issued runs in a transaction that first
# locks the user's row (``_locked_user``; on SQLite the IMMEDIATE transaction
# is the lock) and decides on what it reads under that lock: two changes of
# one user never both act on the state before the other. Slow work
# (password hashing) is done before the lock is taken.


def _locked_user(user_id: uuid.UUID | str) -> User | None:
    """The user's row, locked until the transaction ends (call inside ``transaction.atomic``); None when gone."""
    try:
        return User.objects.select_for_update().filter(pk=user_id).first()
    except ValidationError:  # not a user id at all
        return None


def user_require_active(*, user_id: str) -> None:
    """Raise unless the user still exists (NotAuthenticated, as for their revoked token) and is active (Forbidden).

    For writers that must not outlive a delete or a disable (a push checks
    this under its repository lock). A plain read: it takes no lock, so a
    writer holding another lock never waits here for an account change.
    """
    try:
        active = User.objects.filter(pk=user_id).values_list("is_active", flat=True).first()
    except ValidationError:
        active = None
    if active is None:
        raise NotAuthenticated(INVALID_TOKEN)
    if not active:
        raise Forbidden(ACCOUNT_DISABLED)


def user_username(*, user_id: str) -> str:
    """The username of a user id ("" for none: the audit log names who acted, and a deleted user acts no more)."""
    try:
        return User.objects.filter(pk=user_id).values_list("username", flat=True).first() or ""
    except ValidationError:
        return ""


def user_revoke_tokens(*, user_id: str, keep_digest: str | None = None) -> int:
    """Sign a user out everywhere (but the token whose digest is ``keep_digest``)."""
    with transaction.atomic():
        _locked_user(user_id)
        return get_token_store().revoke_user(str(user_id), keep=keep_digest)


def user_logout(*, user: User, digest: str) -> None:
    """Revoke the calling token, in turn with the user's other account changes."""
    with transaction.atomic():
        _locked_user(user.pk)
        get_token_store().revoke(digest)


def _sign_in(user: User, *, password: str | None = None, message: str = INVALID_CREDENTIALS) -> tuple[str, User]:
    """Issue a token for ``user`` under the lock of their row, if they still may have one.

    The user's row is read again under the lock: deleted meanwhile is 401
    (``message``), disabled meanwhile 403, and with ``password`` (a login
    checked against ``user.password`` without the lock) a password changed
    meanwhile must match too. So no token is ever issued to a deleted or
    disabled user, or for a password that is no longer theirs.
    """
    with transaction.atomic():
        current = _locked_user(user.pk)
        if current is None:
            raise NotAuthenticated(message)
        if password is not None and current.password != user.password and not current.check_password(password):
            raise NotAuthenticated(message)
        if not current.is_active:
            raise Forbidden(ACCOUNT_DISABLED)
        if password is not None:
            current.last_login = timezone.now()
            current.save(update_fields=["last_login"])
        return token_issue(user=current), current


# --- registration and login ------------------------------------------------------


def user_register(*, username: object, password: object, client_ip: str) -> tuple[str, User]:
    """Create an account through the API and return (token, user).

    The first account ever is an admin, every later one an analyst; the first
    also takes over a legacy single-user repository (see ``user_create``).
    """
    if settings.PZLS_REGISTRATION == "closed":
        raise Forbidden("Registration is closed")
    # The cheap refusals (400) first: only an attempt that will hash a password counts against the address.
    validate_username(username)
    validate_password(password)
    _limit_address(client_ip)
    user = user_create(username=username, password=password)
    return _sign_in(user, message=INVALID_TOKEN)


def _client_key(username: str, client_ip: str) -> str:
    return f"{client_ip}|{username_key(username)}"


def _too_many(what: str, wait: int) -> TooManyRequests:
    return TooManyRequests(f"Too many {what}; try again in {wait} seconds", retry_after=wait)


def _limit_address(client_ip: str) -> None:
    """Count a login or registration that is about to hash a password; 429 past PZLS_AUTH_RATE_PER_ADDRESS."""
    wait = ratelimit.hit(ratelimit.address_key(client_ip), settings.PZLS_AUTH_RATE_PER_ADDRESS)
    if wait is not None:
        raise _too_many("attempts from this address", wait)


def user_login(*, username: object, password: object, client_ip: str) -> tuple[str, User]:
    """Check credentials and return (token, user). Rate limited per client address and per address and username."""
    if not isinstance(username, str) or not username or not isinstance(password, str) or not password:
        raise BadRequest("Username and password are required")
    if not username_fits(username) or len(password) > PASSWORD_MAX_LENGTH:
        raise NotAuthenticated(INVALID_CREDENTIALS)  # no account can have these
    _limit_address(client_ip)
    wait = ratelimit.hit(_client_key(username, client_ip), settings.PZLS_LOGIN_RATE)
    if wait is not None:
        raise _too_many("login attempts", wait)
    user = User.objects.filter(username_key=username_key(username)).first()
    if user is None:
        make_password(password)  # spend the same time as a real check
        raise NotAuthenticated(INVALID_CREDENTIALS)
    if not user.check_password(password):
        raise NotAuthenticated(INVALID_CREDENTIALS)
    return _sign_in(user, password=password)


def user_change_password(*, user: User, current_password: object, new_password: object, keep_digest: str) -> None:
    """Change a password after checking the current one; revoke every other token of the user.

    Decided under the user's lock on the row as it is then: deleted
    meanwhile is 401, disabled 403; the current password must match the
    hash stored now (a concurrent change that won makes it 403); and the
    calling token must still be live (logged out meanwhile is 401). Only
    then is the new hash written and every other token revoked, so the
    loser of a race leaves nothing of its own behind.
    """
    if not isinstance(current_password, str) or not current_password:
        raise BadRequest("Current password is required")
    new_password = validate_password(new_password, label="New password")
    checked = user.password
    if not check_password(current_password, checked):
        raise Forbidden(WRONG_CURRENT_PASSWORD)
    new_hash = make_password(new_password)  # slow: before the lock
    with transaction.atomic():
        current = _locked_user(user.pk)
        if current is None:
            raise NotAuthenticated(INVALID_TOKEN)
        if not current.is_active:
            raise Forbidden(ACCOUNT_DISABLED)
        if current.password != checked and not check_password(current_password, current.password):
            raise Forbidden(WRONG_CURRENT_PASSWORD)
        if not _token_is_live(keep_digest):
            raise NotAuthenticated(INVALID_TOKEN)
        current.password = new_hash
        current.save(update_fields=["password"])
        user_revoke_tokens(user_id=str(current.pk), keep_digest=keep_digest)
    user.password = new_hash


# --- administration -------------------------------------------------------------


def user_list() -> list[User]:
    """Every user, oldest first."""
    return list(User.objects.order_by("created_at", "pk"))


def user_count() -> int:
    return User.objects.count()


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
    """Delete a user by id with their tokens, repository and changelog (the admin API)."""
    user_delete_with_data(user=user_get(user_id=user_id), actor=actor)


# --- administration rules shared by the admin site, the API and the shell -----

LAST_ACTIVE_ADMIN = "The last active admin cannot be demoted, disabled or deleted"


def _lock_gate() -> None:
    """Lock the one ``RegistrationGate`` row until the transaction ends (creating it the first time).

    Everything that may change who the active admins are takes it before any
    user row: registration (the first account is an admin), role and active
    changes, deletions. So two admins demoting or deleting each other at the
    same moment queue instead of deadlocking on each other's rows, and the
    second meets the last-admin rule.
    """
    RegistrationGate.objects.get_or_create(pk=1)
    RegistrationGate.objects.select_for_update().get(pk=1)


def _refuse_losing_last_active_admin(*, user: User) -> None:
    """Raise Conflict when ``user`` is the only active admin.

    Called inside a transaction that holds the gate (``_lock_gate``)
    and has locked the admin rows, so two admins demoting each other at the
    same moment cannot both succeed.
    """
    active_admins = list(
        User.objects.select_for_update().filter(role=Role.ADMIN, is_active=True).values_list("pk", flat=True)
    )
    if active_admins == [user.pk]:
        raise Conflict(LAST_ACTIVE_ADMIN)


def user_set_access(*, user: User, role: str | None = None, is_active: bool | None = None) -> User:
    """Change a user's role and/or active flag; ``None`` leaves that one as it is.

    Refuses (Conflict) to leave the server without an active admin, since
    nobody could then reach the admin site. Disabling revokes every token of
    the user at once (``accounts.signals``). Returns the updated user.
    """
    if role is not None and role not in Role.values:
        raise BadRequest(f"Role must be one of: {', '.join(Role.values)}")
    with transaction.atomic():
        _lock_gate()
        current = _locked_user(user.pk)
        if current is None:
            raise NotFound("User not found")
        new_role = current.role if role is None else role
        new_active = current.is_active if is_active is None else is_active
        if current.is_staff and not (new_role == Role.ADMIN and new_active):
            _refuse_losing_last_active_admin(user=current)
        changed = [
            name for name, value in (("role", new_role), ("is_active", new_active)) if getattr(current, name) != value
        ]
        if changed:
            current.role, current.is_active = new_role, new_active
            current.save(update_fields=changed)
    user.role, user.is_active = current.role, current.is_active
    return current


def user_check_access_change(*, user: User, role: str, is_active: bool) -> None:
    """Raise Conflict now if ``user_set_access`` would refuse this change (for forms to say so early)."""
    if user.pk is None or not (user.role == Role.ADMIN and user.is_active) or (role == Role.ADMIN and is_active):
        return
    with transaction.atomic():
        _lock_gate()
        _refuse_losing_last_active_admin(user=user)


def user_delete_with_data(*, user: User, actor: User | None = None) -> None:
    """Delete a user with their tokens, repository and changelog.

    The one service every way of deleting a user goes through (the admin
    API, the admin site's delete page and bulk action). Refuses to delete
    the acting admin's own account and the last active admin. The tokens,
    the repository and its caches go through ``accounts.signals.user_deleted``,
    sent at once and again once the deletion is committed: a request of the
    user that was still under way (a push that checked its user before the
    deletion was committed) cannot leave anything behind, since writers check
    under their lock that the user still exists.
    """
    if actor is not None and actor.pk == user.pk:
        raise BadRequest("You cannot delete your own account")
    with transaction.atomic():
        _lock_gate()
        current = _locked_user(user.pk)
        if current is None:
            return
        if current.is_staff:
            _refuse_losing_last_active_admin(user=current)
        current.delete()


def user_sessions(*, user_id: str) -> list[TokenRecord]:
    """The user's live tokens (digests and times, never a token), oldest first."""
    now = utcnow()
    return [record for record in get_token_store().list_user(str(user_id)) if record.expires > now]


def user_revoke_session(*, user_id: str, public_id: str) -> bool:
    """Revoke the user's token whose public id (a digest prefix) is ``public_id``. True if one was revoked."""
    with transaction.atomic():
        _locked_user(user_id)
        for record in get_token_store().list_user(str(user_id)):
            if record.public_id == public_id:
                return get_token_store().revoke(record.digest)
    return False


def user_set_password(*, user: User, password: object) -> None:
    """Set a password for someone who forgot theirs and sign them out everywhere.

    An admin resets a password when it is lost or leaked; in both cases the
    tokens issued under the old password should stop working.
    """
    password_hash = make_password(validate_password(password))  # slow: before the lock
    with transaction.atomic():
        current = _locked_user(user.pk)
        if current is None:
            raise NotFound("User not found")
        current.password = password_hash
        current.save(update_fields=["password"])
        user_revoke_tokens(user_id=str(current.pk))
    user.password = password_hash


def user_create(*, username: object, password: object, role: str | None = None) -> User:
    """Create an account from the shell or the admin site.

    Without a ``role`` the registration rule applies: the first account is an
    admin, later ones analysts. The registration gate row serialises account
    creation, so two simultaneous first registrations cannot both become
    admin. ``accounts.signals.user_created`` goes out inside that transaction
    (sync's receiver lets the first account ever take over a legacy
    single-user repository, if one is in the data directory).
    """
    username = validate_username(username)
    password = validate_password(password)
    if role is not None and role not in Role.values:
        raise BadRequest(f"Role must be one of: {', '.join(Role.values)}")
    password_hash = make_password(password)  # slow; done before taking the gate
    try:
        with transaction.atomic():
            _lock_gate()
            if User.objects.filter(username_key=username_key(username)).exists():
                raise Conflict("Username already taken")
            first = not User.objects.exists()
            user = User(username=username, role=role or (Role.ADMIN if first else Role.ANALYST), password=password_hash)
            user.save()
            user_created.send(sender=User, user=user, first=first)
    except IntegrityError:
        raise Conflict("Username already taken") from None
    return user


def user_find(*, username: str) -> User:
    """The user whose username matches ``username`` regardless of case (NotFound otherwise)."""
    user = User.objects.filter(username_key=username_key(username)).first()
    if user is None:
        raise NotFound(f"User {username!r} not found")
    return user
