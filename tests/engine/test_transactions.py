"""Transactional source data: only committed records are copied; control records are not."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaProducer, TopicPartition

from tests.engine.conftest import caught_up, create_topic, end_offsets, read_topic, running, spec_for, wait_for
from workers.engine.batches import AckedPosition, BatchMapping


async def test_only_committed_records_are_copied(source_bootstrap: str, target_bootstrap: str, unique: str) -> None:
    topic = f"{unique}-txn"
    await create_topic(source_bootstrap, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=source_bootstrap, transactional_id=f"{unique}-producer")
    await producer.start()
    expected = []
    try:
        for round_number in range(6):
            commit = round_number % 2 == 0
            async with producer.transaction() if commit else _AbortingTransaction(producer):
                for i in range(30):
                    value = f"r{round_number}-{i}".encode()
                    await producer.send(topic, value, partition=0)
                    if commit:
                        expected.append(value)
    finally:
        await producer.stop()
    source_end = (await end_offsets(source_bootstrap, topic))[0]
    assert source_end == 6 * 31, "6 transactions of 30 records plus their markers"

    spec = spec_for(unique, [topic])
    mappings = MappingRecorder()
    async with running(spec, source_bootstrap, target_bootstrap, offset_map_sink=mappings) as replicator:
        await wait_for(caught_up(replicator), 60, "lag to reach zero")
        stats = replicator.snapshot().partitions[TopicPartition(topic, 0)]
    assert stats.next_source_offset == source_end, "progress moved past the last transaction marker"
    assert stats.records_copied == len(expected)
    copied = await read_topic(target_bootstrap, f"src.{topic}", committed=False)
    assert [r.value for r in copied[0]] == expected
    assert (await end_offsets(target_bootstrap, f"src.{topic}", committed=False))[0] == len(expected), (
        "nothing but the committed records (no markers, no aborted data) reached the target"
    )

    # The offset map (issue 6's input) pairs each copied source offset with the target offset it got,
    # across the gaps that aborted records and markers leave in the source offsets.
    source_by_offset = {r.offset: r.value for r in (await read_topic(source_bootstrap, topic))[0]}
    target_by_offset = {r.offset: r.value for r in copied[0]}
    pairs = [
        (source_offset, m.target_base_offset + i)
        for m in mappings.batches
        for i, source_offset in enumerate(m.source_offsets)
    ]
    assert len(pairs) == len(expected)
    assert any(b - a > 1 for (a, _), (b, _) in itertools.pairwise(pairs)), "source gaps expected"
    assert all(source_by_offset[s] == target_by_offset[t] for s, t in pairs)


class MappingRecorder:
    def __init__(self) -> None:
        self.batches: list[BatchMapping] = []

    def record_batch(self, mapping: BatchMapping) -> None:
        self.batches.append(mapping)

    def restart(self, source: TopicPartition) -> None:
        self.batches = [m for m in self.batches if m.source != source]

    async def before_progress(self, positions: Callable[[], Mapping[TopicPartition, AckedPosition]]) -> None:
        pass


class _AbortingTransaction:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def __aenter__(self) -> None:
        await self.producer.begin_transaction()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.producer.abort_transaction()
