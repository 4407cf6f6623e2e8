"""``manage.py purge_tombstones --older-than DAYS [--user USERNAME]``: forget old deletes."""

from __future__ import annotations

import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import user_find, user_list
from pzls_site.exceptions import command_errors
from sync.services import purge_tombstones


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"--older-than must be a number of days, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise CommandError(f"--older-than must be a number of days >= 0, not {text!r}")
    return value


class Command(BaseCommand):
    help = (
        "Remove the tombstones of records deleted more than DAYS days ago (a fraction is allowed), "
        "in every repository or one user's. A purged id is then as if never seen: a full push that "
        "still holds it brings it back, so purge only deletes every device has pulled since."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", required=True, metavar="DAYS", help="Age of the deletes to forget.")
        parser.add_argument("--user", help="Only this user's repository (username, any case).")

    def handle(self, *args: Any, **options: Any) -> None:
        days = _days(options["older_than"])
        with command_errors():
            if options["user"]:
                users = [user_find(username=options["user"])]
            else:
                users = user_list()
            removed = purge_tombstones(older_than_days=days, user_ids=[str(user.pk) for user in users])
        self.stdout.write(
            f"Purged {removed} tombstone{'s' if removed != 1 else ''} from {len(users)} repositor{'ies' if len(users) != 1 else 'y'}"
        )
