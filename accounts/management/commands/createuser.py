"""``manage.py createuser USERNAME [--role admin|analyst] [--password-stdin]``: make an account from a script."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Role
from accounts.services import user_create
from pzls_site.exceptions import command_errors


class Command(BaseCommand):
    help = (
        "Create a PZLS account, validated like registration through the API. Without --role the "
        "first account ever is an admin and later ones are analysts, as with registration. "
        "The password comes from standard input with --password-stdin (one line), or is asked "
        "for twice when run at a terminal."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "username",
            help="Up to 64 characters, no control or invisible formatting characters; unique regardless of case.",
        )
        parser.add_argument("--role", choices=Role.values, help="admin or analyst (default: as registration decides).")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from the first line of standard input (for scripts; keeps it out of ps and history).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = self._read_password(options["password_stdin"])
        with command_errors():
            user = user_create(username=options["username"], password=password, role=options["role"])
        self.stdout.write(f"Created {user.role} {user.username} (id {user.pk})")

    def _read_password(self, from_stdin: bool) -> str:
        if from_stdin:
            line = sys.stdin.readline()
            if not line:
                raise CommandError("--password-stdin: standard input was empty")
            return line.rstrip("\r\n")
        if not sys.stdin.isatty():
            raise CommandError("No terminal to ask for a password: use --password-stdin")
        try:
            first = getpass.getpass("Password: ")
            second = getpass.getpass("Password (again): ")
        except (EOFError, KeyboardInterrupt):
            raise CommandError("No password given") from None
        if first != second:
            raise CommandError("The two passwords differ")
        return first
