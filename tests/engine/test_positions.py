"""startingPosition for partitions seen the first time; afterwards progress wins. Source retention passing
the engine's position is reported and replication continues from the earliest available offset."""

from __future__ import annotations

import time

from aiokafka import TopicPartition
from aiokafka.admin import NewPartitions, RecordsToDelete

from tests.engine.conftest import (
    Rec,
    admin_client,
    create_topic,
    partitions_of,
    produce,
    read_topic,
    running,
    spec_for,
    topic_count,
    wait_for,
)
from workers.engine.metrics import Health


def values(data: dict[int, list[object]]) -> list[bytes]:
    return [r.value for records in data.values() for r in records]  # type: ignore[attr-defined]


async def test_latest_and_earliest_then_resume_from_progress(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-events"
    await create_topic(source_bootstrap, topic, 2)
    await produce(source_bootstrap, topic, [Rec(i % 2, None, f"old-{i}".encode()) for i in range(100)])
    earliest = spec_for(unique, [topic], starting="EARLIEST", source_alias="early", replicator_id=f"{unique}-e")
    latest = spec_for(unique, [topic], starting="LATEST", source_alias="late", replicator_id=f"{unique}-l")
    async with (
        running(earliest, source_bootstrap, target_bootstrap),
        running(latest, source_bootstrap, target_bootstrap),
    ):
        await produce(source_bootstrap, topic, [Rec(i % 2, None, f"new-{i}".encode()) for i in range(50)])
        await wait_for(lambda: _count_is(target_bootstrap, f"early.{topic}", 150), 60, "150 records (EARLIEST)")
        await wait_for(lambda: _count_is(target_bootstrap, f"late.{topic}", 50), 60, "50 records (LATEST)")
    assert sorted(values(await read_topic(target_bootstrap, f"late.{topic}"))) == sorted(
        f"new-{i}".encode() for i in range(50)
    )

    # Produced while the LATEST flow is stopped: a restart resumes from progress, not from the end.
    await produce(source_bootstrap, topic, [Rec(i % 2, None, f"gap-{i}".encode()) for i in range(20)])
    async with running(latest, source_bootstrap, target_bootstrap):
        await wait_for(lambda: _count_is(target_bootstrap, f"late.{topic}", 70), 60, "70 records after restart")
    copied = values(await read_topic(target_bootstrap, f"late.{topic}"))
    assert sorted(copied) == sorted([f"new-{i}".encode() for i in range(50)] + [f"gap-{i}".encode() for i in range(20)])


async def test_source_truncation_is_reported_and_replication_continues(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-short"
    await create_topic(source_bootstrap, topic, 1)
    spec = spec_for(unique, [topic])
    await produce(source_bootstrap, topic, [Rec(0, None, f"a-{i}".encode()) for i in range(100)])
    async with running(spec, source_bootstrap, target_bootstrap):
        await wait_for(lambda: _count_is(target_bootstrap, f"src.{topic}", 100), 60, "first 100 records")

    # While the engine is away, retention removes offsets it has not copied yet (100..149).
    await produce(source_bootstrap, topic, [Rec(0, None, f"b-{i}".encode()) for i in range(100)])
    async with admin_client(source_bootstrap) as admin:
        low = await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(150)})
    assert low[TopicPartition(topic, 0)] == 150

    async with running(spec, source_bootstrap, target_bootstrap) as replicator:
        await wait_for(
            lambda: _count_is(target_bootstrap, f"src.{topic}", 150),
            60,
            "the 50 surviving records copied after the truncation",
        )
        await produce(source_bootstrap, topic, [Rec(0, None, f"c-{i}".encode()) for i in range(10)])
        await wait_for(lambda: _count_is(target_bootstrap, f"src.{topic}", 160), 60, "replication continues")
        stats = replicator.snapshot().partitions[TopicPartition(topic, 0)]
    assert stats.truncated_offsets == 50
    assert stats.errors.get("SOURCE_TRUNCATED") == 1
    assert stats.health is Health.SOURCE_TRUNCATED
    assert "100..149" in stats.health_detail
    copied = values(await read_topic(target_bootstrap, f"src.{topic}"))
    assert copied == [f"a-{i}".encode() for i in range(100)] + [f"b-{i}".encode() for i in range(50, 100)] + [
        f"c-{i}".encode() for i in range(10)
    ]


async def _count_is(bootstrap: str, topic: str, count: int) -> bool:
    return await topic_count(bootstrap, topic) == count


async def test_topics_and_partitions_that_appear_later_are_copied_from_their_beginning_whatever_latest_says(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """startingPosition LATEST is for what existed when the replicator started. A topic created later, and a
    partition added later, are copied whole, even records backfilled with timestamps from before the start."""
    existing = f"{unique}-existing"
    await create_topic(source_bootstrap, existing, 1)
    await produce(source_bootstrap, existing, [Rec(0, None, f"before-{i}".encode()) for i in range(30)])
    spec = spec_for(unique, [f"{unique}-.*"], starting="LATEST")
    # Older than the replicator, within the default retention (7 days) of both clusters.
    days_ago = int(time.time() * 1000) - 3 * 24 * 3600 * 1000
    async with running(spec, source_bootstrap, target_bootstrap, topic_refresh_s=1.0):
        await wait_for(lambda: _partitions_copied(target_bootstrap, f"src.{existing}", 1), 60, "the existing topic")
        backfilled = f"{unique}-backfilled"
        await create_topic(source_bootstrap, backfilled, 2)
        await produce(
            source_bootstrap,
            backfilled,
            [Rec(i % 2, None, f"old-{i}".encode(), timestamp=days_ago + i) for i in range(200)],
        )
        async with admin_client(source_bootstrap) as admin:
            await admin.create_partitions({existing: NewPartitions(total_count=2)})
        await produce(
            source_bootstrap, existing, [Rec(1, None, f"added-{i}".encode(), timestamp=days_ago) for i in range(40)]
        )
        await wait_for(lambda: _count_is(target_bootstrap, f"src.{backfilled}", 200), 60, "200 backfilled records")
        await wait_for(lambda: _count_is(target_bootstrap, f"src.{existing}", 40), 60, "the added partition's 40")
    assert sorted(values(await read_topic(target_bootstrap, f"src.{backfilled}"))) == sorted(
        f"old-{i}".encode() for i in range(200)
    )
    copied = values(await read_topic(target_bootstrap, f"src.{existing}"))
    # LATEST held for the partition that existed: what was there before the start is not copied.
    assert sorted(copied) == sorted(f"added-{i}".encode() for i in range(40))


async def _partitions_copied(bootstrap: str, topic: str, partitions: int) -> bool:
    return len(await partitions_of(bootstrap, topic)) == partitions
