"""A copier whose write gate closes (its unit's lease is gone) sends nothing more to the target, not even the
batches already queued in the producer, and copies everything once the gate opens again."""

from __future__ import annotations

from aiokafka import TopicPartition

from tests.engine.conftest import Rec, create_topic, produce, read_topic, spec_for, topic_count, wait_for
from tests.engine.test_copier_ownership import copier, prepare_target
from workers.engine.metrics import ErrorKind


async def test_a_closed_write_gate_keeps_every_batch_off_the_target(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-gated"
    await create_topic(source_bootstrap, topic, 2)
    spec = spec_for(unique, [topic])
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    target_topic = spec.target_topic(topic)
    gate_open = True
    tps = [TopicPartition(topic, p) for p in range(2)]

    async def count_is(n: int) -> bool:
        return await topic_count(target_bootstrap, target_topic) == n

    async with copier(spec, source_bootstrap, target_bootstrap, write_gate=lambda partitions: gate_open) as instance:
        await instance.assign(tps)
        await produce(source_bootstrap, topic, [Rec(i % 2, None, f"a{i}".encode()) for i in range(1000)])
        await wait_for(lambda: count_is(1000), 30, "the first 1000 records copied")

        gate_open = False
        await produce(source_bootstrap, topic, [Rec(i % 2, None, f"b{i}".encode()) for i in range(1000)])

        async def refused() -> bool:
            stats = instance.snapshot()
            return sum(s.errors.get(ErrorKind.LEASE_LOST.value, 0) for s in stats.values()) >= 2

        await wait_for(refused, 30, "the copier to try writing and be refused by the gate")
        assert await topic_count(target_bootstrap, target_topic) == 1000, "a batch reached the target"

        gate_open = True
        await wait_for(lambda: count_is(2000), 60, "every record copied once the gate opens")
    data = await read_topic(target_bootstrap, target_topic)
    for partition, records in data.items():
        values = [r.value.decode() for r in records]
        expected = [f"a{i}" for i in range(1000) if i % 2 == partition] + [
            f"b{i}" for i in range(1000) if i % 2 == partition
        ]
        assert values == expected, f"partition {partition}: lost, duplicated or reordered records"
