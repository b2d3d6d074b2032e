"""The ``ferry`` command: every role of a deployment, and the tools around it.

    ferry --version
    ferry api [--host H] [--port P] [--workers N]   the REST API (uvicorn)
    ferry worker [--concurrency N] [--hostname H]   a fleet worker (Celery worker + fleet agent)
    ferry beat [--schedule FILE]                    Celery beat: the periodic reconcile trigger (optional: every
                                                    worker and API process also reconciles on its own)
    ferry migrate                                   bring the database (FERRY_DATABASE_URL) to the current schema
    ferry healthcheck [--pid N]                     is this container's Ferry process alive (cli/healthcheck.py)
    ferry admin create-access-key ...               access keys (cli/admin.py)
    ferry audit --replicator-arn ...                compare a replicator's target with its source (cli/audit.py)
    ferry usage --from ... --to ...                 usage for chargeback, as a table, JSON or CSV (cli/usage.py)
    ferry fleet status|drain|autoscale ...          the worker fleet: its load, draining, a local autoscaler
                                                    (cli/fleet.py)
    ferry replicators create|list|describe|wait ... replicators through the API, for CI pipelines and people
                                                    (cli/replicators.py, docs/cli.md; alias: ferry replicator)

Every server role reads the same ``FERRY_*`` settings (environment variables, or files in ``FERRY_SETTINGS_DIR``);
a missing or bad value stops it at once with a message naming the variable.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from cli import replicators
from cli.options import bounded_int


def ferry_version() -> str:
    try:
        return version("ferry")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    # The roles' modules load the database layer (SQLAlchemy, Alembic): imported here, where the whole command is
    # parsed, and not for `ferry replicators`, which a CI pipeline runs many times (main).
    from cli import admin, audit, fleet, healthcheck, usage  # noqa: PLC0415

    top = argparse.ArgumentParser(prog="ferry", description="Ferry: Kafka replication with an MSK Replicator API")
    top.add_argument("--version", action="version", version=f"ferry {ferry_version()}")
    sub = top.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="serve the REST API")
    api.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")
    api.add_argument("--port", type=bounded_int(1, 65535), default=8080)
    api.add_argument("--workers", type=bounded_int(1, 256), default=1, help="uvicorn worker processes (default 1)")
    worker = sub.add_parser("worker", help="run a fleet worker")
    worker.add_argument(
        "--concurrency", type=bounded_int(1, 256), default=2, help="Celery task slots (reconcile tasks)"
    )
    worker.add_argument("--hostname", default="ferry-worker@%h", help="Celery node name (%%h: this host)")
    worker.add_argument("--loglevel", default=None, help="least severe level logged (default: FERRY_LOG_LEVEL)")
    beat = sub.add_parser("beat", help="run Celery beat (the periodic reconcile trigger)")
    beat.add_argument("--schedule", default="celerybeat-schedule", help="beat's schedule file (writable)")
    beat.add_argument("--loglevel", default=None, help="least severe level logged (default: FERRY_LOG_LEVEL)")
    sub.add_parser("migrate", help="bring the database to the current schema")
    healthcheck.add_commands(sub)
    admin.add_commands(sub)
    audit.add_commands(sub)
    usage.add_commands(sub)
    fleet.add_commands(sub)
    replicators.add_commands(sub)
    return top


def _serve_api(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 (only this role needs the server)

    from models import logs  # noqa: PLC0415
    from models.settings import get_settings  # noqa: PLC0415

    settings = get_settings()  # a bad setting stops here, named, before the server starts
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # Ferry's log format (models/logs.py), applied in each uvicorn worker process too; the access lines
        # are the API's own (api/access_log.py: with the request id and the duration).
        log_config=logs.dict_config("api", settings.log_format, settings.log_level),
        access_log=False,
        # SIGTERM: stop accepting, finish the requests in flight (bounded), then exit.
        timeout_graceful_shutdown=30,
    )
    return 0


def _celery(command: Literal["worker", "beat"], argv: list[str], loglevel: str | None) -> int:
    from models import logs  # noqa: PLC0415
    from models.settings import get_settings  # noqa: PLC0415

    settings = get_settings()
    level = loglevel or settings.log_level
    # Configured now for what Celery says before it sets its logging up (its warnings), and again from Celery's
    # setup_logging signal (workers/celery_app.py). --quiet leaves out the banner, which is no log line.
    logs.configure(command, settings.log_format, level)
    from workers.celery_app import app  # noqa: PLC0415 (importing it reads the settings)

    quiet = ["--quiet"] if settings.log_format == "json" else []
    app.start([*quiet, command, "--loglevel", level, *argv])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["replicators"], ["replicator"]):
        return replicators.main(argv)  # the same parser, without loading the server roles' modules
    args = parser().parse_args(argv)
    from cli import admin, audit, fleet, healthcheck, usage  # noqa: PLC0415 (loaded by parser() already)
    from models.migrate import main as migrate_main  # noqa: PLC0415
    from models.settings import SettingsError, get_settings  # noqa: PLC0415

    try:
        if args.command == "api":
            return _serve_api(args)
        if args.command == "worker":
            return _celery("worker", [
                "--hostname", args.hostname, "--concurrency", str(args.concurrency), "--without-gossip",
                "--without-mingle",
            ], args.loglevel)  # fmt: skip
        if args.command == "beat":
            return _celery("beat", ["--schedule", args.schedule], args.loglevel)
        if args.command == "migrate":
            return migrate_main(["upgrade"])
        if args.command == "audit":
            return audit.run(args)
        if args.command == "usage":
            return usage.run(args)
        if args.command in ("replicators", "replicator"):
            return replicators.run(args)
        if args.command == "fleet":
            return fleet.run(args)
        if args.command == "healthcheck":
            return healthcheck.run(args, get_settings().worker_liveness_file)
        return admin.run(args)
    except SettingsError as exc:
        print(f"ferry: invalid settings: {exc}", file=sys.stderr)
        return 2
