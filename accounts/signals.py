"""Keep tokens in step with accounts, whichever way an account changes
(API, admin site, shell): a disabled or deleted account loses every token.

``user_created``, which other apps listen to: ``accounts.services.user_create``
sends it with the user and ``first`` (the first account ever) inside the
transaction that creates the user, after the user row is saved and while the
registration gate is held. A receiver's error undoes the registration. Sync's
receiver lets the first user take over a legacy repository, so accounts never
imports sync.

``user_deleted``, sent with ``user_id`` (a string) for every deleted user,
however deleted: once at once, inside the deleting transaction, and once
more when that transaction has committed. Until the commit other workers
still see the user, so a request of theirs under way (a push that checked
its user just before) may still write; the second sending removes what it
wrote, and afterwards every writer sees the user gone. Receivers must
therefore be idempotent. Accounts' own receiver revokes the user's tokens
and the admin site's history of them; sync's removes the repository.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

from accounts.models import User

user_created = Signal()
user_deleted = Signal()


@receiver(post_save, sender=User)
def revoke_tokens_of_disabled_user(sender: type[User], instance: User, **kwargs: Any) -> None:
    if not instance.is_active:
        from accounts.services import user_revoke_tokens

        user_revoke_tokens(user_id=str(instance.pk))


@receiver(post_delete, sender=User)
def announce_deleted_user(sender: type[User], instance: User, using: str, **kwargs: Any) -> None:
    user_id = str(instance.pk)

    def announce() -> None:
        user_deleted.send(sender=User, user_id=user_id)

    announce()
    transaction.on_commit(announce, using=using)


@receiver(user_deleted, sender=User)
def forget_deleted_user(sender: type[User], user_id: str, **kwargs: Any) -> None:
    from accounts.services import user_revoke_tokens

    user_revoke_tokens(user_id=user_id)
    # The admin site's history names the user by id and username: it goes with them.
    LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(User), object_id=user_id).delete()
