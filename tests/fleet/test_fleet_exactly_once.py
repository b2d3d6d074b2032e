"""Exactly-once through the fleet: a replicator created with the reserved tag ferry:delivery=exactly-once copies
in transactions, and a worker that takes a partition over fences the previous owner's transactional producer
before copying. Workers are SIGKILLed in the middle of transactions while a producer writes; a read_committed
consumer on the target sees every record once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.fleet.conftest import Fleet, unit_owners, wait_until
from tests.fleet.records import SteadyProducer, all_delivered, delivered
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe


@pytest.fixture(scope="module", autouse=True)
def _beat_runs(fleet: Fleet) -> None:
    """The module's fleet fixture starts beat; workers are started by the test."""


@pytest.mark.slow
def test_exactly_once_survives_three_workers_killed_mid_transaction(
    fleet: Fleet, fleet_kafka: Any, fleet_db: Engine, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    topic = f"{unique}-eos"
    partitions = 3
    asyncio.run(create_topic(source_bootstrap, topic, partitions))
    request = create_request(unique, source_bootstrap, target_bootstrap, [topic])
    request["Tags"] = {"ferry:delivery": "exactly-once", "team": "payments"}
    arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
    fleet.start_worker("eos-1")
    running = wait_until("RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
    producer = SteadyProducer(source_bootstrap, topic, partitions)
    producer.start()
    try:
        for kill in range(1, 4):
            seen = asyncio.run(delivered(target_bootstrap, target, 0, committed_only=True)).copied
            wait_until(
                f"copying before kill {kill}",
                lambda seen=seen: (
                    asyncio.run(delivered(target_bootstrap, target, 0, committed_only=True)).copied > seen + 300
                ),
                60,
            )
            owners = {owner for owner, _ in unit_owners(fleet_db, arn).values() if owner}
            assert owners and all(owner.startswith(f"eos-{kill}") for owner in owners), owners
            fleet.kill(f"eos-{kill}")  # SIGKILL: whatever transaction was open stays open
            fleet.start_worker(f"eos-{kill + 1}")
        wait_until(
            "the last worker copying",
            lambda: all((owner or "").startswith("eos-4") for owner, _ in unit_owners(fleet_db, arn).values()),
            60,
        )
    finally:
        produced = producer.stop()
    started = time.monotonic()
    result = all_delivered(target_bootstrap, target, produced, 90, committed_only=True)
    print(
        f"exactly-once, 3 workers SIGKILLed mid-transaction: produced {result.produced}, lost {result.lost}, "
        f"duplicated {result.duplicated} (read_committed), caught up {time.monotonic() - started:.1f}s after "
        f"the producer stopped; {asyncio.run(delivered(target_bootstrap, target, produced)).copied - result.copied} "
        "records of aborted transactions in the log"
    )
    assert result.lost == 0
    assert result.duplicated == 0, "a read_committed reader saw a record twice"
    # The kills did land inside transactions: their records are in the log, aborted.
    everything = asyncio.run(delivered(target_bootstrap, target, produced))
    assert everything.copied > result.copied, "no transaction was left open by a kill"
    fleet.stop("eos-4")
