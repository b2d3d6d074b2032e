"""The worker's per-partition reports in Redis: a quiet partition is not rewritten every tick, a moving one is."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace
from typing import Any, cast

from aiokafka import TopicPartition
from redis.asyncio import Redis

from models.fleet import UnitKey
from models.fleet_reports import METRICS_KEY
from models.settings import FerrySettings
from workers.engine.metrics import PartitionMetrics
from workers.fleet.copy_unit import CopyUnit
from workers.fleet.reporting import QUIET_REPORT_SECONDS, MetricsReporter


class Copier:
    """What the reporter reads of a copier: measurements of the partitions it copies."""

    def __init__(self, metrics: dict[TopicPartition, PartitionMetrics]) -> None:
        self.metrics = metrics

    def snapshot(self) -> dict[TopicPartition, Any]:
        return {tp: m.snapshot() for tp, m in self.metrics.items()}


def test_quiet_partitions_are_written_again_only_every_few_seconds(fleet_settings: FerrySettings) -> None:
    replicator_id = str(uuid.uuid4())
    quiet, busy = TopicPartition("quiet", 0), TopicPartition("busy", 0)
    metrics = {quiet: PartitionMetrics(quiet, "t.quiet"), busy: PartitionMetrics(busy, "t.busy")}
    for m in metrics.values():
        m.next_source_offset = m.source_end_offset = 5
    unit = cast(CopyUnit, SimpleNamespace(copier=Copier(metrics), partitions=frozenset(metrics)))
    epochs = {UnitKey(replicator_id, tp.topic, tp.partition): 1 for tp in metrics}
    key = METRICS_KEY.format(replicator_id=replicator_id)

    async def main() -> list[dict[str, int]]:
        redis = Redis.from_url(fleet_settings.redis_url)
        reporter = MetricsReporter(redis, f"w-{replicator_id[:8]}")
        seen: list[dict[str, int]] = []

        async def publish() -> None:
            await reporter.publish({replicator_id: unit}, [], epochs)
            stored = await redis.hgetall(key)
            seen.append({k.decode(): json.loads(v)["reported_at_ms"] for k, v in stored.items()})

        try:
            await publish()  # the first reports of both
            await asyncio.sleep(0.01)  # a later millisecond, so a rewrite shows as a new report time
            await publish()  # nothing moved: the first reports said zero rates, nothing is written
            metrics[busy].record_copied(3, 300, 0, 0.0)
            await asyncio.sleep(0.01)
            await publish()  # only the busy one is written
            await asyncio.sleep(0.01)
            await publish()  # its rate fell to zero: written once more, with the zero
            await asyncio.sleep(0.01)
            await publish()  # both quiet now
            await asyncio.sleep(QUIET_REPORT_SECONDS)
            await publish()  # refreshed, so no reader ever sees a quiet partition as unreported
            return seen
        finally:
            await redis.delete(key)
            await redis.aclose()

    first, unchanged, moved, fell, settled, refreshed = asyncio.run(main())
    assert set(first) == {"quiet:0", "busy:0"}
    assert unchanged == first
    assert moved["quiet:0"] == first["quiet:0"] and moved["busy:0"] > first["busy:0"]
    assert fell["quiet:0"] == first["quiet:0"] and fell["busy:0"] > moved["busy:0"]
    assert settled == fell
    assert refreshed["quiet:0"] > first["quiet:0"] and refreshed["busy:0"] > fell["busy:0"]
