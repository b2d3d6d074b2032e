"""Producer batches and acknowledgement bookkeeping (workers/engine/batches.py) without a broker: what goes into
each batch, where each pending batch moves its partition, what IDENTICAL naming filters and stamps, and what an
acknowledgement hands to the offset map sink."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import aiokafka.consumer.fetcher as aiokafka_fetcher
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException
from aiokafka.record._crecords.cutil import crc32c_cython
from aiokafka.record.default_records import DefaultRecordBatch

from workers.engine.aiokafka_hooks import (
    ForwardedBuilder,
    ForwardingPartitionRecords,
    RecordBatchBuilder,
    check_version,
    crc32c,
    decode_batch,
    install_batch_fetching,
)
from workers.engine.batches import (
    AckedPosition,
    BatchFormat,
    BatchMapping,
    PartitionState,
    PendingBatch,
    acknowledge,
    build_batches,
    reopenable,
)
from workers.engine.forwarding import NEVER, BatchHeader, DecodedBatch, ForwardBatches, RawBatch
from workers.engine.metrics import STALL_SECONDS, PartitionMetrics
from workers.engine.spec import PROVENANCE_HEADER

SOURCE = TopicPartition("orders", 3)
TARGET = TopicPartition("east.orders", 3)
SOURCE_CLUSTER = b"source-cluster-id"
TARGET_CLUSTER = b"target-cluster-id"


def encoded_batch(first_offset: int, values: Sequence[bytes], headers: Sequence[Any] = ()) -> bytes:
    """A v2 record batch as a producer writes it, its base offset set to ``first_offset``."""
    builder = RecordBatchBuilder(0, 1 << 20, transactional=False)
    for index, value in enumerate(values):
        builder.append(index, 1_700_000_000_000 + index, f"k{index}".encode(), value, list(headers))
    raw = bytearray(builder._build())
    raw[0:8] = first_offset.to_bytes(8, "big")
    return bytes(raw)


def decoded(first_offset: int, values: Sequence[bytes], headers: Sequence[Any] = ()) -> DecodedBatch:
    records = decode_batch(encoded_batch(first_offset, values, headers))
    return DecodedBatch(records)


def state(start: int = 0) -> PartitionState:
    return PartitionState(
        SOURCE,
        TARGET,
        PartitionMetrics(SOURCE, TARGET.topic),
        acked_next=start,
        acked_target_next=None,
        committed_next=None,
        sent_next=start,
    )


def batch_format(*, identical: bool = False, batch_bytes: int = 1 << 20) -> BatchFormat:
    return BatchFormat(
        codec=0,
        batch_bytes=batch_bytes,
        transactional=False,
        identical=identical,
        loop_origin=TARGET_CLUSTER,
        origin=SOURCE_CLUSTER,
        keep_offsets=True,
    )


class Recorder:
    def __init__(self) -> None:
        self.mappings: list[BatchMapping] = []

    def record_batch(self, mapping: BatchMapping) -> None:
        self.mappings.append(mapping)

    def restart(self, source: TopicPartition) -> None:
        self.mappings = [m for m in self.mappings if m.source != source]

    async def before_progress(self, positions: Callable[[], Mapping[TopicPartition, AckedPosition]]) -> None:
        pass


def records_of(builder: Any) -> list[Any]:
    return decode_batch(builder._build())


async def test_decoded_batches_are_rebatched_with_their_offsets_and_the_poll_position() -> None:
    partition = state(10)
    items = [decoded(10, [b"a", b"b"]), decoded(12, [b"c"])]
    built = build_batches(batch_format(), partition, items, position=14)
    assert len(built) == 1
    builder, pending = built[0]
    assert [r.value for r in records_of(builder)] == [b"a", b"b", b"c"]
    assert builder.record_count() == 3 and builder.closed(), "handed over complete, so it never waits for linger"
    assert list(pending.source_offsets or []) == [10, 11, 12]
    assert pending.next_source_offset == 14, "a transaction marker at 13 is passed with the batch"
    assert pending.first_timestamp_ms == 1_700_000_000_000


async def test_a_full_batch_is_closed_and_the_next_one_started() -> None:
    partition = state(0)
    values = [bytes(400) for _ in range(10)]
    built = build_batches(batch_format(batch_bytes=1024), partition, [decoded(0, values)], position=10)
    assert len(built) > 1
    counts = [pending.records for _, pending in built]
    assert sum(counts) == 10
    nexts = [pending.next_source_offset for _, pending in built]
    assert nexts == sorted(nexts) and nexts[-1] == 10
    for (_, earlier), (_, later) in itertools.pairwise(built):
        assert earlier.next_source_offset == (later.source_offsets or [None])[0], "no offset falls between batches"


async def test_forwarded_batches_keep_their_place_between_decoded_records() -> None:
    partition = state(0)
    raw_bytes = encoded_batch(2, [b"r0", b"r1", b"r2"])
    header = BatchHeader.parse(raw_bytes)
    raw = RawBatch(memoryview(raw_bytes), 2, header.record_count, header.first_timestamp)
    items: list[Any] = [decoded(0, [b"d0", b"d1"]), raw, decoded(5, [b"d5"])]
    built = build_batches(batch_format(), partition, items, position=6)
    assert [type(builder) for builder, _ in built] == [RecordBatchBuilder, ForwardedBuilder, RecordBatchBuilder]
    assert [p.next_source_offset for _, p in built] == [2, 5, 6]
    assert list(built[1][1].source_offsets or []) == [2, 3, 4]
    assert built[1][1].records == 3


def test_forwarding_takes_only_whole_batches_in_the_target_codec_within_the_size_bounds() -> None:
    header = BatchHeader.parse(encoded_batch(100, [b"x"] * 4))
    forward = ForwardBatches(0, min_batch_bytes=10, max_batch_bytes=1000)
    assert forward.forwards(header, 500, fetch_position=100)
    assert not forward.forwards(header, 500, fetch_position=101), "the copy stands inside the batch"
    assert not forward.forwards(header, 5, fetch_position=100), "too small: re-batched instead"
    assert not forward.forwards(header, 5000, fetch_position=100), "larger than a default max.message.bytes"
    assert not ForwardBatches(3, min_batch_bytes=10).forwards(header, 500, 100), "another codec than the target's"


async def test_identical_naming_filters_the_targets_own_records_and_stamps_the_others() -> None:
    partition = state(0)
    came_from_target = [(PROVENANCE_HEADER, TARGET_CLUSTER)]
    came_from_third = [(PROVENANCE_HEADER, b"third-cluster")]
    items = [decoded(0, [b"own"]), decoded(1, [b"back"], came_from_target), decoded(2, [b"third"], came_from_third)]
    built = build_batches(batch_format(identical=True), partition, items, position=3)
    assert partition.metrics.records_filtered == 1
    (builder, pending), *_ = built
    records = records_of(builder)
    assert [r.value for r in records] == [b"own", b"third"]
    assert list(records[0].headers) == [(PROVENANCE_HEADER, SOURCE_CLUSTER)], "stamped with its origin"
    assert list(records[1].headers) == came_from_third, "a third cluster's origin is kept"
    assert list(pending.source_offsets or []) == [0, 2]
    assert pending.next_source_offset == 3


async def test_a_poll_of_filtered_records_only_builds_nothing() -> None:
    partition = state(0)
    came_from_target = [(PROVENANCE_HEADER, TARGET_CLUSTER)]
    built = build_batches(batch_format(identical=True), partition, [decoded(0, [b"a", b"b"], came_from_target)], 2)
    assert built == []
    assert partition.metrics.records_filtered == 2


async def test_acknowledging_moves_the_positions_and_feeds_the_offset_map() -> None:
    partition = state(10)
    recorder = Recorder()
    (_, pending), *_ = build_batches(batch_format(), partition, [decoded(10, [b"a", b"b"])], position=13)
    acknowledge(partition, pending, 500, ack_ms=1_700_000_000_100, sink=recorder)
    assert partition.acked_next == 13 and partition.metrics.next_source_offset == 13
    assert partition.acked_target_next == 502
    assert partition.metrics.records_copied == 2
    assert recorder.mappings == [BatchMapping(SOURCE, TARGET, [10, 11], 500)]
    assert partition.position() == AckedPosition("east.orders", 13, 502)
    assert partition.progress().next_source_offset == 13


async def test_a_position_only_advance_moves_the_position_and_maps_nothing() -> None:
    partition = state(7)
    recorder = Recorder()
    acknowledge(partition, PendingBatch.position_only(9), 0, ack_ms=0, sink=recorder)
    assert partition.acked_next == 9 and partition.acked_target_next is None
    assert partition.metrics.records_copied == 0 and recorder.mappings == []


def test_an_untested_aiokafka_release_is_refused_with_a_clear_message() -> None:
    check_version("0.14.0")
    check_version("0.14.3")
    for release in ("0.13.0", "0.15.0", "1.0.0", "not-a-version"):
        with pytest.raises(ImportError, match=r"aiokafka>=0\.14,<0\.15"):
            check_version(release)


def test_a_partition_with_lag_whose_position_does_not_move_says_it_is_stalled() -> None:
    metrics = PartitionMetrics(SOURCE, TARGET.topic)
    metrics.next_source_offset, metrics.source_end_offset = 5, 10
    metrics.started = True
    assert metrics.snapshot().health.value == "REPLICATING"
    metrics._position_since -= STALL_SECONDS + 1  # the same position, seen over more than STALL_SECONDS
    stalled = metrics.snapshot()
    assert stalled.health.value == "STALLED" and "5 records of lag at offset 5" in stalled.health_detail
    metrics.next_source_offset = 7
    assert metrics.snapshot().health.value == "REPLICATING", "moving again clears it"
    metrics.source_end_offset = 7
    metrics._position_since -= STALL_SECONDS + 1
    assert metrics.snapshot().health.value == "REPLICATING", "no lag, nothing to be stalled on"


# ---------------------------------------------------------------------- CRCs of fetched and forwarded batches


def test_the_hardware_crc_agrees_with_aiokafkas() -> None:
    data = bytes(range(256)) * 300
    for length in (0, 1, 7, 61, 4096, len(data)):
        assert crc32c(data[:length]) == crc32c_cython(data[:length])


def test_a_forwarded_batch_carries_the_crc_of_its_new_producer_state() -> None:
    raw = encoded_batch(500, [b"a" * 100, b"b" * 200])
    header = BatchHeader.parse(raw)
    forwarded = ForwardedBuilder(RawBatch(memoryview(raw), 500, 2, header.first_timestamp), transactional=False)
    forwarded._set_producer_state(7, 1, 42)
    built = DefaultRecordBatch(bytes(forwarded._build()))
    assert built.validate_crc()
    assert (built.producer_id, built.producer_epoch, built.base_sequence) == (7, 1, 42)
    assert [record.value for record in built] == [b"a" * 100, b"b" * 200]


def fetched(raw: bytes, *, check_crcs: bool, min_batch_bytes: int) -> list[Any]:
    """What the forwarding fetch yields for one partition's fetched bytes."""
    install_batch_fetching()
    records = ForwardingPartitionRecords(
        SOURCE,
        aiokafka_fetcher.MemoryRecords(raw),
        [],
        0,
        ForwardBatches(0, min_batch_bytes=min_batch_bytes),
        None,
        check_crcs,
        aiokafka_fetcher.READ_COMMITTED,
    )
    return list(records)


@pytest.mark.parametrize("min_batch_bytes", [0, NEVER], ids=["forwarded", "decoded"])
def test_a_corrupt_fetched_batch_is_refused(min_batch_bytes: int) -> None:
    good = encoded_batch(0, [b"v0", b"v1"])
    bad = bytearray(encoded_batch(2, [b"v2", b"v3"]))
    bad[-3] ^= 0x01  # a bit of the last record's value
    raw = good + bytes(bad)
    items = fetched(raw, check_crcs=False, min_batch_bytes=min_batch_bytes)
    assert len(items) == 2  # unchecked, the damage goes unseen
    checked = ForwardingPartitionRecords(
        SOURCE,
        aiokafka_fetcher.MemoryRecords(raw),
        [],
        0,
        ForwardBatches(0, min_batch_bytes=min_batch_bytes),
        None,
        True,
        aiokafka_fetcher.READ_COMMITTED,
    )
    first = next(checked)  # the intact batch comes through
    assert (first.record_count if isinstance(first, RawBatch) else len(first.records)) == 2
    with pytest.raises(CorruptRecordException):
        next(checked)
    assert len(fetched(good, check_crcs=True, min_batch_bytes=min_batch_bytes)) == 1


# ---------------------------------------------------------------------- a batch the producer still holds


def held_by_producer(partition: PartitionState, built: list[tuple[Any, PendingBatch]]) -> PendingBatch:
    """What the copier does with the last batch it hands over: queued, unacknowledged, open for more records."""
    builder, pending = built[-1]
    pending.future = asyncio.get_running_loop().create_future()
    partition.pending.append(pending)
    partition.open_batch = (builder, pending)
    return pending


async def test_the_next_poll_goes_into_the_batch_the_producer_has_not_taken() -> None:
    fmt, partition = batch_format(), state(0)
    first = build_batches(fmt, partition, [decoded(0, [b"a", b"b"])], position=2)
    held = held_by_producer(partition, first)
    reopen = reopenable(fmt, partition)
    assert reopen is not None
    assert build_batches(fmt, partition, [decoded(2, [b"c"]), decoded(4, [b"d"])], 6, reopen) == []
    assert (held.records, held.next_source_offset, list(held.source_offsets or [])) == (4, 6, [0, 1, 2, 4])
    builder = first[0][0]
    assert held.size == builder.size()
    records = records_of(builder)  # seals it, as the producer's sender does when it takes the batch
    assert [(r.offset, r.value) for r in records] == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]
    assert [r.timestamp - 1_700_000_000_000 for r in records] == [0, 1, 0, 0], "each record keeps its own"
    assert reopenable(fmt, partition) is None, "taken by the sender: its record count is in the sequence now"


async def test_a_held_batch_that_fills_up_is_closed_and_a_new_one_follows() -> None:
    fmt, partition = batch_format(batch_bytes=1024), state(0)
    held = held_by_producer(partition, build_batches(fmt, partition, [decoded(0, [bytes(400)])], position=1))
    built = build_batches(fmt, partition, [decoded(1, [bytes(400), bytes(400)])], 3, reopenable(fmt, partition))
    assert (held.records, held.next_source_offset) == (2, 2)
    assert [(p.records, p.next_source_offset, list(p.source_offsets or [])) for _, p in built] == [(1, 3, [2])]


async def test_no_batch_is_reopened_behind_a_position_advance_or_in_a_transaction() -> None:
    fmt, partition = batch_format(), state(0)
    held_by_producer(partition, build_batches(fmt, partition, [decoded(0, [b"a"])], position=1))
    assert reopenable(replace(fmt, transactional=True), partition) is None
    partition.pending.append(PendingBatch.position_only(5))
    assert reopenable(fmt, partition) is None
