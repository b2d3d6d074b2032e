"""The engine process SIGKILLed in the middle of 500,000 records and restarted: every source record reaches the
target; duplicates are counted and match what the engine reports (at-least-once), and are zero in
exactly-once mode."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from tests.engine.conftest import Rec, create_topic, produce, read_topic, wait_for

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 500_000
PARTITIONS = 6


def value_of(partition: int, seq: int) -> bytes:
    # 100 bytes: each partition then spans several 2 MiB fetches, so an exactly-once copy commits several
    # transactions (one per poll) and the kill can land between them.
    return f"{partition}:{seq}".encode().ljust(100, b".")


def per_partition(partition: int) -> int:
    return RECORDS // PARTITIONS + (1 if partition < RECORDS % PARTITIONS else 0)


def start_engine(
    tmp_path: Path, source: str, target: str, spec_file: Path, metrics: Path, log_name: str
) -> subprocess.Popen[bytes]:
    log = (tmp_path / log_name).open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.engine",
            "--source",
            source,
            "--target",
            target,
            "--spec",
            str(spec_file),
            "--metrics-file",
            str(metrics),
            "--metrics-interval",
            "0.5",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


class TargetWatcher:
    """Reads the target topic's end offsets with one long-lived client (cheap enough to poll often)."""

    def __init__(self, bootstrap: str, topic: str, committed: bool) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            request_timeout_ms=5000,
            isolation_level="read_committed" if committed else "read_uncommitted",
        )
        self.tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    async def __aenter__(self) -> TargetWatcher:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.consumer.stop()

    async def total(self) -> int:
        try:
            ends = await self.consumer.end_offsets(self.tps)
        except KafkaError:  # the target topic does not exist yet: nothing copied
            return 0
        return int(sum(ends.values()))


@pytest.mark.slow
@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
async def test_sigkill_mid_stream_then_restart(
    source_bootstrap: str, target_bootstrap: str, unique: str, tmp_path: Path, exactly_once: bool
) -> None:
    topic = f"{unique}-stream"
    target_topic = f"src.{topic}"
    await create_topic(source_bootstrap, topic, PARTITIONS)
    await produce(
        source_bootstrap,
        topic,
        [Rec(i % PARTITIONS, None, value_of(i % PARTITIONS, i // PARTITIONS)) for i in range(RECORDS)],
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps(
            {
                "replicatorId": f"rep-{unique}",
                "sourceAlias": "src",
                "targetAlias": "tgt",
                "exactlyOnce": exactly_once,
                "replicationInfo": {
                    "targetCompressionType": "LZ4",
                    "topicReplication": {"topicsToReplicate": [topic], "startingPosition": {"type": "EARLIEST"}},
                },
            }
        )
    )
    metrics = tmp_path / "metrics.json"

    first = start_engine(tmp_path, source_bootstrap, target_bootstrap, spec_file, metrics, "first.log")
    try:
        async with TargetWatcher(target_bootstrap, target_topic, committed=exactly_once) as watcher:
            await wait_for(
                lambda: _at_least(watcher, RECORDS // 5), 120, "a fifth of the records copied", interval=0.02
            )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            copied_at_kill = await watcher.total()
    finally:
        if first.poll() is None:
            first.kill()
    assert copied_at_kill < RECORDS, "the kill came too late to interrupt the copy"

    metrics.unlink(missing_ok=True)
    second = start_engine(tmp_path, source_bootstrap, target_bootstrap, spec_file, metrics, "second.log")
    try:

        async def finished() -> bool:
            data = read_metrics(metrics)
            if data is None or data["pid"] != second.pid or len(data["partitions"]) != PARTITIONS:
                return False
            return all(
                p["lag_records"] == 0 and p["next_source_offset"] == per_partition(p["partition"])
                for p in data["partitions"]
            )

        await wait_for(finished, 180, "the restarted engine to copy everything")
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    final = read_metrics(metrics)
    assert final is not None
    reported_redelivered = sum(p["redelivered_records"] for p in final["partitions"])

    data = await read_topic(target_bootstrap, target_topic, committed=exactly_once)
    total = sum(len(records) for records in data.values())
    duplicates = 0
    for partition, records in data.items():
        values = [r.value for r in records]
        counts = Counter(values)
        duplicates += sum(counts.values()) - len(counts)
        first_seen = list(dict.fromkeys(values))
        assert first_seen == [value_of(partition, seq) for seq in range(per_partition(partition))], (
            f"partition {partition}: records missing or reordered"
        )
    print(
        f"\n[{'exactly-once' if exactly_once else 'at-least-once'}] killed at {copied_at_kill} copied; "
        f"target holds {total} records, {duplicates} duplicates (engine reported {reported_redelivered})"
    )
    if exactly_once:
        assert duplicates == 0
        assert total == RECORDS
    else:
        assert total == RECORDS + duplicates
        assert duplicates == reported_redelivered, "the engine's duplicate report is exact for a single writer"


async def _at_least(watcher: TargetWatcher, count: int) -> bool:
    return await watcher.total() >= count
