"""Run the benchmark: ``python -m bench [--only resolve,query,sync] [--quick] [--storage files|database]``.

Each section is a module ``bench/<name>_bench.py`` with ``run(args) -> list[Table]``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pzls_site.settings")

SECTIONS = ["sync", "resolve", "query"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs, for a smoke test")
    parser.add_argument(
        "--storage",
        choices=["files", "database"],
        help="server storage to measure (default: sync measures both, the other sections files)",
    )
    args = parser.parse_args()
    # The sync section measures every storage in args.storages; the others measure args.storage.
    args.storages = [args.storage] if args.storage else ["files", "database"]
    args.storage = args.storage or "files"
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    for name in chosen:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    for name in chosen:
        try:
            module = importlib.import_module(f"bench.{name}_bench")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}_bench":
                print(f"## {name}: not built yet\n")
                continue
            raise
        for table in module.run(args):
            print(table.render(), flush=True)
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
