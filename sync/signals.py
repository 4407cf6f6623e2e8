"""Sync follows accounts: a deleted user's repository, changelog and cached
pull bodies go with them, whichever way they were deleted
(``accounts.signals.user_deleted``, sent at once and again after the commit),
and the first user ever takes over the pre-authentication server's
repository (``accounts.signals.user_created``)."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from accounts.models import User
from accounts.signals import user_created, user_deleted
from sync.services import repository_adopt_legacy, repository_delete


@receiver(user_deleted, sender=User)
def delete_repository_of_deleted_user(sender: type[User], user_id: str, **kwargs: Any) -> None:
    repository_delete(user_id=user_id)


@receiver(user_created, sender=User)
def adopt_legacy_repository(sender: type[User], user: User, first: bool, **kwargs: Any) -> None:
    if first:
        repository_adopt_legacy(user_id=str(user.pk))
