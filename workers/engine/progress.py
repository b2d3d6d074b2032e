"""Durable replication progress: a compacted topic on the TARGET cluster, never replicated.

One record per (replicator, source topic, partition), keyed ``<replicator id>/<source topic>/<partition>``
(topic names cannot contain ``/``, so the key splits from the right). The value says which source offset to
copy next and which target offset that source position maps to (the seam for offset translation), and which
source and target topics it belongs to by id: names survive a topic's deletion and re-creation, ids do not, so
progress of a deleted topic never positions the copy of its successor. It also keeps the source leader epoch of
the last copied batch, which finds where the source log diverges after a truncation (unclean leader election).
At-least-once copiers write it after the target acknowledged the data; exactly-once copiers write it inside
the transaction that carries the data, so data and progress become visible together or not at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner

from workers.engine import admin as kafka_admin
from workers.engine.connection import ClusterConnection, admin_client, client_kwargs
from workers.engine.spec import PROGRESS_TOPIC

log = logging.getLogger(__name__)

PROGRESS_TOPIC_PARTITIONS = 12
# 2 added topic ids and the leader epoch; version 1 records are read with those unknown.
PROGRESS_FORMAT_VERSION = 2
_LOAD_TIMEOUT_SECONDS = 60.0
# How long a copier that created the progress topic waits for every partition of it to have a leader.
LEADERS_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class PartitionProgress:
    """Where one source partition's copy stands.

    ``next_source_offset``: the first source offset not yet durably copied.
    ``next_target_offset``: the target offset the record at ``next_source_offset`` will get if nothing else
    writes into the target partition (the target end offset right after the last copied record), or None
    when unknown. ``source_topic_id`` / ``target_topic_id``: the topics (hex ids) the positions belong to;
    ``source_leader_epoch``: the source leader epoch of the last copied batch. None when unknown.
    """

    target_topic: str
    next_source_offset: int
    next_target_offset: int | None
    updated_ms: int
    source_topic_id: str | None = None
    target_topic_id: str | None = None
    source_leader_epoch: int | None = None


def progress_key(replicator_id: str, source: TopicPartition) -> bytes:
    return f"{replicator_id}/{source.topic}/{source.partition}".encode()


def parse_progress_key(key: bytes) -> tuple[str, TopicPartition] | None:
    try:
        replicator_id, topic, partition = key.decode().rsplit("/", 2)
        return replicator_id, TopicPartition(topic, int(partition))
    except (UnicodeDecodeError, ValueError):
        return None


def encode_progress(progress: PartitionProgress) -> bytes:
    return json.dumps(
        {
            "v": PROGRESS_FORMAT_VERSION,
            "targetTopic": progress.target_topic,
            "nextSourceOffset": progress.next_source_offset,
            "nextTargetOffset": progress.next_target_offset,
            "updatedMs": progress.updated_ms,
            "sourceTopicId": progress.source_topic_id,
            "targetTopicId": progress.target_topic_id,
            "sourceLeaderEpoch": progress.source_leader_epoch,
        },
        separators=(",", ":"),
    ).encode()


def decode_progress(value: bytes) -> PartitionProgress:
    data = json.loads(value)
    return PartitionProgress(
        target_topic=str(data["targetTopic"]),
        next_source_offset=int(data["nextSourceOffset"]),
        next_target_offset=None if data.get("nextTargetOffset") is None else int(data["nextTargetOffset"]),
        updated_ms=int(data.get("updatedMs", 0)),
        source_topic_id=_optional_str(data.get("sourceTopicId")),
        target_topic_id=_optional_str(data.get("targetTopicId")),
        source_leader_epoch=None if data.get("sourceLeaderEpoch") is None else int(data["sourceLeaderEpoch"]),
    )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


async def _partitions(connection: ClusterConnection, topic: str) -> set[int]:
    admin = admin_client(connection, "progress-admin")
    await admin.start()
    try:
        found = await kafka_admin.describe_topics(admin, [topic])
    finally:
        await admin.close()
    return set(range(found[topic].partitions)) if topic in found else set()


async def _high_watermarks(
    connection: ClusterConnection, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(
        **client_kwargs(connection, "progress-reader"), enable_auto_commit=False, isolation_level="read_uncommitted"
    )
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


class ProgressStore:
    """Reads and creates the progress topic; writes go through the copier's own producer (one transaction)."""

    def __init__(self, target: ClusterConnection, replicator_id: str, *, topic: str = PROGRESS_TOPIC) -> None:
        self.target = target
        self.replicator_id = replicator_id
        self.topic = topic

    async def ensure_topic(self) -> None:
        admin = admin_client(self.target, "progress-admin")
        await admin.start()
        try:
            existing = await kafka_admin.describe_topics(admin, [self.topic])
            if self.topic in existing:
                return
            replication = min(3, await kafka_admin.broker_count(admin))
            created = await kafka_admin.create_topic(
                admin,
                self.topic,
                PROGRESS_TOPIC_PARTITIONS,
                replication,
                {
                    "cleanup.policy": "compact",
                    "min.compaction.lag.ms": "0",
                    # Every active partition writes progress several times a second: roll and compact often
                    # so reading a partition's latest progress stays quick.
                    "segment.ms": str(10 * 60 * 1000),
                    "min.cleanable.dirty.ratio": "0.1",
                },
            )
            if created:
                log.info("created progress topic %s on %s", self.topic, self.target.describe())
                # A fresh 10,000-partition lab: the copiers' first progress reads and writes found the topic
                # missing or leaderless for tens of seconds, and every start of new partitions failed meanwhile.
                await self._await_leaders(admin)
        finally:
            await admin.close()

    async def _await_leaders(self, admin: AIOKafkaAdminClient) -> None:
        deadline = time.monotonic() + LEADERS_TIMEOUT_SECONDS
        while True:
            waiting = await kafka_admin.partitions_without_leader(admin, self.topic)
            if waiting == []:
                return
            if time.monotonic() >= deadline:
                which = "the topic is not in its metadata yet" if waiting is None else f"partitions {waiting}"
                raise KafkaTimeoutError(
                    f"progress topic {self.topic} created, but without leaders after {LEADERS_TIMEOUT_SECONDS:g}s "
                    f"({which})"
                )
            await asyncio.sleep(0.1)

    async def load(self, sources: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, PartitionProgress]:
        """The latest committed progress of this replicator, read to the end of the topic.

        Only committed records count (read_committed), so an exactly-once copier that crashed mid-transaction
        contributes nothing of that transaction. ``sources`` limits the answer to those partitions.
        """
        wanted = None if sources is None else set(sources)
        consumer = AIOKafkaConsumer(
            **client_kwargs(self.target, "progress-reader"),
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        found: dict[TopicPartition, PartitionProgress] = {}
        prefix = f"{self.replicator_id}/".encode()
        try:
            partitions = await _partitions(self.target, self.topic)
            if wanted is not None and partitions:
                # Progress records are keyed, so the producer's partitioner put each one on a known partition:
                # read only those instead of the whole shared topic (failover time must not grow with it).
                ordered = sorted(partitions)
                partitions = {
                    DefaultPartitioner()(progress_key(self.replicator_id, source), ordered, ordered)
                    for source in wanted
                }
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            if not tps:
                return found
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            # To the high watermark, not to read_committed's end (the last stable offset): that one stops where
            # the first still-open transaction begins, and the topic is shared, so some live exactly-once copier
            # has one open almost always. Progress committed after it began (by an owner killed right after its
            # commit) would be missed, and the copy would start again below records already committed. Every
            # transaction open now is decided soon: at its producer's next commit, when the new owner fenced it,
            # or at the transaction timeout.
            end = await _high_watermarks(self.target, tps)
            remaining = {tp for tp in tps if end[tp] > 0}
            deadline = time.monotonic() + _LOAD_TIMEOUT_SECONDS
            while remaining:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"progress topic {self.topic} not read to its end within {_LOAD_TIMEOUT_SECONDS:g}s"
                    )
                batches = await consumer.getmany(*remaining, timeout_ms=200, max_records=10_000)
                for records in batches.values():
                    for record in records:
                        if record.key is None or not record.key.startswith(prefix):
                            continue
                        parsed = parse_progress_key(record.key)
                        if parsed is None or parsed[0] != self.replicator_id:
                            continue
                        source = parsed[1]
                        if wanted is not None and source not in wanted:
                            continue
                        if record.value is None:
                            found.pop(source, None)
                        else:
                            found[source] = decode_progress(record.value)
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        return found
