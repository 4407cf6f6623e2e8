"""``manage.py import_legacy_repo [--path FILE] --user USERNAME [--merge]``: adopt a pre-authentication repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from accounts.services import user_find
from pzls_site.exceptions import command_errors
from sync.services import repository_import_legacy


class Command(BaseCommand):
    help = (
        'Import a legacy single-user repository file ({"version": N, "data": {...}}, as the '
        "pre-authentication server wrote it) into a user's repository, with the changelog.json "
        "beside it. Into an empty repository it keeps the file's version and history; a user "
        "who already has data is refused unless --merge, which pushes the legacy records over "
        "theirs as one new version. The data directory's own repo.json is renamed afterwards."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--path", type=Path, help="The legacy file (default: DATA_DIR/repo.json).")
        parser.add_argument("--user", required=True, help="Username (any case) whose repository receives the data.")
        parser.add_argument("--merge", action="store_true", help="Push the legacy records over a non-empty repository.")

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            user = user_find(username=options["user"])
            result = repository_import_legacy(user_id=str(user.pk), path=options["path"], merge=options["merge"])
        self.stdout.write(
            f"Imported into {user.username}'s repository: version {result.version}, "
            f"{result.added} added, {result.modified} modified"
        )
