"""A replicator in DELETING never writes to a cluster again: its worker learns of the delete only at its next
control tick, but the metadata unit asks the database before it acts on what it read, so a source topic created
after the delete never appears on the target, however late the worker notices."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.test_fleet_control_burst import create_topics, existing_topics
from tests.fleet.test_fleet_lifecycle import create_request, describe

# The worker notices desired-state changes only every 5 s, while its metadata unit reads the source every 2 s:
# without the database check, the unit acts on several passes' worth of what it saw after the delete.
SLOW_TICK = {
    "FERRY_FLEET_TICK_SECONDS": "5",
    "FERRY_FLEET_LEASE_SECONDS": "30",
    "FERRY_WORKER_DEAD_AFTER_SECONDS": "20",
}


def test_topics_created_after_a_delete_never_reach_the_target(
    fleet: Fleet, fleet_kafka: Any, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    first = [f"{unique}-{i:02d}" for i in range(3)]
    asyncio.run(create_topics(source_bootstrap, first))
    fleet.start_worker("slow-tick", SLOW_TICK)
    request = create_request(unique, source_bootstrap, target_bootstrap, [f"{unique}-.*"])
    request["ReplicationInfoList"][0]["TopicReplication"]["TopicNameConfiguration"] = {"Type": "IDENTICAL"}
    arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
    wait_until(
        "the replicator RUNNING with its target topics",
        lambda: (
            describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING"
            and len(asyncio.run(existing_topics(target_bootstrap, first))) == len(first)
        ),
        90,
    )

    fleet_kafka.delete_replicator(ReplicatorArn=arn)
    deleted_at = time.monotonic()
    late = [f"{unique}-late-{i:02d}" for i in range(5)]
    asyncio.run(create_topics(source_bootstrap, late))

    def gone() -> bool:
        try:
            describe(fleet_kafka, arn)
        except fleet_kafka.exceptions.NotFoundException:
            return True
        return False

    wait_until("the deleted replicator gone", gone, 60, interval=0.5)
    gone_s = time.monotonic() - deleted_at
    written = asyncio.run(existing_topics(target_bootstrap, late))
    print(f"deleted replicator gone after {gone_s:.1f}s with a 5 s control tick; late topics on the target: {written}")
    assert not written, f"the deleted replicator created {sorted(written)} on the target after its delete"
    # What it created while it lived stays: a delete stops replication, it never removes data.
    assert asyncio.run(existing_topics(target_bootstrap, first)) == set(first)
