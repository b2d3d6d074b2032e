"""A whole replication flow in one process: topic sync on a timer plus one copier owning every partition.

This is what the CLI (``python -m workers.engine``), tests and benchmarks run. The worker fleet drives the same
parts separately: ``TopicSynchronizer`` in each replicator's metadata unit, and one ``PartitionCopier`` per
replicator per worker with the partitions, transactional id and lease check it hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from workers.engine.admin import AdminError
from workers.engine.batches import OffsetMapSink
from workers.engine.connection import ClusterConnection
from workers.engine.copier import CopierError, CopierOptions, LeaseCheck, PartitionCopier
from workers.engine.metrics import PartitionStats
from workers.engine.spec import ReplicationSpec
from workers.engine.topics import SyncReport, TopicSynchronizer

log = logging.getLogger(__name__)

IMMUTABLE_FIELDS = (
    "replicator_id",
    "source_alias",
    "target_alias",
    "starting_position",
    "topic_naming",
    "target_compression",
    "exactly_once",
)


@dataclass(frozen=True)
class ReplicatorStats:
    partitions: dict[TopicPartition, PartitionStats]
    topics: dict[str, str]
    topic_errors: dict[str, str]
    last_sync_age_s: float | None

    def as_json(self) -> dict[str, object]:
        return {
            "topics": self.topics,
            "topicErrors": self.topic_errors,
            "lastSyncAgeSeconds": self.last_sync_age_s,
            "partitions": [
                {**{k: (v.value if hasattr(v, "value") else v) for k, v in vars(stats).items()}}
                for _, stats in sorted(self.partitions.items())
            ],
        }


@dataclass(frozen=True)
class PartitionSlice:
    """One of ``count`` engine processes sharing a replicator: the partitions with ``index`` as their slice.

    Each topic's partitions go round-robin over the slices, starting at a slice chosen by the topic's name, so
    one topic's partitions spread evenly and single-partition topics do not all land on slice 0. The choice
    depends only on the names, so every process agrees without talking to the others.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"partition slice {self.index}/{self.count}: need 0 <= index < count")

    @classmethod
    def parse(cls, text: str) -> PartitionSlice:
        """``"K/N"``: slice K of N."""
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"partition slice {text!r}: expected K/N, for example 0/2")
        return cls(int(index), int(count))

    def owns(self, tp: TopicPartition) -> bool:
        topic: str = tp.topic
        partition: int = tp.partition
        return (zlib.crc32(topic.encode()) + partition) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class StandaloneReplicator:
    """Topic sync and one copier for every partition in scope (or in its slice of them), in this process (no
    fleet, no leases). Processes sharing a replicator by slices each run the topic sync too: creating a target
    topic that exists is not an error, and progress is kept per partition."""

    def __init__(
        self,
        spec: ReplicationSpec,
        source: ClusterConnection,
        target: ClusterConnection,
        *,
        transactional_id: str | None = None,
        lease_check: LeaseCheck | None = None,
        offset_map_sink: OffsetMapSink | None = None,
        options: CopierOptions | None = None,
        topic_refresh_s: float = 5.0,
        config_refresh_s: float = 15.0,
        partition_slice: PartitionSlice | None = None,
    ) -> None:
        self.spec = spec
        self.partition_slice = partition_slice
        self.topic_refresh_s = topic_refresh_s
        self.config_refresh_s = config_refresh_s
        self.synchronizer = TopicSynchronizer(spec, source, target)
        if spec.exactly_once and transactional_id is None:
            # one transactional id per slice: processes sharing a replicator must not fence each other
            suffix = "all" if partition_slice is None else f"slice-{partition_slice.index}-of-{partition_slice.count}"
            transactional_id = f"ferry-{spec.replicator_id}-{suffix}"
        self.copier = PartitionCopier(
            spec,
            source,
            target,
            transactional_id=transactional_id,
            lease_check=lease_check,
            offset_map_sink=offset_map_sink,
            options=options,
        )
        self._task: asyncio.Task[None] | None = None
        self._last_report = SyncReport()
        self._last_sync: float | None = None
        self._last_config_sync = 0.0
        self._wake = asyncio.Event()
        # The partitions in scope at the first sync pass: startingPosition applies to these only.
        self._initial_scope: frozenset[TopicPartition] | None = None

    async def start(self) -> None:
        """Connect, create target topics, start copying everything in scope; then keep following changes."""
        try:
            await self.synchronizer.start()
            await self.copier.start()
            await self.sync_now()
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._follow(), name=f"ferry-replicator-{self.spec.replicator_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.copier.stop()
        finally:
            await self.synchronizer.close()

    async def wait(self) -> None:
        """Until the copier stops with an error (fenced, crashed) or the follow loop fails."""
        if self._task is None:
            raise RuntimeError("not started")
        copier_wait = asyncio.ensure_future(self.copier.wait())
        try:
            done, _ = await asyncio.wait({self._task, copier_wait}, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()
        finally:
            copier_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await copier_wait

    def update_spec(self, spec: ReplicationSpec) -> None:
        """UpdateReplicationInfo: new topic lists / flags, applied at the next sync pass (run at once)."""
        for name in IMMUTABLE_FIELDS:
            if getattr(spec, name) != getattr(self.spec, name):
                raise ValueError(f"{name} cannot change on a running replicator")
        self.spec = spec
        self.synchronizer.update_spec(spec)
        self._last_config_sync = 0.0
        self._wake.set()

    async def sync_now(self) -> SyncReport:
        """One topic sync pass, then hand new partitions to the copier and take away those out of scope."""
        configs_due = time.monotonic() - self._last_config_sync >= self.config_refresh_s
        report = await self.synchronizer.sync_once(sync_configs=configs_due)
        if configs_due:
            self._last_config_sync = time.monotonic()
        wanted = {TopicPartition(t.source_topic, p) for t in report.topics.values() for p in range(t.partitions)}
        if self.partition_slice is not None:
            wanted = {tp for tp in wanted if self.partition_slice.owns(tp)}
        if self._initial_scope is None:
            self._initial_scope = frozenset(wanted)
        current = self.copier.assignment()
        if current - wanted:
            await self.copier.revoke(current - wanted)
        if wanted - current:
            await self.copier.assign(wanted - current, from_beginning=wanted - current - self._initial_scope)
        self._last_report = report
        self._last_sync = time.monotonic()
        return report

    async def _follow(self) -> None:
        while True:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.topic_refresh_s)
            try:
                await self.sync_now()
            except CopierError as exc:
                if self.copier.failure is not None:
                    raise
                log.warning("topic sync pass incomplete, retrying in %.0fs: %s", self.topic_refresh_s, exc)
            except (KafkaError, AdminError, OSError, TimeoutError) as exc:
                log.warning(
                    "topic sync failed, retrying in %.0fs: %s: %s", self.topic_refresh_s, type(exc).__name__, exc
                )

    def snapshot(self) -> ReplicatorStats:
        report = self._last_report
        return ReplicatorStats(
            partitions=self.copier.snapshot(),
            topics={t.source_topic: t.target_topic for t in report.topics.values()},
            topic_errors=dict(report.errors),
            last_sync_age_s=None if self._last_sync is None else time.monotonic() - self._last_sync,
        )
