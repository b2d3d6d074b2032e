"""targetCompressionType: every batch the engine writes on the target uses the requested codec, compressed on the
compression threads rather than on the event loop, and holds the source's records unchanged."""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lz4.block
import lz4.frame
import pytest

from tests.engine.conftest import Rec, create_topic, produce, read_topic, running, spec_for, topic_count, wait_for
from workers.engine import copier as copier_module
from workers.engine.aiokafka_hooks import RecordBatchBuilder, gzip_encode_java_level, lz4_encode_releasing_gil
from workers.engine.spec import TargetCompression

ROOT = Path(__file__).resolve().parents[2]
# About 2 MiB: several full producer batches (512 KiB), each compressed ahead while the others are sent, and a
# last one compressed when the producer takes it.
RECORDS = 2000
# Record batch header (v2): baseOffset int64, batchLength int32, partitionLeaderEpoch int32, magic int8,
# crc uint32, attributes int16 ...
_HEADER = struct.Struct(">qiibIh")


def value(i: int) -> bytes:
    return (f"payload {i} " * 80).encode()


def target_data_dir() -> Path:
    # FERRY_DEV_RUN_DIR: a git worktree's tests read the stack of the checkout that runs it (tests/conftest.py).
    default_run_dir = Path(os.environ.get("FERRY_DEV_RUN_DIR", ROOT / ".run"))
    stack = json.loads((default_run_dir / "stack.json").read_text())
    run_dir = Path(stack.get("run_dir", default_run_dir))
    return run_dir / "kafka" / "target" / "data"


def batch_codecs(partition_dir: Path) -> list[int]:
    """The compression codec (attribute bits 0-2) of every record batch in a partition's log segments."""
    codecs = []
    for segment in sorted(partition_dir.glob("*.log")):
        data = segment.read_bytes()
        position = 0
        while position + _HEADER.size <= len(data):
            _base, length, _epoch, magic, _crc, attributes = _HEADER.unpack_from(data, position)
            if length <= 0:
                break
            assert magic == 2
            codecs.append(attributes & 0x07)
            position += 12 + length
    return codecs


class CountingPool(ThreadPoolExecutor):
    """The compression pool, counting the batches built on its threads."""

    def __init__(self) -> None:
        super().__init__(max_workers=2, thread_name_prefix="test-compress")
        self.built = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self.built += 1
        return super().submit(fn, *args, **kwargs)


def values_read_by_java(stack: dict[str, Any], bootstrap: str, topic: str, count: int) -> list[str]:
    """The topic's values as Kafka's own Java consumer decodes them (kafka-console-consumer)."""
    lib = Path(stack["kafka_lib"])
    argv = ["java", "-Xmx256m", "-cp", f"{lib}/*", "org.apache.kafka.tools.consumer.ConsoleConsumer",
            "--bootstrap-server", bootstrap, "--topic", topic, "--from-beginning",
            "--max-messages", str(count), "--timeout-ms", "60000"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.splitlines()


@pytest.mark.parametrize("codec", list(TargetCompression))
async def test_target_batches_use_the_requested_codec(
    source_bootstrap: str,
    target_bootstrap: str,
    unique: str,
    codec: TargetCompression,
    monkeypatch: Any,
    stack: dict[str, Any],
) -> None:
    topic = f"{unique}-data"
    await create_topic(source_bootstrap, topic, 1)
    # Source batches are uncompressed whatever the target codec, so the codec seen can only be the engine's.
    await produce(source_bootstrap, topic, [Rec(0, f"k{i}".encode(), value(i)) for i in range(RECORDS)])
    pool = CountingPool()
    monkeypatch.setattr(copier_module, "compression_pool", lambda: pool)
    spec = spec_for(unique, [topic], compression=codec.value)
    try:
        async with running(spec, source_bootstrap, target_bootstrap):
            await wait_for(
                lambda: _count_is(target_bootstrap, f"src.{topic}", RECORDS), 60, f"{RECORDS} records on the target"
            )
    finally:
        pool.shutdown()
    partition_dir = target_data_dir() / f"src.{topic}-0"
    codecs = batch_codecs(partition_dir)
    assert codecs, f"no batches found in {partition_dir}"
    assert set(codecs) == {codec.batch_attribute}, f"batch codecs {sorted(set(codecs))}"
    if codec is TargetCompression.NONE:
        assert pool.built == 0, "uncompressed batches have nothing to build off the event loop"
    else:
        # Forwarded batches are none here (the codecs differ): every batch written was built on the pool.
        assert pool.built >= len(codecs) > 3, f"{pool.built} batches built on the pool for {len(codecs)} written"
    copied = (await read_topic(target_bootstrap, f"src.{topic}"))[0]
    assert [(r.key, r.value) for r in copied] == [(f"k{i}".encode(), value(i)) for i in range(RECORDS)]
    if codec in (TargetCompression.LZ4, TargetCompression.GZIP):
        # Encoded by python-lz4 and libdeflate, not aiokafka's own encoders: Java consumers must read them.
        java_values = values_read_by_java(stack, target_bootstrap, f"src.{topic}", RECORDS)
        assert java_values == [value(i).decode() for i in range(RECORDS)]


async def _count_is(bootstrap: str, topic: str, count: int) -> bool:
    return await topic_count(bootstrap, topic) == count


@pytest.mark.parametrize("codec", [c for c in TargetCompression if c is not TargetCompression.NONE])
def test_a_batch_compressed_ahead_is_the_batch_the_producer_would_have_built(codec: TargetCompression) -> None:
    """Built ahead, then stamped with the producer state (and a new CRC): the same bytes as stamped, then built."""

    def filled() -> RecordBatchBuilder:
        builder = RecordBatchBuilder(codec.batch_attribute, 64 * 1024, transactional=True)
        for i in range(100):
            builder.append(i, 1_000 + i, f"k{i}".encode(), value(i), [("h", b"x")])
        builder.records = 100
        return builder

    stamped_first = filled()
    stamped_first._set_producer_state(77, 3, 1234)
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = filled()
        ahead.compress_ahead(pool)
        assert ahead.sealed, "nothing may be appended to a batch being compressed"
        ahead._set_producer_state(77, 3, 1234)
        assert bytes(ahead._build()) == bytes(stamped_first._build())


def test_lz4_frames_are_compressed_as_javas_producer_compresses_at_its_default_level() -> None:
    """Java's producer at the default compression.lz4.level runs LZ4's fast compressor (LZ4_compress_default), not
    HC at level 9: every block of the frame Ferry writes has that compressor's size, in 64 KiB independent blocks.
    (The frame encoder resets its match table differently from the block API's, so the two fast outputs can differ
    by a byte; HC's is a fifth smaller on these records.)"""
    records = b"".join(value(i) for i in range(400))  # 290 KB: several blocks, the last one partial
    frame = lz4_encode_releasing_gil(records)
    magic, flags, block_descriptor = struct.unpack_from("<IBB", frame)
    assert magic == 0x184D2204
    assert flags == 0b01_1_0_0_0_00, "version 1, independent blocks, no checksums, no content size"
    assert block_descriptor == 4 << 4, "64 KiB blocks, as Java's Lz4BlockOutputStream"
    position, block_size = 7, 64 * 1024
    blocks = [records[start : start + block_size] for start in range(0, len(records), block_size)]
    for block in blocks:
        (length,) = struct.unpack_from("<I", frame, position)
        assert not length & 0x8000_0000, "these records compress: no block may be stored raw"
        compressed = frame[position + 4 : position + 4 + length]
        assert lz4.block.decompress(compressed, uncompressed_size=len(block)) == block, "blocks are independent"
        fast = lz4.block.compress(block, mode="default", store_size=False)
        high = lz4.block.compress(block, mode="high_compression", compression=9, store_size=False)
        assert len(high) < len(fast), "these records tell the two compressors apart"
        assert abs(length - len(fast)) <= len(fast) // 100, (
            f"a {length}-byte block: the fast compressor writes {len(fast)}, HC {len(high)}"
        )
        position += 4 + length
    assert frame[position:] == b"\0\0\0\0", "the end mark follows the last block"
    assert lz4.frame.decompress(frame) == records


def test_gzip_members_are_at_javas_default_level_and_no_larger_than_zlibs() -> None:
    """libdeflate writes the target's gzip at zlib's default level (the Java producer's): a gzip member any reader
    opens, no larger than zlib's own at that level on the same records."""
    random_letters = random.Random(17)
    records = b"".join(
        f"k{i}".encode() + bytes(random_letters.randrange(65, 91) for _ in range(1024)) for i in range(300)
    )
    member = gzip_encode_java_level(records)
    assert member[:3] == b"\x1f\x8b\x08", "a gzip member (deflate)"
    assert gzip.decompress(member) == records
    zlib_member = gzip.compress(records, compresslevel=6, mtime=0)
    assert len(member) <= len(zlib_member), f"libdeflate wrote {len(member)} bytes, zlib {len(zlib_member)}"
