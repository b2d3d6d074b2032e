"""The seams the worker fleet relies on: partitions handed between copiers at runtime without loss or
duplicates and without pausing the partitions that stay; a lost lease stops its partitions, a newer producer the
whole copier; a rejected write is retried from the last acknowledged position once the cause is fixed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.engine.conftest import (
    Rec,
    admin_client,
    create_topic,
    end_offsets,
    produce,
    read_topic,
    spec_for,
    topic_count,
    wait_for,
)
from workers.engine.batches import AckedPosition, BatchMapping
from workers.engine.connection import ClusterConnection
from workers.engine.copier import (
    TRANSACTION_LANES,
    CopierFenced,
    CopierOptions,
    PartitionCopier,
    lane_transactional_ids,
)
from workers.engine.metrics import Health
from workers.engine.progress import ProgressStore
from workers.engine.spec import ReplicationSpec
from workers.engine.topics import TopicSynchronizer

OPTIONS = CopierOptions(retry_backoff_s=0.2)


async def prepare_target(spec: ReplicationSpec, source: str, target: str) -> None:
    synchronizer = TopicSynchronizer(spec, ClusterConnection(source), ClusterConnection(target))
    await synchronizer.start()
    try:
        report = await synchronizer.sync_once()
        assert not report.errors, report.errors
    finally:
        await synchronizer.close()


@asynccontextmanager
async def copier(
    spec: ReplicationSpec, source: str, target: str, options: CopierOptions = OPTIONS, **kwargs: object
) -> AsyncIterator[PartitionCopier]:
    instance = PartitionCopier(spec, ClusterConnection(source), ClusterConnection(target), options=options, **kwargs)  # type: ignore[arg-type]
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


def copied(instance: PartitionCopier, tp: TopicPartition) -> int:
    return instance.snapshot()[tp].records_copied


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_partition_moves_between_copiers_without_loss_duplicates_or_pausing_others(
    source_bootstrap: str, target_bootstrap: str, unique: str, exactly_once: bool
) -> None:
    """Exactly-once: the revoke lets the transactions under way commit and drops what the lanes had queued."""
    topic = f"{unique}-moving"
    await create_topic(source_bootstrap, topic, 3)
    spec = spec_for(unique, [topic], exactly_once=exactly_once)
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    tps = [TopicPartition(topic, p) for p in range(3)]
    sent = 0
    stop_producing = asyncio.Event()

    async def keep_producing() -> None:
        nonlocal sent
        while not stop_producing.is_set():
            await produce(
                source_bootstrap, topic, [Rec(p, None, f"{p}:{sent + i}".encode()) for i in range(30) for p in range(3)]
            )
            sent += 30

    def unit(name: str) -> str | None:
        return f"{unique}-{name}" if exactly_once else None

    async with (
        copier(spec, source_bootstrap, target_bootstrap, transactional_id=unit("first")) as first,
        copier(spec, source_bootstrap, target_bootstrap, transactional_id=unit("second")) as second,
    ):
        await first.assign(tps)
        producer_task = asyncio.create_task(keep_producing())
        try:
            await wait_for(lambda: _truthy(copied(first, tps[2]) > 100), 30, "partition 2 flowing on the first")
            before = {tp: copied(first, tp) for tp in tps[:2]}
            await first.revoke([tps[2]])
            assert first.assignment() == frozenset(tps[:2])
            await second.assign([tps[2]])
            await wait_for(lambda: _truthy(copied(second, tps[2]) > 100), 30, "partition 2 flowing on the second")
            assert all(copied(first, tp) > before[tp] for tp in tps[:2]), "kept partitions stopped"
        finally:
            stop_producing.set()
            await producer_task
        expected_per_partition = sent

        async def every_record_copied() -> bool:
            # Records read, not end offsets: exactly-once's transaction markers take offsets too.
            data = await read_topic(target_bootstrap, f"src.{topic}")
            return sum(len(records) for records in data.values()) >= 3 * expected_per_partition

        await wait_for(every_record_copied, 60, "every record copied")
    data = await read_topic(target_bootstrap, f"src.{topic}")
    for partition, records in data.items():
        assert [r.value for r in records] == [f"{partition}:{i}".encode() for i in range(expected_per_partition)]


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_a_lost_lease_stops_only_its_partition_and_the_others_copy_on(
    source_bootstrap: str, target_bootstrap: str, unique: str, exactly_once: bool
) -> None:
    """The lease check refuses one partition of three: nothing more of it is written (records or progress), the
    copier itself goes on with the other two, and once the lease is back the partition resumes from its progress
    with nothing lost or duplicated."""
    topic = f"{unique}-leased"
    await create_topic(source_bootstrap, topic, 3)
    spec = spec_for(unique, [topic], exactly_once=exactly_once)
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    tps = [TopicPartition(topic, p) for p in range(3)]
    kept, lost = [tps[0], tps[2]], tps[1]
    refused: set[TopicPartition] = set()

    async def lease_check(partitions: frozenset[TopicPartition]) -> bool:
        return not partitions & refused

    progress = ProgressStore(ClusterConnection(target_bootstrap), spec.replicator_id)

    async def progress_at(offset: int, partitions: list[TopicPartition]) -> bool:
        saved = await progress.load(partitions)
        return all(tp in saved and saved[tp].next_source_offset == offset for tp in partitions)

    def first_batch(partition: int, label: str) -> list[Rec]:
        return [Rec(partition, None, f"{label}{partition}-{i}".encode()) for i in range(10)]

    transactional_id = f"{unique}-unit" if exactly_once else None
    async with copier(
        spec, source_bootstrap, target_bootstrap, lease_check=lease_check, transactional_id=transactional_id
    ) as instance:
        await instance.assign(tps)
        await produce(source_bootstrap, topic, [r for p in range(3) for r in first_batch(p, "x")])
        await wait_for(lambda: progress_at(10, tps), 30, "every partition's first 10 records copied and committed")

        refused.add(lost)
        await produce(source_bootstrap, topic, [r for p in range(3) for r in first_batch(p, "y")])
        seen_health = []

        async def dropped() -> bool:
            stats = instance.snapshot()
            if lost in stats:
                seen_health.append(stats[lost].health)
            return lost not in instance.assignment()

        await wait_for(dropped, 30, "the partition whose lease is gone dropped from the assignment")
        await wait_for(lambda: progress_at(20, kept), 30, "the other partitions copying on")
        assert instance.failure is None, f"the copier stopped: {instance.failure!r}"
        assert Health.FENCED in seen_health, f"the lost partition's report never said so: {seen_health}"
        assert await progress_at(10, [lost]), "progress written for a partition whose lease is gone"
        assert len((await read_topic(target_bootstrap, spec.target_topic(topic)))[1]) == 10, (
            "records of a partition whose lease is gone reached the target"
        )

        refused.clear()
        await instance.assign([lost])
        await wait_for(lambda: progress_at(20, tps), 30, "the partition copying again once its lease is back")
    data = await read_topic(target_bootstrap, spec.target_topic(topic))
    for partition in range(3):
        expected = [r.value for r in first_batch(partition, "x") + first_batch(partition, "y")]
        assert [r.value for r in data[partition]] == expected, f"partition {partition}: lost or duplicated records"


class HoldingSink:
    """An offset map sink that holds back, before its commit, every transaction that carries the held partition.
    A transaction hands over its mappings and then awaits ``before_progress`` with no await in between, in its own
    task: what the task handed over is what that transaction holds."""

    def __init__(self, held: TopicPartition) -> None:
        self.held = held
        # Set by the test, and by ``released`` whatever happens: a held transaction would hold the copier's stop.
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.mappings: list[BatchMapping] = []
        self._handed: dict[object, set[TopicPartition]] = {}

    def record_batch(self, mapping: BatchMapping) -> None:
        self.mappings.append(mapping)
        self._handed.setdefault(asyncio.current_task(), set()).add(mapping.source)

    def restart(self, source: TopicPartition) -> None:
        raise AssertionError(f"no topic was recreated, yet {source} was restarted")

    async def before_progress(self, positions: Callable[[], Mapping[TopicPartition, AckedPosition]]) -> None:
        if self.held in self._handed.pop(asyncio.current_task(), set()):
            self.holding.set()
            await self.release.wait()

    @asynccontextmanager
    async def released(self, instance: PartitionCopier) -> AsyncIterator[PartitionCopier]:
        try:
            yield instance
        finally:
            self.release.set()


async def exactly_once_topic(
    source: str, target: str, topic: str, partitions: int
) -> tuple[ReplicationSpec, list[TopicPartition]]:
    """A new source topic, an exactly-once spec for it and its target topic created: the lane tests' setting."""
    await create_topic(source, topic, partitions)
    spec = spec_for(topic, [topic], exactly_once=True)
    await prepare_target(spec, source, target)
    return spec, [TopicPartition(topic, p) for p in range(partitions)]


async def test_a_held_exactly_once_commit_holds_back_only_its_own_lane(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """Exactly-once shares the partitions among transaction lanes that commit independently: while one lane's
    transaction cannot commit, the partitions of the other lanes are copied and committed; once it commits, every
    partition holds its records once and in order."""
    topic = f"{unique}-lanes"
    partitions = 2 * TRANSACTION_LANES
    spec, tps = await exactly_once_topic(source_bootstrap, target_bootstrap, topic, partitions)
    sink = HoldingSink(tps[0])
    records = [Rec(p, None, f"{p}:{i}".encode()) for i in range(300) for p in range(partitions)]
    async with (
        copier(spec, source_bootstrap, target_bootstrap, transactional_id=f"{unique}-unit", offset_map_sink=sink) as c,
        sink.released(c) as instance,
    ):
        await instance.assign(tps)
        await produce(source_bootstrap, topic, records)
        await asyncio.wait_for(sink.holding.wait(), 30)

        async def committed_partitions() -> int:
            # Read, not the last stable offsets: transaction markers take offsets too.
            data = await read_topic(target_bootstrap, f"src.{topic}")
            return sum(1 for p in range(partitions) if len(data.get(p, [])) == 300)

        # Its lane shares the held partition's transactions: 2 partitions of 8 wait, the other 6 go through.
        others = partitions - partitions // TRANSACTION_LANES

        async def others_committed() -> bool:
            return await committed_partitions() >= others

        await wait_for(others_committed, 60, f"{others} partitions committed while one lane's commit is held")
        assert (await end_offsets(target_bootstrap, f"src.{topic}")).get(0, 0) == 0, (
            "records of the held transaction visible to read_committed readers before its commit"
        )
        assert instance.failure is None, f"the copier stopped: {instance.failure!r}"
        sink.release.set()

        async def all_committed() -> bool:
            return await committed_partitions() == partitions

        await wait_for(all_committed, 60, "every partition committed once the held lane commits")
    data = await read_topic(target_bootstrap, f"src.{topic}")
    for partition in range(partitions):
        assert [r.value for r in data[partition]] == [f"{partition}:{i}".encode() for i in range(300)], (
            f"partition {partition}: lost, duplicated or reordered records"
        )


async def test_a_quiet_partition_of_a_busy_lane_still_moves_past_transaction_markers(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """A partition waits for its lane only while its own records or progress are in the lane's queue or
    transaction: another partition of the same lane, whose source only gained an aborted transaction and its
    marker, moves past them (and its lag reaches zero) while the lane's transaction is held."""
    topic = f"{unique}-quiet"
    partitions = 2 * TRANSACTION_LANES
    spec, tps = await exactly_once_topic(source_bootstrap, target_bootstrap, topic, partitions)
    busy, quiet = tps[0], tps[TRANSACTION_LANES]  # the same lane: partitions join the emptiest lane in order
    sink = HoldingSink(busy)
    progress = ProgressStore(ClusterConnection(target_bootstrap), spec.replicator_id)
    async with (
        copier(spec, source_bootstrap, target_bootstrap, transactional_id=f"{unique}-unit", offset_map_sink=sink) as c,
        sink.released(c) as instance,
    ):
        await instance.assign(tps)

        async def first_progress_committed() -> bool:
            return len(await progress.load(tps)) == partitions

        await wait_for(first_progress_committed, 30, "every partition's first progress committed")
        await produce(source_bootstrap, topic, [Rec(busy.partition, None, f"{i}".encode()) for i in range(300)])
        await asyncio.wait_for(sink.holding.wait(), 30)

        aborting = AIOKafkaProducer(bootstrap_servers=source_bootstrap, transactional_id=f"{unique}-aborting")
        await aborting.start()
        try:
            await aborting.begin_transaction()
            await aborting.send_and_wait(topic, b"never committed", partition=quiet.partition)
            await aborting.abort_transaction()
        finally:
            await aborting.stop()
        end = (await end_offsets(source_bootstrap, topic))[quiet.partition]
        assert end == 2, "one aborted record and its marker"

        async def quiet_moved_on() -> bool:
            return instance.snapshot()[quiet].next_source_offset == end

        await wait_for(quiet_moved_on, 30, "the quiet partition past the marker while its lane's commit is held")
        assert instance.failure is None, f"the copier stopped: {instance.failure!r}"
        sink.release.set()

        async def both_committed() -> bool:
            saved = await progress.load([busy, quiet])
            return saved[busy].next_source_offset == 300 and saved[quiet].next_source_offset == end

        await wait_for(both_committed, 30, "the held transaction and the quiet partition's progress committed")
    data = await read_topic(target_bootstrap, f"src.{topic}")
    assert [r.value for r in data[busy.partition]] == [f"{i}".encode() for i in range(300)]
    assert data[quiet.partition] == [], "an aborted record was copied"


async def test_exactly_once_stops_fetching_at_its_byte_bound_while_a_commit_is_held(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """What exactly-once holds (records queued for the lanes and in their transactions) is bounded in bytes, not
    only in batches: while the only lane's commit is held, the copier fetches until it holds the bound (plus at
    most one poll) and then waits; a few large source batches cannot fill memory. Released, every record is
    copied once and in order."""
    topic = f"{unique}-bounded"
    spec, tps = await exactly_once_topic(source_bootstrap, target_bootstrap, topic, 1)
    bound, fetch = 1024 * 1024, 256 * 1024
    options = CopierOptions(
        retry_backoff_s=0.2, max_in_flight_bytes=bound, fetch_max_bytes=fetch, max_partition_fetch_bytes=fetch
    )
    count, value = 8192, b"v" * 1000  # 8 MiB in 32 source batches: far below the bound in batches
    await produce(source_bootstrap, topic, [Rec(0, None, b"%d:" % i + value) for i in range(count)])
    sink = HoldingSink(tps[0])
    async with (
        copier(
            spec, source_bootstrap, target_bootstrap, options, transactional_id=f"{unique}-unit", offset_map_sink=sink
        ) as c,
        sink.released(c) as instance,
    ):
        await instance.assign(tps)
        await asyncio.wait_for(sink.holding.wait(), 30)

        async def bound_reached() -> bool:
            return instance.buffered_bytes() >= bound

        await wait_for(bound_reached, 30, "the copier fetching up to its bound while the commit is held")
        # Watched for a while: unbounded, it would hold all 8 MiB within this window.
        highest, watch_until = 0, asyncio.get_running_loop().time() + 3
        while asyncio.get_running_loop().time() < watch_until:
            highest = max(highest, instance.buffered_bytes())
            await asyncio.sleep(0.05)
        assert highest <= bound + fetch + len(value) * 300, f"held {highest} bytes past a bound of {bound}"
        assert instance.failure is None, f"the copier stopped: {instance.failure!r}"
        sink.release.set()

        async def all_copied() -> bool:
            data = await read_topic(target_bootstrap, f"src.{topic}")
            return len(data.get(0, [])) >= count

        await wait_for(all_copied, 60, "every record copied once the commit is released")
        await wait_for(lambda: _truthy(instance.buffered_bytes() == 0), 30, "nothing held once all is committed")
    data = await read_topic(target_bootstrap, f"src.{topic}")
    assert [r.value for r in data[0]] == [b"%d:" % i + value for i in range(count)], "lost, duplicated or reordered"


async def test_newer_producer_with_the_same_transactional_id_fences_the_old_copier(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """Every transaction lane of the old copier is fenced, not only the first: one partition per lane."""
    topic = f"{unique}-fenced"
    await create_topic(source_bootstrap, topic, TRANSACTION_LANES)
    spec = spec_for(unique, [topic], exactly_once=True)
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    tps = [TopicPartition(topic, p) for p in range(TRANSACTION_LANES)]
    async with copier(spec, source_bootstrap, target_bootstrap, transactional_id=f"{unique}-unit") as old:
        await old.assign(tps)
        await produce(source_bootstrap, topic, [Rec(tp.partition, None, b"a") for tp in tps for _ in range(10)])
        await wait_for(
            lambda: _truthy(all(copied(old, tp) == 10 for tp in tps)), 30, "records copied by the first owner"
        )
        async with copier(spec, source_bootstrap, target_bootstrap, transactional_id=f"{unique}-unit") as new:
            await new.assign(tps)
            await produce(source_bootstrap, topic, [Rec(tp.partition, None, b"b") for tp in tps for _ in range(10)])
            with pytest.raises(CopierFenced):
                await asyncio.wait_for(old.wait(), 30)
            await wait_for(
                lambda: _truthy(all(copied(new, tp) == 10 for tp in tps)), 30, "the new owner copies what follows"
            )
    data = await read_topic(target_bootstrap, f"src.{topic}")
    for tp in tps:
        assert [r.value for r in data[tp.partition]] == [b"a"] * 10 + [b"b"] * 10, f"partition {tp.partition}"


async def test_a_copier_past_its_leases_does_not_start_a_lane_that_would_fence_its_successor(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """A lane's producer starts when the lane first has work, and starting it fences every producer with the lane's
    transactional id. Those ids name the unit's owner, so a copier paused past its leases shares them with its
    successor when the same worker was started again. When such a copier has progress to write for a partition
    that moved without records (past an aborted transaction), its lease check is asked before the lane starts: the
    partition is abandoned, and the successor's open transaction still commits."""
    topic = f"{unique}-zombie"
    spec, tps = await exactly_once_topic(source_bootstrap, target_bootstrap, topic, 2)
    transactional_id = f"{unique}-unit"
    progress = ProgressStore(ClusterConnection(target_bootstrap), spec.replicator_id)

    async def progress_stored() -> bool:
        return len(await progress.load(tps)) == len(tps)

    # A first run stores both partitions' progress, so the next copier has none to write and starts no lane but
    # the first until a partition moves.
    async with copier(spec, source_bootstrap, target_bootstrap, transactional_id=transactional_id) as first:
        await first.assign(tps)
        await wait_for(progress_stored, 30, "the first run's progress stored")

    refused: set[TopicPartition] = set()

    async def lease_check(partitions: frozenset[TopicPartition]) -> bool:
        return not partitions & refused

    async with copier(
        spec, source_bootstrap, target_bootstrap, transactional_id=transactional_id, lease_check=lease_check
    ) as paused:
        await paused.assign(tps)
        refused.update(tps)  # the pause: every lease lapsed, and the worker runs again elsewhere
        successor = AIOKafkaProducer(
            bootstrap_servers=target_bootstrap, transactional_id=lane_transactional_ids(transactional_id)[1]
        )
        await successor.start()
        try:
            await successor.begin_transaction()
            await successor.send_and_wait(f"src.{topic}", b"successor", partition=1)
            # An aborted transaction moves the partition without records: its lane has progress to write.
            aborting = AIOKafkaProducer(bootstrap_servers=source_bootstrap, transactional_id=f"{unique}-aborting")
            await aborting.start()
            try:
                await aborting.begin_transaction()
                await aborting.send_and_wait(topic, b"never committed", partition=1)
                await aborting.abort_transaction()
            finally:
                await aborting.stop()
            await wait_for(
                lambda: _truthy(tps[1] not in paused.assignment()), 30, "the paused copier dropping the partition"
            )
            await successor.commit_transaction()  # ProducerFenced if the paused copier initialised the lane
        finally:
            await successor.stop()
        assert paused.failure is None, f"the copier stopped: {paused.failure!r}"
    data = await read_topic(target_bootstrap, f"src.{topic}")
    assert [r.value for r in data.get(1, [])] == [b"successor"], "the paused copier wrote to the target"


async def test_rejected_write_is_retried_from_the_acknowledged_position(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-big"
    await create_topic(source_bootstrap, topic, 1, {"max.message.bytes": "3000000"})
    # Without config copying the target topic keeps the broker default limit (about 1 MB).
    spec = spec_for(unique, [topic], copy_configs=False)
    await prepare_target(spec, source_bootstrap, target_bootstrap)
    tp = TopicPartition(topic, 0)
    await produce(
        source_bootstrap,
        topic,
        [Rec(0, None, b"small-1"), Rec(0, None, b"B" * 2_000_000), Rec(0, None, b"small-2")],
        max_request_size=6_000_000,
    )
    async with copier(spec, source_bootstrap, target_bootstrap) as instance:
        await instance.assign([tp])

        async def rejected() -> bool:
            stats = instance.snapshot()[tp]
            return stats.health is Health.RECORD_TOO_LARGE and stats.errors.get("RECORD_TOO_LARGE", 0) >= 2

        await wait_for(rejected, 60, "the oversized record to be rejected (and retried)")
        async with admin_client(target_bootstrap) as admin:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, f"src.{topic}", {"max.message.bytes": "3000000"})]
            )
        await wait_for(lambda: _count_is(target_bootstrap, f"src.{topic}", 3), 60, "the copy to go on")
    data = await read_topic(target_bootstrap, f"src.{topic}")
    assert [r.value for r in data[0]] == [b"small-1", b"B" * 2_000_000, b"small-2"], (
        "records reordered or duplicated around the rejected write"
    )


async def _truthy(value: bool) -> bool:
    return value


async def _count_is(bootstrap: str, topic: str, count: int) -> bool:
    with contextlib.suppress(KeyError):
        return await topic_count(bootstrap, topic) == count
    return False
