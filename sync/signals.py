"""A deleted user's repository and changelog go with them, whichever way they were deleted."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models.signals import post_delete
from django.dispatch import receiver


@receiver(post_delete, sender=settings.AUTH_USER_MODEL)
def delete_repository_of_deleted_user(sender: type, instance: Any, **kwargs: Any) -> None:
    from sync.services import repository_delete

    repository_delete(user_id=str(instance.pk))
