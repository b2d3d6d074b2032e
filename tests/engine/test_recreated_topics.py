"""A topic deleted and created again under the same name is a different topic: progress and the offset map
belong to the topic's id, so the new topic is copied from its beginning, whatever the length of its log, and the
event is reported. The same for a target topic deleted by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import TopicAlreadyExistsError

from tests.engine.conftest import (
    Rec,
    admin_client,
    create_topic,
    produce,
    read_topic,
    running,
    spec_for,
    topic_count,
    wait_for,
)
from workers.engine.batches import AckedPosition, BatchMapping
from workers.engine.metrics import Health


async def recreate_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Delete the topic and create it again under its name (creation is refused while deletion completes)."""
    async with admin_client(bootstrap) as admin:
        await admin.delete_topics([topic])
        deadline = time.monotonic() + 60
        while True:
            try:
                await create_topic(bootstrap, topic, partitions)
                return
            except (TopicAlreadyExistsError, AssertionError):
                assert time.monotonic() < deadline, f"{topic} could not be created again"
                await asyncio.sleep(0.2)


def values(records: Mapping[int, list[object]]) -> list[bytes]:
    return [r.value for batch in records.values() for r in batch]  # type: ignore[attr-defined]


def count_is(bootstrap: str, topic: str, expected: int) -> Callable[[], object]:
    async def check() -> bool:
        return await topic_count(bootstrap, topic) >= expected

    return check


async def test_a_source_topic_recreated_while_copying_is_copied_from_its_beginning(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-orders"
    target = f"src.{topic}"
    await create_topic(source_bootstrap, topic)
    await produce(source_bootstrap, topic, [Rec(0, None, f"old-{i}".encode()) for i in range(1000)])
    spec = spec_for(unique, [topic])
    # Topic sync passes far apart: the copier, still assigned, meets the new topic under the old name itself.
    async with running(spec, source_bootstrap, target_bootstrap, topic_refresh_s=600.0) as replicator:
        await wait_for(count_is(target_bootstrap, target, 1000), 60, "the first 1,000 records")
        await recreate_topic(source_bootstrap, topic)
        await produce(source_bootstrap, topic, [Rec(0, None, f"new-{i}".encode()) for i in range(300)])
        await produce(source_bootstrap, topic, [Rec(0, None, f"more-{i}".encode()) for i in range(200)])
        await wait_for(count_is(target_bootstrap, target, 1500), 60, "the recreated topic's 500 records")
        stats = replicator.snapshot().partitions[TopicPartition(topic, 0)]
    copied = values(await read_topic(target_bootstrap, target))
    expected_new = [f"new-{i}".encode() for i in range(300)] + [f"more-{i}".encode() for i in range(200)]
    assert copied[:1000] == [f"old-{i}".encode() for i in range(1000)]
    assert copied[1000:] == expected_new, "the new topic's records, each once, in order"
    assert stats.errors.get("SOURCE_RECREATED") == 1
    assert stats.health is Health.SOURCE_RECREATED
    assert "deleted and created again" in stats.health_detail


@pytest.mark.parametrize("new_records", [300, 1500], ids=["shorter-log", "longer-log"])
async def test_a_source_topic_recreated_while_nothing_copies_is_copied_whole(
    source_bootstrap: str, target_bootstrap: str, unique: str, new_records: int
) -> None:
    topic = f"{unique}-replaced"
    target = f"src.{topic}"
    await create_topic(source_bootstrap, topic)
    await produce(source_bootstrap, topic, [Rec(0, None, f"old-{i}".encode()) for i in range(1000)])
    spec = spec_for(unique, [topic])
    async with running(spec, source_bootstrap, target_bootstrap):
        await wait_for(count_is(target_bootstrap, target, 1000), 60, "the first 1,000 records")

    # While nothing copies, the topic is replaced by one whose log ends before (or after) the old position.
    await recreate_topic(source_bootstrap, topic)
    await produce(source_bootstrap, topic, [Rec(0, None, f"new-{i}".encode()) for i in range(new_records)])
    async with running(spec, source_bootstrap, target_bootstrap) as replicator:
        await wait_for(count_is(target_bootstrap, target, 1000 + new_records), 60, "every record of the new topic")
        stats = replicator.snapshot().partitions[TopicPartition(topic, 0)]
    copied = values(await read_topic(target_bootstrap, target))
    assert copied[1000:] == [f"new-{i}".encode() for i in range(new_records)]
    assert stats.errors.get("SOURCE_RECREATED") == 1
    assert stats.errors.get("SOURCE_TRUNCATED") is None


class MappingRecorder:
    """An offset map sink that keeps what a real one stores: restart forgets the partition's mappings."""

    def __init__(self) -> None:
        self.mappings: list[BatchMapping] = []
        self.restarts: list[TopicPartition] = []

    def record_batch(self, mapping: BatchMapping) -> None:
        self.mappings.append(mapping)

    def restart(self, source: TopicPartition) -> None:
        self.restarts.append(source)
        self.mappings = [m for m in self.mappings if m.source != source]

    async def before_progress(self, positions: Callable[[], Mapping[TopicPartition, AckedPosition]]) -> None:
        pass


async def test_a_target_topic_deleted_by_hand_gets_the_source_again_from_its_beginning(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-mirror"
    target = f"src.{topic}"
    await create_topic(source_bootstrap, topic)
    await produce(source_bootstrap, topic, [Rec(0, None, f"a-{i}".encode()) for i in range(600)])
    sink = MappingRecorder()
    spec = spec_for(unique, [topic])
    async with running(spec, source_bootstrap, target_bootstrap, topic_refresh_s=1.0, offset_map_sink=sink) as rep:
        await wait_for(count_is(target_bootstrap, target, 600), 60, "600 records copied")
        async with admin_client(target_bootstrap) as admin:
            await admin.delete_topics([target])

        async def restarted() -> bool:
            stats = rep.snapshot().partitions[TopicPartition(topic, 0)]
            return stats.errors.get("TARGET_RECREATED", 0) >= 1

        # Topic sync creates the target topic again; the copier sees its new id and starts over.
        await wait_for(restarted, 60, "the copy restarting in the recreated target topic")
        await produce(source_bootstrap, topic, [Rec(0, None, f"b-{i}".encode()) for i in range(100)])
        await wait_for(count_is(target_bootstrap, target, 700), 60, "the whole source in the new target topic")
        stats = rep.snapshot().partitions[TopicPartition(topic, 0)]
    copied = values(await read_topic(target_bootstrap, target))
    expected = [f"a-{i}".encode() for i in range(600)] + [f"b-{i}".encode() for i in range(100)]
    # Batches in flight when the topic went may have landed in the new topic before the restart: at least once.
    assert set(copied) == set(expected)
    assert copied[-700:] == expected
    assert stats.health is Health.TARGET_RECREATED
    assert sink.restarts == [TopicPartition(topic, 0)]
    # The map after the restart points into the new log: source offset s is at the target offset it names.
    by_target = {i: value for i, value in enumerate(copied)}
    mapped = {source: m.target_base_offset + i for m in sink.mappings for i, source in enumerate(m.source_offsets)}
    assert set(mapped) == set(range(700))
    assert all(by_target[mapped[source]] == expected[source] for source in range(700))
