"""The fleet through outages of what it depends on, with real processes: a database that goes away in the middle
of a hand-off, a dead beat process, Redis and PostgreSQL killed and restarted. Every scenario counts records
produced, lost (never any) and duplicated, and how long recovery took."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from models.settings import FerrySettings
from tests.exposition import metric_value, series
from tests.faults import TcpProxy
from tests.fleet.conftest import Fleet, unit_owners, wait_until
from tests.fleet.records import all_delivered, produce_numbered
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe
from workers.fleet.agent import AgentThread
from workers.fleet.control import DesiredWork
from workers.fleet.leases import Lease, LeaseStore
from workers.fleet.work import WorkLoop


def longest_lease_left(db: Engine, arn: str) -> float:
    with db.connect() as conn:
        return float(
            conn.execute(
                text(
                    "SELECT extract(epoch FROM max(u.lease_expires_at) - now()) FROM fleet_units u "
                    "JOIN replicators r ON r.id = u.replicator_id WHERE r.arn = :arn"
                ),
                {"arn": arn},
            ).scalar_one()
        )


def owners_like(db: Engine, arn: str, prefix: str) -> set[tuple[str, int]]:
    return {unit for unit, (owner, _) in unit_owners(db, arn).items() if owner and owner.startswith(prefix)}


@pytest.fixture(autouse=True)
def _each_test_alone(fleet: Fleet, fleet_kafka: Any) -> Iterator[None]:
    """Each test starts from a fleet with beat running, no worker and no replicator, whatever the one before left
    behind (a failed test's workers and replicators would otherwise take units and change every count)."""
    yield
    for name, proc in list(fleet.processes.items()):
        if name != "beat" and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            fleet.stop(name)
    if fleet.processes["beat"].poll() is not None:
        fleet.start_beat()
    for page in fleet_kafka.get_paginator("list_replicators").paginate():
        for replicator in page.get("Replicators", []):
            if replicator["ReplicatorState"] != "DELETING":
                fleet_kafka.delete_replicator(ReplicatorArn=replicator["ReplicatorArn"])


@pytest.mark.slow
def test_a_release_lost_to_a_database_outage_in_a_hand_off_is_retried_and_the_units_move_on(
    fleet: Fleet,
    fleet_settings: FerrySettings,
    fleet_kafka: Any,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = make_url(fleet_settings.database_url)
    proxy = TcpProxy(int(url.port or 5432))
    through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    settings_a = fleet_settings.model_copy(update={"database_url": through_proxy})
    cut_at: list[float] = []
    release = LeaseStore.release

    async def release_meets_an_outage(store: LeaseStore, leases: Iterable[Lease]) -> None:
        leases = list(leases)
        if leases and not cut_at and store.worker_id == "outage-a":
            # The moved units have stopped; the database goes away for 3 s as their release is sent.
            cut_at.append(time.monotonic())
            proxy.cut()
            threading.Timer(3.0, proxy.forward).start()
        await release(store, leases)

    monkeypatch.setattr(LeaseStore, "release", release_meets_an_outage)
    topic = f"{unique}-handoff"
    partitions = 4
    asyncio.run(create_topic(source_bootstrap, topic, partitions))
    asyncio.run(produce_numbered(source_bootstrap, topic, range(400), partitions))
    worker_a = AgentThread(settings_a, "outage-a")
    worker_a.start()
    try:
        arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
            "ReplicatorArn"
        ]
        running = wait_until(
            "RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60
        )
        target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
        assert len(owners_like(fleet_db, arn, "outage-a")) == partitions

        fleet.start_worker("outage-b")
        wait_until("the hand-off to meet the outage", lambda: bool(cut_at), 60)
        moved = wait_until("worker B to own its share", lambda: owners_like(fleet_db, arn, "outage-b"), 60)
        recovery_s = time.monotonic() - cut_at[0]
        assert recovery_s < fleet_settings.fleet_lease_seconds + 5, f"the units moved only after {recovery_s:.1f}s"
        assert moved

        asyncio.run(produce_numbered(source_bootstrap, topic, range(400, 800), partitions))
        result = all_delivered(target_bootstrap, target, 800, 60)
        print(
            f"hand-off with a 3 s database outage: produced {result.produced}, lost {result.lost}, "
            f"duplicated {result.duplicated}, units moved {recovery_s:.1f}s after the outage began"
        )
        assert result.lost == 0
    finally:
        worker_a.stop()
        proxy.close()
        if "outage-b" in fleet.processes:
            fleet.stop("outage-b")


@pytest.mark.slow
def test_without_beat_a_dead_workers_partitions_still_move_within_30_seconds(
    fleet: Fleet,
    fleet_settings: FerrySettings,
    fleet_kafka: Any,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    """Reconcile has no single point of failure: every worker's agent runs it under the advisory lock, so with
    Celery beat dead and a worker SIGKILLed the dead worker's partitions are reassigned and copied."""
    topic = f"{unique}-nobeat"
    partitions = 4
    asyncio.run(create_topic(source_bootstrap, topic, partitions))
    asyncio.run(produce_numbered(source_bootstrap, topic, range(400), partitions))
    fleet.start_worker("nobeat-1")
    fleet.start_worker("nobeat-2")
    try:
        arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
            "ReplicatorArn"
        ]
        running = wait_until(
            "RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60
        )
        target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
        wait_until(
            "both workers copying",
            lambda: owners_like(fleet_db, arn, "nobeat-1") and owners_like(fleet_db, arn, "nobeat-2"),
            60,
        )
        # The workers use FERRY_FLEET_LEASE_SECONDS (8 s here), not a built-in value.
        assert 0 < longest_lease_left(fleet_db, arn) <= fleet_settings.fleet_lease_seconds + 0.5
        fleet.kill("beat")
        fleet.kill("nobeat-1")
        killed_at = time.monotonic()
        wait_until(
            "every partition owned by a live worker",
            lambda: (
                len(owned := unit_owners(fleet_db, arn)) == partitions
                and all(owner and not owner.startswith("nobeat-1") for owner, _ in owned.values())
            ),
            30,
        )
        moved_s = time.monotonic() - killed_at
        asyncio.run(produce_numbered(source_bootstrap, topic, range(400, 800), partitions))
        result = all_delivered(target_bootstrap, target, 800, 60)
        print(
            f"beat and a worker killed: produced {result.produced}, lost {result.lost}, "
            f"duplicated {result.duplicated}, partitions moved {moved_s:.1f}s after the kill"
        )
        assert result.lost == 0
    finally:
        fleet.start_beat()
        fleet.stop("nobeat-2")


@pytest.mark.slow
def test_a_fleet_without_live_workers_says_so_everywhere_and_recovers(
    fleet: Fleet,
    fleet_settings: FerrySettings,
    fleet_kafka: Any,
    fleet_http: httpx.Client,
    fleet_api: str,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    """The last worker dies: the replicator leaves RUNNING with NO_LIVE_WORKER, its partitions read UNKNOWN with
    no numbers (not healthy zeros), their Prometheus series vanish and /readyz answers 503; a new worker brings
    everything back."""
    topic = f"{unique}-alone"
    partitions = 3
    asyncio.run(create_topic(source_bootstrap, topic, partitions))
    asyncio.run(produce_numbered(source_bootstrap, topic, range(300), partitions))
    fleet.start_worker("lonely-1")
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    running = wait_until("RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
    all_delivered(target_bootstrap, target, 300)
    assert httpx.get(f"{fleet_api}/readyz", timeout=10).status_code == 200

    fleet.kill("lonely-1")
    killed_at = time.monotonic()
    failed = wait_until(
        "FAILED with NO_LIVE_WORKER",
        lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "FAILED" and d,
        fleet_settings.worker_dead_after_seconds + fleet_settings.fleet_lease_seconds + 30,
    )
    noticed_s = time.monotonic() - killed_at
    assert failed["StateInfo"]["Code"] == "NO_LIVE_WORKER", failed["StateInfo"]
    assert "start a worker" in failed["StateInfo"]["Message"]

    def unknown() -> dict[str, Any] | None:
        response = fleet_http.get(f"/replication/v1/replicators/{quote(arn, safe='')}/metrics")
        body: dict[str, Any] = response.json()
        return body if all(p["health"] == "UNKNOWN" for p in body["partitions"]) else None

    body = wait_until("every partition UNKNOWN", unknown, 30)
    assert len(body["partitions"]) == partitions
    assert body["totals"]["lagRecords"] is None, "no lag figure while nobody measures it"
    assert body["totals"]["recordsPerSecond"] is None
    assert body["totals"]["partitionsUnreported"] == partitions
    exposition = fleet_http.get("/metrics").text
    assert not series(exposition, "MessageLag", replicator_name=unique)
    assert (
        metric_value(exposition, "FerryUnreportedPartitions", account_id="000000000000", replicator_name=unique)
        == partitions
    )
    assert metric_value(exposition, "ferry_unreported_partitions", replicator_name=unique) == partitions
    ready = httpx.get(f"{fleet_api}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["fleet"]["liveWorkers"] == 0
    assert "no live worker" in ready.json()["fleet"]["reason"]

    fleet.start_worker("lonely-2")
    restarted_at = time.monotonic()
    recovered = wait_until(
        "RUNNING again", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60
    )
    recovery_s = time.monotonic() - restarted_at
    assert not (recovered.get("StateInfo") or {}).get("Code")
    asyncio.run(produce_numbered(source_bootstrap, topic, range(300, 600), partitions))
    result = all_delivered(target_bootstrap, target, 600, 60)
    wait_until("/readyz 200", lambda: httpx.get(f"{fleet_api}/readyz", timeout=10).status_code == 200, 30)
    print(
        f"last worker killed: FAILED/NO_LIVE_WORKER {noticed_s:.1f}s after the kill; RUNNING {recovery_s:.1f}s after "
        f"a new worker started; produced {result.produced}, lost {result.lost}, duplicated {result.duplicated}"
    )
    assert result.lost == 0
    fleet.stop("lonely-2")


@pytest.mark.slow
def test_a_worker_reports_its_liveness_for_a_supervisor(fleet: Fleet, tmp_path: Path) -> None:
    live = tmp_path / "worker.live"
    worker = fleet.start_worker("liveness", env={"FERRY_WORKER_LIVENESS_FILE": str(live)})

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers.liveness", "--file", str(live), "--max-age", "5"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    try:
        wait_until("a live worker", lambda: probe().returncode == 0, 60)
        os.killpg(worker.pid, signal.SIGSTOP)  # frozen: its loops stop going round
        stopped = wait_until("the probe to fail", lambda: (r := probe()).returncode == 1 and r, 30)
        assert "loop last went round" in stopped.stderr
        os.killpg(worker.pid, signal.SIGCONT)
        wait_until("live again", lambda: probe().returncode == 0, 30)
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
        fleet.stop("liveness")


@pytest.mark.slow
def test_a_stray_cancellation_in_the_work_loop_does_not_stop_copying(
    fleet_settings: FerrySettings,
    fleet_kafka: Any,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's consumer can re-raise a fetch's CancelledError when it is closed (seen on a worker woken from
    SIGSTOP): that ended the work loop while the control loop went on holding leases, so the partitions stalled
    silently. Now the work loop goes on; and were it ever to end, the control loop leaves the fleet."""
    raised: list[float] = []
    converge = WorkLoop.converge

    async def converge_meets_a_stray_cancellation(loop: WorkLoop, desired: DesiredWork) -> None:
        if desired.units and not raised:
            raised.append(time.monotonic())
            raise asyncio.CancelledError  # not a cancellation of the loop's own task
        await converge(loop, desired)

    monkeypatch.setattr(WorkLoop, "converge", converge_meets_a_stray_cancellation)
    topic = f"{unique}-stray"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    asyncio.run(produce_numbered(source_bootstrap, topic, range(500), 2))
    agent = AgentThread(fleet_settings, "stray-a")
    agent.start()
    try:
        arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
            "ReplicatorArn"
        ]
        running = wait_until(
            "RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60
        )
        target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
        result = all_delivered(target_bootstrap, target, 500, 60)
        assert raised, "the stray cancellation was never raised"
        assert agent.is_alive(), "the work loop or the control loop ended"
        assert result.lost == 0
    finally:
        agent.stop()


@pytest.mark.slow
def test_a_worker_whose_work_loop_ended_leaves_the_fleet(
    fleet: Fleet,
    fleet_settings: FerrySettings,
    fleet_kafka: Any,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Were the work loop to end by a bug, its leases must not stay held by a worker that copies nothing."""
    ended: list[float] = []
    iteration = WorkLoop._iteration

    async def iteration_then_a_bug(loop: WorkLoop) -> None:
        await iteration(loop)
        if loop.worker_id.startswith("broken-") and loop.copiers:
            ended.append(time.monotonic())
            raise RuntimeError("a bug ended the work loop")

    monkeypatch.setattr(WorkLoop, "_iteration", iteration_then_a_bug)
    topic = f"{unique}-ended"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    asyncio.run(produce_numbered(source_bootstrap, topic, range(300), 2))
    broken = AgentThread(fleet_settings, "broken-a")
    broken.start()
    try:
        arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
            "ReplicatorArn"
        ]
        wait_until("the work loop to end", lambda: bool(ended), 60)
        wait_until("the broken worker to leave", lambda: not owners_like(fleet_db, arn, "broken-"), 30)
        fleet.start_worker("healthy-b")
        running = wait_until(
            "RUNNING on the healthy worker",
            lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d,
            60,
        )
        target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
        result = all_delivered(target_bootstrap, target, 300, 60)
        assert result.lost == 0
    finally:
        broken.stop()
