"""Batch forwarding: copy source record batches to the target without decoding their records.

Decoding every record into a ``ConsumerRecord`` and encoding it again into a producer batch was most of the
engine's CPU (docs/performance.md). When nothing in a batch needs to change, the batch itself can travel:
the copier hands the source batch bytes to the producer, which only stamps its own producer id, epoch and
sequence (and the CRC those fields are covered by). The broker assigns target offsets to the whole batch,
so the offset map of a forwarded batch is one contiguous run.

A batch is forwarded only when it is a plain data batch the target must hold unchanged:

* magic 2, CreateTime timestamps, no delete horizon, not a control batch;
* consecutive offsets (no compaction gaps: a produce request's offsets are assigned from the record count);
* compressed with the target's codec (or both uncompressed), so ``targetCompressionType`` still holds;
* at least 64 KiB: smaller batches are re-batched, which makes fewer, larger produce requests;
* at most 1 MiB (Kafka's default max.message.bytes), so it fits a target topic whose configuration differs;
* wholly at or after the fetch position (a batch the copy stands in the middle of is decoded from there).

Every other batch is decoded into aiokafka's C record objects (offset, timestamp, key, value, headers), not
into ``ConsumerRecord`` objects, which cost more to build than the decoding itself. Loop prevention in IDENTICAL
naming reads and stamps a header on every record, so that mode never forwards (``NEVER``) but decodes the same
way.

aiokafka has no public hook for raw batches: ``install()`` wraps two names in its fetcher module. The wrap
changes nothing for other consumers in the process; only a consumer whose ``key_deserializer`` is a
``ForwardBatches`` instance gets the forwarding iterator.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import aiokafka.consumer.fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException, KafkaError
from aiokafka.record._crecords.cutil import crc32c_cython
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

# Offsets in a v2 record batch header (KIP-98).
_LENGTH_END = 12  # baseOffset int64, batchLength int32: batchLength counts the bytes after this point
_MAGIC = 16
_CRC = 17
_ATTRIBUTES = 21
_PRODUCER_STATE = 43  # producerId int64, producerEpoch int16, baseSequence int32
HEADER_SIZE = 61
# Kafka's default max.message.bytes: a larger source batch is split into producer batches the target accepts
# even when its topic configuration was not copied.
MAX_FORWARDED_BATCH_BYTES = 1024 * 1024
# A produce request carries one batch per partition and aiokafka keeps one request in flight per broker, so
# forwarding small batches makes small requests: 16 KiB source batches (the Java producer's default batch.size)
# copied at a third of the speed of re-batching them into 512 KiB producer batches (docs/performance.md).
MIN_FORWARDED_BATCH_BYTES = 64 * 1024
NEVER = 1 << 62  # a min_batch_bytes no batch reaches: every record decoded

_HEAD = struct.Struct(">qiibIhiqqqhii")  # the whole 61-byte header
_PRODUCER = struct.Struct(">qhi")
_BASE_OFFSET = struct.Struct(">q")
_LEADER_EPOCH = struct.Struct(">i")
_CRC_FIELD = struct.Struct(">I")
_ATTRIBUTES_FIELD = struct.Struct(">h")

_CODEC_MASK = 0x07
_LOG_APPEND_TIME = 0x08
_TRANSACTIONAL = 0x10
_CONTROL = 0x20
_DELETE_HORIZON = 0x40


class ForwardBatches:
    """Passed as a consumer's ``key_deserializer`` to make its fetches yield ``RawBatch`` items where possible
    and ``DecodedBatch`` items (aiokafka's C records: offset, timestamp, key, value, headers) for the rest.
    Source batches in an old message format (magic 0 or 1) come as ``ConsumerRecord`` objects."""

    def __init__(
        self,
        target_codec: int,
        *,
        min_batch_bytes: int = MIN_FORWARDED_BATCH_BYTES,
        max_batch_bytes: int = MAX_FORWARDED_BATCH_BYTES,
    ) -> None:
        self.target_codec = target_codec
        self.min_batch_bytes = min_batch_bytes
        self.max_batch_bytes = max_batch_bytes

    def __call__(self, key: bytes | None) -> bytes | None:
        return key


class RawBatch:
    """One source record batch to be written to the target as it is."""

    __slots__ = ("base_offset", "buffer", "first_timestamp", "record_count")

    def __init__(self, buffer: memoryview, base_offset: int, record_count: int, first_timestamp: int) -> None:
        self.buffer = buffer
        self.base_offset = base_offset
        self.record_count = record_count
        self.first_timestamp = first_timestamp

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count

    @property
    def records_size(self) -> int:
        """Bytes of the encoded records (compressed size for a compressed batch), the copy's byte count."""
        return len(self.buffer) - HEADER_SIZE


class DecodedBatch:
    """The records of one source batch that is not forwarded, decoded (aiokafka's C ``DefaultRecord`` objects)."""

    __slots__ = ("records",)

    def __init__(self, records: list[Any]) -> None:
        self.records = records


class ForwardedBuilder:
    """Stands in for aiokafka's ``BatchBuilder``: the producer sets its producer state, then takes the bytes."""

    def __init__(self, batch: RawBatch, *, transactional: bool) -> None:
        self._buffer = bytearray(batch.buffer)
        self._records = batch.record_count
        attributes = _ATTRIBUTES_FIELD.unpack_from(self._buffer, _ATTRIBUTES)[0] & ~(_TRANSACTIONAL | _CONTROL)
        if transactional:
            attributes |= _TRANSACTIONAL
        _ATTRIBUTES_FIELD.pack_into(self._buffer, _ATTRIBUTES, attributes)
        # As a producer writes them: the broker assigns the offsets and the leader epoch, and refuses a batch
        # whose base offset is not 0. Without an idempotent producer it must not carry the source's identity.
        _BASE_OFFSET.pack_into(self._buffer, 0, 0)
        _LEADER_EPOCH.pack_into(self._buffer, _LENGTH_END, -1)
        _PRODUCER.pack_into(self._buffer, _PRODUCER_STATE, -1, -1, -1)
        self._built = False

    def append(self, **_: Any) -> None:
        return None

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def size(self) -> int:
        return len(self._buffer)

    def record_count(self) -> int:
        return self._records

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        _PRODUCER.pack_into(self._buffer, _PRODUCER_STATE, producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytearray:
        if not self._built:
            # The CRC covers everything from the attributes on, producer state included.
            _CRC_FIELD.pack_into(self._buffer, _CRC, crc32c_cython(memoryview(self._buffer)[_ATTRIBUTES:]))
            self._built = True
        return self._buffer


class RecordBatchBuilder:
    """Stands in for aiokafka's ``BatchBuilder`` for decoded records. The copier appends through ``append``,
    aiokafka's C builder method itself (``append(relative_offset, timestamp, key, value, headers)``, None when
    full), counting the records itself; ``BatchBuilder.append`` cost more per record than the encoding."""

    __slots__ = ("_buffer", "_builder", "append", "records")

    def __init__(self, codec: int, batch_bytes: int, *, transactional: bool) -> None:
        self._builder = DefaultRecordBatchBuilder(
            2,
            codec,
            is_transactional=int(transactional),
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=0,
            batch_size=batch_bytes,
        )
        self.append = self._builder.append
        self.records = 0
        self._buffer: bytearray | None = None

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def size(self) -> int:
        return len(self._buffer) if self._buffer is not None else int(self._builder.size())

    def record_count(self) -> int:
        return self.records

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self._builder.set_producer_state(producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytearray:
        if self._buffer is None:
            self._buffer = self._builder.build()
        return self._buffer


class _RawRecords:
    """aiokafka's ``MemoryRecords`` that also keeps the fetched bytes, for ``ForwardingPartitionRecords``."""

    __slots__ = ("_records", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._records = _original_memory_records(raw)

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        return self._records.next_batch()

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())


_original_memory_records: Any = aiokafka_fetcher.MemoryRecords
_original_partition_records: Any = aiokafka_fetcher.PartitionRecords


class ForwardingPartitionRecords(_original_partition_records):  # type: ignore[misc]
    """aiokafka's per-partition fetch iterator, yielding a ``RawBatch`` for every batch that can be forwarded
    and a ``DecodedBatch`` of ``DefaultRecord`` objects for every other batch."""

    def __init__(
        self, tp: Any, records: _RawRecords, aborted: Any, fetch_offset: int, forward: ForwardBatches, *rest: Any
    ) -> None:
        self._raw = records.raw
        self._target_codec = forward.target_codec
        self._min_batch_bytes = forward.min_batch_bytes
        self._max_batch_bytes = forward.max_batch_bytes
        super().__init__(tp, records, aborted, fetch_offset, None, *rest)

    def _unpack_records(self) -> Iterator[Any]:
        raw = self._raw
        view = memoryview(raw)
        end = len(raw)
        pos = 0
        read_committed = self._isolation_level == aiokafka_fetcher.READ_COMMITTED
        while end - pos >= HEADER_SIZE:
            (
                base_offset,
                length,
                _leader_epoch,
                magic,
                crc,
                attributes,
                last_delta,
                first_timestamp,
                _max_timestamp,
                producer_id,
                _epoch,
                _sequence,
                count,
            ) = _HEAD.unpack_from(raw, pos)
            batch_end = pos + _LENGTH_END + length
            if batch_end > end:
                break  # a partial batch at the end of a fetch response: fetched again from its start
            if magic != 2:
                # Old message formats: aiokafka's own path for the rest of this fetch.
                self._records = _original_memory_records(raw[pos:])
                yield from super()._unpack_records()
                return
            buffer = view[pos:batch_end]
            pos = batch_end
            if self._check_crcs and crc32c_cython(buffer[_ATTRIBUTES:]) != crc:
                raise CorruptRecordException(f"Invalid CRC - {self._tp}")
            next_offset = base_offset + last_delta + 1
            if read_committed and producer_id != -1:
                self._consume_aborted_up_to(base_offset)
                if attributes & _CONTROL:
                    marker = next(DefaultRecordBatch(bytes(buffer)), None)
                    if marker is None:
                        raise KafkaError("Control batch did not contain any records")
                    if ControlRecord.parse(marker.key) == ABORT_MARKER:
                        self._aborted_producers.discard(producer_id)
                if attributes & _TRANSACTIONAL and producer_id in self._aborted_producers:
                    self.next_fetch_offset = next_offset
                    continue
            if attributes & _CONTROL:
                self.next_fetch_offset = next_offset
                continue
            if (
                base_offset >= self.next_fetch_offset
                and count == last_delta + 1
                and self._min_batch_bytes <= len(buffer) <= self._max_batch_bytes
                and attributes & _CODEC_MASK == self._target_codec
                and not attributes & (_LOG_APPEND_TIME | _DELETE_HORIZON)
            ):
                self.next_fetch_offset = next_offset
                yield RawBatch(buffer, base_offset, count, first_timestamp)
                continue
            # The C records as they are, a whole batch per item: building a ConsumerRecord per record, or
            # handing records out one by one through this generator, cost more than decoding them.
            decoded = DefaultRecordBatch(bytes(buffer))
            if base_offset >= self.next_fetch_offset:
                records = list(decoded)
            else:
                records = [record for record in decoded if record.offset >= self.next_fetch_offset]
            self.next_fetch_offset = next_offset
            if records:
                yield DecodedBatch(records)


def _partition_records(
    tp: Any, records: Any, aborted: Any, fetch_offset: int, key_deserializer: Any, *rest: Any
) -> Any:
    if isinstance(key_deserializer, ForwardBatches) and isinstance(records, _RawRecords):
        return ForwardingPartitionRecords(tp, records, aborted, fetch_offset, key_deserializer, *rest)
    if isinstance(records, _RawRecords):
        records = records._records
    return _original_partition_records(tp, records, aborted, fetch_offset, key_deserializer, *rest)


def install() -> None:
    """Let consumers created with a ``ForwardBatches`` key deserializer fetch raw batches (idempotent)."""
    aiokafka_fetcher.MemoryRecords = _RawRecords
    aiokafka_fetcher.PartitionRecords = _partition_records
