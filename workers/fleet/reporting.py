"""What a worker reports to the API through Redis every tick (the contract is ``models/fleet_reports.py``).

- per copied partition, a ``PartitionReport``: the copier's measurements, owner and lease epoch, and rates since
  the previous report;
- one ``WorkerReport``: which replicators this worker runs right now (copy units held, metadata unit or not).

A quiet partition's report is written again only every ``QUIET_REPORT_SECONDS`` (its reader calls a report stale
after 15 s): a worker holding thousands of idle partitions would otherwise serialise and write every one each tick.
A partition whose measurements changed (records copied, lag, health, a rate falling to zero) is written at once.

Partitions this worker reported before but holds no more (moved away, topic removed, replicator deleted) are
removed from the hash at once, or they would linger as UNKNOWN and keep alerts firing; a partition that moved is
reported again by its new owner.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition
from redis.asyncio import Redis

from models.fleet import UnitKey
from models.fleet_reports import (
    METRICS_KEY,
    REPORT_TTL_SECONDS,
    WORKER_KEY,
    PartitionReport,
    WorkerReport,
    parse_partition_field,
    partition_field,
)
from workers.engine.metrics import PartitionStats
from workers.fleet.copy_unit import CopyUnit

# Well inside the API's STALE_AFTER_MS (15 s), so a quiet partition never reads as unreported.
QUIET_REPORT_SECONDS = 5.0


@dataclass(frozen=True)
class _Sent:
    """What a partition's last written report said, to tell whether the next one says anything new."""

    stats: PartitionStats
    epoch: int
    at_ms: int
    quiet: bool  # its rates were zero: the same measurements again mean zero rates again


class MetricsReporter:
    def __init__(self, redis: Redis, worker_id: str) -> None:
        self.redis = redis
        self.worker_id = worker_id
        # (replicator, partition) -> (reported at ms, records, bytes) of the previous report: the rates' base.
        self._last_counts: dict[tuple[str, TopicPartition], tuple[int, int, int]] = {}
        self._published: dict[str, set[str]] = {}
        self._sent: dict[tuple[str, TopicPartition], _Sent] = {}

    async def publish(
        self, copy_units: Mapping[str, CopyUnit], metadata_units: Iterable[str], epochs: Mapping[UnitKey, int]
    ) -> None:
        """``epochs``: the lease epoch of every unit this worker holds (a partition without one is not reported)."""
        now_ms = int(time.time() * 1000)
        running = {rid: {"partitions": len(unit.partitions), "metadata": False} for rid, unit in copy_units.items()}
        for rid in metadata_units:
            running.setdefault(rid, {"partitions": 0, "metadata": True})["metadata"] = True
        await self.redis.set(
            WORKER_KEY.format(worker_id=self.worker_id),
            WorkerReport(self.worker_id, now_ms, running).to_json(),
            ex=REPORT_TTL_SECONDS,
        )
        reported: dict[str, set[str]] = {}
        writes = self.redis.pipeline(transaction=False)
        sending: dict[tuple[str, TopicPartition], _Sent] = {}
        for replicator_id, unit in copy_units.items():
            if unit.copier is None:
                continue
            fields = {}
            held = set()
            for tp, stats in unit.copier.snapshot().items():
                epoch = epochs.get(UnitKey(replicator_id, tp.topic, tp.partition))
                if epoch is None:
                    continue
                sent_key = (replicator_id, tp)
                held.add(partition_field(tp.topic, tp.partition))
                sent = self._sent.get(sent_key)
                if (
                    sent is not None
                    and sent.quiet
                    and sent.stats == stats
                    and sent.epoch == epoch
                    and now_ms - sent.at_ms < QUIET_REPORT_SECONDS * 1000
                ):
                    continue
                report = self._report(replicator_id, tp, stats, epoch, now_ms)
                fields[report.field_name] = report.to_json()
                quiet = report.records_per_second == 0 and report.bytes_per_second == 0
                sending[sent_key] = _Sent(stats, epoch, now_ms, quiet)
            if held:
                reported[replicator_id] = held
            if fields:
                key = METRICS_KEY.format(replicator_id=replicator_id)
                writes.hset(key, mapping=fields)  # type: ignore[arg-type]
                writes.expire(key, REPORT_TTL_SECONDS)
        for replicator_id, previous in self._published.items():
            gone = previous - reported.get(replicator_id, set())
            if gone:
                writes.hdel(METRICS_KEY.format(replicator_id=replicator_id), *gone)
                for field in gone:
                    topic, partition = parse_partition_field(field)
                    self._last_counts.pop((replicator_id, TopicPartition(topic, partition)), None)
                    self._sent.pop((replicator_id, TopicPartition(topic, partition)), None)
        # One round trip for every replicator's reports, however many this worker runs.
        await writes.execute()
        # Only once written: after a failed write (Redis away) every partition is written at the next tick.
        self._sent.update(sending)
        self._published = reported

    async def forget_worker(self) -> None:
        await self.redis.delete(WORKER_KEY.format(worker_id=self.worker_id))

    def _report(
        self, replicator_id: str, tp: TopicPartition, stats: PartitionStats, epoch: int, now_ms: int
    ) -> PartitionReport:
        records_per_second, bytes_per_second = self._rates(
            replicator_id, tp, stats.records_copied, stats.bytes_copied, now_ms
        )
        return PartitionReport(
            source_topic=stats.source_topic,
            partition=stats.partition,
            target_topic=stats.target_topic,
            owner=self.worker_id,
            epoch=epoch,
            reported_at_ms=now_ms,
            health=stats.health.value,
            health_detail=stats.health_detail,
            records_copied=stats.records_copied,
            bytes_copied=stats.bytes_copied,
            records_filtered=stats.records_filtered,
            next_source_offset=stats.next_source_offset,
            source_end_offset=stats.source_end_offset,
            lag_records=stats.lag_records,
            latency_ms_last=stats.latency_ms_last,
            latency_ms_max_recent=stats.latency_ms_max_recent,
            last_copied_timestamp_ms=stats.last_copied_timestamp_ms,
            truncated_offsets=stats.truncated_offsets,
            redelivered_records=stats.redelivered_records,
            records_per_second=records_per_second,
            bytes_per_second=bytes_per_second,
            errors=dict(stats.errors),
        )

    def _rates(
        self, replicator_id: str, tp: TopicPartition, records: int, size: int, now_ms: int
    ) -> tuple[float, float]:
        """Records and bytes per second since this worker's previous report of the partition."""
        key = (replicator_id, tp)
        previous = self._last_counts.get(key)
        self._last_counts[key] = (now_ms, records, size)
        if previous is None or now_ms <= previous[0] or records < previous[1]:
            return 0.0, 0.0
        seconds = (now_ms - previous[0]) / 1000
        return (records - previous[1]) / seconds, (size - previous[2]) / seconds
