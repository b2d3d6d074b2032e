"""A replicator with more new partitions than a worker starts in one pass (FERRY_FLEET_PARTITIONS_STARTED_PER_PASS)
starts them over several passes, and every record of every partition is copied once."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.records import delivered
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe, produce

PARTITIONS = 11
STARTED_PER_PASS = 3
RECORDS = 20 * PARTITIONS


def test_partitions_beyond_one_pass_start_on_the_next_passes_and_all_are_copied(
    fleet: Fleet, fleet_kafka: Any, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    fleet.start_worker("steps", env={"FERRY_FLEET_PARTITIONS_STARTED_PER_PASS": str(STARTED_PER_PASS)})
    topic = f"{unique}-wide"
    asyncio.run(create_topic(source_bootstrap, topic, PARTITIONS))
    asyncio.run(produce(source_bootstrap, topic, RECORDS, PARTITIONS, "wide"))
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)
    alias = describe(fleet_kafka, arn)["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    copied = wait_until(
        "every partition copied",
        lambda: (d := asyncio.run(delivered(target_bootstrap, f"{alias}.{topic}", RECORDS))).copied >= RECORDS and d,
        90,
    )
    assert copied.distinct == RECORDS, copied

    log = (fleet.logs / "steps.log").read_text(errors="replace")
    assert f"starting {STARTED_PER_PASS} of {PARTITIONS} new partitions now" in log, fleet.log_tail()
    assert f"starting {STARTED_PER_PASS} of {PARTITIONS - STARTED_PER_PASS} new partitions now" in log, fleet.log_tail()
