"""``ferry fleet``: the worker fleet from a shell.

    ferry fleet status [--json]                      live workers, their load, and the workers the fleet needs
    ferry fleet drain WORKER_ID [--undo]             move a worker's units away before stopping it by hand
    ferry fleet autoscale --min N --max M            start and stop worker processes on this machine following
                                                     the fleet's own signal (VMs and local runs; on Kubernetes the
                                                     chart's autoscaler does this)

Each reads the database (``FERRY_DATABASE_URL``) directly: they run where workers run, with the workers' settings.

The autoscaler follows ``desired workers`` (``models/fleet_capacity.py``, the same number as
``ferry_fleet_desired_workers``), kept between ``--min`` and ``--max``. It scales out at once (then waits
``--cooldown`` before adding more, so a signal that lags the new worker's arrival does not overshoot) and scales
in only when fewer workers were enough for ``--scale-in-after`` seconds in a row. Scaling in drains the newest
worker it started: marked draining, the reconcile loop moves its units to the others (each hand-off writes final
progress under the lease, so nothing is copied twice), and only when it holds nothing (or after
``--drain-timeout``) is it sent SIGTERM. A worker that dies is replaced. SIGTERM or Ctrl-C stops every worker it
started, each handing its partitions over.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from cli.options import bounded_int, bounded_seconds
from models import fleet_store
from models.db import make_sync_engine
from models.fleet_capacity import FleetDemand, fleet_demand
from models.settings import FerrySettings, get_settings

# How long a worker asked to stop (SIGTERM) gets to hand its partitions over before it is killed.
STOP_GRACE_SECONDS = 60.0


def add_commands(sub: Any) -> None:
    fleet = sub.add_parser("fleet", help="the worker fleet: status, drain, autoscale")
    commands = fleet.add_subparsers(dest="fleet_command", required=True)
    status = commands.add_parser("status", help="live workers, their load, and the workers the fleet needs")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    drain = commands.add_parser("drain", help="move a worker's units to the others (before stopping it)")
    drain.add_argument("worker_id")
    drain.add_argument("--undo", action="store_true", help="let the worker take units again")
    scale = commands.add_parser("autoscale", help="run worker processes here, as many as the fleet needs")
    scale.add_argument(
        "--min", dest="min_workers", type=bounded_int(0, 1000), default=1, help="never fewer workers (default 1)"
    )
    scale.add_argument("--max", dest="max_workers", type=bounded_int(1, 1000), required=True, help="never more workers")
    scale.add_argument(
        "--interval", type=bounded_seconds(0.1, 3600), default=5.0, help="seconds between decisions (default 5)"
    )
    scale.add_argument(
        "--cooldown",
        type=bounded_seconds(0, 86_400),
        default=60.0,
        help="seconds after a scale-out before the next (default 60)",
    )
    scale.add_argument(
        "--scale-in-after",
        type=bounded_seconds(0, 86_400),
        default=120.0,
        help="seconds fewer workers must have been enough before one is stopped (default 120)",
    )
    scale.add_argument(
        "--drain-timeout",
        type=bounded_seconds(1, 86_400),
        default=120.0,
        help="seconds a draining worker gets to hand over (default 120)",
    )
    scale.add_argument(
        "--concurrency", type=bounded_int(1, 256), default=2, help="Celery task slots of each worker (default 2)"
    )


def run(args: argparse.Namespace) -> int:
    if args.fleet_command == "autoscale" and args.min_workers > args.max_workers:
        print(f"ferry fleet autoscale: --min {args.min_workers} is above --max {args.max_workers}", file=sys.stderr)
        return 2
    settings = get_settings()
    if args.fleet_command == "status":
        return _status(settings, as_json=args.json)
    if args.fleet_command == "drain":
        engine = make_sync_engine(settings)
        with engine.begin() as conn:
            found = fleet_store.set_draining(conn, args.worker_id, not args.undo)
        if not found:
            print(f"ferry fleet drain: no worker {args.worker_id!r} (see ferry fleet status)", file=sys.stderr)
            return 1
        print(f"{args.worker_id}: {'taking units again' if args.undo else 'draining'}")
        return 0
    return Autoscaler(settings, args).run()


def demand_of(settings: FerrySettings, load: fleet_store.FleetLoad) -> FleetDemand:
    return fleet_demand(
        load.workers,
        load.units,
        copied_bytes_per_second=load.copied_bytes_per_second,
        worker_capacity_bytes_per_second=settings.fleet_worker_capacity_bytes_per_second,
        target_utilisation=settings.fleet_target_utilisation,
        lag_clear_seconds=settings.fleet_lag_clear_seconds,
    )


def _status(settings: FerrySettings, *, as_json: bool) -> int:
    engine = make_sync_engine(settings)
    with engine.connect() as conn:
        load = fleet_store.fleet_load(conn, settings.worker_dead_after_seconds)
    demand = demand_of(settings, load)
    if as_json:
        print(
            json.dumps(
                {
                    "liveWorkers": [
                        {
                            "workerId": w.worker_id,
                            "hostname": w.hostname,
                            "pid": w.pid,
                            "units": w.units,
                            "cpuCores": round(w.cpu_cores, 3),
                            "bytesPerSecond": round(w.bytes_per_second, 1),
                            "lagBytes": w.lag_bytes,
                            "draining": w.draining,
                        }
                        for w in load.workers
                    ],
                    "units": load.units,
                    "unassignedUnits": load.unassigned_units,
                    "desiredWorkers": demand.desired_workers,
                    "reason": demand.reason,
                    "lastReconcileAgeSeconds": _rounded(load.last_reconcile_age_seconds),
                    "lastReconcileSeconds": _rounded(load.last_reconcile_seconds),
                },
                indent=2,
            )
        )
        return 0
    print(f"{'WORKER':<60} {'UNITS':>6} {'CPU':>6} {'MB/s':>8} {'LAG MB':>8}  STATE")
    for w in load.workers:
        state = "draining" if w.draining else "live"
        print(
            f"{w.worker_id:<60} {w.units:>6} {w.cpu_cores:>6.2f} {w.bytes_per_second / 1e6:>8.2f} "
            f"{w.lag_bytes / 1e6:>8.2f}  {state}"
        )
    print(f"units {load.units}, unassigned {load.unassigned_units}, without an owner {load.units_without_owner}")
    print(f"desired workers {demand.desired_workers}: {demand.reason}")
    if load.last_reconcile_age_seconds is None:
        print("no reconcile pass has run")
    else:
        took = "" if load.last_reconcile_seconds is None else f", took {load.last_reconcile_seconds:.3f}s"
        print(f"last reconcile pass {load.last_reconcile_age_seconds:.1f}s ago{took}")
    return 0


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


@dataclass
class _Child:
    number: int
    process: subprocess.Popen[bytes]
    started_at: float
    worker_id: str | None = None
    draining_since: float | None = None
    stopping_since: float | None = None
    last_units: int = field(default=-1)


class Autoscaler:
    def __init__(self, settings: FerrySettings, args: argparse.Namespace) -> None:
        self.settings = settings
        self.args = args
        self.engine: Engine = make_sync_engine(settings)
        self.children: list[_Child] = []
        self._numbers = 0
        self._last_scale_out = -1e9
        self._enough_since: float | None = None  # since when fewer workers would have been enough
        self._stop = threading.Event()
        self.hostname = socket.gethostname()

    def say(self, message: str) -> None:
        print(f"[autoscale {time.strftime('%H:%M:%S')}] {message}", flush=True)

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self.say(f"keeping {self.args.min_workers}..{self.args.max_workers} workers on {self.hostname}")
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                except Exception as exc:  # noqa: BLE001 (a database outage must not stop the supervisor)
                    self.say(f"decision skipped: {type(exc).__name__}: {exc}")
                self._stop.wait(self.args.interval)
        finally:
            self.stop_all()
        return 0

    def step(self) -> None:
        now = time.monotonic()
        self._reap()
        with self.engine.connect() as conn:
            load = fleet_store.fleet_load(conn, self.settings.worker_dead_after_seconds)
            pids = fleet_store.workers_on(conn, self.hostname, self.settings.worker_dead_after_seconds)
        demand = demand_of(self.settings, load)
        units_by_worker = {w.worker_id: w.units for w in load.workers}
        for child in self.children:
            if child.worker_id is None:
                child.worker_id = pids.get(child.process.pid)
            if child.worker_id is not None:
                child.last_units = units_by_worker.get(child.worker_id, 0)
        target = max(self.args.min_workers, min(self.args.max_workers, demand.desired_workers))
        serving = [c for c in self.children if c.draining_since is None and c.stopping_since is None]
        if len(serving) < target:
            self._enough_since = None
            first_start = not self.children
            if first_start or now - self._last_scale_out >= self.args.cooldown or len(serving) < self.args.min_workers:
                for _ in range(target - len(serving)):
                    self._start(demand, target)
                self._last_scale_out = now
        elif len(serving) > target:
            self._enough_since = self._enough_since if self._enough_since is not None else now
            if now - self._enough_since >= self.args.scale_in_after:
                self._drain(serving[-1], demand, target)
                self._enough_since = None
        else:
            self._enough_since = None
        self._advance_drains(now)

    # ------------------------------------------------------------------ children

    def _start(self, demand: FleetDemand, target: int) -> None:
        self._numbers += 1
        number = self._numbers
        env = dict(os.environ)
        liveness = self.settings.worker_liveness_file
        if liveness is not None:
            # One liveness file per worker, or they would overwrite each other's.
            env["FERRY_WORKER_LIVENESS_FILE"] = str(Path(liveness).with_name(f"{Path(liveness).name}.{number}"))
        argv = [
            sys.executable, "-m", "cli", "worker",
            "--hostname", f"ferry-autoscaled-{os.getpid()}-{number}@%h",
            "--concurrency", str(self.args.concurrency),
        ]  # fmt: skip
        process = subprocess.Popen(argv, env=env, start_new_session=True)
        self.children.append(_Child(number, process, time.monotonic()))
        self.say(f"starting worker {number} (pid {process.pid}): want {target}; {demand.reason}")

    def _drain(self, child: _Child, demand: FleetDemand, target: int) -> None:
        child.draining_since = time.monotonic()
        if child.worker_id is None:
            self.say(f"stopping worker {child.number} (never joined the fleet): want {target}")
            self._terminate(child)
            return
        with self.engine.begin() as conn:
            fleet_store.set_draining(conn, child.worker_id)
        self.say(f"draining worker {child.number} ({child.last_units} units): want {target}; {demand.reason}")

    def _advance_drains(self, now: float) -> None:
        for child in self.children:
            if child.draining_since is None or child.stopping_since is not None:
                continue
            drained = child.last_units == 0
            if drained or now - child.draining_since >= self.args.drain_timeout:
                how = "drained" if drained else f"still holds {child.last_units} units after the drain timeout"
                self.say(f"worker {child.number} {how}: sending SIGTERM")
                self._terminate(child)

    def _terminate(self, child: _Child) -> None:
        child.stopping_since = time.monotonic()
        if child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGTERM)

    def _reap(self) -> None:
        now = time.monotonic()
        for child in list(self.children):
            code = child.process.poll()
            if code is None:
                if child.stopping_since is not None and now - child.stopping_since > STOP_GRACE_SECONDS:
                    self.say(f"worker {child.number} did not stop within {STOP_GRACE_SECONDS:g}s: killing it")
                    os.killpg(child.process.pid, signal.SIGKILL)
                continue
            self.children.remove(child)
            if child.stopping_since is None:
                self.say(f"worker {child.number} (pid {child.process.pid}) exited with {code}; it will be replaced")
            else:
                self.say(f"worker {child.number} stopped")

    def stop_all(self) -> None:
        """Every worker hands its partitions over (SIGTERM) and is waited for; stragglers are killed."""
        for child in self.children:
            if child.process.poll() is None:
                self.say(f"stopping worker {child.number}")
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        self.children.clear()
        self.engine.dispose()
