"""Keep tokens in step with accounts, whichever way an account changes
(API, admin site, shell): a disabled or deleted account loses every token.

And ``user_created``, which other apps listen to: ``accounts.services.user_create``
sends it with the user and ``first`` (the first account ever) inside the
transaction that creates the user, after the user row is saved and while the
registration gate is held. A receiver's error undoes the registration. Sync's
receiver lets the first user take over a legacy repository, so accounts never
imports sync.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

from accounts.models import User

user_created = Signal()


@receiver(post_save, sender=User)
def revoke_tokens_of_disabled_user(sender: type[User], instance: User, **kwargs: Any) -> None:
    if not instance.is_active:
        from accounts.services import user_revoke_tokens

        user_revoke_tokens(user_id=str(instance.pk))


@receiver(post_delete, sender=User)
def revoke_tokens_of_deleted_user(sender: type[User], instance: User, **kwargs: Any) -> None:
    from accounts.services import user_revoke_tokens

    user_revoke_tokens(user_id=str(instance.pk))
