"""A worker paused (SIGSTOP) past its leases loses its partitions to another worker; when it wakes up it stops
writing instead of copying alongside the new owner, and every record still arrives once in order."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.engine.conftest import read_topic
from tests.fleet.conftest import Fleet, unit_owners, wait_until
from tests.fleet.test_fleet_failover import checksum, worker_of
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe, produce

PARTITIONS = 8


@pytest.mark.slow
def test_a_paused_worker_is_fenced_when_it_wakes(
    fleet: Fleet, fleet_kafka: Any, fleet_db: Engine, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    fleet.start_worker("p1")
    fleet.start_worker("p2")
    topic = f"{unique}-p"
    asyncio.run(create_topic(source_bootstrap, topic, PARTITIONS))
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 90)

    def owners() -> Counter[str | None]:
        return Counter(worker_of(owner) for owner, _ in unit_owners(fleet_db, arn).values())

    wait_until("partitions on both workers", lambda: set(owners()) == {"p1", "p2"}, 60)
    asyncio.run(produce(source_bootstrap, topic, 2000, PARTITIONS, "before"))

    fleet.kill("p2", signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        wait_until("p1 to own every partition", lambda: owners() == Counter({"p1": PARTITIONS}), 40)
        print(f"paused worker's partitions taken over after {time.monotonic() - paused_at:.1f}s")
        asyncio.run(produce(source_bootstrap, topic, 2000, PARTITIONS, "during"))
    finally:
        fleet.kill("p2", signal.SIGCONT)

    wait_until("the woken worker to get a share again", lambda: set(owners()) == {"p1", "p2"}, 60)
    asyncio.run(produce(source_bootstrap, topic, 2000, PARTITIONS, "after"))
    log = (fleet.logs / "p2.log").read_text(errors="replace")
    # The woken worker finds its leases gone (lapsed on its own clock, or lost to the new owner's epoch); batches it
    # had queued before the pause are dropped, never sent.
    assert re.search(r"lease[^\n]*(lost|gone|lapsed)", log), "the woken worker should have found its leases gone"

    alias = describe(fleet_kafka, arn)["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    expected_per_partition = 6000 // PARTITIONS

    def arrived() -> dict[int, list[int]] | None:
        copied = asyncio.run(read_all_tagged(target_bootstrap, f"{alias}.{topic}"))
        return copied if all(len(set(copied.get(p, []))) == expected_per_partition for p in range(PARTITIONS)) else None

    copied = wait_until("every record on the target", arrived, 90, interval=2)
    for partition, values in copied.items():
        expected = {stage * 100_000 + i for stage in range(3) for i in range(2000) if i % PARTITIONS == partition}
        assert checksum(set(values)) == checksum(expected), f"partition {partition} lost or invented records"
        first_seen = list(dict.fromkeys(values))
        assert first_seen == sorted(first_seen), f"partition {partition} out of order"


async def read_all_tagged(bootstrap: str, topic: str) -> dict[int, list[int]]:
    """Records written by ``produce`` carry '<tag>-<i>' values; map them to a global order for the checks."""
    order = {"before": 0, "during": 1, "after": 2}
    stages = {
        p: [r.value.decode().split("-") for r in records] for p, records in (await read_topic(bootstrap, topic)).items()
    }
    return {p: [order[tag] * 100_000 + int(i) for tag, i in values] for p, values in stages.items()}
