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
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

USERNAME_MAX_LENGTH = 64


def username_key(username: str) -> str:
    """The case-insensitive identity of a username (NFKC, then casefold)."""
    return unicodedata.normalize("NFKC", username).casefold()


def has_control_characters(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def validate_username_characters(value: str) -> None:
    if has_control_characters(value):
        raise ValidationError("Username must not contain control characters")


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
    username = models.CharField(
        max_length=USERNAME_MAX_LENGTH,
        unique=True,
        validators=[validate_username_characters],
        help_text="Up to 64 characters, no control characters. Unique regardless of case.",
    )
    username_key = models.CharField(max_length=4 * USERNAME_MAX_LENGTH, unique=True, editable=False)
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
