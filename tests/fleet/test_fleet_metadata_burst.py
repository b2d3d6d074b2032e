"""Issue 17's first break on a small scale: a burst of replicators on one worker, each matching every topic of the
test's own prefix with a `.*`-style pattern (topic configurations copied), created and then deleted at once.
Their metadata units share the source's metadata, so the work loop is not saturated by per-replicator config
descriptions and every delete completes within seconds, not behind minutes of metadata passes."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.test_fleet_control_burst import create_topics
from tests.fleet.test_fleet_lifecycle import create_request, describe

BURST = 12
SOURCE_TOPICS = 30
DELETE_DEADLINE_S = 45


def test_a_burst_of_replicators_on_one_source_is_deleted_within_seconds(
    fleet: Fleet, fleet_kafka: Any, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    asyncio.run(create_topics(source_bootstrap, [f"{unique}-{i:02d}" for i in range(SOURCE_TOPICS)]))
    fleet.start_worker("metadata-burst")

    def create(i: int) -> str:
        request = create_request(
            f"{unique}-m{i:02d}",
            source_bootstrap,
            target_bootstrap,
            [f"{unique}-.*"],
            CopyTopicConfigurations=True,
            TopicNameConfiguration={"Type": "IDENTICAL"},
        )
        return str(fleet_kafka.create_replicator(**request)["ReplicatorArn"])

    created = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        arns = list(pool.map(create, range(BURST)))
    wait_until(
        "every replicator of the burst RUNNING",
        lambda: all(describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING" for arn in arns),
        180,
        interval=2,
    )
    running_s = time.monotonic() - created

    deleted_at: dict[str, float] = {}

    def delete(arn: str) -> None:
        fleet_kafka.delete_replicator(ReplicatorArn=arn)
        deleted_at[arn] = time.monotonic()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(delete, arns))
    gone_at: dict[str, float] = {}

    def all_gone() -> bool:
        for arn in arns:
            if arn not in gone_at:
                try:
                    describe(fleet_kafka, arn)
                except fleet_kafka.exceptions.NotFoundException:
                    gone_at[arn] = time.monotonic()
        return len(gone_at) == len(arns)

    wait_until("every deleted replicator gone", all_gone, DELETE_DEADLINE_S + 30, interval=0.5)
    slowest = max(gone_at[arn] - deleted_at[arn] for arn in arns)
    print(f"{BURST} replicators on {SOURCE_TOPICS} topics: RUNNING after {running_s:.0f}s", end=", ")
    print(f"slowest delete {slowest:.1f}s")
    assert slowest <= DELETE_DEADLINE_S, f"a deleted replicator took {slowest:.1f}s to go"
