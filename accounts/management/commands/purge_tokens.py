"""``manage.py purge_tokens``: forget every expired token in the token store."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from accounts.services import token_purge_expired
from pzls_site.exceptions import command_errors


class Command(BaseCommand):
    help = (
        "Forget every expired token in the token store (tokens.json, or the token table with "
        "PZLS_STORAGE=database). An expired token no longer logs anyone in; the stores drop "
        "expired tokens when they issue a new one, so this matters on a server where nobody has "
        "logged in for a while. Safe to run at any time, for instance daily from cron."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            purged = token_purge_expired()
        self.stdout.write(f"Purged {purged} expired token{'' if purged == 1 else 's'}")
