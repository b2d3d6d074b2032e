"""``ferry healthcheck``: is the Ferry process of this container (or of ``--pid``) alive? For an image's HEALTHCHECK
and for exec probes, whichever role the process runs:

- ``ferry api``: its ``/livez`` answers 200 (on the ``--port`` it was started with);
- ``ferry worker``: both loops of its fleet agent went round recently (``workers/liveness.py``);
- ``ferry beat`` (and ``migrate``): the process exists.

Exit 0 when alive, 1 when not (the reason on standard error), 2 when the role cannot be told.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path
from typing import Any

from workers.liveness import DEFAULT_MAX_AGE_SECONDS
from workers.liveness import check as worker_check


def add_commands(sub: Any) -> None:
    probe = sub.add_parser("healthcheck", help="is this container's Ferry process alive (image HEALTHCHECK)")
    probe.add_argument("--pid", type=int, default=1, help="the Ferry process to judge (default 1: the container's)")
    probe.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_SECONDS, help="worker loops, seconds")


def role_of(argv: list[str]) -> tuple[str | None, int]:
    """The role (api, worker, beat, migrate) and the API port of a ``ferry ...`` command line."""
    role = next((arg for arg in argv if arg in ("api", "worker", "beat", "migrate")), None)
    port = 8080
    if "--port" in argv and argv.index("--port") + 1 < len(argv):
        port = int(argv[argv.index("--port") + 1])
    return role, port


def run(args: argparse.Namespace, liveness_file: Path | None) -> int:
    try:
        argv = Path(f"/proc/{args.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError as exc:
        print(f"process {args.pid} is gone: {exc}", file=sys.stderr)
        return 1
    role, port = role_of(argv)
    if role == "api":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as answer:
                alive = answer.status == 200
        except OSError as exc:
            print(f"the API on port {port} does not answer /livez: {exc}", file=sys.stderr)
            return 1
        return 0 if alive else 1
    if role == "worker":
        if liveness_file is None:
            print("FERRY_WORKER_LIVENESS_FILE is not set: the worker writes no liveness file", file=sys.stderr)
            return 2
        alive, why = worker_check(liveness_file, args.max_age)
        print(why, file=sys.stdout if alive else sys.stderr)
        return 0 if alive else 1
    if role in ("beat", "migrate"):
        return 0
    print(f"process {args.pid} is not a Ferry role ({' '.join(argv)[:200]})", file=sys.stderr)
    return 2
