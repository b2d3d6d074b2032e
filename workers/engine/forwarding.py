"""Batch forwarding: which source record batches travel to the target as they are, without decoding.

Decoding every record and encoding it again into a producer batch was most of the engine's CPU
(docs/performance.md). When nothing in a batch needs to change, the batch itself can travel: the copier hands the
source batch bytes to the producer, which only stamps its own producer id, epoch and sequence (and the CRC those
fields are covered by). The broker assigns target offsets to the whole batch, so the offset map of a forwarded
batch is one contiguous run.

A batch is forwarded only when it is a plain data batch the target must hold unchanged:

* magic 2, CreateTime timestamps, no delete horizon, not a control batch;
* consecutive offsets (no compaction gaps: a produce request's offsets are assigned from the record count);
* compressed with the target's codec (or both uncompressed), so ``targetCompressionType`` still holds;
* at least 64 KiB: smaller batches are re-batched, which makes fewer, larger produce requests;
* at most 1 MiB (Kafka's default max.message.bytes), so it fits a target topic whose configuration differs;
* wholly at or after the fetch position (a batch the copy stands in the middle of is decoded from there).

Every other uncompressed source batch (too small to forward, or going to a compressed target) is spliced
instead (``splices``): its records, still encoded, are copied into a producer batch with other batches' records
(``workers/engine/_splice.c``); only each record's offset and timestamp deltas are written anew, and for a
compressed target the producer batch's records are compressed whole when it is built.

Every other batch is decoded into aiokafka's C record objects (offset, timestamp, key, value, headers), not
into ``ConsumerRecord`` objects, which cost more to build than the decoding itself. Loop prevention in IDENTICAL
naming reads and stamps a header on every record, so that mode never forwards (``NEVER``); the splice reads and
stamps that header itself, so it splices in both modes.

This module holds the rules and the items the fetch yields; the fetch itself reaches into aiokafka's fetcher
(``workers/engine/aiokafka_hooks.py``).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

# Offsets in a v2 record batch header (KIP-98).
LENGTH_END = 12  # baseOffset int64, batchLength int32: batchLength counts the bytes after this point
CRC_AT = 17
ATTRIBUTES_AT = 21
PRODUCER_STATE_AT = 43  # producerId int64, producerEpoch int16, baseSequence int32
HEADER_SIZE = 61
# Kafka's default max.message.bytes: a larger source batch is split into producer batches the target accepts
# even when its topic configuration was not copied.
MAX_FORWARDED_BATCH_BYTES = 1024 * 1024
# A produce request carries one batch per partition and aiokafka keeps one request in flight per broker, so
# forwarding small batches makes small requests: 16 KiB source batches (the Java producer's default batch.size)
# copied at a third of the speed of re-batching them into 512 KiB producer batches (docs/performance.md).
MIN_FORWARDED_BATCH_BYTES = 64 * 1024
NEVER = 1 << 62  # a min_batch_bytes no batch reaches: every record decoded

CODEC_MASK = 0x07
LOG_APPEND_TIME = 0x08
TRANSACTIONAL = 0x10
CONTROL = 0x20
DELETE_HORIZON = 0x40

BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")  # the whole 61-byte header


class BatchHeader(NamedTuple):
    """The 61-byte header of a v2 record batch."""

    base_offset: int
    length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @classmethod
    def parse(cls, buffer: Any, position: int = 0) -> BatchHeader:
        return cls._make(BATCH_HEADER.unpack_from(buffer, position))

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL)

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL)


class ForwardBatches:
    """Passed as a consumer's ``key_deserializer`` to make its fetches yield ``RawBatch`` items where
    ``forwards`` allows, ``SplicedBatch`` items where ``splices`` allows, and ``DecodedBatch`` items (aiokafka's C
    records: offset, timestamp, key, value, headers) for the rest. Source batches in an old message format
    (magic 0 or 1) come as ``ConsumerRecord`` objects."""

    def __init__(
        self,
        target_codec: int,
        *,
        min_batch_bytes: int = MIN_FORWARDED_BATCH_BYTES,
        max_batch_bytes: int = MAX_FORWARDED_BATCH_BYTES,
        splice: bool = False,
    ) -> None:
        self.target_codec = target_codec
        self.min_batch_bytes = min_batch_bytes
        self.max_batch_bytes = max_batch_bytes
        self.splice = splice

    def __call__(self, key: bytes | None) -> bytes | None:
        return key

    def forwards(self, header: BatchHeader, size: int, fetch_position: int) -> bool:
        """Whether a data batch of ``size`` bytes may be written as it is (see the module's rules)."""
        return (
            header.base_offset >= fetch_position
            and header.record_count == header.last_offset_delta + 1
            and self.min_batch_bytes <= size <= self.max_batch_bytes
            and header.attributes & CODEC_MASK == self.target_codec
            and not header.attributes & (LOG_APPEND_TIME | DELETE_HORIZON)
        )

    def splices(self, header: BatchHeader) -> bool:
        """Whether a data batch that is not forwarded has its records spliced (see the module's rules)."""
        return (
            self.splice
            and header.record_count == header.last_offset_delta + 1
            and not header.attributes & (CODEC_MASK | LOG_APPEND_TIME | DELETE_HORIZON)
        )


class RawBatch:
    """One source record batch to be written to the target as it is."""

    __slots__ = ("base_offset", "buffer", "first_timestamp", "leader_epoch", "record_count")

    def __init__(
        self, buffer: memoryview, base_offset: int, record_count: int, first_timestamp: int, leader_epoch: int = -1
    ) -> None:
        self.buffer = buffer
        self.base_offset = base_offset
        self.record_count = record_count
        self.first_timestamp = first_timestamp
        # The source partition's leader epoch that wrote it: where the source log may diverge after a truncation.
        self.leader_epoch = leader_epoch

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count

    @property
    def records_size(self) -> int:
        """Bytes of the encoded records (compressed size for a compressed batch), the copy's byte count."""
        return len(self.buffer) - HEADER_SIZE


class SplicedBatch:
    """One uncompressed source batch whose records from ``start_offset`` on (consecutive offsets up to
    ``next_offset``) are copied into producer batches still encoded."""

    __slots__ = ("buffer", "leader_epoch", "next_offset", "start_offset")

    def __init__(self, buffer: memoryview, start_offset: int, next_offset: int, leader_epoch: int = -1) -> None:
        self.buffer = buffer
        self.start_offset = start_offset
        self.next_offset = next_offset
        self.leader_epoch = leader_epoch


class DecodedBatch:
    """The records of one source batch that is not forwarded, decoded (aiokafka's C ``DefaultRecord`` objects)."""

    __slots__ = ("leader_epoch", "records", "size")

    def __init__(self, records: list[Any], leader_epoch: int = -1, size: int = 0) -> None:
        self.records = records
        self.leader_epoch = leader_epoch
        # Bytes of the batch as fetched: what holding it costs, near enough (compressed batches decode larger).
        self.size = size


# A record of an old-format (v0/v1) batch also costs its object and offsets, not only its key and value.
LEGACY_RECORD_OVERHEAD = 64


def fetched_records(item: Any) -> int:
    """Records one item of the forwarding fetch holds (see ``fetched_size``)."""
    kind = type(item)
    if kind is RawBatch:
        return int(item.record_count)
    if kind is SplicedBatch:
        return int(item.next_offset - item.start_offset)
    if kind is DecodedBatch:
        return len(item.records)
    return 1


def fetched_size(item: Any) -> int:
    """Bytes one item of the forwarding fetch holds: a ``RawBatch``, a ``SplicedBatch``, a ``DecodedBatch`` or a
    record of an old-format batch (aiokafka's ``ConsumerRecord``)."""
    kind = type(item)
    if kind is RawBatch or kind is SplicedBatch:
        return len(item.buffer)
    if kind is DecodedBatch:
        return int(item.size)
    return int(max(item.serialized_key_size, 0) + max(item.serialized_value_size, 0)) + LEGACY_RECORD_OVERHEAD
