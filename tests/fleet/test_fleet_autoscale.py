"""The fleet scales itself with the load, on real brokers: ``ferry fleet autoscale`` follows the desired-workers
signal, starting a second worker when the source rate rises past what one worker is counted on to carry, and
draining and stopping it when the rate falls, with every record copied once; meanwhile a partition carrying most
of the traffic gets a worker nearly to itself.

The per-worker capacity is set low (FERRY_FLEET_WORKER_CAPACITY_BYTES_PER_SECOND=200 kB/s) so that a rate this
shared test machine produces easily stands for "more than one worker can carry"; the signal's CPU and lag terms
are covered by tests/models/test_fleet_capacity.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import Engine

from models.settings import FerrySettings
from tests.exposition import metric_value
from tests.fleet.conftest import ROOT, Fleet, unit_owners, wait_until
from tests.fleet.records import all_delivered
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe

PARTITIONS = 8
RECORD_BYTES = 512
LOW_RATE = 20_000  # bytes per second: one worker (140 kB/s usable at 70% of 200 kB/s)
HIGH_RATE = 400_000  # three workers' worth, capped at --max 2
CAPACITY = 200_000


@pytest.fixture(scope="module")
def fleet_settings(fleet_settings: FerrySettings) -> FerrySettings:
    """The module's fleet (API, workers, autoscaler) counts on small workers: they must all agree on it."""
    return fleet_settings.model_copy(
        update={"fleet_worker_capacity_bytes_per_second": CAPACITY, "fleet_target_utilisation": 0.7}
    )


class RateProducer:
    """Numbered records of RECORD_BYTES at a rate that can be changed while it runs; ``hot_share`` of them go to
    partition 0, the rest round the others."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.rate = LOW_RATE
        self.hot_share = 0.0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        padding = b"x" * (RECORD_BYTES - 12)
        try:
            started, owed = time.monotonic(), 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                owed += (now - started) * self.rate / RECORD_BYTES
                started = now
                count = int(owed)
                owed -= count
                futures = [
                    await producer.send(self.topic, value=f"{n:012d}".encode() + padding, partition=self._partition(n))
                    for n in range(self.sent, self.sent + count)
                ]
                await asyncio.gather(*futures)
                self.sent += count
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    def _partition(self, n: int) -> int:
        if (n % 100) < self.hot_share * 100:
            return 0
        return 1 + n % (PARTITIONS - 1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.sent


class Supervisor:
    def __init__(self, fleet: Fleet, log: Path) -> None:
        self.log = log
        env = fleet.env
        argv = [
            sys.executable, "-m", "cli", "fleet", "autoscale", "--min", "1", "--max", "2",
            "--interval", "1", "--cooldown", "10", "--scale-in-after", "8", "--drain-timeout", "60",
        ]  # fmt: skip
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def fleet_view(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/replication/v1/fleet")
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.slow
def test_the_fleet_scales_out_with_the_load_and_back_in_without_losing_or_duplicating(
    fleet: Fleet,
    fleet_kafka: Any,
    fleet_http: httpx.Client,
    fleet_api: str,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    unsigned = httpx.get(f"{fleet_api}/replication/v1/fleet", timeout=30)
    assert unsigned.status_code == 401, unsigned.text
    assert unsigned.headers["x-amzn-ErrorType"].startswith("UnauthorizedException")
    supervisor = Supervisor(fleet, fleet.logs / "autoscale.log")
    producer: RateProducer | None = None
    try:
        wait_until("one worker started by the autoscaler", lambda: len(fleet_view(fleet_http)["liveWorkers"]) == 1, 90)
        topic = f"{unique}-t"
        asyncio.run(create_topic(source_bootstrap, topic, PARTITIONS))
        arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
            "ReplicatorArn"
        ]
        running = wait_until(
            "RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 90
        )
        target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"

        producer = RateProducer(source_bootstrap, topic)
        producer.start()
        low = wait_until(
            "the low rate measured", lambda: (v := fleet_view(fleet_http))["demand"]["bytesPerSecond"] > 5_000 and v, 60
        )
        assert low["demand"]["desiredWorkers"] == 1, low["demand"]
        assert len(low["liveWorkers"]) == 1

        # Most of the high rate on one partition: the fleet must give it a worker nearly to itself.
        producer.hot_share = 0.9
        producer.rate = HIGH_RATE
        raised_at = time.monotonic()
        wait_until("a second worker asked for", lambda: fleet_view(fleet_http)["demand"]["desiredWorkers"] >= 2, 60)
        both = wait_until(
            "two workers sharing the partitions",
            lambda: (
                (v := fleet_view(fleet_http))
                and len(v["liveWorkers"]) == 2
                and all(w["units"] > 0 for w in v["liveWorkers"])
                and v
            ),
            90,
        )
        scaled_out_s = time.monotonic() - raised_at
        assert "starting worker 2" in supervisor.output()
        status = subprocess.run(
            [sys.executable, "-m", "cli", "fleet", "status", "--json"],
            cwd=ROOT, env=fleet.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        shown = json.loads(status.stdout)
        assert len(shown["liveWorkers"]) == 2 and shown["desiredWorkers"] >= 2, shown
        metrics = fleet_http.get("/metrics").text
        assert metric_value(metrics, "ferry_fleet_desired_workers") is not None
        assert metric_value(metrics, "ferry_fleet_live_workers") == 2
        hot_alone = wait_until(
            "the hot partition's worker holding at most one other partition",
            lambda: (
                (owners := unit_owners(fleet_db, arn))
                and (hot := owners[(topic, 0)][0]) is not None
                and sum(1 for owner, _ in owners.values() if owner == hot) <= 2
                and Counter(owner for owner, _ in owners.values())
            ),
            90,
        )
        caught_up = wait_until(
            "lag under a second of the high rate on two workers",
            lambda: (
                (v := fleet_view(fleet_http))["demand"]["lagBytes"] < HIGH_RATE
                and v["demand"]["bytesPerSecond"] > HIGH_RATE / 2
                and v
            ),
            90,
        )

        producer.rate = LOW_RATE
        producer.hot_share = 0.0
        lowered_at = time.monotonic()
        wait_until("the extra worker drained and stopped", lambda: "worker 2 stopped" in supervisor.output(), 150)
        scaled_in_s = time.monotonic() - lowered_at
        after = wait_until(
            "one worker holding every unit",
            lambda: (
                (v := fleet_view(fleet_http))
                and len(v["liveWorkers"]) == 1
                and v["liveWorkers"][0]["units"] == PARTITIONS + 1
                and v
            ),
            60,
        )
        assert "drained: sending SIGTERM" in supervisor.output(), supervisor.output()
        produced = producer.stop()
        producer = None
        result = all_delivered(target_bootstrap, target, produced, 120)
        print(
            f"autoscale: out in {scaled_out_s:.1f}s ({both['demand']['reason']}), caught up at "
            f"{caught_up['demand']['bytesPerSecond'] / 1e3:.0f} kB/s with {caught_up['demand']['lagBytes']} B lag, "
            f"in in {scaled_in_s:.1f}s; produced {produced}, lost {result.lost}, duplicated {result.duplicated}; "
            f"after: {after['liveWorkers'][0]['units']} units on one worker; partitions per worker with the hot "
            f"one: {sorted(hot_alone.values())}"
        )
        assert result.lost == 0
        assert result.duplicated == 0, f"{result.duplicated} records copied twice across scale-out and scale-in"
    finally:
        if producer is not None:
            producer.stop()
        supervisor.stop()
        print(supervisor.output()[-4000:])
    assert supervisor.process.returncode == 0
    assert fleet_view(fleet_http)["liveWorkers"] == []
