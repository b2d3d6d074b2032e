"""Helpers for engine tests against the two real local clusters: topics, fast producing, reading a topic back
whole, waiting on conditions with deadlines, and running a replication flow in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from workers.engine.admin import create_topic as admin_create_topic
from workers.engine.admin import describe_topics
from workers.engine.connection import ClusterConnection
from workers.engine.copier import CopierOptions
from workers.engine.spec import ReplicationSpec
from workers.engine.standalone import StandaloneReplicator


@dataclass(frozen=True)
class Rec:
    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))


async def wait_for(
    condition: Callable[[], Awaitable[bool]], deadline_s: float, what: str, interval: float = 0.2
) -> float:
    """Poll ``condition`` until true; fail the test naming ``what`` at the deadline. Returns seconds waited."""
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            pytest.fail(f"timed out after {deadline_s:g}s waiting for {what}")
        await asyncio.sleep(interval)


@asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def create_topic(bootstrap: str, name: str, partitions: int = 1, configs: dict[str, str] | None = None) -> None:
    async with admin_client(bootstrap) as admin:
        created = await admin_create_topic(admin, name, partitions, 1, configs or {})
        assert created, f"topic {name} already existed"


async def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[Rec],
    *,
    compression: str | None = None,
    max_request_size: int = 4 * 1024 * 1024,
) -> None:
    """Produce quickly with explicit batches, one in flight per partition, keeping per-partition order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=compression,
        max_request_size=max_request_size,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        by_partition: dict[int, list[Rec]] = {}
        for rec in records:
            by_partition.setdefault(rec.partition, []).append(rec)

        async def send_partition(partition: int, recs: list[Rec]) -> None:
            futures = []
            batch = producer.create_batch()
            for rec in recs:
                if (
                    batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp, headers=list(rec.headers))
                    is None
                ):
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp, headers=list(rec.headers))
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*futures)

        await asyncio.gather(*(send_partition(p, recs) for p, recs in by_partition.items()))
    finally:
        await producer.stop()


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    async with admin_client(bootstrap) as admin:
        found = await describe_topics(admin, [topic])
    return list(range(found[topic].partitions)) if topic in found else []


async def end_offsets(bootstrap: str, topic: str, *, committed: bool = True) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed" if committed else "read_uncommitted"
    )
    await consumer.start()
    try:
        partitions = await partitions_of(bootstrap, topic)
        if not partitions:
            return {}
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, *, committed: bool = True) -> dict[int, list[Any]]:
    """Every (committed) record of a topic, by partition, read from the start to the current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed else "read_uncommitted",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = sorted(await partitions_of(bootstrap, topic))
        tps = [TopicPartition(topic, p) for p in partitions]
        result: dict[int, list[Any]] = {p: [] for p in partitions}
        if not tps:
            return result
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 120
        while remaining:
            assert time.monotonic() < deadline, f"reading {topic} did not reach its end"
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            for tp, records in batches.items():
                result[tp.partition].extend(records)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return result
    finally:
        await consumer.stop()


async def topic_count(bootstrap: str, topic: str) -> int:
    return sum((await end_offsets(bootstrap, topic)).values())


def spec_for(unique: str, topics: Iterable[str], **overrides: Any) -> ReplicationSpec:
    """A spec whose replicator id and aliases are unique to the test (progress never leaks between tests)."""
    info: dict[str, Any] = {
        "targetCompressionType": overrides.pop("compression", "NONE"),
        "topicReplication": {
            "topicsToReplicate": list(topics),
            "topicsToExclude": overrides.pop("exclude", []),
            "copyTopicConfigurations": overrides.pop("copy_configs", True),
            "copyAccessControlListsForTopics": overrides.pop("copy_acls", True),
            "detectAndCopyNewTopics": overrides.pop("detect_new", True),
            "startingPosition": {"type": overrides.pop("starting", "EARLIEST")},
            "topicNameConfiguration": {"type": overrides.pop("naming", "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS")},
        },
    }
    return ReplicationSpec.from_replication_info(
        info,
        overrides.pop("source_alias", "src"),
        overrides.pop("target_alias", "tgt"),
        overrides.pop("replicator_id", f"rep-{unique}"),
        **overrides,
    )


@asynccontextmanager
async def running(
    spec: ReplicationSpec, source: str, target: str, **kwargs: Any
) -> AsyncIterator[StandaloneReplicator]:
    kwargs.setdefault("options", CopierOptions(retry_backoff_s=0.2))
    replicator = StandaloneReplicator(
        spec,
        ClusterConnection(source, alias=spec.source_alias),
        ClusterConnection(target, alias=spec.target_alias),
        **kwargs,
    )
    await replicator.start()
    try:
        yield replicator
    finally:
        await replicator.stop()
    failure = replicator.copier.failure
    assert failure is None, f"copier failed: {failure!r}"


def caught_up(replicator: StandaloneReplicator) -> Callable[[], Awaitable[bool]]:
    """Condition: every assigned partition copied up to the source end it last saw, and progress durable."""

    async def check() -> bool:
        stats = replicator.snapshot().partitions
        return bool(stats) and all(s.lag_records == 0 for s in stats.values())

    return check
