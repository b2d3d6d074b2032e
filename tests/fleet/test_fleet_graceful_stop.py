"""A worker stopped with SIGTERM (a rolling restart, a scale-in) hands its partitions over without a duplicate: it
stops copying, writes its final progress while its leases still stand, releases them, and the next owner resumes
exactly where it stopped, while a producer keeps writing throughout."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.fleet.conftest import Fleet, unit_owners, wait_until
from tests.fleet.records import SteadyProducer, all_delivered, delivered
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe

PARTITIONS = 6


def owners_by_worker(db: Engine, arn: str) -> Counter[str]:
    return Counter(owner.split("-")[0] for owner, _ in unit_owners(db, arn).values() if owner is not None)


@pytest.mark.slow
def test_a_worker_stopped_with_sigterm_hands_over_without_duplicates(
    fleet: Fleet, fleet_kafka: Any, fleet_db: Engine, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    fleet.start_worker("gs1")
    fleet.start_worker("gs2")
    topic = f"{unique}-t"
    asyncio.run(create_topic(source_bootstrap, topic, PARTITIONS))
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    running = wait_until("RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
    wait_until("partitions on both workers", lambda: set(owners_by_worker(fleet_db, arn)) == {"gs1", "gs2"}, 60)

    producer = SteadyProducer(source_bootstrap, topic, PARTITIONS)
    producer.start()
    try:
        wait_until("copying", lambda: asyncio.run(delivered(target_bootstrap, target, 0)).copied > 600, 60)
        stopped_at = time.monotonic()
        fleet.stop("gs1")  # SIGTERM, waited for
        stop_s = time.monotonic() - stopped_at
        wait_until(
            "every partition owned by gs2",
            lambda: owners_by_worker(fleet_db, arn) == Counter({"gs2": PARTITIONS}),
            30,
        )
        moved_s = time.monotonic() - stopped_at
        before = asyncio.run(delivered(target_bootstrap, target, 0)).copied
        wait_until(
            "copying on gs2", lambda: asyncio.run(delivered(target_bootstrap, target, 0)).copied > before + 300, 60
        )
    finally:
        produced = producer.stop()
    result = all_delivered(target_bootstrap, target, produced, 90)
    print(
        f"SIGTERM hand-off: produced {produced}, lost {result.lost}, duplicated {result.duplicated}; the worker "
        f"stopped in {stop_s:.1f}s, its partitions owned elsewhere {moved_s:.1f}s after the SIGTERM"
    )
    assert result.lost == 0
    assert result.duplicated == 0, f"{result.duplicated} records copied twice across a graceful hand-off"
