#!/usr/bin/env python
"""Django's command-line utility for PZLS (migrate, createuser, ...)."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pzls_site.settings")
    from pzls_site import env

    # A refused environment variable: its one line and exit status 2, not Django's traceback.
    env.current_or_exit()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
