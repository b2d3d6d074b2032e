"""Producer batches of one source partition, and the bookkeeping of their acknowledgements. No I/O.

The copier's loop (``copier.py``) fetches, sends and commits; this module decides what goes into each producer
batch and what an acknowledged batch means for its partition:

- ``build_batches`` turns what one poll fetched for a partition (``RawBatch`` items forwarded as they are,
  ``SplicedBatch`` items whose encoded records are spliced into producer batches, ``DecodedBatch`` items
  re-batched into aiokafka's C batch builder) into producer batches, each with the
  ``PendingBatch`` that tracks it. IDENTICAL naming filters records that came from the target cluster and stamps
  the origin header on the others.
- ``acknowledge`` applies one batch the target acknowledged (at-least-once) or committed (exactly-once): the
  partition's acknowledged positions, its measurements and the offset map sink. Both delivery modes use it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from aiokafka import TopicPartition

from workers.engine.aiokafka_hooks import ForwardedBuilder, RecordBatchBuilder, SplicedBuilder
from workers.engine.forwarding import DecodedBatch, RawBatch, SplicedBatch
from workers.engine.metrics import PartitionMetrics
from workers.engine.progress import PartitionProgress, now_ms
from workers.engine.spec import PROVENANCE_HEADER


@dataclass(frozen=True)
class BatchMapping:
    """Where a run of copied records landed: source offset ``source_offsets[i]`` is at target offset
    ``target_base_offset + i``. Source offsets may have gaps (compaction, transaction markers, filtered
    records); target offsets of one mapping are contiguous."""

    source: TopicPartition
    target: TopicPartition
    source_offsets: Sequence[int]
    target_base_offset: int


class AckedPosition(NamedTuple):
    """How far one partition's copy is acknowledged: every batch below it was handed to the offset map sink."""

    target_topic: str
    next_source_offset: int
    # Right after the last acknowledged copy (where the next copy lands at the earliest); None when unknown.
    next_target_offset: int | None


class OffsetMapSink(Protocol):
    """Receives every acknowledged batch mapping, in partition order (in exactly-once mode, each transaction's
    before its commit: a transaction that aborts has its mappings replaced by its re-copy's)."""

    def record_batch(self, mapping: BatchMapping) -> None: ...

    def restart(self, source: TopicPartition) -> None:
        """The partition's copy starts anew (its source or target topic was deleted and created again): every
        mapping of it recorded so far, stored or not, points into a log that is gone."""
        ...

    async def before_progress(self, positions: Callable[[], Mapping[TopicPartition, AckedPosition]]) -> None:
        """Awaited by at-least-once copiers before each progress write, after taking the positions that write
        records, and by exactly-once copiers before each commit, after handing it the transaction's mappings, so
        a sink that stores its mappings here never stores them later than the progress that covers them (a crash
        then leaves no unmapped copies behind). ``positions`` reads the copier's acknowledged positions at the
        moment the sink calls it (in exactly-once mode, those before the transaction)."""
        ...


@dataclass
class PendingBatch:
    """A batch handed to the producer (or a position advance with no records, already resolved)."""

    future: asyncio.Future[Any]
    next_source_offset: int
    records: int
    size: int
    first_timestamp_ms: int
    source_offsets: Sequence[int] | None
    # The producer generation that sent it (PartitionCopier restarts its producer after a failure).
    generation: int = -1
    # The source leader epoch of the last batch it covers (-1: unknown).
    leader_epoch: int = -1

    @classmethod
    def position_only(cls, next_source_offset: int, leader_epoch: int = -1) -> PendingBatch:
        """An advance past source offsets that hold nothing to copy (markers, aborted or filtered records)."""
        return cls(resolved_future(), next_source_offset, 0, 0, 0, None, leader_epoch=leader_epoch)


@dataclass
class PartitionState:
    """One assigned source partition: its positions, its batches in flight and its measurements."""

    source: TopicPartition
    target: TopicPartition
    metrics: PartitionMetrics
    # The next source offset whose copy the target acknowledged, and the target offset right after that copy.
    acked_next: int
    acked_target_next: int | None
    # The next source offset recorded in durable progress (None: no progress written yet).
    committed_next: int | None
    # The next source offset to hand to the producer.
    sent_next: int
    pending: deque[PendingBatch] = field(default_factory=deque)
    failed: BaseException | None = None
    # The producer generation that has had a batch of this partition acknowledged (see PartitionCopier).
    confirmed_generation: int = -1
    # The ids of the source and target topics this copy belongs to (None: unknown). A topic deleted and created
    # again under its name has a new id, and its copy starts anew.
    source_topic_id: str | None = None
    target_topic_id: str | None = None
    # The source leader epoch of the last batch fetched below ``sent_next`` and acknowledged below ``acked_next``
    # (-1: unknown): where the source log ends for that epoch is where it diverges after a truncation.
    fetched_epoch: int = -1
    acked_epoch: int = -1
    # The last batch of decoded or spliced records handed to the producer (at-least-once): ``reopenable`` says
    # whether the next poll's records may still go into it.
    open_batch: tuple[RecordBatchBuilder | SplicedBuilder, PendingBatch] | None = None
    # The lease check refused it: nothing more of it is written here, not even what is acknowledged later.
    lease_lost: bool = False

    def progress(self) -> PartitionProgress:
        return PartitionProgress(
            self.target.topic,
            self.acked_next,
            self.acked_target_next,
            now_ms(),
            source_topic_id=self.source_topic_id,
            target_topic_id=self.target_topic_id,
            source_leader_epoch=None if self.acked_epoch < 0 else self.acked_epoch,
        )

    def position(self) -> AckedPosition:
        return AckedPosition(self.target.topic, self.acked_next, self.acked_target_next)


def resolved_future() -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def acknowledge(
    state: PartitionState, pending: PendingBatch, base_offset: int, ack_ms: float, sink: OffsetMapSink | None
) -> None:
    """Apply one batch the target acknowledged (at-least-once) or committed (exactly-once) at ``base_offset``."""
    if pending.records:
        state.acked_target_next = base_offset + pending.records
        state.metrics.record_copied(pending.records, pending.size, pending.first_timestamp_ms, ack_ms)
        if sink is not None and pending.source_offsets:
            sink.record_batch(BatchMapping(state.source, state.target, pending.source_offsets, base_offset))
    if pending.leader_epoch >= 0:
        state.acked_epoch = pending.leader_epoch
    state.acked_next = pending.next_source_offset
    state.metrics.next_source_offset = pending.next_source_offset


@dataclass(frozen=True)
class BatchFormat:
    """How a copier writes its producer batches; fixed for the copier's life."""

    codec: int  # the target codec's id in a batch's attributes
    batch_bytes: int
    transactional: bool
    # IDENTICAL naming: drop records whose origin header names ``loop_origin`` (the target cluster), stamp the
    # others that carry none with ``origin`` (the source cluster), so active-active copies never loop.
    identical: bool
    loop_origin: bytes
    origin: bytes
    # Whether mappings are kept for an offset map sink.
    keep_offsets: bool
    # Threads that compress a full batch while the copy goes on (a compressing target codec only).
    compress_ahead: Executor | None = None


def reopenable(
    fmt: BatchFormat, state: PartitionState
) -> tuple[RecordBatchBuilder | SplicedBuilder, PendingBatch] | None:
    """The partition's last batch of decoded or spliced records if more records may still go into it: the producer
    has not taken it yet (it waits behind the partition's batch in flight), nothing was queued behind it, and it
    belongs to no transaction (each of which is one poll).

    aiokafka queues one batch per partition and the copier's ``send_batch`` waits while one is queued, so without
    this a poll of a few small source batches became a small producer batch and the copy loop waited for every
    produce request: 1 KiB records in 16 KiB source batches went out in 32 KiB producer batches."""
    if fmt.transactional or state.open_batch is None:
        return None
    builder, pending = state.open_batch
    if builder.sealed or pending.future.done() or not state.pending or state.pending[-1] is not pending:
        state.open_batch = None
        return None
    return state.open_batch


def build_batches(
    fmt: BatchFormat,
    state: PartitionState,
    records: Sequence[Any],
    position: int,
    reopen: tuple[RecordBatchBuilder | SplicedBuilder, PendingBatch] | None = None,
) -> list[tuple[Any, PendingBatch]]:
    """Producer batches for one partition's records; the last one carries ``position`` as the next offset
    (it may lie past the last record, e.g. after a transaction marker). Every batch is complete (``closed()``),
    so the producer sends it without waiting for linger.

    ``records`` holds what the forwarding fetch yields (``workers/engine/forwarding.py``): ``DecodedBatch`` items,
    re-batched, and ``RawBatch`` items, each a producer batch of its own in order with the records around it.
    Without any record to write (all filtered, say) the result is empty: the caller advances the position alone.

    ``reopen`` (from ``reopenable``): a batch already handed to the producer that the first records go into, as
    long as they fit and no forwarded batch comes first; its ``PendingBatch`` is updated in place (records, size,
    next offset) and it is not in the result.
    """
    identical = fmt.identical
    loop_origin = fmt.loop_origin
    stamp = (PROVENANCE_HEADER, fmt.origin)
    # The same loop prevention for spliced records, done on their encoded headers.
    provenance = (PROVENANCE_HEADER.encode(), loop_origin, fmt.origin) if identical else None
    keep_offsets = fmt.keep_offsets
    compress_ahead = fmt.compress_ahead
    out: list[tuple[Any, PendingBatch]] = []
    builder: RecordBatchBuilder | SplicedBuilder | None = None
    append: Any = None
    count = 0
    first_ts = 0
    offsets: list[int] = []
    last_offset = -1
    filtered = 0

    epoch = state.fetched_epoch
    reopened: PendingBatch | None = None
    if reopen is not None:
        builder, reopened = reopen
        append = builder.append if type(builder) is RecordBatchBuilder else None
        count, first_ts = builder.records, reopened.first_timestamp_ms
        # The same list: what the sink will get for the batch (``keep_offsets``).
        offsets = reopened.source_offsets if isinstance(reopened.source_offsets, list) else []
        last_offset = reopened.next_source_offset - 1

    def finish(next_offset: int) -> None:
        nonlocal reopened
        assert builder is not None
        builder.records = count
        if reopened is not None:
            # Still the batch the producer holds: it now ends further on.
            reopened.next_source_offset = next_offset
            reopened.records = count
            reopened.size = builder.size()
            reopened.source_offsets = offsets if keep_offsets else None
            reopened.leader_epoch = epoch
            reopened = None
            return
        out.append(
            (
                builder,
                PendingBatch(
                    resolved_future(), next_offset, count, builder.size(), first_ts, offsets, leader_epoch=epoch
                ),
            )
        )

    def start_batch(first: Any) -> Any:
        nonlocal builder, count, offsets, first_ts
        builder = RecordBatchBuilder(fmt.codec, fmt.batch_bytes, transactional=fmt.transactional)
        count, offsets, first_ts = 0, [], first.timestamp
        return builder.append

    for item in records:
        kind = type(item)
        if kind is SplicedBatch:
            if type(builder) is not SplicedBuilder:
                if count:
                    finish(last_offset + 1)
                builder, count = None, 0
            start, end = item.start_offset, item.next_offset
            while start < end:
                if builder is None:
                    builder = SplicedBuilder(fmt.batch_bytes, transactional=fmt.transactional, codec=fmt.codec)
                    count, offsets = 0, []
                assert type(builder) is SplicedBuilder
                appended, stop, left_out, copied = builder.splice(item.buffer, start, provenance)
                filtered += left_out
                if appended:
                    if not count:
                        first_ts = builder.base_timestamp
                    count += appended
                    last_offset = stop - 1 if copied is None else copied[-1]
                    if keep_offsets:
                        offsets.extend(range(start, stop) if copied is None else copied)
                if stop < end:
                    # Full: the rest of the source batch goes into the next producer batch.
                    if appended:
                        epoch = max(epoch, item.leader_epoch)
                    if count:
                        finish(last_offset + 1)
                    elif stop <= start:
                        raise ValueError(f"a spliced batch of {state.source} made no progress at offset {start}")
                    builder, count = None, 0
                start = stop
            last_offset = end - 1
            epoch = max(epoch, item.leader_epoch)
            continue
        if kind is RawBatch:
            if count:
                finish(last_offset + 1)
                builder, count = None, 0
            last_offset = item.next_offset - 1
            epoch = max(epoch, item.leader_epoch)
            forwarded = ForwardedBuilder(item, transactional=fmt.transactional)
            source_offsets = range(item.base_offset, item.next_offset) if keep_offsets else None
            pending = PendingBatch(
                resolved_future(),
                item.next_offset,
                item.record_count,
                item.records_size,
                item.first_timestamp,
                source_offsets,
                leader_epoch=epoch,
            )
            out.append((forwarded, pending))
            continue
        # A DecodedBatch, or a single record of an old-format batch (aiokafka's own ConsumerRecord).
        if type(builder) is SplicedBuilder:
            if count:
                finish(last_offset + 1)
            builder, count = None, 0
        item_epoch = item.leader_epoch if kind is DecodedBatch else -1
        item_start = last_offset
        for record in item.records if kind is DecodedBatch else (item,):
            headers = record.headers
            if identical:
                origin = None
                for name, value in headers:
                    if name == PROVENANCE_HEADER:
                        origin = value
                        break
                if origin == loop_origin:
                    filtered += 1
                    continue
                if origin is None:
                    headers = [*headers, stamp]
            if builder is None:
                append = start_batch(record)
            if append(count, record.timestamp, record.key, record.value, headers) is None:
                # Full (the first record of a batch is always taken, whatever its size).
                if last_offset > item_start:
                    epoch = max(epoch, item_epoch)  # the finished batch holds records of this item
                finish(last_offset + 1)
                if compress_ahead is not None and type(builder) is RecordBatchBuilder:
                    builder.compress_ahead(compress_ahead)  # nothing more goes into it
                append = start_batch(record)
                append(0, record.timestamp, record.key, record.value, headers)
            count += 1
            last_offset = record.offset
            if keep_offsets:
                offsets.append(last_offset)
        epoch = max(epoch, item_epoch)
    state.metrics.records_filtered += filtered
    state.fetched_epoch = epoch
    if count:
        finish(position)
    elif out:
        out[-1][1].next_source_offset = position
        out[-1][1].leader_epoch = epoch
    return out
