"""The chaos lab: a whole Ferry deployment of its own on this machine, every part a real process a scenario can kill.

Nothing here is shared with the developer's stack or the test suite: the lab starts its own PostgreSQL and Redis
(with the dev stack's code, on free ports), its own source and target Kafka clusters (``dev/cluster.py``: a KRaft
controller and one broker each), and this checkout's API (uvicorn), Celery beat and fleet workers as child
processes with logs under the lab's folder. ``close()`` stops all of it and removes the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx
import psycopg
from botocore.config import Config
from botocore.credentials import Credentials

from cli.admin import create_access_key
from cli.api_client import KafkaSigV4
from dev.cluster import LocalCluster, free_port
from dev.secure import SECRETS_CREDENTIALS
from dev.stack import (
    Postgres,
    Redis,
    StackConfig,
    celery_beat_argv,
    celery_worker_argv,
    ensure_kafka_jars,
    ensure_packages,
)
from models.migrate import upgrade
from models.settings import FerrySettings

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
ACCOUNT = "000000000000"
T = TypeVar("T")


class LabError(RuntimeError):
    """A part of the lab did not start or a wait ran out; the message says which and what was seen last."""


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; raise naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def exit_on_termination() -> None:
    """Make SIGTERM and SIGINT end the process with SystemExit, so every ``finally`` runs and the lab is closed: its
    brokers, databases and workers live in sessions of their own and outlived a benchmark stopped by the default
    handlers (SIGINT inside ``asyncio.run`` only cancelled the running task, which carried on)."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)


class Lab:
    """PostgreSQL, Redis, a source and a target cluster, the API, beat and fleet workers: all of the lab's own."""

    def __init__(self, folder: Path, *, fast_failover: bool = True, kafka_heap: str = "256m") -> None:
        self.folder = folder
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.services = StackConfig(run_dir=folder / "services", postgres_port=free_port(), redis_port=free_port())
        self.postgres = Postgres(self.services)
        self.redis = Redis(self.services)
        self.kafka_lib = ensure_kafka_jars(StackConfig())
        # A larger heap for thousands of partitions (bench/partitions.py); the scenarios use the default.
        self.source = LocalCluster(self.kafka_lib, folder / "source", brokers=1, heap=kafka_heap)
        self.target = LocalCluster(self.kafka_lib, folder / "target", brokers=1, heap=kafka_heap)
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._worker_serial = 0
        self.settings = FerrySettings(
            database_url=self.services.database_url,
            redis_url=self.services.redis_url,
            kafka_probe_clusters={"source": self.source.bootstrap, "target": self.target.bootstrap},
            secret_key=f"ferry-chaos-lab-{uuid.uuid4().hex}",
            metrics_token=f"ferry-chaos-metrics-{uuid.uuid4().hex[:12]}",
            allowed_bootstrap=["127.0.0.0/8", "::1/128", "localhost"],
            aws_region=REGION,
            aws_account_id=ACCOUNT,
            api_requests_per_second=10_000.0,
            api_request_burst=10_000,
            max_replicators_per_account=10_000,  # the load bench runs hundreds
            celery_queue="chaos",
            api_reconcile=True,
        )
        if fast_failover:
            # Faults are injected every minute: failure detection is shortened so a run fits its time budget
            # (``fast_failover=False``: the production defaults, for measurements of a fleet at rest).
            self.settings = FerrySettings(
                **{
                    **self.settings.model_dump(),
                    "reconcile_interval_seconds": 1.0,
                    "fleet_lease_seconds": 8.0,
                    "fleet_write_timeout_seconds": 3.0,
                    "worker_dead_after_seconds": 8.0,
                }
            )
        self.env = {
            **os.environ,
            **self.settings.as_environment(),
            **SECRETS_CREDENTIALS,
            "PYTHONUNBUFFERED": "1",
        }
        self.credentials: Credentials | None = None
        # Keep a failed scenario's topics (and the lab's data) for inspection instead of deleting them.
        self.keep_evidence = False

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self, workers: int = 2) -> None:
        ensure_packages()
        say(f"lab in {self.folder}")
        self.postgres.start()
        self.redis.start()
        upgrade(self.services.database_url)
        say("starting the source and target clusters")
        self.source.start()
        self.target.start()
        issued = asyncio.run(create_access_key(self.settings, ACCOUNT, "chaos lab"))
        self.credentials = Credentials(issued.access_key_id, issued.secret_access_key)
        self.start_api()
        self.start_beat()
        for _ in range(workers):
            self.start_worker()
        wait_for(f"{workers} fleet workers to report", lambda: len(self.live_workers()) >= workers, 90)
        say(f"lab ready: API {self.api_url}, source {self.source.bootstrap}, target {self.target.bootstrap}")

    def close(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGKILL)
        self.source.close()
        self.target.close()
        self.redis.stop()
        self.postgres.stop()
        if self.postgres.as_root and not self.keep_evidence:
            shutil.rmtree(self.postgres.data, ignore_errors=True)

    # ------------------------------------------------------------------------------------- Ferry processes

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[name] = proc
        return proc

    def start_api(self) -> None:
        argv = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
                "--port", str(self.api_port), "--no-access-log"]  # fmt: skip
        proc = self._spawn("api", argv)

        def serving() -> bool:
            if proc.poll() is not None:
                raise LabError(f"the API exited with code {proc.returncode}:\n{self.log_tail('api')}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/livez", timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for("the API to serve /livez", serving, 60)

    def start_beat(self) -> None:
        self._spawn("beat", celery_beat_argv(self.folder / "celerybeat-schedule", None, loglevel="WARNING"))

    def start_worker(self) -> str:
        """A new fleet worker process; its name (``w<N>``) is the prefix of its fleet worker id."""
        self._worker_serial += 1
        name = f"w{self._worker_serial}"
        self._spawn(name, celery_worker_argv(f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
                                             "--without-mingle", loglevel="WARNING"))  # fmt: skip
        return name

    def workers(self) -> list[str]:
        """Names of the worker processes alive now."""
        return [n for n, p in self.processes.items() if n.startswith("w") and p.poll() is None]

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60.0) -> None:
        """Signal a process's whole tree (its session) and wait for it to exit; SIGKILL after ``timeout``."""
        proc = self.processes.get(name)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        # A Celery worker's pool children share its session: none may outlive it holding a lease.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def ensure_fleet(self, workers: int = 2) -> None:
        """Bring the lab back to its normal shape between scenarios: API, beat and ``workers`` workers alive."""
        if self.processes["api"].poll() is not None:
            self.start_api()
        if self.processes["beat"].poll() is not None:
            self.start_beat()
        while len(self.workers()) < workers:
            self.start_worker()
        wait_for(f"{workers} live fleet workers", lambda: len(self.live_workers()) >= workers, 90)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------------------------------- services

    def kill_redis(self) -> None:
        pid = self.redis.pidfile.live_pid()
        if pid is None:
            raise LabError("Redis is not running")
        os.killpg(pid, signal.SIGKILL)
        wait_for("Redis to be gone", lambda: not self.redis.ping(), 30)

    def start_redis_empty(self) -> None:
        """Start Redis again with nothing in it (as a new Redis host would be): its snapshot is removed first."""
        shutil.rmtree(self.services.run_dir / "redis", ignore_errors=True)
        self.redis.pidfile.clear()
        self.redis.start()

    def restart_postgres(self) -> None:
        self.postgres.stop()
        wait_for("PostgreSQL to stop", lambda: not self.postgres.is_up(), 60)
        self.postgres.start()

    # ------------------------------------------------------------------------------------------- clients

    def kafka_client(self, *, attempts: int = 5, read_timeout: float = 60.0) -> Any:
        """boto3's kafka client pointed at the lab's API (what a user's script uses)."""
        assert self.credentials is not None
        return boto3.client(
            "kafka",
            endpoint_url=self.api_url,
            region_name=REGION,
            aws_access_key_id=self.credentials.access_key,
            aws_secret_access_key=self.credentials.secret_key,
            config=Config(retries={"max_attempts": attempts, "mode": "standard"}, read_timeout=read_timeout),
        )

    def http(self) -> httpx.Client:
        """Signed HTTP to the lab's API, for the Ferry extensions (audits, metrics)."""
        assert self.credentials is not None
        return httpx.Client(base_url=self.api_url, timeout=30, auth=KafkaSigV4(self.credentials, REGION))

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        dsn = self.services.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def live_workers(self) -> list[str]:
        try:
            rows = self.query("SELECT worker_id FROM fleet_workers WHERE heartbeat_at > now() - interval '5 seconds'")
        except psycopg.Error:
            return []
        return [str(r[0]) for r in rows]

    def unit_owners(self, arn: str) -> dict[int, str | None]:
        """Copy units of a replicator: partition -> the worker holding a live lease (None when nobody does)."""
        rows = self.query(
            "SELECT u.partition, CASE WHEN u.lease_expires_at > now() THEN u.owner_worker END FROM fleet_units u "
            "JOIN replicators r ON r.id = u.replicator_id WHERE r.arn = %s AND u.partition >= 0",
            arn,
        )
        return {int(r[0]): r[1] for r in rows}

    def process_of(self, worker_id: str) -> str | None:
        """The lab's name of the process behind a fleet worker id (``w3-1a2b3c@host:pid:...``)."""
        prefix = worker_id.split("-", 1)[0]
        return prefix if prefix in self.processes else None
