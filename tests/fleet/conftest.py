"""The fleet under test: real Celery worker and beat processes, the real API, real brokers.

Each test module gets a database of its own (created, migrated, dropped) and a Celery queue of its own, so the
fleet sees only the replicators its tests create, and nothing else in the suite can take its tasks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from dev.scratch_database import scratch_database
from dev.secure import SECRETS_CREDENTIALS
from dev.stack import celery_beat_argv, celery_worker_argv
from models.access_keys import IssuedKey
from models.db import make_async_engine, make_sync_engine
from models.settings import FerrySettings
from tests.api.conftest import RunningServer, kafka_client
from tests.conftest import ROOT, SigV4HttpxAuth, issue_key, stack_settings
from workers.fleet.runtime import ReplicatorRuntime, runtime_of

T = TypeVar("T")

# A replicator row as the API would write it, for tests that drive the fleet's parts without the API.
REPLICATOR_ROW = text(
    "INSERT INTO replicators (id, account_id, name, arn, kafka_clusters, replication_info, tags, current_version, "
    "generation, observed_generation, state) VALUES (:id, '000000000000', :name, :arn, CAST(:kafka_clusters AS "
    "jsonb), CAST(:replication_info AS jsonb), '{}', 'v1', 1, 0, :state)"
)


def replicator_row(
    name: str,
    state: str = "RUNNING",
    kafka_clusters: list[dict[str, Any]] | None = None,
    replication_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The parameters of ``REPLICATOR_ROW`` for a new replicator (its id under "id")."""
    rid = uuid.uuid4()
    return {
        "id": rid,
        "name": name,
        "arn": f"arn:aws:kafka:us-east-1:000000000000:replicator/{name}/{rid}",
        "kafka_clusters": json.dumps(kafka_clusters or []),
        "replication_info": json.dumps(replication_info or {}),
        "state": state,
    }


def insert_replicator(db: Engine, name: str, state: str = "RUNNING") -> uuid.UUID:
    """A bare replicator row (no clusters, no replication info); its id."""
    row = replicator_row(name, state)
    with db.begin() as conn:
        conn.execute(REPLICATOR_ROW, row)
    return uuid.UUID(str(row["id"]))


def plaintext_runtime(
    replicator_id: str, name: str, source: str, target: str, topic_replication: dict[str, Any], state: str = "CREATING"
) -> ReplicatorRuntime:
    """The runtime of a replicator from ``source`` to ``target`` (plaintext, aliases ``src`` and ``dst``)."""
    return runtime_of(
        replicator_id=replicator_id,
        name=name,
        generation=1,
        state=state,
        kafka_clusters=[
            {"kafkaClusterAlias": "src", "ferry": {"bootstrapServers": source}},
            {"kafkaClusterAlias": "dst", "ferry": {"bootstrapServers": target}},
        ],
        replication_info={
            "sourceKafkaClusterAlias": "src",
            "targetKafkaClusterAlias": "dst",
            "topicReplication": topic_replication,
        },
        created_at=datetime.now(UTC),
    )


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


@pytest.fixture(scope="module")
def fleet_settings(stack: dict[str, Any]) -> Iterator[FerrySettings]:
    with scratch_database(stack["test_database_url"], "ferry_fleet") as url:
        yield stack_settings(
            stack,
            database_url=url,
            celery_queue=f"fleet-{uuid.uuid4().hex[:8]}",
            reconcile_interval_seconds=1.0,
            fleet_lease_seconds=8.0,
            fleet_write_timeout_seconds=3.0,
            worker_dead_after_seconds=8.0,
            replicator_fail_after_seconds=5.0,
            api_reconcile=True,
        )


class Fleet:
    """Worker and beat processes of one test module, each with its own log file."""

    def __init__(self, settings: FerrySettings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, **settings.as_environment(), **SECRETS_CREDENTIALS, "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = proc
        return proc

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        hostname = f"{name}-{uuid.uuid4().hex[:6]}@%h"
        return self._spawn(name, celery_worker_argv(hostname, "--without-gossip", "--without-mingle"), env)

    def start_beat(self) -> subprocess.Popen[bytes]:
        return self._spawn("beat", celery_beat_argv(self.logs / "celerybeat-schedule", None, loglevel="WARNING"))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes[name]
        os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=30)

    def stop(self, name: str, timeout: float = 60.0) -> None:
        """A clean stop (SIGTERM) of one process, waited for."""
        proc = self.processes[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            content = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(content))
        return "\n".join(out)


@pytest.fixture(scope="module")
def fleet(fleet_settings: FerrySettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    running = Fleet(fleet_settings, tmp_path_factory.mktemp("fleet"))
    running.start_beat()
    try:
        yield running
    finally:
        running.stop_all()
        print(running.log_tail())


@pytest.fixture(scope="module")
def fleet_api(fleet_settings: FerrySettings) -> Iterator[str]:
    with RunningServer(create_app(fleet_settings)) as server:
        yield server.url


@pytest.fixture(scope="module")
def fleet_key(fleet_settings: FerrySettings) -> IssuedKey:
    return issue_key(fleet_settings)


@pytest.fixture(scope="module")
def fleet_kafka(fleet_api: str, fleet_key: IssuedKey) -> Any:
    return kafka_client(fleet_api, fleet_key)


@pytest.fixture
def fleet_http(fleet_api: str, fleet_key: IssuedKey) -> Iterator[httpx.Client]:
    """Raw HTTP to the fleet's API (the extension endpoints), signed with the fleet account's key."""
    with httpx.Client(base_url=fleet_api, timeout=30, auth=SigV4HttpxAuth(fleet_key)) as client:
        yield client


@pytest.fixture(scope="module")
def fleet_db(fleet_settings: FerrySettings) -> Iterator[Engine]:
    engine = make_sync_engine(fleet_settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def fleet_redis(fleet_settings: FerrySettings) -> Iterator[Redis]:
    client = Redis.from_url(fleet_settings.redis_url)
    yield client
    client.close()


def unit_owners(db: Engine, replicator_arn: str) -> dict[tuple[str, int], tuple[str | None, int]]:
    """Copy units of a replicator: (topic, partition) -> (live lease owner or None, epoch)."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT u.topic, u.partition, CASE WHEN u.lease_expires_at > now() THEN u.owner_worker END, "
                "u.epoch FROM fleet_units u JOIN replicators r ON r.id = u.replicator_id "
                "WHERE r.arn = :arn AND u.partition >= 0"
            ),
            {"arn": replicator_arn},
        )
        return {(r[0], int(r[1])): (r[2], int(r[3])) for r in rows}


def live_workers(db: Engine) -> set[str]:
    with db.connect() as conn:
        return {
            r[0]
            for r in conn.execute(
                text("SELECT worker_id FROM fleet_workers WHERE heartbeat_at > now() - interval '5 seconds'")
            )
        }


@pytest.fixture
async def adb(fleet_settings: FerrySettings) -> AsyncIterator[AsyncEngine]:
    """An async engine on the fleet tests' database, for code under test that takes one (units, stores)."""
    engine = make_async_engine(fleet_settings)
    yield engine
    await engine.dispose()


@pytest.fixture
async def aredis(fleet_settings: FerrySettings) -> AsyncIterator[AsyncRedis]:
    client = AsyncRedis.from_url(fleet_settings.redis_url)
    yield client
    await client.aclose()
