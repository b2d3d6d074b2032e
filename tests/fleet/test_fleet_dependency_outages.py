"""The fleet through outages of Redis and PostgreSQL: this module's fleet uses a PostgreSQL and a Redis of its own
(started with the project's own stack code), which the tests SIGKILL and start again, and a Redis behind a proxy
that blackholes it. Copying goes on through a Redis restart, a Redis that stops answering and a PostgreSQL
restart shorter than the lease; after a longer PostgreSQL outage it stops (its leases lapse) and resumes by
itself; metadata sync resumes too. Each scenario counts records produced, lost (never any) and duplicated."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from celery import Celery
from sqlalchemy import Engine, text

from dev.stack import Postgres, Redis, StackConfig
from models.migrate import upgrade
from models.settings import FerrySettings
from tests.conftest import stack_settings
from tests.faults import TcpProxy
from tests.fleet.conftest import Fleet, unit_owners, wait_until
from tests.fleet.records import SteadyProducer, all_delivered, delivered
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnServices:
    """A PostgreSQL and a Redis of this module's own, killed and started again by its tests."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.postgres = Postgres(cfg)
        self.redis = Redis(cfg)

    def kill_postgres(self) -> None:
        pid = self.postgres._pid()
        assert pid is not None, "PostgreSQL is not running"
        os.kill(pid, signal.SIGKILL)
        # Gone from the process table, not just a zombie: PostgreSQL refuses to start while its old pid exists.
        wait_until("PostgreSQL gone", lambda: not self.postgres.is_up() and not Path(f"/proc/{pid}").exists(), 30)

    def kill_redis(self) -> None:
        pid = self.redis.pidfile.live_pid()
        assert pid is not None, "Redis is not running"
        os.killpg(pid, signal.SIGKILL)
        wait_until("Redis gone", lambda: not self.redis.ping(), 30)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServices]:
    cfg = StackConfig(
        run_dir=tmp_path_factory.mktemp("own-services"), postgres_port=free_port(), redis_port=free_port()
    )
    own = OwnServices(cfg)
    own.postgres.start()
    own.redis.start()
    upgrade(cfg.database_url)
    try:
        yield own
    finally:
        own.redis.stop()
        own.postgres.stop()
        if own.postgres.as_root:
            shutil.rmtree(own.postgres.data, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_proxy(services: OwnServices) -> Iterator[TcpProxy]:
    proxy = TcpProxy(services.cfg.redis_port)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def fleet_settings(stack: dict[str, Any], services: OwnServices, redis_proxy: TcpProxy) -> FerrySettings:
    """This module's fleet: its own PostgreSQL, and its own Redis reached through a proxy that can blackhole it."""
    return stack_settings(
        stack,
        database_url=services.cfg.database_url,
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0",
        celery_queue="outages",
        reconcile_interval_seconds=1.0,
        fleet_lease_seconds=8.0,
        fleet_write_timeout_seconds=3.0,
        worker_dead_after_seconds=8.0,
        replicator_fail_after_seconds=5.0,
        api_reconcile=True,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_worker(fleet: Fleet) -> Iterator[None]:
    fleet.start_worker("outages-w1")
    yield
    fleet.stop("outages-w1")


def copied(target_bootstrap: str, target: str) -> int:
    return asyncio.run(delivered(target_bootstrap, target, 0)).copied


def start_replicating(
    fleet_kafka: Any, unique: str, source_bootstrap: str, target_bootstrap: str, partitions: int = 3
) -> tuple[str, str, SteadyProducer]:
    topic = f"{unique}-t"
    asyncio.run(create_topic(source_bootstrap, topic, partitions))
    request = create_request(unique, source_bootstrap, target_bootstrap, [f"{unique}-.*"])
    arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
    running = wait_until("RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    alias = running["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    producer = SteadyProducer(source_bootstrap, topic, partitions)
    producer.start()
    target = f"{alias}.{topic}"
    wait_until("copying", lambda: copied(target_bootstrap, target) > 300, 60)
    return arn, target, producer


def keeps_growing(target_bootstrap: str, target: str, seconds: float) -> None:
    """The target topic grows during ``seconds`` (copying goes on)."""
    before = copied(target_bootstrap, target)
    wait_until(f"{target} to grow", lambda: copied(target_bootstrap, target) > before + 100, seconds)


def all_reporting(fleet_http: httpx.Client, arn: str) -> bool:
    """Every partition of the replicator reports fresh measurements again (REPLICATING, not UNKNOWN)."""
    response = fleet_http.get(f"/replication/v1/replicators/{quote(arn, safe='')}/metrics")
    partitions = response.json().get("partitions", []) if response.status_code == 200 else []
    return bool(partitions) and all(p["health"] == "REPLICATING" for p in partitions)


class LogWatch:
    """What a process wrote to its log since this watch was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def new(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")


def finish(producer: SteadyProducer, target_bootstrap: str, target: str, scenario: str, recovery_s: float) -> None:
    produced = producer.stop()
    result = all_delivered(target_bootstrap, target, produced, 90)
    print(
        f"{scenario}: produced {result.produced}, lost {result.lost}, duplicated {result.duplicated}, "
        f"recovered in {recovery_s:.1f}s"
    )
    assert result.lost == 0


def flood_with_reconcile_tasks(settings: FerrySettings, count: int) -> None:
    """Queue ``count`` reconcile tasks: the worker is busy with one (acknowledged late) most of the time after, so
    Redis dies while it holds an unacknowledged message (the case kombu used to crash the worker on)."""
    sender = Celery(broker=settings.redis_url)
    try:
        for _ in range(count):
            sender.send_task("ferry.reconcile", queue=settings.celery_queue, ignore_result=True)
    finally:
        sender.close()


@pytest.mark.slow
def test_copying_goes_on_through_a_redis_restart(
    services: OwnServices,
    fleet_settings: FerrySettings,
    fleet: Fleet,
    fleet_kafka: Any,
    fleet_http: httpx.Client,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    arn, target, producer = start_replicating(fleet_kafka, unique, source_bootstrap, target_bootstrap)
    recovery = float("nan")
    worker_log = LogWatch(fleet.logs / "outages-w1.log")
    try:
        flood_with_reconcile_tasks(fleet_settings, 300)
        wait_until("the worker busy with the queued tasks", lambda: "ferry.reconcile" in worker_log.new(), 30)
        services.kill_redis()
        down_at = time.monotonic()
        keeps_growing(target_bootstrap, target, 30)  # no Redis at all: copying is not held up by it
        services.redis.start()
        wait_until("fresh reports after Redis is back", lambda: all_reporting(fleet_http, arn), 60)
        recovery = time.monotonic() - down_at
    finally:
        finish(producer, target_bootstrap, target, "Redis SIGKILLed and restarted", recovery)


@pytest.mark.slow
def test_copying_goes_on_when_redis_stops_answering(
    redis_proxy: TcpProxy,
    fleet: Fleet,
    fleet_kafka: Any,
    fleet_http: httpx.Client,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    """A blackholed Redis (connections open, nothing answered) must not hang any loop of the worker: its calls
    time out, copying goes on meanwhile, and reports resume when Redis answers again."""
    arn, target, producer = start_replicating(fleet_kafka, unique, source_bootstrap, target_bootstrap)
    recovery = float("nan")
    try:
        worker_log = LogWatch(fleet.logs / "outages-w1.log")
        redis_proxy.blackhole()
        started = time.monotonic()
        wait_until("a Redis call to time out", lambda: "measurements not published" in worker_log.new(), 30)
        keeps_growing(target_bootstrap, target, 30)  # after the timeout fired, copying still goes on
        redis_proxy.forward()
        wait_until("fresh reports after Redis answers again", lambda: all_reporting(fleet_http, arn), 60)
        recovery = time.monotonic() - started
    finally:
        redis_proxy.forward()
        finish(producer, target_bootstrap, target, "Redis blackholed", recovery)


@pytest.mark.slow
def test_copying_goes_on_through_a_postgres_restart_shorter_than_the_lease(
    services: OwnServices, fleet_kafka: Any, fleet_db: Engine, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    arn, target, producer = start_replicating(fleet_kafka, unique, source_bootstrap, target_bootstrap)
    outage = float("nan")
    try:
        epochs = unit_owners(fleet_db, arn)
        services.kill_postgres()
        down_at = time.monotonic()
        keeps_growing(target_bootstrap, target, 3)
        services.postgres.start()
        outage = time.monotonic() - down_at
        fleet_db.dispose()
        # No lease was lost: every unit is still held by the same worker at the same epoch.
        wait_until("the leases renewed", lambda: unit_owners(fleet_db, arn) == epochs, 30)
    finally:
        finish(producer, target_bootstrap, target, f"PostgreSQL SIGKILLed for {outage:.1f}s", outage)


@pytest.mark.slow
def test_copying_resumes_by_itself_after_a_postgres_outage_longer_than_the_lease(
    services: OwnServices,
    fleet: Fleet,
    fleet_settings: FerrySettings,
    fleet_kafka: Any,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    arn, target, producer = start_replicating(fleet_kafka, unique, source_bootstrap, target_bootstrap)
    # Every unit the worker holds, this replicator's and those of the module's earlier tests: leases are renewed
    # when due, so units taken at different times lapse in different ticks, and lapse lines of other replicators
    # alone could add up to this replicator's count before its own leases lapsed.
    with fleet_db.connect() as conn:
        units = conn.execute(text("SELECT count(*) FROM fleet_units WHERE lease_expires_at > now()")).scalar_one()
    assert units >= len(unit_owners(fleet_db, arn)) + 1  # at least this replicator's copy and metadata units
    recovery = float("nan")
    try:
        worker_log = LogWatch(fleet.logs / "outages-w1.log")
        services.kill_postgres()
        down_at = time.monotonic()
        # The leases lapse on the worker's clock (their renewals fail): it stops writing before anyone could take
        # over, and the work of every unit stops.
        lapsed_lines: list[str] = []

        def leases_lapsed() -> int:
            lapsed_lines.extend(re.findall(r"(\d+) leases lapsed; their work stops", worker_log.new()))
            return sum(int(count) for count in lapsed_lines)

        wait_until("every lease to lapse", lambda: leases_lapsed() >= units, 30)
        lapsed_s = time.monotonic() - down_at
        assert lapsed_s < fleet_settings.fleet_lease_seconds, f"leases held {lapsed_s:.1f}s without renewal"
        # A batch sent just before its lease's local deadline may still land after the lapse line: the lease's
        # margin (the write timeout and more) is there for it. By the time the leases expire in the database, when
        # another worker could take them over, nothing more may land (the scenario's times, not a synchronisation).
        expired = down_at + fleet_settings.fleet_lease_seconds
        wait_until("the leases to expire in the database", lambda: time.monotonic() > expired, 60, interval=0.5)
        stalled = copied(target_bootstrap, target)
        # The outage lasts twice the lease; nothing is written meanwhile.
        outage_ends = down_at + 2 * fleet_settings.fleet_lease_seconds
        wait_until("the outage to last twice the lease", lambda: time.monotonic() > outage_ends, 30, interval=1)
        assert copied(target_bootstrap, target) == stalled, "the worker wrote without a valid lease"
        services.postgres.start()
        fleet_db.dispose()
        keeps_growing(target_bootstrap, target, 60)
        recovery = time.monotonic() - down_at
        # Metadata sync resumed too: a topic created now is found and copied.
        later = f"{unique}-later"
        asyncio.run(create_topic(source_bootstrap, later, 1))
        alias = target.split(".", 1)[0]
        wait_until("the new topic's units", lambda: any(t == later for t, _ in unit_owners(fleet_db, arn)), 60)
        wait_until("its target topic", lambda: copied(target_bootstrap, f"{alias}.{later}") >= 0, 30)
    finally:
        finish(producer, target_bootstrap, target, "PostgreSQL down past the lease", recovery)
