"""The auditor: compares what a replicator copied with its source, record by record, following the offset map.

Plain asyncio over aiokafka; it knows nothing of the fleet, the database or the API. The caller gives the
offset map's runs of one source partition (``models/offset_map.py``: source offsets ``[s0, s1)`` are the target
records ``[t0, t1)``, in order) and the range to check. Both partitions are streamed once, side by side, with
``read_committed`` consumers (aborted records and transaction markers are never compared), so memory stays
bounded whatever the partition's size.

Each source record is compared with the target record the map says it became, by a digest of its key, value,
headers (Ferry's own provenance header aside) and timestamp:

- **matched**: the digests agree;
- **differing**: the target record at that offset is another record;
- **missing**: a source record the map skips (never copied), or whose target record is gone (deleted from the
  target, by DeleteRecords or retention);
- **duplicated**: a target record no run maps to whose digest is a source record's (an at-least-once re-copy);
- **unexpected**: a target record no run maps to that matches no source record (written by someone else);
- **filtered**: source records the replicator does not copy by design (IDENTICAL naming: records whose origin is
  the target cluster);
- **unchecked** spans: source offsets that cannot be compared, with the reason (deleted from the source before
  the audit, before the replicator's first copied record, not copied yet).

Inside an inexact run (the map thinned several runs into one) offsets are not known record by record: source
records are paired with target records in order, which is how the copier wrote them.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from workers.engine.connection import ClusterConnection, client_kwargs
from workers.engine.spec import PROVENANCE_HEADER


class Run(Protocol):
    """One run of the offset map (``models/offset_map.py:Run`` is one): source offsets ``[source_start,
    source_end)`` became the target records ``[target_start, target_end)``, in order."""

    @property
    def source_start(self) -> int: ...
    @property
    def source_end(self) -> int: ...
    @property
    def target_start(self) -> int: ...
    @property
    def target_end(self) -> int: ...


def _exact(run: Run) -> bool:
    return run.source_end - run.source_start == run.target_end - run.target_start


# Offsets listed per kind of problem; the counts are always complete.
SAMPLE_LIMIT = 100
# Target records no run maps to, held until a later source record shows them to be duplicates. Beyond this many,
# the oldest are reported as unexpected (their duplicates, if any, lie too far apart to be paired).
PENDING_LIMIT = 200_000
# Source digests remembered to recognise a duplicate that lands after its record's mapped copy.
RECENT_LIMIT = 200_000
FETCH_RECORDS = 20_000
POLL_TIMEOUT_MS = 2_000

_PREFIX = struct.Struct(">qii")  # timestamp, key length, value length (-1: null)
_LENGTHS = struct.Struct(">ii")  # a header's name length and value length (-1: null)


def record_digest(record: ConsumerRecord[Any, Any]) -> bytes:
    """Key, value, headers (Ferry's provenance header aside) and timestamp, as 8 bytes of SHA-256. One hash call
    over one joined buffer: the auditor digests every record of both partitions, so this is its hot path (SHA-256
    runs on the CPU's SHA extensions, about three times BLAKE2b's speed here)."""
    key, value = record.key, record.value
    parts = [
        _PREFIX.pack(record.timestamp, -1 if key is None else len(key), -1 if value is None else len(value)),
        key or b"",
        value or b"",
    ]
    for name, header in record.headers:
        if name == PROVENANCE_HEADER:
            continue
        encoded = name.encode()
        parts.append(_LENGTHS.pack(len(encoded), -1 if header is None else len(header)))
        parts.append(encoded)
        if header:
            parts.append(header)
    return sha256(b"".join(parts)).digest()[:8]


@dataclass
class Span:
    start: int
    end: int  # exclusive
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"fromOffset": self.start, "toOffset": self.end, "reason": self.reason}


@dataclass
class Finding:
    """How many records of one kind, and the first offsets of them."""

    count: int = 0
    offsets: list[Any] = field(default_factory=list)

    def add(self, offset: Any) -> None:
        self.count += 1
        if len(self.offsets) < SAMPLE_LIMIT:
            self.offsets.append(offset)


@dataclass
class PartitionAudit:
    source_topic: str
    target_topic: str
    partition: int
    from_offset: int = 0  # the source range compared: [from_offset, to_offset)
    to_offset: int = 0
    source_records: int = 0
    matched: int = 0
    filtered: int = 0
    missing: Finding = field(default_factory=Finding)  # source offsets
    differing: Finding = field(default_factory=Finding)  # [source offset, target offset]
    duplicated: Finding = field(default_factory=Finding)  # target offsets
    unexpected: Finding = field(default_factory=Finding)  # target offsets
    unchecked: list[Span] = field(default_factory=list)
    bytes_compared: int = 0
    seconds: float = 0.0
    position: int = 0  # the next source offset to compare (progress)

    @property
    def consistent(self) -> bool:
        return not (self.missing.count or self.differing.count or self.duplicated.count or self.unexpected.count)

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.source_topic,
            "targetTopic": self.target_topic,
            "partition": self.partition,
            "fromOffset": self.from_offset,
            "toOffset": self.to_offset,
            "consistent": self.consistent,
            "sourceRecords": self.source_records,
            "matched": self.matched,
            "filtered": self.filtered,
            "missing": {"count": self.missing.count, "sourceOffsets": self.missing.offsets},
            "differing": {
                "count": self.differing.count,
                "offsets": [{"sourceOffset": s, "targetOffset": t} for s, t in self.differing.offsets],
            },
            "duplicated": {"count": self.duplicated.count, "targetOffsets": self.duplicated.offsets},
            "unexpected": {"count": self.unexpected.count, "targetOffsets": self.unexpected.offsets},
            "unchecked": [span.to_json() for span in self.unchecked],
            "bytesCompared": self.bytes_compared,
            "seconds": round(self.seconds, 3),
        }


class AuditError(Exception):
    """The audit could not go on (a partition stopped answering); the message says which and why."""


class _Stream:
    """One partition read in order from a position, a record at a time, with a single record of look-ahead."""

    def __init__(self, consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, stall_s: float) -> None:
        self.consumer = consumer
        self.tp = tp
        self.end = end  # stop before this offset
        self.stall_s = stall_s
        self.next_offset = 0  # the offset after the last record taken, or the position sought
        self._buffer: list[ConsumerRecord[Any, Any]] = []
        self._index = 0
        self._exhausted = False

    def seek(self, offset: int) -> None:
        self.consumer.seek(self.tp, offset)
        self.next_offset = offset
        self._buffer, self._index, self._exhausted = [], 0, offset >= self.end

    async def peek(self) -> ConsumerRecord[Any, Any] | None:
        waited_since = time.monotonic()
        while self._index >= len(self._buffer):
            if self._exhausted:
                return None
            batches = await self.consumer.getmany(self.tp, timeout_ms=POLL_TIMEOUT_MS, max_records=FETCH_RECORDS)
            records = batches.get(self.tp, [])
            self._buffer = [r for r in records if r.offset < self.end]
            self._index = 0
            if await self.consumer.position(self.tp) >= self.end:
                self._exhausted = True
            elif records:
                waited_since = time.monotonic()
            elif time.monotonic() - waited_since > self.stall_s:
                raise AuditError(
                    f"{self.tp.topic}:{self.tp.partition} returned nothing for {self.stall_s:g}s before offset "
                    f"{self.end} (is the cluster reachable?)"
                )
        return self._buffer[self._index]

    def buffered(self) -> ConsumerRecord[Any, Any] | None:
        """The next record if it is already fetched (no await: the auditor's fast path), else None."""
        return self._buffer[self._index] if self._index < len(self._buffer) else None

    def take(self) -> None:
        self.next_offset = self._buffer[self._index].offset + 1
        self._index += 1


class _Auditor:
    def __init__(self, result: PartitionAudit, loop_origin: bytes | None) -> None:
        self.result = result
        self.loop_origin = loop_origin
        self.pending: OrderedDict[int, bytes] = OrderedDict()  # target offset -> digest, unmapped
        self.pending_by_digest: dict[bytes, list[int]] = {}
        self.recent: dict[bytes, int] = {}  # source digest -> source offset, the latest RECENT_LIMIT or so

    def unmapped_target(self, offset: int, digest: bytes) -> None:
        if digest in self.recent:
            self.result.duplicated.add(offset)
            return
        self.pending[offset] = digest
        self.pending_by_digest.setdefault(digest, []).append(offset)
        if len(self.pending) > PENDING_LIMIT:
            old_offset, old_digest = self.pending.popitem(last=False)
            self._unpend(old_digest, old_offset)
            self.result.unexpected.add(old_offset)

    def _unpend(self, digest: bytes, offset: int) -> None:
        offsets = self.pending_by_digest.get(digest)
        if offsets is not None:
            with contextlib.suppress(ValueError):
                offsets.remove(offset)
            if not offsets:
                del self.pending_by_digest[digest]

    def source_seen(self, offset: int, digest: bytes) -> None:
        if self.pending_by_digest:
            for duplicate in self.pending_by_digest.pop(digest, ()):
                self.pending.pop(duplicate, None)
                self.result.duplicated.add(duplicate)
        recent = self.recent
        recent[digest] = offset
        if len(recent) > 2 * RECENT_LIMIT:
            # Trimmed in bulk (dicts keep insertion order): the newest RECENT_LIMIT digests stay.
            self.recent = dict(list(recent.items())[-RECENT_LIMIT:])

    def finish(self) -> None:
        for offset in self.pending:
            self.result.unexpected.add(offset)
        self.pending.clear()
        self.pending_by_digest.clear()

    def is_filtered(self, record: ConsumerRecord[Any, Any]) -> bool:
        if self.loop_origin is None:
            return False
        return any(name == PROVENANCE_HEADER and value == self.loop_origin for name, value in record.headers)


def _consumer(connection: ClusterConnection) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **client_kwargs(connection, "audit"),
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        check_crcs=False,
    )


async def audit_partition(
    source: ClusterConnection,
    target: ClusterConnection,
    *,
    source_topic: str,
    target_topic: str,
    partition: int,
    runs: Sequence[Run],
    from_offset: int | None = None,
    to_offset: int | None = None,
    loop_origin: bytes | None = None,
    copied_from: int | None = None,
    progress: Callable[[PartitionAudit], Awaitable[None]] | None = None,
    progress_interval_s: float = 2.0,
    stall_s: float = 30.0,
) -> PartitionAudit:
    """Compare source ``[from_offset, to_offset)`` (default: all the source holds) with the target, following
    ``runs`` (sorted by source offset, non-overlapping). ``loop_origin``: the target cluster's id when the
    replicator drops records of that origin (IDENTICAL naming). ``copied_from``: the source offset the
    replicator's copy began at (the offset map's origin), when known; else its first run's start."""
    started = time.monotonic()
    result = PartitionAudit(source_topic, target_topic, partition)
    source_tp, target_tp = TopicPartition(source_topic, partition), TopicPartition(target_topic, partition)
    runs = sorted(runs, key=lambda r: r.source_start)
    source_consumer, target_consumer = _consumer(source), _consumer(target)
    await source_consumer.start()
    try:
        await target_consumer.start()
        try:
            source_consumer.assign([source_tp])
            target_consumer.assign([target_tp])
            source_start = (await source_consumer.beginning_offsets([source_tp]))[source_tp]
            source_end = (await source_consumer.end_offsets([source_tp]))[source_tp]
            target_end = (await target_consumer.end_offsets([target_tp]))[target_tp]
            low = source_start if from_offset is None else from_offset
            high = source_end if to_offset is None else min(to_offset, source_end)
            result.from_offset, result.to_offset = low, high
            checked_low, checked_high = _checkable(
                result, runs, low, high, source_start=source_start, copied_from=copied_from
            )
            result.position = checked_low
            if checked_low < checked_high:
                await _compare(
                    result,
                    _Auditor(result, loop_origin),
                    runs=runs,
                    source=_Stream(source_consumer, source_tp, checked_high, stall_s),
                    target=_Stream(target_consumer, target_tp, target_end, stall_s),
                    low=checked_low,
                    high=checked_high,
                    progress=progress,
                    progress_interval_s=progress_interval_s,
                    started=started,
                )
        finally:
            await target_consumer.stop()
    finally:
        await source_consumer.stop()
    result.position = result.to_offset
    result.seconds = time.monotonic() - started
    return result


def _checkable(
    result: PartitionAudit, runs: Sequence[Run], low: int, high: int, *, source_start: int, copied_from: int | None
) -> tuple[int, int]:
    """The part of ``[low, high)`` that can be compared; the rest is listed as unchecked with its reason."""
    if low >= high:
        return low, low
    checked_low, checked_high = low, high
    if checked_low < source_start:
        end = min(source_start, high)
        result.unchecked.append(Span(checked_low, end, "deleted from the source (retention or DeleteRecords)"))
        checked_low = end
    if not runs:
        if checked_low < high:
            result.unchecked.append(Span(checked_low, high, "nothing of this partition has been copied yet"))
        return high, high
    first = runs[0].source_start if copied_from is None else min(copied_from, runs[0].source_start)
    last = runs[-1].source_end
    if checked_low < first:
        end = min(first, high)
        result.unchecked.append(
            Span(checked_low, end, "before the replicator's first copied record (its starting position)")
        )
        checked_low = end
    if checked_high > last:
        start = max(last, checked_low)
        result.unchecked.append(Span(start, checked_high, "not copied yet (or not yet in the offset map)"))
        checked_high = start
    return checked_low, max(checked_low, checked_high)


async def _compare(
    result: PartitionAudit,
    auditor: _Auditor,
    *,
    runs: Sequence[Run],
    source: _Stream,
    target: _Stream,
    low: int,
    high: int,
    progress: Callable[[PartitionAudit], Awaitable[None]] | None,
    progress_interval_s: float,
    started: float,
) -> None:
    # The hot loop of the auditor: every source record passes here once, so lookups are hoisted into locals.
    index = next((i for i, run in enumerate(runs) if run.source_end > low), len(runs))
    source.seek(low)
    run: Run | None = runs[index]
    assert run is not None
    exact = _exact(run)
    if not exact and low > run.source_start:
        # Inside an inexact run offsets are paired in order from the run's start: compare from there.
        low = run.source_start
        source.seek(low)
    target.seek(run.target_start + max(0, low - run.source_start) if exact else run.target_start)
    inexact_next = run.target_start  # inside an inexact run: the next target offset to pair
    filtering = auditor.loop_origin is not None
    missing, seen = result.missing, auditor.source_seen
    reported = time.monotonic()
    count = 0
    while True:
        record = source.buffered() or await source.peek()
        if record is None:
            break
        source.take()
        offset = record.offset
        count += 1
        if filtering and auditor.is_filtered(record):
            result.filtered += 1
            continue
        digest = record_digest(record)
        result.bytes_compared += (len(record.key) if record.key else 0) + (len(record.value) if record.value else 0)
        if run is not None and run.source_end <= offset:
            while index < len(runs) and runs[index].source_end <= offset:
                index += 1
            run = runs[index] if index < len(runs) else None
            if run is not None:
                exact, inexact_next = _exact(run), run.target_start
        if run is None or offset < run.source_start:
            missing.add(offset)  # the map skips it: never copied
            seen(offset, digest)
            continue
        if exact:
            expected = run.target_start + offset - run.source_start
        else:
            expected = inexact_next
            if expected >= run.target_end:
                missing.add(offset)
                seen(offset, digest)
                continue
        copy = target.buffered()
        if copy is None or copy.offset != expected:
            copy = await _target_at(target, expected, auditor)
        if copy is None:
            missing.add(offset)  # gone from the target
        else:
            target.take()
            if record_digest(copy) == digest:
                result.matched += 1
            else:
                result.differing.add([offset, copy.offset])
            if not exact:
                inexact_next = copy.offset + 1
        seen(offset, digest)
        if progress is not None and count % 1024 == 0 and time.monotonic() - reported >= progress_interval_s:
            reported = time.monotonic()
            result.source_records, result.position, result.seconds = count, offset + 1, reported - started
            await progress(result)
    result.source_records = count
    # Target records past the last compared one, up to where the source range ends on the target: unmapped.
    covered_end = _target_end_of(runs, high, target.next_offset)
    while (extra := await target.peek()) is not None and extra.offset < covered_end:
        target.take()
        auditor.unmapped_target(extra.offset, record_digest(extra))
    auditor.finish()


def _target_end_of(runs: Sequence[Run], high: int, position: int) -> int:
    """The target offset where the source range ``[.., high)`` ends: the target records below it that no compared
    source record claimed are unmapped. Inside an inexact run that ``high`` cuts, only what was paired is known."""
    last = None
    for run in runs:
        if run.source_start < high:
            last = run
    if last is None:
        return 0
    if high >= last.source_end:
        return last.target_end
    if _exact(last):
        return last.target_start + high - last.source_start
    return position


async def _target_at(target: _Stream, offset: int, auditor: _Auditor) -> ConsumerRecord[Any, Any] | None:
    """The target record at ``offset``, passing (as unmapped) the records before it; None when it is gone."""
    if offset < target.next_offset:
        target.seek(offset)  # the map went backwards on the target (a re-copy): read from there again
    record = await target.peek()
    while record is not None and record.offset < offset:
        target.take()
        auditor.unmapped_target(record.offset, record_digest(record))
        record = await target.peek()
    if record is None or record.offset > offset:
        return None
    return record
