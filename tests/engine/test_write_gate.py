"""A copier whose write gate closes (its unit's lease is gone) sends nothing more to the target, not even the
batches already queued in the producer, and copies everything once the gate opens again."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from aiokafka import TopicPartition

from tests.engine.conftest import Rec, create_topic, produce, read_topic, spec_for, topic_count, wait_for
from tests.engine.test_copier_ownership import copier, prepare_target
from workers.engine import copier as copier_module
from workers.engine.connection import ClusterConnection
from workers.engine.copier import CopierOptions, PartitionCopier
from workers.engine.metrics import ErrorKind
from workers.engine.progress import ProgressStore


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


async def test_the_gate_judges_each_batch_by_its_own_partition(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """One partition's lease is gone, the other's holds: only the lost partition's batches are refused, even when
    they travel in the same produce request as the other's."""
    topic = f"{unique}-half"
    await create_topic(source_bootstrap, topic, 2)
    spec = spec_for(unique, [topic])
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    held, lost = TopicPartition(topic, 0), TopicPartition(topic, 1)
    target = spec.target_topic(topic)
    asked: list[frozenset[TopicPartition]] = []

    def gate(partitions: frozenset[TopicPartition]) -> bool:
        asked.append(partitions)
        return lost not in partitions

    async with copier(spec, source_bootstrap, target_bootstrap, write_gate=gate) as instance:
        await instance.assign([held, lost])
        await produce(source_bootstrap, topic, [Rec(i % 2, None, f"r{i}".encode()) for i in range(2000)])

        async def held_copied() -> bool:
            data = await read_topic(target_bootstrap, target)
            return len(data[0]) == 1000

        await wait_for(held_copied, 60, "every record of the partition whose lease holds")

        async def lost_refused() -> bool:
            return instance.snapshot()[lost].errors.get(ErrorKind.LEASE_LOST.value, 0) >= 1

        await wait_for(lost_refused, 30, "the lost partition's batches refused")
        data = await read_topic(target_bootstrap, target)
    assert data[1] == [], "a batch of the partition whose lease is gone reached the target"
    assert frozenset({held}) in asked and frozenset({lost}) in asked, "each batch judged alone"
    assert frozenset() not in asked


async def test_a_revoked_partition_whose_lease_is_gone_writes_no_final_progress(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """Revoking the last partition leaves the copier with no assignment: its final progress must still be judged
    by that partition's lease, never waved through as "nothing held"."""
    topic = f"{unique}-last"
    await create_topic(source_bootstrap, topic, 1)
    spec = spec_for(unique, [topic])
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    tp = TopicPartition(topic, 0)
    lease = {"held": True}

    def gate(partitions: frozenset[TopicPartition]) -> bool:
        return lease["held"] or tp not in partitions

    async def lease_check(partitions: frozenset[TopicPartition]) -> bool:
        return gate(partitions)

    instance = PartitionCopier(
        spec,
        ClusterConnection(source_bootstrap),
        ClusterConnection(target_bootstrap),
        write_gate=gate,
        lease_check=lease_check,
        # No periodic progress: only the assignment's and the revocation's.
        options=CopierOptions(retry_backoff_s=0.2, progress_interval_s=3600),
    )
    await instance.start()
    try:
        await instance.assign([tp])
        await produce(source_bootstrap, topic, [Rec(0, None, f"r{i}".encode()) for i in range(100)])
        await wait_for(lambda: _acked(instance, tp, 100), 30, "100 records acknowledged")
        lease["held"] = False  # another worker owns the partition now
        await instance.revoke([tp])
        assert instance.failure is None
    finally:
        await instance.stop()
    saved = await ProgressStore(ClusterConnection(target_bootstrap), spec.replicator_id).load([tp])
    assert saved[tp].next_source_offset == 0, "the final progress of a partition whose lease is gone was written"


async def _acked(instance: PartitionCopier, tp: TopicPartition, offset: int) -> bool:
    return instance.positions()[tp].next_source_offset >= offset


async def test_progress_refused_once_by_the_gate_is_written_again_later(
    source_bootstrap: str, target_bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate refuses one progress batch after the idempotent producer numbered it (a lease untrusted for a
    moment), leaving a gap in that progress partition's sequence: every later progress write fails with
    OutOfOrderSequenceNumber until the copier takes a new producer. Without that, progress stopped for good (at
    10,000 partitions on 2026-12-02: 2,004 partitions' progress, and a run that never caught up)."""
    topic = f"{unique}-progress"
    await create_topic(source_bootstrap, topic, 1)
    spec = spec_for(unique, [topic])
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    tp = TopicPartition(topic, 0)
    progress_batches = {"seen": 0}
    allows = PartitionCopier._allows

    def refusing_the_second_progress_batch(self: PartitionCopier, target: TopicPartition) -> bool:
        # The first one makes the broker know the producer's sequence; the second leaves the gap.
        if target.topic == self._store.topic:
            progress_batches["seen"] += 1
            if progress_batches["seen"] == 2:
                return False
        return allows(self, target)

    monkeypatch.setattr(PartitionCopier, "_allows", refusing_the_second_progress_batch)
    progress = ProgressStore(ClusterConnection(target_bootstrap), spec.replicator_id)

    async def saved(offset: int) -> bool:
        return (await progress.load([tp]))[tp].next_source_offset == offset

    async with copier(spec, source_bootstrap, target_bootstrap, write_gate=lambda partitions: True) as instance:
        await instance.assign([tp])
        for round_ in range(1, 5):
            await produce(source_bootstrap, topic, [Rec(0, None, f"{round_}-{i}".encode()) for i in range(50)])
            await wait_for(functools.partial(saved, round_ * 50), 30, f"the progress of {round_ * 50} records saved")
    assert progress_batches["seen"] >= 3, "the gate never saw the progress writes after the refused one"
    values = [r.value.decode() for r in (await read_topic(target_bootstrap, spec.target_topic(topic)))[0]]
    expected = [f"{round_}-{i}" for round_ in range(1, 5) for i in range(50)]
    assert list(dict.fromkeys(values)) == expected, "records lost or reordered"


class _StoreThatStopsAnswering:
    """An offset map whose store (PostgreSQL in the fleet) stops answering when ``stalled`` is set, until
    ``released`` is."""

    def __init__(self) -> None:
        self.stalled = asyncio.Event()
        self.released = asyncio.Event()
        self.asked = 0

    def record_batch(self, mapping: object) -> None:
        pass

    def restart(self, source: TopicPartition) -> None:
        pass

    async def before_progress(self, positions: object) -> None:
        if self.stalled.is_set():
            self.asked += 1
            await self.released.wait()


async def test_records_keep_flowing_while_the_offset_map_store_does_not_answer(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """Progress waits for the offset map to be stored, the copy does not: at 5,000 partitions a worker's store
    took 1-6 s under load, and while the copy loop waited for it every partition's records waited too (lag p99 of
    a minute at 10,000 partitions, 2026-12-02). Once the store answers, progress covers everything copied."""
    topic = f"{unique}-aside"
    await create_topic(source_bootstrap, topic, 2)
    spec = spec_for(unique, [topic])
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    target_topic = spec.target_topic(topic)
    tps = [TopicPartition(topic, p) for p in range(2)]
    store = _StoreThatStopsAnswering()
    progress = ProgressStore(ClusterConnection(target_bootstrap), spec.replicator_id)

    async def count_is(n: int) -> bool:
        return await topic_count(target_bootstrap, target_topic) == n

    async def saved(offset: int) -> bool:
        loaded = await progress.load(tps)
        return all(tp in loaded and loaded[tp].next_source_offset == offset for tp in tps)

    async def store_asked() -> bool:
        return store.asked >= 1

    async with copier(spec, source_bootstrap, target_bootstrap, offset_map_sink=store) as instance:
        try:
            await instance.assign(tps)
            await produce(source_bootstrap, topic, [Rec(i % 2, None, f"a{i}".encode()) for i in range(1000)])
            await wait_for(lambda: count_is(1000), 30, "the first 1000 records copied")
            store.stalled.set()
            await produce(source_bootstrap, topic, [Rec(i % 2, None, f"b{i}".encode()) for i in range(1000)])
            await wait_for(store_asked, 30, "a progress write waiting for the offset map")

            await produce(source_bootstrap, topic, [Rec(i % 2, None, f"c{i}".encode()) for i in range(1000)])
            await wait_for(lambda: count_is(3000), 30, "records copied while the offset map's store does not answer")
            assert not await saved(1500), "progress was written before the offset map was stored"
        finally:
            store.released.set()  # the copier's stop writes its final progress through the store
        await wait_for(lambda: saved(1500), 30, "progress of every copied record once the store answers")


class HeldPool(ThreadPoolExecutor):
    """The compression pool, its builds held until ``release``: a machine whose compression threads are behind."""

    def __init__(self) -> None:
        super().__init__(max_workers=2, thread_name_prefix="test-held")
        self.released = threading.Event()
        self.waiting = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.waiting += 1

        def held() -> Any:
            self.released.wait(60)
            return fn(*args, **kwargs)

        return super().submit(held)


async def test_a_lease_lost_while_a_batch_is_being_compressed_keeps_it_off_the_target(
    source_bootstrap: str, target_bootstrap: str, unique: str, monkeypatch: Any
) -> None:
    """The gate is judged again once a compressed batch is built: a lease that lapsed while the compression
    threads were behind stops the write, however long the build waited."""
    topic = f"{unique}-compressing"
    await create_topic(source_bootstrap, topic, 1)
    spec = spec_for(unique, [topic], compression="GZIP")
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    target_topic = spec.target_topic(topic)
    pool = HeldPool()
    monkeypatch.setattr(copier_module, "compression_pool", lambda: pool)
    gate_open = True
    tp = TopicPartition(topic, 0)
    try:
        async with copier(
            spec, source_bootstrap, target_bootstrap, write_gate=lambda partitions: gate_open
        ) as instance:
            await instance.assign([tp])
            await produce(source_bootstrap, topic, [Rec(0, None, f"c{i}".encode() * 100) for i in range(1000)])

            async def building() -> bool:
                return pool.waiting > 0

            await wait_for(building, 30, "a batch passed the gate and waits for the compression threads")
            gate_open = False  # the lease lapses meanwhile
            pool.released.set()

            async def refused() -> bool:
                return instance.snapshot()[tp].errors.get(ErrorKind.LEASE_LOST.value, 0) >= 1

            await wait_for(refused, 30, "the built batch refused by the gate")
            assert await topic_count(target_bootstrap, target_topic) == 0, "a batch built after the lease lapsed"

            gate_open = True

            async def all_copied() -> bool:
                return await topic_count(target_bootstrap, target_topic) == 1000

            await wait_for(all_copied, 60, "every record copied once the gate opens")
    finally:
        pool.released.set()
        pool.shutdown()
    values = [r.value for r in (await read_topic(target_bootstrap, target_topic))[0]]
    assert values == [f"c{i}".encode() * 100 for i in range(1000)], "lost, duplicated or reordered records"
