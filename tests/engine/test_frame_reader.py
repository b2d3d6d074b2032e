"""FrameReader: aiokafka's connections read each response whole, woken once per response, without pausing the
socket for every chunk of a large one, and still pausing a socket whose unread data nobody asks for."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from aiokafka import AIOKafkaClient

from workers.engine.aiokafka_hooks import FRAME_READER_LIMIT, FrameReader

CHUNK = 64 * 1024


class RecordingTransport:
    def __init__(self) -> None:
        self.pauses = 0
        self.resumes = 0

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        self.resumes += 1


def reader_with(transport: RecordingTransport) -> FrameReader:
    reader = FrameReader(limit=FRAME_READER_LIMIT, loop=asyncio.get_running_loop())
    reader.set_transport(transport)  # type: ignore[arg-type]
    return reader


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


async def read_frames(reader: FrameReader, count: int) -> list[bytes]:
    frames = []
    for _ in range(count):
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        frames.append(await reader.readexactly(size))
    return frames


async def test_frames_split_over_chunks_and_packed_in_one_arrive_whole_and_in_order() -> None:
    reader = reader_with(RecordingTransport())
    payloads = [bytes([i]) * size for i, size in enumerate([3 * CHUNK + 17, 1, 0, 5, 2 * CHUNK])]
    stream = b"".join(frame(p) for p in payloads)
    reading = asyncio.create_task(read_frames(reader, len(payloads)))
    for start in range(0, len(stream), CHUNK - 1):  # chunk edges fall inside sizes and payloads
        reader.feed_data(stream[start : start + CHUNK - 1])
        await asyncio.sleep(0)
    assert await asyncio.wait_for(reading, 5) == payloads


async def test_a_response_that_arrived_as_one_chunk_is_handed_out_without_a_copy() -> None:
    reader = reader_with(RecordingTransport())
    payload = bytes(range(256)) * 4096  # 1 MiB
    reader.feed_data(struct.pack(">i", len(payload)))
    reader.feed_data(payload)
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    assert await reader.readexactly(size) is payload
    assert not reader.at_eof()
    reader.feed_eof()
    assert reader.at_eof()


async def test_a_standard_reader_swapped_for_a_frame_reader_keeps_what_it_buffered() -> None:
    reader = asyncio.StreamReader(loop=asyncio.get_running_loop())
    reader.feed_data(frame(b"before") + struct.pack(">i", 5) + b"af")
    swapped: Any = reader
    swapped.__class__ = FrameReader
    swapped._adopt()
    swapped.feed_data(b"ter")
    assert await read_frames(swapped, 2) == [b"before", b"after"]
    with pytest.raises(NotImplementedError):
        await swapped.readline()


async def test_a_large_response_wakes_its_reader_once_and_never_pauses_the_socket() -> None:
    transport = RecordingTransport()
    reader = reader_with(transport)
    payload = b"r" * (3 * FRAME_READER_LIMIT)  # past twice the limit: the standard reader pauses here
    reader.feed_data(struct.pack(">i", len(payload)))
    reading = asyncio.create_task(read_frames(reader, 1))
    await asyncio.sleep(0)
    wakeups = 0
    for start in range(0, len(payload), CHUNK):
        if start + CHUNK < len(payload):
            assert transport.pauses == 0, "the socket was paused while the reader waited for the rest"
        waiter = reader._waiter  # type: ignore[attr-defined]
        reader.feed_data(payload[start : start + CHUNK])
        wakeups += waiter is not None and waiter.done()
        await asyncio.sleep(0)
    assert await asyncio.wait_for(reading, 5) == [payload]
    assert wakeups == 1, f"the reader was woken {wakeups} times for one response"
    assert transport.pauses == transport.resumes <= 1, "a socket paused once the response was whole reads on after it"


async def test_unread_data_past_twice_the_limit_pauses_the_socket_until_it_is_read() -> None:
    transport = RecordingTransport()
    reader = reader_with(transport)
    payloads = [b"a" * FRAME_READER_LIMIT, b"b" * FRAME_READER_LIMIT, b"c" * FRAME_READER_LIMIT]
    reader.feed_data(b"".join(frame(p) for p in payloads))  # nobody reads yet
    assert transport.pauses == 1
    assert await read_frames(reader, 3) == payloads
    assert transport.resumes == 1


async def test_end_of_stream_inside_a_response_raises_with_what_arrived() -> None:
    reader = reader_with(RecordingTransport())
    reader.feed_data(struct.pack(">i", 10) + b"12345")
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    reading = asyncio.create_task(reader.readexactly(size))
    await asyncio.sleep(0)
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError) as raised:
        await asyncio.wait_for(reading, 5)
    assert raised.value.partial == b"12345"


async def test_aiokafka_connections_read_with_a_frame_reader(source_bootstrap: str) -> None:
    client = AIOKafkaClient(bootstrap_servers=source_bootstrap)
    await client.bootstrap()
    try:
        # Metadata of the whole cluster, read through a broker connection the client keeps.
        metadata = await client.fetch_all_metadata()
        assert metadata.brokers()
        connections = list(client._conns.values())
        assert connections, "the client keeps a connection to the broker it asked"
        for connection in connections:
            assert type(connection._reader) is FrameReader
    finally:
        await client.close()
