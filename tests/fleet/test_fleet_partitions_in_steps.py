"""A replicator with more new partitions than a worker starts in one pass (FERRY_FLEET_PARTITIONS_STARTED_PER_PASS)
starts them over several passes, and every record of every partition is copied once."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.records import delivered
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe, produce
from workers.fleet.copy_unit import FEWEST_STARTED_PER_PASS, next_start_batch

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


def test_a_start_that_failed_asks_for_fewer_partitions_next_and_success_asks_for_more_again() -> None:
    """A broker too busy to answer ListOffsets for 500 partitions within the request timeout failed every pass of
    one worker at 10,000 partitions for minutes (bench.partitions, 2026-12-02): fewer at once get through."""
    batches, batch = [], 500
    for _ in range(6):
        batch = next_start_batch(batch, 500, failed=True)
        batches.append(batch)
    assert batches == [250, 125, 62, 31, FEWEST_STARTED_PER_PASS, FEWEST_STARTED_PER_PASS]
    for _ in range(6):
        batch = next_start_batch(batch, 500, failed=False)
    assert batch == 500, "success grows the batch back to the configured size, and no further"
    assert next_start_batch(3, 3, failed=True) == 3, "a configured size below the floor is kept"


def test_after_a_failed_start_success_grows_half_way_to_the_size_that_failed() -> None:
    """500 failed, 250 worked, 500 failed again: a worker at 10,000 partitions alternated like this 16 times."""
    assert next_start_batch(250, 500, failed=False, refused_at=500) == 375
    assert next_start_batch(375, 500, failed=False, refused_at=500) == 437
    sizes, batch = [], 437
    for _ in range(7):
        batch = next_start_batch(batch, 500, failed=False, refused_at=500)
        sizes.append(batch)
    assert sizes == [468, 484, 492, 496, 498, 499, 500], "tried again only from the size just below it"
    assert next_start_batch(100, 500, failed=False, refused_at=500) == 200, "far below it, doubling as before"
    assert next_start_batch(375, 500, failed=True, refused_at=500) == 187


def test_a_start_that_works_at_the_size_that_failed_doubles_again() -> None:
    """A fresh 10,000-partition lab: starts failed at 124, 62, 31 and 25 while the progress topic was not ready,
    whatever their size; a cap kept at 25 then started each worker's 5,000 partitions 25 a pass (456 s)."""
    assert next_start_batch(FEWEST_STARTED_PER_PASS, 500, failed=False, refused_at=FEWEST_STARTED_PER_PASS) == 50
    assert next_start_batch(50, 500, failed=False, refused_at=FEWEST_STARTED_PER_PASS) == 100
    assert next_start_batch(300, 500, failed=False, refused_at=300) == 500
