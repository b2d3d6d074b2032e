"""Every use of aiokafka's internals, in one place, checked against the aiokafka release they were written for.

aiokafka has no public API for what the copier needs, so it reaches into these places:

1. **Raw batch fetching** (``install_batch_fetching``): the consumer's fetcher builds one ``PartitionRecords``
   iterator per fetched partition from a ``MemoryRecords``. Two names in ``aiokafka.consumer.fetcher`` are
   wrapped so that a consumer whose ``key_deserializer`` is a ``ForwardBatches`` gets ``RawBatch`` items
   (forwarded untouched) and ``DecodedBatch`` items (aiokafka's C records, without building ``ConsumerRecord``
   objects). Other consumers in the process are unaffected.
2. **Stand-in batch builders** (``ForwardedBuilder``, ``SplicedBuilder``, ``RecordBatchBuilder``):
   ``AIOKafkaProducer.send_batch`` takes an object shaped like its private ``BatchBuilder``; these stand in for
   it, one for a forwarded source batch, one for records spliced from uncompressed source batches, one wrapping
   aiokafka's C ``DefaultRecordBatchBuilder`` whose ``append`` the copier calls directly.
3. **The sender gate** (``gate_sender``): no hook exists between "batch ready" and "request sent", so the
   producer's ``Sender._send_produce_req`` is wrapped to refuse sending while the write gate is closed.
4. **Topic ids and leader epochs** (``topic_ids``, ``leader_epoch_ends``): a Metadata v12 and an
   OffsetForLeaderEpoch v3 request, built with aiokafka's protocol types, since aiokafka's own metadata requests
   stop at v5, before topics had ids, and it never asks where a leader epoch ends.
5. **Fetch pacing** (``pace_fetches``): a started consumer's ``fetch.min.bytes`` and ``fetch.max.wait.ms``
   changed as its assignment grows. aiokafka has no incremental fetch sessions (KIP-227: it sends session id 0,
   epoch -1), so every fetch lists, and every answer carries, every assigned partition: with thousands of
   partitions a fetch costs milliseconds of encoding and decoding whether or not they hold data.
6. **The gzip and lz4 encoders** (``RecordBatchBuilder``): aiokafka's C batch builder calls its module's
   ``gzip_encode`` with zlib level 9; Kafka's Java producer (MirrorMaker 2, the brokers' own recompression) uses
   zlib's default, 6 (``compression.gzip.level=-1``). That name is rebound to libdeflate at level 6: a standard
   gzip member, as small as zlib's at that level or smaller, written 2.5 times as fast, GIL released. Its
   ``lz4_encode`` (cramjam's frame compressor) holds the GIL while it compresses, so compressing on threads (9.)
   gained nothing, and at level 9 it runs LZ4 HC. It is rebound to python-lz4's frame encoder with LZ4's fast
   compressor, which releases the GIL and is what Java's producer runs at its default ``compression.lz4.level``
   (9 there selects lz4-java's ``fastCompressor``; only another level selects HC), in independent 64 KiB blocks
   as Java's ``Lz4BlockOutputStream`` writes them.
7. **Metadata decoding** (``install_metadata_decoders``): ``MetadataResponse_v5.decode`` (every aiokafka client's
   metadata refresh) and the Metadata v12 response of 4. are decoded in one pass over the bytes
   (``workers/engine/metadata_decode.py``) instead of aiokafka's generic schema walk, which cost microseconds per
   field of every partition of every topic asked for.
8. **Prompt close** (``install_prompt_close``): ``AIOKafkaConnection.close`` ends with the transport aborted, not
   only closed, so a client's ``close()``/``stop()`` never waits on a TLS peer's close_notify (see there why).
9. **Compression off the event loop** (``build_batches_aside``): the producer's ``Sender._send_produce_req`` is
   wrapped to build (compress) a request's decoded-record batches on a thread pool before aiokafka's
   ``create_request`` asks for their bytes on the event loop.
10. **Responses read whole** (``install_frame_reader``): every connection's ``asyncio.StreamReader`` (made in
   ``AIOKafkaConnection.connect`` with a 64 KiB limit) becomes a ``FrameReader``, which wakes aiokafka's read loop
   once a whole response is there rather than on every chunk, and does not pause the socket for each chunk of a
   response of megabytes. This relies on ``asyncio.StreamReader``'s private state of Python 3.11 as well.

Importing this module fails with a clear message on an aiokafka outside ``TESTED_RANGE``: every hook relies on
private names whose meaning an upgrade may change. Before widening the range, tests/engine/test_forwarding.py and
tests/engine/test_write_gate.py must pass on the new release.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

import aiokafka
import deflate
import google_crc32c
import lz4.frame

log = logging.getLogger(__name__)

TESTED_RANGE = ((0, 14), (0, 15))  # at least 0.14, below 0.15


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def check_version(version: str) -> None:
    low, high = TESTED_RANGE
    try:
        release = _release(version)
    except ValueError:
        release = (-1, -1)
    if not low <= release < high:
        raise ImportError(
            f"Ferry's engine uses aiokafka internals written for aiokafka {low[0]}.{low[1]}.x, but aiokafka "
            f"{version} is installed; install aiokafka>={low[0]}.{low[1]},<{high[0]}.{high[1]} "
            "(workers/engine/aiokafka_hooks.py lists what an upgrade must re-check)"
        )


check_version(aiokafka.__version__)

# Imported after the version check: on another release these names may not exist at all.
import aiokafka.consumer.fetcher as aiokafka_fetcher  # noqa: E402
import aiokafka.record._crecords.default_records as aiokafka_crecords  # noqa: E402
from aiokafka import AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.conn import AIOKafkaConnection, AIOKafkaProtocol  # noqa: E402
from aiokafka.errors import CorruptRecordException, KafkaError  # noqa: E402
from aiokafka.protocol.api import Request, RequestStruct, Response  # noqa: E402
from aiokafka.protocol.metadata import MetadataResponse_v5  # noqa: E402
from aiokafka.protocol.types import (  # noqa: E402
    AbstractType,
    Array,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    String,
    TaggedFields,
)
from aiokafka.record._crecords.cutil import crc32c_cython  # noqa: E402
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord  # noqa: E402
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder  # noqa: E402

from workers.engine.forwarding import (  # noqa: E402
    ATTRIBUTES_AT,
    BATCH_HEADER,
    CONTROL,
    CRC_AT,
    HEADER_SIZE,
    LENGTH_END,
    PRODUCER_STATE_AT,
    TRANSACTIONAL,
    BatchHeader,
    DecodedBatch,
    ForwardBatches,
    RawBatch,
    SplicedBatch,
)
from workers.engine.metadata_decode import decode_metadata_v5, decode_topic_listing_v12  # noqa: E402

try:
    from workers.engine import _splice  # type: ignore[attr-defined]
except ImportError:  # installed without its C extension: uncompressed batches are decoded as any other
    _splice = None
# Whether ``SplicedBuilder`` can be used: without it a copier must not ask its fetch for ``SplicedBatch`` items.
SPLICE_AVAILABLE = _splice is not None

_PRODUCER = struct.Struct(">qhi")
GZIP_CODEC = 1
SNAPPY_CODEC = 2
LZ4_CODEC = 3
ZSTD_CODEC = 4
_BASE_OFFSET = struct.Struct(">q")
_LEADER_EPOCH = struct.Struct(">i")
_CRC_FIELD = struct.Struct(">I")
_ATTRIBUTES_FIELD = struct.Struct(">h")


def _software_crc32c(data: bytes) -> int:
    return int(crc32c_cython(data))


# The CRC of every batch the copier reads (the fetch check) and forwards (the producer state it stamps is covered):
# aiokafka's table-driven CRC took 1 ms per MB, a fifth of all the engine's work on 1 KiB records in 16 KiB
# batches; google-crc32c's (SSE4.2) takes 0.2 ms with the copy it needs (it reads only bytes). A platform
# without its C extension gets its pure-Python fallback, slower than aiokafka's: then aiokafka's.
crc32c: Callable[[bytes], int] = google_crc32c.value if google_crc32c.implementation == "c" else _software_crc32c


# ---------------------------------------------------------------------- 5. fetch pacing


def pace_fetches(consumer: Any, min_bytes: int, max_wait_ms: int) -> None:
    """Used by every fetch request the consumer builds from now on (the fetcher reads both per request)."""
    fetcher = consumer._fetcher
    fetcher._fetch_min_bytes = min_bytes
    fetcher._fetch_max_wait_ms = max_wait_ms


# ---------------------------------------------------------------------- 3. the sender gate


class WritesFenced(KafkaError):  # type: ignore[misc]
    """The write gate closed (the unit of work's lease is gone): a queued batch was dropped, never sent."""


def gate_sender(producer: AIOKafkaProducer, allows: Callable[[TopicPartition], bool]) -> None:
    """Send no batch of a partition ``allows`` refuses: checked for every batch of every produce request, right
    before the request is written to the connection (a retried batch is checked again when it is sent again).

    A worker paused past its lease (GC, SIGSTOP, a frozen VM) would otherwise send what it had queued the moment
    it wakes, after the partition's new owner started writing; checking before each batch is handed over cannot
    catch batches already queued. Refused batches fail with ``WritesFenced``; the others of the request go.

    An idempotent producer numbered a refused batch when it drained it, so its partition's next batch leaves a gap
    and the broker refuses it (OutOfOrderSequenceNumber). That is kept on purpose: a batch queued behind the
    refused one must not land before it is sent again, and the broker's check is what stops it. The copier
    recovers with a new producer when a write fails that way (data and progress alike).
    """
    sender = producer._sender
    send = sender._send_produce_req

    async def gated(node_id: int, batches: dict[TopicPartition, Any]) -> None:
        allowed = {tp: batch for tp, batch in batches.items() if allows(tp)}
        for tp, batch in batches.items():
            if tp not in allowed:
                batch.failure(exception=WritesFenced(f"the lease of {tp} is not held; batch not sent"))
                sender._muted_partitions.discard(tp)
        if allowed:
            await send(node_id, allowed)  # unmutes the node and the allowed partitions when done
        else:
            sender._in_flight.discard(node_id)

    sender._send_produce_req = gated


def add_to_transaction(producer: AIOKafkaProducer, partitions: Iterable[TopicPartition]) -> None:
    """Register partitions with the producer's open transaction before anything is sent to them, so one
    AddPartitionsToTxn request covers them all: aiokafka adds a partition when a batch for it is appended, and the
    copier's progress records come after its data has been acknowledged, which cost a second round trip per
    transaction. A partition added and left without records only gets the transaction's marker."""
    manager = producer._txn_manager
    for tp in partitions:
        manager.maybe_add_partition_to_txn(tp)


# ---------------------------------------------------------------------- 2. stand-in batch builders


def _stamp_crc(buffer: bytearray) -> None:
    """Write a built batch's CRC: it covers everything from the attributes on, producer state included."""
    _CRC_FIELD.pack_into(buffer, CRC_AT, crc32c(bytes(memoryview(buffer)[ATTRIBUTES_AT:])))


class _CompleteBatch:
    """What every stand-in builder answers aiokafka alike: the copier hands the producer complete batches, so
    ``closed()`` is true from the start and the sender never waits out ``linger_ms`` for more."""

    __slots__ = ()

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True


class ForwardedBuilder(_CompleteBatch):
    """Stands in for aiokafka's ``BatchBuilder``: the producer sets its producer state, then takes the bytes."""

    def __init__(self, batch: RawBatch, *, transactional: bool) -> None:
        self._buffer = bytearray(batch.buffer)
        self._records = batch.record_count
        attributes = _ATTRIBUTES_FIELD.unpack_from(self._buffer, ATTRIBUTES_AT)[0] & ~(TRANSACTIONAL | CONTROL)
        if transactional:
            attributes |= TRANSACTIONAL
        _ATTRIBUTES_FIELD.pack_into(self._buffer, ATTRIBUTES_AT, attributes)
        # As a producer writes them: the broker assigns the offsets and the leader epoch, and refuses a batch
        # whose base offset is not 0. Without an idempotent producer it must not carry the source's identity.
        _BASE_OFFSET.pack_into(self._buffer, 0, 0)
        _LEADER_EPOCH.pack_into(self._buffer, LENGTH_END, -1)
        _PRODUCER.pack_into(self._buffer, PRODUCER_STATE_AT, -1, -1, -1)
        self._built = False

    def append(self, **_: Any) -> None:
        return None

    def size(self) -> int:
        return len(self._buffer)

    def record_count(self) -> int:
        return self._records

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        _PRODUCER.pack_into(self._buffer, PRODUCER_STATE_AT, producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytearray:
        if not self._built:
            _stamp_crc(self._buffer)
            self._built = True
        return self._buffer


class SplicedBuilder(_CompleteBatch):
    """Stands in for aiokafka's ``BatchBuilder`` for records spliced from uncompressed source batches
    (``workers/engine/_splice.c``): the records stay encoded, only their offset and timestamp deltas are written
    anew, and the header and CRC are written when the sender asks for the bytes. Like ``RecordBatchBuilder`` it
    takes more records (``splice``) until the sender takes it (``sealed``). For a compressing target codec the
    spliced records are compressed whole when the batch is built, with the functions aiokafka's builder uses
    (``build_batches_aside`` runs that build on the compression threads)."""

    __slots__ = (
        "_attributes",
        "_batch_bytes",
        "_buffer",
        "_built",
        "_codec",
        "_compressed",
        "_out",
        "_state",
        "base_timestamp",
        "compresses",
        "max_timestamp",
        "records",
        "sealed",
    )

    def __init__(self, batch_bytes: int, *, transactional: bool, codec: int = 0) -> None:
        use_codec(codec)
        self._buffer = bytearray(HEADER_SIZE)
        self._batch_bytes = batch_bytes
        self._codec = codec
        self.compresses = codec != 0
        self._attributes = (TRANSACTIONAL if transactional else 0) | codec
        self._state = (-1, -1, -1)
        self._built = False
        self._compressed: bytes | None = None
        self._out = self._buffer
        self.records = 0
        self.base_timestamp = 0
        self.max_timestamp = 0
        self.sealed = False

    def splice(
        self, batch: memoryview, from_offset: int, provenance: tuple[bytes, bytes, bytes] | None = None
    ) -> tuple[int, int, int, list[int] | None]:
        """Append ``batch``'s records from ``from_offset`` on while they fit; returns how many were appended, the
        source offset of the first that was not (the batch's end when all were), how many were left out, and with
        ``provenance`` (header name, loop origin, origin: IDENTICAL naming's loop prevention) the source offsets
        appended. A batch holding no record yet takes at least one, whatever its size."""
        appended, self.base_timestamp, self.max_timestamp, next_offset, left_out, offsets = _splice.splice(
            self._buffer,
            batch,
            self.records,
            self.base_timestamp,
            self.max_timestamp,
            from_offset,
            self._batch_bytes,
            provenance,
        )
        self.records += appended
        return appended, next_offset, left_out, offsets

    def size(self) -> int:
        return len(self._out) if self._built else len(self._buffer)

    def record_count(self) -> int:
        return self.records

    def ahead(self) -> None:
        """Nothing is built ahead of the send (``build_batches_aside`` asks)."""
        return None

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self.sealed = True
        self._state = (producer_id, producer_epoch, base_sequence)
        self._built = False

    def _build(self) -> bytearray:
        self.sealed = True
        if not self._built:
            if self._codec:
                if self._compressed is None:
                    # Compressed once: a new producer state (a retry) only rewrites the header and the CRC.
                    self._compressed = _encode(self._codec, memoryview(self._buffer)[HEADER_SIZE:])
                out = bytearray(HEADER_SIZE)
                out += self._compressed
            else:
                out = self._buffer
            # As a producer writes them: the broker assigns the offsets and the leader epoch.
            BATCH_HEADER.pack_into(
                out,
                0,
                0,
                len(out) - LENGTH_END,
                -1,
                2,
                0,
                self._attributes,
                self.records - 1,
                self.base_timestamp,
                self.max_timestamp,
                *self._state,
                self.records,
            )
            _stamp_crc(out)
            self._out = out
            self._built = True
        return self._out

    def built(self) -> bool:
        return self._built


# The names of aiokafka's C builder's compression functions, looked up when called: ``use_codec`` replaces two.
_ENCODERS = {
    GZIP_CODEC: "gzip_encode",
    SNAPPY_CODEC: "snappy_encode",
    LZ4_CODEC: "lz4_encode",
    ZSTD_CODEC: "zstd_encode",
}


def _encode(codec: int, payload: memoryview) -> bytes:
    """Compress a batch's records section as aiokafka's C builder would for ``codec``."""
    name = _ENCODERS.get(codec)
    if name is None:
        raise ValueError(f"unknown compression codec {codec}")
    return bytes(getattr(aiokafka_crecords, name)(payload))


GZIP_LEVEL = 6  # zlib's default, as Kafka's Java producer compresses gzip (compression.gzip.level=-1)


def gzip_encode_java_level(payload: Any, compresslevel: int | None = None) -> bytes:
    """One gzip member at the Java producer's level. libdeflate rather than zlib: a batch is compressed whole, so
    zlib's streaming buys nothing, and on 1 KiB text records libdeflate compresses 55 MB/s a core against zlib's 22
    for an output a few percent smaller."""
    return bytes(deflate.gzip_compress(payload, GZIP_LEVEL))


def use_java_gzip_level() -> None:
    """Make aiokafka's C batch builder compress gzip at the Java producer's level (idempotent)."""
    if aiokafka_crecords.gzip_encode is not gzip_encode_java_level:
        aiokafka_crecords.gzip_encode = gzip_encode_java_level


# Java's producer at its default compression.lz4.level (9) compresses with lz4-java's fastCompressor, which is
# LZ4_compress_default; HC only runs when another level is configured. python-lz4's level 0 is that compressor:
# level 9 here would be HC, about 7 times slower for the same size on Kafka's usual records.
LZ4_FAST = lz4.frame.COMPRESSIONLEVEL_MIN


def lz4_encode_releasing_gil(payload: Any) -> bytes:
    """A Kafka LZ4 frame (KIP-57: independent blocks, no content checksum) that other threads run beside."""
    return bytes(
        lz4.frame.compress(
            payload,
            compression_level=LZ4_FAST,
            block_size=lz4.frame.BLOCKSIZE_MAX64KB,  # as Java's KafkaLZ4BlockOutputStream
            block_linked=False,
            content_checksum=False,
            store_size=False,
        )
    )


def use_lz4_releasing_gil() -> None:
    """Make aiokafka's C batch builder compress lz4 without holding the GIL (idempotent)."""
    if aiokafka_crecords.lz4_encode is not lz4_encode_releasing_gil:
        aiokafka_crecords.lz4_encode = lz4_encode_releasing_gil


def use_codec(codec: int) -> None:
    """Before a builder compresses with ``codec``: gzip at the Java producer's level, lz4 by its fast compressor."""
    if codec == GZIP_CODEC:
        use_java_gzip_level()
    elif codec == LZ4_CODEC:
        use_lz4_releasing_gil()


class RecordBatchBuilder(_CompleteBatch):
    """Stands in for aiokafka's ``BatchBuilder`` for decoded records. The copier appends through ``append``,
    aiokafka's C builder method itself (``append(relative_offset, timestamp, key, value, headers)``, None when
    full), counting the records itself; ``BatchBuilder.append`` cost more per record than the encoding.

    ``compress_ahead`` builds (compresses) a full batch on a thread pool at once, while earlier batches are still
    being sent; the producer state the sender stamps later is then written into the built bytes with a new CRC,
    as ``ForwardedBuilder`` does."""

    __slots__ = ("_ahead", "_buffer", "_builder", "_size", "_state", "append", "compresses", "records", "sealed")

    def __init__(self, codec: int, batch_bytes: int, *, transactional: bool) -> None:
        use_codec(codec)
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
        self.compresses = codec != 0
        self.records = 0
        self._buffer: bytearray | None = None
        self._ahead: Future[bytearray] | None = None  # the build started by ``compress_ahead``
        self._size = 0  # the size before that build, which the C builder must not be asked for meanwhile
        self._state: tuple[int, int, int] | None = None  # producer state stamped while built ahead
        # Set once the producer's sender took the batch (it stamps the producer state and counts the records into
        # the partition's sequence then): from that moment on nothing may be appended. Until then the copier may
        # add the next poll's records to it (``build_batches``), instead of waiting for it to be sent.
        self.sealed = False

    def size(self) -> int:
        if self._buffer is not None:
            return len(self._buffer)
        return self._size if self._ahead is not None else int(self._builder.size())

    def record_count(self) -> int:
        return self.records

    def compress_ahead(self, pool: Executor) -> None:
        """Seal the batch and start building it on ``pool`` (once; the copier calls it for a full batch)."""
        if self._ahead is None and self._buffer is None:
            self.sealed = True
            self._size = int(self._builder.size())
            self._ahead = pool.submit(self._builder.build)

    def ahead(self) -> Future[bytearray] | None:
        return self._ahead if self._buffer is None else None

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self.sealed = True
        if self._ahead is not None:
            self._state = (producer_id, producer_epoch, base_sequence)
        else:
            self._builder.set_producer_state(producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytearray:
        self.sealed = True
        if self._buffer is None:
            if self._ahead is None:
                self._buffer = self._builder.build()
            else:
                buffer = self._ahead.result()  # done already when sent through ``build_batches_aside``
                if self._state is not None:
                    _PRODUCER.pack_into(buffer, PRODUCER_STATE_AT, *self._state)
                    _stamp_crc(buffer)
                self._buffer = buffer
        return self._buffer

    def built(self) -> bool:
        return self._buffer is not None


def decode_batch(buffer: bytes | memoryview) -> list[Any]:
    """The records of one v2 record batch as aiokafka's C ``DefaultRecord`` objects (offset, timestamp, key,
    value, headers)."""
    return list(DefaultRecordBatch(bytes(buffer)))


# ---------------------------------------------------------------------- 1. raw batch fetching


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
    """aiokafka's per-partition fetch iterator, yielding a ``RawBatch`` for every batch ``ForwardBatches``
    accepts and a ``DecodedBatch`` of ``DefaultRecord`` objects for every other batch."""

    def __init__(
        self, tp: Any, records: _RawRecords, aborted: Any, fetch_offset: int, forward: ForwardBatches, *rest: Any
    ) -> None:
        self._raw = records.raw
        self._forward = forward
        super().__init__(tp, records, aborted, fetch_offset, None, *rest)

    def _unpack_records(self) -> Iterator[Any]:
        raw = self._raw
        view = memoryview(raw)
        end = len(raw)
        pos = 0
        forward = self._forward
        read_committed = self._isolation_level == aiokafka_fetcher.READ_COMMITTED
        while end - pos >= HEADER_SIZE:
            header = BatchHeader.parse(raw, pos)
            batch_end = pos + LENGTH_END + header.length
            if batch_end > end:
                break  # a partial batch at the end of a fetch response: fetched again from its start
            if header.magic != 2:
                # Old message formats: aiokafka's own path for the rest of this fetch.
                self._records = _original_memory_records(raw[pos:])
                yield from super()._unpack_records()
                return
            if self._check_crcs and crc32c(raw[pos + ATTRIBUTES_AT : batch_end]) != header.crc:
                raise CorruptRecordException(f"Invalid CRC - {self._tp}")
            buffer = view[pos:batch_end]
            pos = batch_end
            next_offset = header.next_offset
            if read_committed and header.producer_id != -1:
                self._consume_aborted_up_to(header.base_offset)
                if header.is_control:
                    marker = next(DefaultRecordBatch(bytes(buffer)), None)
                    if marker is None:
                        raise KafkaError("Control batch did not contain any records")
                    if ControlRecord.parse(marker.key) == ABORT_MARKER:
                        self._aborted_producers.discard(header.producer_id)
                if header.is_transactional and header.producer_id in self._aborted_producers:
                    self.next_fetch_offset = next_offset
                    continue
            if header.is_control:
                self.next_fetch_offset = next_offset
                continue
            if forward.forwards(header, len(buffer), self.next_fetch_offset):
                self.next_fetch_offset = next_offset
                yield RawBatch(
                    buffer, header.base_offset, header.record_count, header.first_timestamp, header.leader_epoch
                )
                continue
            if forward.splices(header):
                start = max(header.base_offset, self.next_fetch_offset)
                self.next_fetch_offset = next_offset
                yield SplicedBatch(buffer, start, next_offset, header.leader_epoch)
                continue
            # The C records as they are, a whole batch per item: building a ConsumerRecord per record, or
            # handing records out one by one through this generator, cost more than decoding them.
            records = decode_batch(buffer)
            if header.base_offset < self.next_fetch_offset:
                records = [record for record in records if record.offset >= self.next_fetch_offset]
            self.next_fetch_offset = next_offset
            if records:
                yield DecodedBatch(records, header.leader_epoch, len(buffer))


def _partition_records(
    tp: Any, records: Any, aborted: Any, fetch_offset: int, key_deserializer: Any, *rest: Any
) -> Any:
    if isinstance(key_deserializer, ForwardBatches) and isinstance(records, _RawRecords):
        return ForwardingPartitionRecords(tp, records, aborted, fetch_offset, key_deserializer, *rest)
    if isinstance(records, _RawRecords):
        records = records._records
    return _original_partition_records(tp, records, aborted, fetch_offset, key_deserializer, *rest)


def install_batch_fetching() -> None:
    """Let consumers created with a ``ForwardBatches`` key deserializer fetch raw batches (idempotent)."""
    aiokafka_fetcher.MemoryRecords = _RawRecords
    aiokafka_fetcher.PartitionRecords = _partition_records


# ---------------------------------------------------------------------- 4. topic ids (Metadata v12)

# aiokafka speaks Metadata up to v5, which has no topic ids (KIP-516, Metadata v10+). A topic deleted and created
# again under the same name gets a new id: the only way to tell it from the topic a copy's progress belongs to.


class _Uuid(AbstractType[bytes]):  # type: ignore[misc]
    @classmethod
    def encode(cls, value: bytes) -> bytes:
        return value

    @classmethod
    def decode(cls, data: Any) -> bytes:
        value: bytes = data.read(16)
        if len(value) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        return value


class _MetadataResponseV12(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 12
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _MetadataRequestV12(RequestStruct):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 12
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = _MetadataResponseV12
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class _TopicIdsRequest(Request[_MetadataRequestV12]):  # type: ignore[misc]
    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[_MetadataRequestV12]) -> _MetadataRequestV12:
        return request_struct_class([(bytes(16), name, {}) for name in self.topics], False, False, {})


async def describe_named_topics(admin: Any, topics: list[str]) -> dict[str, tuple[int, bool, str | None]]:
    """Of these topics, each that answers without error: (partition count, internal, id hex or None), as
    ``describe_all_topics`` and decoded in the same single pass: aiokafka's own decoding of every partition's
    leader and replicas was a tenth of a worker's work thread for a replicator of 100 topics of 100 partitions,
    described every pass. Raises NotImplementedError for a broker older than Kafka 2.8."""
    response = await admin._send_request(_TopicIdsRequest(sorted(set(topics))))
    return _listing(response)


async def topic_ids(admin: Any, topics: list[str]) -> dict[str, str]:
    """The id (hex) of each of these topics that exists; a topic recreated under its name has a new one.

    Empty when the cluster cannot say (a broker older than Kafka 2.8): ids are then simply not compared."""
    if not topics:
        return {}
    try:
        described = await describe_named_topics(admin, topics)
    except (KafkaError, NotImplementedError) as exc:
        log.warning("topic ids unavailable: %s", exc)
        return {}
    return {name: topic_id for name, (_, _, topic_id) in described.items() if topic_id is not None}


class _AllTopicsRequest(_TopicIdsRequest):
    def build(self, request_struct_class: type[_MetadataRequestV12]) -> _MetadataRequestV12:
        return request_struct_class(None, False, False, {})  # a null topic array: every topic


async def describe_all_topics(admin: Any) -> dict[str, tuple[int, bool, str | None]]:
    """Every topic of the cluster that answers without error: (partition count, internal, id hex or None), in one
    Metadata request (v12, which also carries the topic ids, so a shared listing replaces a request per topic
    set). A broker older than Kafka 2.8 is asked the plain way, without ids."""
    try:
        response = await admin._send_request(_AllTopicsRequest([]))
    except NotImplementedError:
        return {
            entry["topic"]: (len(entry["partitions"]), bool(entry["is_internal"]), None)
            for entry in await admin.describe_topics(None)
            if entry["error_code"] == 0
        }
    return _listing(response)


def _listing(response: Any) -> dict[str, tuple[int, bool, str | None]]:
    """(partition count, internal, id hex or None) of each topic of a Metadata v12 answer without error."""
    found: dict[str, tuple[int, bool, str | None]] = {}
    # Decoded by decode_topic_listing_v12: the partition count in place of the partitions.
    for error_code, name, topic_id, is_internal, partition_count, *_ in response.topics:
        if error_code == 0 and name is not None:
            found[str(name)] = (partition_count, bool(is_internal), None if topic_id == bytes(16) else topic_id.hex())
    return found


class _OffsetForLeaderEpochResponseV3(Response):  # type: ignore[misc]
    API_KEY = 23
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            Array(
                ("topic", String("utf-8")),
                (
                    "partitions",
                    Array(("error_code", Int16), ("partition", Int32), ("leader_epoch", Int32), ("end_offset", Int64)),
                ),
            ),
        ),
    )


class _OffsetForLeaderEpochRequestV3(RequestStruct):  # type: ignore[misc]
    API_KEY = 23
    API_VERSION = 3
    RESPONSE_TYPE = _OffsetForLeaderEpochResponseV3
    SCHEMA = Schema(
        ("replica_id", Int32),
        (
            "topics",
            Array(
                ("topic", String("utf-8")),
                ("partitions", Array(("partition", Int32), ("current_leader_epoch", Int32), ("leader_epoch", Int32))),
            ),
        ),
    )


class _LeaderEpochEndsRequest(Request[_OffsetForLeaderEpochRequestV3]):  # type: ignore[misc]
    API_KEY = 23

    def __init__(self, epochs: dict[TopicPartition, int]) -> None:
        self.epochs = epochs

    def build(self, request_struct_class: type[_OffsetForLeaderEpochRequestV3]) -> _OffsetForLeaderEpochRequestV3:
        by_topic: dict[str, list[tuple[int, int, int]]] = {}
        for tp, epoch in sorted(self.epochs.items()):
            # current_leader_epoch -1: no fencing of our own metadata, the leader answers whatever epoch it is in.
            by_topic.setdefault(tp.topic, []).append((tp.partition, -1, epoch))
        return request_struct_class(-1, list(by_topic.items()))  # replica_id -1: a consumer, not a follower


async def leader_epoch_ends(client: Any, epochs: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Where each partition's log ends for the given leader epoch, asked of its current leader (KIP-101/320):
    the offset at which the log diverges from one that was read under that epoch. Partitions whose leader cannot
    answer (unknown epoch, no leader, an old broker) are left out."""
    by_leader: dict[int, dict[TopicPartition, int]] = {}
    for tp, epoch in epochs.items():
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(tp)
        if leader is not None and leader >= 0 and epoch >= 0:
            by_leader.setdefault(leader, {})[tp] = epoch
    ends: dict[TopicPartition, int] = {}
    for leader, asked in by_leader.items():
        try:
            response = await client.send(leader, _LeaderEpochEndsRequest(asked))
        except (KafkaError, NotImplementedError) as exc:
            log.warning("leader epoch ends unavailable from broker %s: %s", leader, exc)
            continue
        for topic, partitions in response.topics:
            for error_code, partition, _epoch, end_offset in partitions:
                if error_code == 0 and end_offset >= 0:
                    ends[TopicPartition(topic, partition)] = int(end_offset)
    return ends


def install_metadata_decoders() -> None:
    """Decode Metadata responses with ``workers/engine/metadata_decode.py`` (idempotent; every client of the
    process, since the response is the same)."""
    MetadataResponse_v5.decode = classmethod(decode_metadata_v5)
    _MetadataResponseV12.decode = classmethod(decode_topic_listing_v12)


# ---------------------------------------------------------------------- 8. prompt close


_aiokafka_close = AIOKafkaConnection.close


def _close_promptly(self: Any, reason: Any = None, exc: Any = None) -> Any:
    writer = self._writer
    closed = _aiokafka_close(self, reason=reason, exc=exc)
    if writer is not None:
        writer.transport.abort()
    return closed


def install_prompt_close() -> None:
    """Abort a closed connection's transport at once (idempotent; every client of the process).

    aiokafka closes a connection with ``StreamWriter.close`` and ``AIOKafkaClient.close`` (every consumer's, producer's
    and admin's stop) waits for the transport's ``connection_lost``. Over TLS that close is graceful: close_notify
    is sent and the peer's awaited. Under uvloop, data arriving after close_notify (a broker answering a fetch it held
    for fetch.max.wait.ms) keeps the transport open until uvloop's 30 s SSL shutdown timeout (MagicStack/uvloop#471):
    a consumer's ``stop()`` hung for 30 s about half the time, longer than the fleet's converge timeout, so a copier
    on a TLS target could fail to start again and again. Under asyncio the same close waited for the fetch's answer
    (0.5 s). Nothing is lost by aborting: ``close`` has already failed every request still waiting for an answer,
    and the clients flush (producer) and leave their group (consumer) before closing their connections."""
    AIOKafkaConnection.close = _close_promptly


# ---------------------------------------------------------------------- 9. compression off the event loop


_BUILT_ASIDE = (RecordBatchBuilder, SplicedBuilder)


def build_batches_aside(producer: AIOKafkaProducer, pool: Executor) -> None:
    """Build every compressed ``RecordBatchBuilder`` batch of a produce request on ``pool`` before the request is
    written: aiokafka builds a batch (compresses it, then its CRC) when ``create_request`` asks for its bytes, on
    the event loop, so a copier writing gzip, lz4 or zstd from an uncompressed source spent 0.84-0.92 of its one
    core compressing while MirrorMaker 2's producer threads used 1.3-1.6 cores. libdeflate and python-lz4 (6.) release
    the GIL while they compress, so the copy loop runs meanwhile; snappy and zstd are fast enough not to matter.

    A full batch was usually compressed ahead already (``RecordBatchBuilder.compress_ahead``, from the copier's
    ``build_batches``): this waits for that build. The others reach this point drained: the idempotent producer
    stamped their producer state and they are ``sealed``, so the copier never appends to one while a thread
    builds it. A retried batch is built already and is not built again. Install ``gate_sender`` both before
    (checked after the build, right before the write) and after it (nothing is built for a refused partition)."""
    sender = producer._sender
    send = sender._send_produce_req

    async def built_aside(node_id: int, batches: dict[TopicPartition, Any]) -> None:
        builders = [
            builder
            for batch in batches.values()
            if type(builder := batch._builder) in _BUILT_ASIDE and builder.compresses and not builder.built()
        ]
        if builders:
            loop = asyncio.get_running_loop()
            builds: list[asyncio.Future[Any]] = []
            for builder in builders:
                ahead = builder.ahead()
                if ahead is None:
                    builder.sealed = True
                    builds.append(loop.run_in_executor(pool, builder._build))
                else:
                    builds.append(asyncio.wrap_future(ahead))
            try:
                await asyncio.gather(*builds)
            except Exception as exc:  # as aiokafka's own build failing in create_request would, but said here
                log.exception("building %d batches for broker %s failed", len(builders), node_id)
                for tp, batch in batches.items():
                    batch.failure(exception=exc)
                    sender._muted_partitions.discard(tp)
                sender._in_flight.discard(node_id)
                return
        await send(node_id, batches)

    sender._send_produce_req = built_aside


# ---------------------------------------------------------------------- 10. responses read whole


# A reader pauses its socket only past twice this many unread bytes, and only once what it waits for is there.
FRAME_READER_LIMIT = 4 * 1024 * 1024


class FrameReader(asyncio.StreamReader):
    """``asyncio.StreamReader`` for aiokafka's read loop, which asks for a 4-byte size, then for that many bytes
    (``readexactly``; it uses nothing else but ``at_eof``).

    The standard reader wakes its reader at every chunk the socket delivers and, past twice its 64 KiB limit,
    pauses the socket, which the waiting ``readexactly`` resumes at once: a 1 MiB fetch response arriving in
    64-256 KiB chunks cost a task wake-up and a pause and resume of the transport per chunk. py-spy put
    ``feed_data`` and ``readexactly`` at a fifth of the engine's samples in profile A. This one wakes the reader
    only once the bytes it asked for are buffered, and pauses only then.

    It also keeps the chunks as the transport delivered them, rather than in one ``bytearray``: a bytearray grows by
    an eighth at a time, so a response of megabytes was copied about eight times as it arrived and once more on
    its way out (0.58 ms per MiB, against 0.04 for one join of the chunks). A response that arrived as one chunk
    is handed out as it is."""

    _wanted = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._adopt()

    def _adopt(self) -> None:
        """Set up the chunk queue (also for a standard reader whose class was swapped, keeping what it holds)."""
        stream: Any = self
        self._chunks: deque[bytes] = deque()
        self._first_offset = 0  # bytes of the first chunk already read
        self._unread = 0
        if stream._buffer:
            self._chunks.append(bytes(stream._buffer))
            self._unread = len(stream._buffer)
            stream._buffer.clear()

    def feed_data(self, data: Any) -> None:
        stream: Any = self  # the standard reader's private state, which typeshed does not declare
        if not data:
            return
        self._chunks.append(data if type(data) is bytes else bytes(data))
        self._unread += len(data)
        if self._unread < self._wanted:
            return  # the reader waits for more: neither woken nor paused (it could not resume what it never sees)
        stream._wakeup_waiter()
        if stream._transport is not None and not stream._paused and self._unread > 2 * stream._limit:
            try:
                stream._transport.pause_reading()
            except NotImplementedError:
                stream._transport = None
            else:
                stream._paused = True

    def _maybe_resume_transport(self) -> None:
        stream: Any = self
        if stream._paused and self._unread <= stream._limit:
            stream._paused = False
            stream._transport.resume_reading()

    def at_eof(self) -> bool:
        stream: Any = self
        return bool(stream._eof) and not self._unread

    def _take(self, n: int) -> bytes:
        """The next ``n`` unread bytes (at most what is buffered), copied at most once."""
        chunks = self._chunks
        first = chunks[0]
        offset = self._first_offset
        if offset == 0 and len(first) == n:
            chunks.popleft()
            self._unread -= n
            return first
        parts: list[Any] = []
        need = n
        while need and chunks:
            chunk = chunks[0]
            available = len(chunk) - offset
            if available <= need:
                parts.append(chunk if offset == 0 else memoryview(chunk)[offset:])
                chunks.popleft()
                offset = 0
                need -= available
            else:
                parts.append(memoryview(chunk)[offset : offset + need])
                offset += need
                need = 0
        self._first_offset = offset
        self._unread -= n - need
        return b"".join(parts)

    async def readexactly(self, n: int) -> bytes:
        stream: Any = self
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if stream._exception is not None:
            raise stream._exception
        if n == 0:
            return b""
        while self._unread < n:
            if stream._eof:
                incomplete = self._take(self._unread) if self._unread else b""
                raise asyncio.IncompleteReadError(incomplete, n)
            self._wanted = n
            try:
                await stream._wait_for_data("readexactly")
            finally:
                self._wanted = 0
        data = self._take(n)
        self._maybe_resume_transport()
        return data

    async def read(self, n: int = -1) -> bytes:
        raise NotImplementedError("FrameReader serves aiokafka's readexactly only")

    async def readline(self) -> bytes:
        raise NotImplementedError("FrameReader serves aiokafka's readexactly only")

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        raise NotImplementedError("FrameReader serves aiokafka's readexactly only")


_aiokafka_protocol_init = AIOKafkaProtocol.__init__


def _protocol_with_frame_reader(self: Any, closed_fut: Any, stream_reader: Any, *args: Any, **kwargs: Any) -> None:
    if type(stream_reader) is asyncio.StreamReader:
        reader: Any = stream_reader  # the standard reader's private limit, which typeshed does not declare
        reader.__class__ = FrameReader
        reader._adopt()
        reader._limit = FRAME_READER_LIMIT
    _aiokafka_protocol_init(self, closed_fut, stream_reader, *args, **kwargs)


def install_frame_reader() -> None:
    """Read every connection's responses with a ``FrameReader`` (idempotent; every client of the process). The
    reader is swapped as aiokafka's protocol is made, before the connection exists."""
    AIOKafkaProtocol.__init__ = _protocol_with_frame_reader


install_metadata_decoders()
install_prompt_close()
install_frame_reader()
