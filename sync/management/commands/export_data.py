"""``manage.py export_data PATH``: write a full backup (users, repositories, changelogs) to one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pzls_site.exceptions import command_errors
from sync.backup import data_export


class Command(BaseCommand):
    help = (
        "Back up every user (with password hashes, roles, active flags, creation and last-login "
        "times), every repository and every changelog to one JSON Lines file. The file is "
        "written atomically and readable by its owner only. Tokens are not included: after a "
        "restore everyone logs in again. Restore with import_data."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="The backup file to write (replaced if it exists).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with command_errors():
                counts = data_export(path=options["path"])
        except OSError as exc:
            raise CommandError(f"Cannot write {options['path']}: {exc.strerror}") from None
        self.stdout.write(
            f"Exported {counts.users} users, {counts.repositories} repositories and "
            f"{counts.changes} changelog entries to {options['path']}"
        )
