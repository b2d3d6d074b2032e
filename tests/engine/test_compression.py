"""targetCompressionType: every batch the engine writes on the target uses the requested codec."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from tests.engine.conftest import Rec, create_topic, produce, running, spec_for, topic_count, wait_for
from workers.engine.spec import TargetCompression

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 500
# Record batch header (v2): baseOffset int64, batchLength int32, partitionLeaderEpoch int32, magic int8,
# crc uint32, attributes int16 ...
_HEADER = struct.Struct(">qiibIh")


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


@pytest.mark.parametrize("codec", list(TargetCompression))
async def test_target_batches_use_the_requested_codec(
    source_bootstrap: str, target_bootstrap: str, unique: str, codec: TargetCompression
) -> None:
    topic = f"{unique}-data"
    await create_topic(source_bootstrap, topic, 1)
    # Source batches are uncompressed whatever the target codec, so the codec seen can only be the engine's.
    await produce(
        source_bootstrap, topic, [Rec(0, f"k{i}".encode(), (f"payload {i} " * 8).encode()) for i in range(RECORDS)]
    )
    spec = spec_for(unique, [topic], compression=codec.value)
    async with running(spec, source_bootstrap, target_bootstrap):
        await wait_for(
            lambda: _count_is(target_bootstrap, f"src.{topic}", RECORDS), 60, f"{RECORDS} records on the target"
        )
    partition_dir = target_data_dir() / f"src.{topic}-0"
    codecs = batch_codecs(partition_dir)
    assert codecs, f"no batches found in {partition_dir}"
    assert set(codecs) == {codec.batch_attribute}, f"batch codecs {sorted(set(codecs))}"


async def _count_is(bootstrap: str, topic: str, count: int) -> bool:
    return await topic_count(bootstrap, topic) == count
