"""The User model and the small tables the account rules need.

User is custom from the first migration: a UUID primary key (the protocol's
``id``), a ``role`` (admin or analyst), and a username that is unique without
regard to case but kept as typed. There are no groups or per-model
permissions: an active admin may do everything in the admin site, an analyst
nothing.
"""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any, ClassVar

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

USERNAME_MAX_LENGTH = 64
USERNAME_KEY_MAX_LENGTH = 255

# Characters no username may hold, by Unicode general category: controls
# (C0, DEL and C1), line and paragraph separators, and format characters,
# which are invisible (zero-width spaces and joiners, direction marks, the
# soft hyphen, the byte order mark): two names differing only by them would
# look the same. Surrogates cannot be stored at all (checked as encoding).
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
_FORMAT_CATEGORY = "Cf"
USERNAME_REFUSED_CATEGORIES = _CONTROL_CATEGORIES | {_FORMAT_CATEGORY}


def username_key(username: str) -> str:
    """The case-insensitive identity of a username (NFKC, then casefold)."""
    return unicodedata.normalize("NFKC", username).casefold()


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch) in _CONTROL_CATEGORIES for ch in text)


def _max_length(name: str) -> int:
    field = User._meta.get_field(name)
    assert isinstance(field, models.CharField) and field.max_length is not None
    return field.max_length


def username_refusal(username: str) -> str | None:
    """Why ``username`` cannot be an account's name, or None when it can.

    The one rule for every way an account is made (API, admin site, shell):
    the name and the key derived from it (``username_key``) fit their
    columns on every supported database, lengths read from the fields
    themselves; the name is valid Unicode text (no unpaired surrogate, which
    no database stores); no control, separator or invisible formatting
    character; not only white space.
    """
    name_max = _max_length("username")
    if len(username) > name_max:
        return f"Username must be at most {name_max} characters"
    try:
        username.encode("utf-8")
    except UnicodeEncodeError:
        return "Username must be valid Unicode text (no unpaired surrogates)"
    if has_control_characters(username):
        return "Username must not contain control characters"
    if any(unicodedata.category(ch) == _FORMAT_CATEGORY for ch in username):
        return "Username must not contain invisible formatting characters"
    if not username.strip():
        return "Username is required"
    key_max = _max_length("username_key")
    if len(username_key(username)) > key_max:
        return f"Username must be at most {key_max} characters after Unicode normalisation and case folding"
    return None


def username_fits(username: str) -> bool:
    """Whether ``username`` could be stored at all (its name and key fit, valid Unicode).

    Looser than ``username_refusal``: an account made before a character
    rule was added still logs in.
    """
    try:
        username.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return (
        "\x00" not in username
        and len(username) <= _max_length("username")
        and len(username_key(username)) <= _max_length("username_key")
    )


def validate_username_characters(value: str) -> None:
    """The model field's validator (admin forms): the same rule as the API's."""
    refusal = username_refusal(value)
    if refusal is not None:
        raise ValidationError(refusal)


def _mysql_exact_collation(connection: Any) -> str:
    """A binary collation that pads nothing, in utf8mb4 (every code point, 4-byte ones included)."""
    if connection.mysql_is_mariadb:
        return "utf8mb4_nopad_bin"
    return "utf8mb4_0900_bin" if connection.mysql_version >= (8, 0, 17) else "utf8mb4_bin"


class ExactCharField(models.CharField):
    """A CharField compared code point for code point on every database.

    PostgreSQL and SQLite compare text exactly already. MySQL and MariaDB
    compare by the column's collation, whose defaults ignore case, accents
    and trailing spaces (a unique index would then refuse ``alice`` next to
    ``Alice``, ``älice`` or ``alice `` there and nowhere else, and a lookup
    would find the wrong user), and the database's character set may not
    hold 4-byte characters such as emoji. There the column gets utf8mb4 with
    a binary collation without padding, whatever the database's defaults.
    """

    def db_parameters(self, connection: Any) -> dict[str, Any]:
        params = super().db_parameters(connection)
        if connection.vendor == "mysql" and not self.db_collation:
            params["collation"] = _mysql_exact_collation(connection)
        return params


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    ANALYST = "analyst", "Analyst"


class UserManager(BaseUserManager["User"]):
    def get_by_natural_key(self, username: str | None) -> User:
        if username is None:
            raise self.model.DoesNotExist("No username given")
        return self.get(username_key=username_key(username))

    def create_user(
        self, username: str, password: str | None = None, *, role: str = Role.ANALYST, **extra: Any
    ) -> User:
        user = self.model(username=username, role=role, **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, username: str, password: str | None = None, **extra: Any) -> User:
        extra.pop("role", None)
        return self.create_user(username, password, role=Role.ADMIN, **extra)


class User(AbstractBaseUser):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    username = ExactCharField(
        max_length=USERNAME_MAX_LENGTH,
        unique=True,
        validators=[validate_username_characters],
        help_text="Up to 64 characters, no control or invisible formatting characters. Unique regardless of case.",
    )
    # A name whose key is longer is refused (one character can fold to up to
    # 18, e.g. U+FDFA). 255: the unique index stays far within MySQL's 3072
    # bytes (1020 in utf8mb4), and MariaDB's check for unique CharFields passes.
    username_key = ExactCharField(max_length=USERNAME_KEY_MAX_LENGTH, unique=True, editable=False)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANALYST)
    is_active = models.BooleanField(
        "active", default=True, help_text="A disabled account cannot log in and its tokens are revoked."
    )
    created_at = models.DateTimeField("created", default=timezone.now, editable=False)

    objects = UserManager()

    USERNAME_FIELD = "username"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.username

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.username_key = username_key(self.username)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "username" in update_fields:
            kwargs["update_fields"] = {*update_fields, "username_key"}
        super().save(*args, **kwargs)

    def check_password(self, raw_password: str | None) -> bool:
        """Django's check, except that a hash upgraded on the way (a hasher or
        its cost changed) is written only while the stored hash is still the
        one checked: a password changed meanwhile is never put back."""
        checked = self.password

        def upgrade(raw: str | None) -> None:
            upgraded = make_password(raw)
            if type(self)._default_manager.filter(pk=self.pk, password=checked).update(password=upgraded):
                self.password = upgraded

        return check_password(raw_password, checked, upgrade)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    # What Django's admin site asks of a user.
    @property
    def is_staff(self) -> bool:
        return self.is_active and self.is_admin

    @property
    def is_superuser(self) -> bool:
        return self.is_staff

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        return self.is_staff

    def has_perms(self, perm_list: Any, obj: Any = None) -> bool:
        return self.is_staff

    def has_module_perms(self, app_label: str) -> bool:
        return self.is_staff


class RegistrationGate(models.Model):
    """A single row locked while a user registers, so two simultaneous first
    registrations cannot both see an empty user table and both become admin."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)

    def __str__(self) -> str:
        return "registration gate"


class LoginAttemptWindow(models.Model):
    """Login attempts of one (client address, username) in one fixed time window.

    Counting in the database makes the limit hold across gunicorn workers (and
    across servers sharing a database); the increment is a single UPDATE.
    """

    key = models.CharField(max_length=64)
    window = models.BigIntegerField()
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "window"], name="login_attempt_key_window")]
        indexes = [models.Index(fields=["window"])]

    def __str__(self) -> str:
        return f"{self.attempts} login attempts of {self.key} in window {self.window}"


class Token(models.Model):
    """One issued bearer token of the database token store (``PZLS_STORAGE=database``).

    Only the SHA-256 digest of the token is kept, as in ``tokens.json``.
    ``user_id`` is the user's id as the token store contract has it (a
    string), not a foreign key: the store serves any id it is given, as the
    file store does, and a deleted user's tokens go through the same
    ``post_delete`` handler (``accounts.signals``) whichever storage is in use.
    A foreign key would also make the admin site's delete confirmation list
    every token row of the user.
    """

    digest = models.CharField(max_length=64, unique=True)
    user_id = models.CharField(max_length=64)
    created = models.DateTimeField()
    last_used = models.DateTimeField()
    expires = models.DateTimeField()

    class Meta:
        indexes = [
            # list_user / revoke_user, oldest first
            models.Index(fields=["user_id", "created"], name="token_user_created"),
            # purge_expired walks only the expired end of this index
            models.Index(fields=["expires"], name="token_expires"),
        ]

    def __str__(self) -> str:
        # The digest prefix the admin site and logs use; never the whole digest.
        return f"token {self.digest[:12]}"
