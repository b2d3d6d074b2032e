"""A worker's liveness, for a process supervisor (a Kubernetes exec probe, a Docker HEALTHCHECK, systemd):

    python -m workers.liveness [--file PATH] [--max-age SECONDS]

Every worker whose settings name ``FERRY_WORKER_LIVENESS_FILE`` rewrites that file at every tick of its control
loop (``workers/fleet/control.py``) with when its control loop and its work loop last went round. Exit 0 when
both did within ``--max-age`` seconds; else exit 1, saying which loop stopped and since when. A worker stuck in
a deadlock, a wedged call or a SIGSTOP fails it; a worker waiting out a database outage does not (its loops go
on, and restarting it would not help).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models.settings import get_settings

DEFAULT_MAX_AGE_SECONDS = 120.0


def check(path: Path, max_age_s: float, now: float | None = None) -> tuple[bool, str]:
    """(alive, why) from the liveness file."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return False, f"{path} does not exist: the worker has not started its agent (or writes elsewhere)"
    except (OSError, ValueError) as exc:
        return False, f"{path} cannot be read: {exc}"
    now = time.time() if now is None else now
    problems = []
    for loop in ("control", "work"):
        at = float(record.get(f"{loop}At") or 0)
        age = now - at
        if at <= 0:
            problems.append(f"the {loop} loop has not gone round yet")
        elif age > max_age_s:
            problems.append(f"the {loop} loop last went round {age:.0f}s ago (more than {max_age_s:g}s)")
    if problems:
        return False, f"worker {record.get('workerId')} (pid {record.get('pid')}): " + "; ".join(problems)
    return True, f"worker {record.get('workerId')} (pid {record.get('pid')}) is live, {record.get('leases')} leases"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.liveness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, help="the liveness file (default: FERRY_WORKER_LIVENESS_FILE)")
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_SECONDS, help="seconds (default 120)")
    args = parser.parse_args(argv)
    path = args.file or get_settings().worker_liveness_file
    if path is None:
        print("no liveness file: pass --file or set FERRY_WORKER_LIVENESS_FILE", file=sys.stderr)
        return 2
    alive, why = check(path, args.max_age)
    print(why, file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
