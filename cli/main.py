"""The ``ferry`` command.

    ferry --version
    ferry migrate                      bring the database (FERRY_DATABASE_URL) to the current schema
    ferry admin create-access-key ...  access keys (cli/admin.py)
    ferry audit --replicator-arn ...   compare a replicator's target with its source (cli/audit.py)

Every subcommand reads the same ``FERRY_*`` settings as the server; a bad value stops it with a message naming
the variable.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from pydantic import ValidationError

from cli import admin, audit
from models.migrate import main as migrate_main


def ferry_version() -> str:
    try:
        return version("ferry")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ferry", description="Ferry: Kafka replication with an MSK Replicator API")
    top.add_argument("--version", action="version", version=f"ferry {ferry_version()}")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="bring the database to the current schema")
    admin.add_commands(sub)
    audit.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "migrate":
            return migrate_main(["upgrade"])
        if args.command == "audit":
            return audit.run(args)
        return admin.run(args)
    except ValidationError as exc:
        print(f"ferry: invalid settings: {exc}", file=sys.stderr)
        return 2
