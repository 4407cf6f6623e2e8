"""Sync follows accounts: a deleted user's repository and changelog go with
them, whichever way they were deleted, and the first user ever takes over the
pre-authentication server's repository (``accounts.signals.user_created``)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import receiver

from accounts.models import User
from accounts.signals import user_created
from sync.services import repository_adopt_legacy, repository_delete


@receiver(post_delete, sender=User)
def delete_repository_of_deleted_user(sender: type[User], instance: User, **kwargs: Any) -> None:
    repository_delete(user_id=str(instance.pk))


@receiver(user_created, sender=User)
def adopt_legacy_repository(sender: type[User], user: User, first: bool, **kwargs: Any) -> None:
    if first:
        repository_adopt_legacy(user_id=str(user.pk))
