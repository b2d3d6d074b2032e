"""Metadata responses decoded in one pass over the bytes instead of aiokafka's generic schema walk.

aiokafka decodes every response field by field through nested generators (``Schema.decode``): a few microseconds
per field. A Metadata response lists every partition of the topics asked for, with its replica, in-sync and
offline replica arrays, so on a source of 10,000 partitions one response was tens of thousands of generic decode
calls. With 10,000 partitions on two workers, decoding Metadata responses was over half of a fleet worker's work
thread while its partitions started (each start adds topics, and aiokafka then refreshes the metadata of every
topic its consumer and producer hold) and the largest steady cost of a metadata unit (the source listing).

Both decoders read the same wire format as the schema they replace and build the same values, except where said:
``decode_metadata_v5`` (aiokafka's client refreshes) returns exactly what ``MetadataResponse_v5.SCHEMA`` would;
``decode_topic_listing_v12`` (Ferry's own topic-id and listing requests) keeps, per topic, the partition count
instead of the partitions, which no caller reads.
"""

from __future__ import annotations

import functools
from io import BytesIO
from struct import Struct
from typing import Any

_INT16 = Struct(">h")
_INT32 = Struct(">i")
_PARTITION_HEAD_V5 = Struct(">hii")  # error_code, partition, leader


@functools.lru_cache(maxsize=64)
def _int32s(count: int) -> Struct:
    """The format of ``count`` big-endian int32s (replica lists are short and few in length: a handful of formats)."""
    return Struct(f">{count}i")


class _Reader:
    """A cursor over one response's bytes (the frame after its header)."""

    __slots__ = ("buf", "pos")

    def __init__(self, data: BytesIO | bytes) -> None:
        self.buf = data.read() if isinstance(data, BytesIO) else bytes(data)
        self.pos = 0

    def int16(self) -> int:
        value: int = _INT16.unpack_from(self.buf, self.pos)[0]
        self.pos += 2
        return value

    def int32(self) -> int:
        value: int = _INT32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return value

    def boolean(self) -> bool:
        value = self.buf[self.pos] != 0
        self.pos += 1
        return value

    def string(self) -> str | None:
        """int16 length, -1 for null."""
        size = self.int16()
        if size < 0:
            return None
        start = self.pos
        self.pos += size
        return self.buf[start : self.pos].decode("utf-8")

    def uvarint(self) -> int:
        buf, pos = self.buf, self.pos
        byte = buf[pos]
        pos += 1
        value, shift = byte & 0x7F, 7
        while byte & 0x80:
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
        self.pos = pos
        return value

    def compact_string(self) -> str | None:
        size = self.uvarint() - 1
        if size < 0:
            return None
        start = self.pos
        self.pos += size
        return self.buf[start : self.pos].decode("utf-8")

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # the tag
            size = self.uvarint()  # read first: ``self.pos += self.uvarint()`` would add to the position before it
            self.pos += size

    def end(self, what: str) -> None:
        if self.pos != len(self.buf):
            raise ValueError(f"{what}: {len(self.buf) - self.pos} bytes left after decoding (or a buffer underrun)")


def _int32_array_at(buf: bytes, pos: int) -> tuple[list[int] | None, int]:
    """An int32 array (int32 count, -1 for null) at ``pos``; returns it and the position after it."""
    count: int = _INT32.unpack_from(buf, pos)[0]
    pos += 4
    if count <= 0:
        return (None if count < 0 else []), pos
    return list(_int32s(count).unpack_from(buf, pos)), pos + 4 * count


def decode_metadata_v5(cls: Any, data: BytesIO | bytes) -> Any:
    """``MetadataResponse_v5.decode``: the same response, built without the generic schema walk."""
    reader = _Reader(data)
    throttle_time_ms = reader.int32()
    brokers = []
    for _ in range(reader.int32()):
        node_id = reader.int32()
        host = reader.string()
        port = reader.int32()
        brokers.append((node_id, host, port, reader.string()))
    cluster_id = reader.string()
    controller_id = reader.int32()
    topics = []
    buf = reader.buf
    head = _PARTITION_HEAD_V5.unpack_from
    for _ in range(reader.int32()):
        error_code = reader.int16()
        topic = reader.string()
        is_internal = reader.boolean()
        partitions = []
        pos = reader.pos
        partition_count: int = _INT32.unpack_from(buf, pos)[0]
        pos += 4
        for _ in range(max(partition_count, 0)):
            partition_error, partition, leader = head(buf, pos)
            replicas, pos = _int32_array_at(buf, pos + 10)
            isr, pos = _int32_array_at(buf, pos)
            offline, pos = _int32_array_at(buf, pos)
            partitions.append((partition_error, partition, leader, replicas, isr, offline))
        reader.pos = pos
        topics.append((error_code, topic, is_internal, partitions if partition_count >= 0 else None))
    reader.end("MetadataResponse v5")
    return cls(throttle_time_ms, brokers, cluster_id, controller_id, topics)


def decode_topic_listing_v12(cls: Any, data: BytesIO | bytes) -> Any:
    """A Metadata v12 response with, per topic, (error_code, name, topic_id, is_internal, partition count,
    authorized operations, tags): the partitions' details are skipped over, not built."""
    reader = _Reader(data)
    throttle_time_ms = reader.int32()
    brokers: list[tuple[Any, ...]] = []
    for _ in range(reader.uvarint() - 1):
        node_id = reader.int32()
        host = reader.compact_string()
        port = reader.int32()
        rack = reader.compact_string()
        reader.skip_tags()
        brokers.append((node_id, host, port, rack, {}))
    cluster_id = reader.compact_string()
    controller_id = reader.int32()
    topics: list[tuple[Any, ...]] = []
    buf = reader.buf
    for _ in range(reader.uvarint() - 1):
        error_code = reader.int16()
        name = reader.compact_string()
        topic_id = buf[reader.pos : reader.pos + 16]
        if len(topic_id) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        reader.pos += 16
        is_internal = reader.boolean()
        partition_count = max(reader.uvarint() - 1, 0)
        pos = reader.pos
        for _ in range(partition_count):
            pos += 14  # error_code, partition_index, leader_id, leader_epoch
            for _array in range(3):  # replica_nodes, isr_nodes, offline_replicas: uvarint (count + 1), int32s
                if buf[pos] < 0x80:
                    count = buf[pos] - 1
                    pos += 1
                else:
                    reader.pos = pos
                    count = reader.uvarint() - 1
                    pos = reader.pos
                if count > 0:
                    pos += 4 * count
            if buf[pos] == 0:  # no tagged fields: the usual case
                pos += 1
            else:
                reader.pos = pos
                reader.skip_tags()
                pos = reader.pos
        reader.pos = pos
        authorized_operations = reader.int32()
        reader.skip_tags()
        topics.append((error_code, name, topic_id, is_internal, partition_count, authorized_operations, {}))
    reader.skip_tags()
    reader.end("MetadataResponse v12")
    return cls(throttle_time_ms, brokers, cluster_id, controller_id, topics, {})
