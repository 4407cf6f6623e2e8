"""``manage.py import_data PATH``: restore a backup written by export_data into an empty server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from pzls_site.exceptions import command_errors
from sync.backup import data_import


class Command(BaseCommand):
    help = (
        "Restore a backup written by export_data: users with their passwords, roles and dates, "
        "repositories with their versions and changelogs. Only into a server without users "
        "(run migrate on a new data directory first). The file is checked completely before "
        "anything is written."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="A file written by export_data.")

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            counts = data_import(path=options["path"])
        self.stdout.write(
            f"Imported {counts.users} users, {counts.repositories} repositories and "
            f"{counts.changes} changelog entries from {options['path']}"
        )
