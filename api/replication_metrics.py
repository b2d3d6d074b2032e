"""Ferry extensions: how replication is doing, from what the fleet's workers report to Redis.

- ``GET /replication/v1/replicators/{replicatorArn}/metrics``: totals and per topic-partition lag (records and
  seconds), latency, throughput, errors, owner worker and health, for one replicator (``ReplicatorMetrics``).
- ``GET /metrics``: every replicator the caller may see and the fleet, in Prometheus text format: MSK
  Replicator's CloudWatch metric names and conventional ``ferry_*`` names (``api/metrics_exposition.py``).

Workers publish at every tick (``workers/fleet/work.py``). Nothing reads as a healthy zero when nobody reports: a
reading older than ``STALE_AFTER_MS`` is shown as such (health ``UNKNOWN``, its age) rather than as if it were
current, a partition in scope that no worker reports at all is listed as ``UNKNOWN`` with no numbers, totals
that depend on them are null, and Prometheus series without a current value are absent.

Every replicator of a request is read from Redis in one pipelined round trip (its metrics and status hashes), so
a scrape of hundreds of replicators costs one round trip, not hundreds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fastapi import APIRouter, Request, Response

# The 0.0.4 text format: every Prometheus reads it, and every name here is a classic one.
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.deps import transaction
from api.errors import error_responses
from api.fleet import read_fleet
from api.identity import CallerDep, current_caller, is_metrics_scraper
from api.metrics_exposition import HEALTHY, exposition
from api.replicators import ReplicatorArn
from models import fleet_store, replicator_service
from models.errors import DependencyUnavailableError
from models.fleet_reports import METRICS_KEY, STATUS_KEY, PartitionReport, StatusField
from models.replicator import ReplicatorRow

router = APIRouter(tags=["monitoring"])

STALE_AFTER_MS = 15_000
STATUS_STALE_AFTER_MS = 30_000


class PartitionMetrics(BaseModel):
    """One source partition as its owner worker last reported it; numbers are null when no worker reports it."""

    sourceTopic: str = Field(description="The source topic.")
    partition: int = Field(description="The source partition.")
    targetTopic: str | None = Field(description="The topic the partition is copied to (null until known).")
    owner: str | None = Field(description="The worker copying the partition.")
    health: str = Field(
        description="REPLICATING, STARTING, or the problem (SOURCE_TRUNCATED, STALLED, AUTH_DENIED, ...); UNKNOWN "
        "when no worker reported it lately."
    )
    healthDetail: str = Field(description="Why the partition has that health, in words (empty when replicating).")
    lagRecords: int | None = Field(description="Records on the source not yet acknowledged by the target.")
    lagSeconds: float | None = Field(
        description="How old the newest copied record is while records wait; 0 when caught up."
    )
    latencyMs: float | None = Field(description="The largest source-timestamp-to-acknowledgement time lately.")
    recordsCopied: int | None = Field(description="Records copied by the current owner since it took the partition.")
    bytesCopied: int | None = Field(description="Bytes copied by the current owner since it took the partition.")
    recordsFiltered: int | None = Field(
        description="Records not copied because they came from the target (IDENTICAL naming loop prevention)."
    )
    recordsPerSecond: float | None = Field(description="Records per second copied since the owner's previous report.")
    bytesPerSecond: float | None = Field(description="Bytes per second copied since the owner's previous report.")
    truncatedOffsets: int | None = Field(description="Offsets retention deleted before they were copied (data loss).")
    errors: dict[str, int] = Field(description="Errors met copying the partition, by kind.")
    nextSourceOffset: int | None = Field(
        description="The next source offset to copy (everything before it is acknowledged by the target)."
    )
    sourceEndOffset: int | None = Field(
        description="The source partition's end (last stable offset) at the last report."
    )
    reportedAgeSeconds: float | None = Field(description="Seconds since the owner's last report (null when none).")


class MetricsTotals(BaseModel):
    """Sums and maxima over the partitions; a figure that needs a partition nobody reports now is null."""

    partitions: int = Field(description="Source partitions in scope.")
    partitionsUnreported: int = Field(
        description="Partitions in scope without a current report (not copied, or their worker is gone)."
    )
    recordsCopied: int = Field(description="Records copied, summed over the partitions' current owners.")
    bytesCopied: int = Field(description="Bytes copied, summed over the partitions' current owners.")
    recordsPerSecond: float | None = Field(
        description="Records per second copied now (null when a partition is unreported)."
    )
    bytesPerSecond: float | None = Field(
        description="Bytes per second copied now (null when a partition is unreported)."
    )
    lagRecords: int | None = Field(
        description="Records on the sources not yet acknowledged by the target (null when a partition is unreported)."
    )
    maxLagSeconds: float | None = Field(
        description="The largest lag in seconds over the partitions (null when unknown)."
    )
    maxLatencyMs: float | None = Field(
        description="The largest recent source-timestamp-to-acknowledgement time, in milliseconds."
    )
    errors: dict[str, int] = Field(description="Errors met, by kind, over every partition.")
    unhealthyPartitions: int = Field(description="Partitions whose health is neither REPLICATING nor STARTING.")


class ConsumerGroupSync(BaseModel):
    """The consumer group offset sync as the metadata unit last reported it (more fields may follow)."""

    model_config = ConfigDict(extra="allow")

    groupCount: int = Field(0, description="Consumer groups whose offsets are synchronised.")
    failures: int = Field(0, description="Group offset sync failures since the replicator's metadata unit started.")
    groups: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per consumer group: its translated offsets and sync state."
    )


class ReplicatorMetrics(BaseModel):
    """How one replicator's replication is doing: totals, per partition, topics, consumer groups, clusters."""

    replicatorArn: str = Field(description="The replicator's ARN.")
    replicatorName: str = Field(description="The replicator's name.")
    replicatorState: str = Field(description="The replicator's state (CREATING, RUNNING, UPDATING, DELETING, FAILED).")
    stateInfo: dict[str, Any] | None = Field(
        description="Why the replicator is in that state (code and message), when there is a reason."
    )
    totals: MetricsTotals = Field(description="Totals over the replicator's partitions.")
    clusterPing: dict[str, int] = Field(description="Per cluster alias: 1 when it answered the last probe, else 0.")
    topics: dict[str, str] = Field(description="Source topic to target topic.")
    topicErrors: dict[str, Any] = Field(
        description="Per source topic that could not be set up on the target: the reason."
    )
    consumerGroups: ConsumerGroupSync = Field(description="Consumer group offset sync.")
    partitions: list[PartitionMetrics] = Field(description="Every source partition in scope.")


@dataclass(frozen=True)
class ReplicatorReading:
    replicator: ReplicatorRow
    partitions: list[PartitionMetrics]
    # The metadata unit's status fields, decoded; empty when it has not reported lately.
    status: dict[str, Any]

    @cached_property
    def totals(self) -> MetricsTotals:
        return _totals(self.partitions)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _unreported(topic: str, partition: int, target_topic: str | None) -> PartitionMetrics:
    return PartitionMetrics(
        sourceTopic=topic,
        partition=partition,
        targetTopic=target_topic,
        owner=None,
        health="UNKNOWN",
        healthDetail="no worker reports this partition: it may have no live owner",
        lagRecords=None,
        lagSeconds=None,
        latencyMs=None,
        recordsCopied=None,
        bytesCopied=None,
        recordsFiltered=None,
        recordsPerSecond=None,
        bytesPerSecond=None,
        truncatedOffsets=None,
        errors={},
        nextSourceOffset=None,
        sourceEndOffset=None,
        reportedAgeSeconds=None,
    )


def _partition(report: PartitionReport, now_ms: int) -> PartitionMetrics:
    age = now_ms - report.reported_at_ms
    fresh = age <= STALE_AFTER_MS
    lag = report.lag_records
    last_ts = report.last_copied_timestamp_ms
    return PartitionMetrics(
        sourceTopic=report.source_topic,
        partition=report.partition,
        targetTopic=report.target_topic,
        owner=report.owner,
        health=report.health if fresh else "UNKNOWN",
        healthDetail=report.health_detail if fresh else f"no report from its worker for {age // 1000}s",
        lagRecords=lag,
        # Time behind: how old the newest copied record is while records wait; zero when caught up.
        lagSeconds=0.0 if lag == 0 else (None if last_ts is None else max(0.0, (now_ms - last_ts) / 1000)),
        latencyMs=report.latency_ms_max_recent,
        recordsCopied=report.records_copied,
        bytesCopied=report.bytes_copied,
        recordsFiltered=report.records_filtered,
        recordsPerSecond=report.records_per_second,
        bytesPerSecond=report.bytes_per_second,
        truncatedOffsets=report.truncated_offsets,
        errors=report.errors,
        nextSourceOffset=report.next_source_offset,
        sourceEndOffset=report.source_end_offset,
        reportedAgeSeconds=age / 1000,
    )


async def read_replicators(
    redis: Redis, rows: Sequence[ReplicatorRow], scopes: dict[str, list[tuple[str, int]]]
) -> list[ReplicatorReading]:
    """Every row's reports, read in one pipelined round trip (metrics and status hash of each)."""
    if not rows:
        return []
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.hgetall(METRICS_KEY.format(replicator_id=row.id))
                pipe.hgetall(STATUS_KEY.format(replicator_id=row.id))
            hashes = await pipe.execute()
    except RedisError as exc:
        raise DependencyUnavailableError(f"the fleet's measurements in Redis cannot be read now: {exc}") from None
    now_ms = int(time.time() * 1000)
    return [
        _reading(row, metrics, status, scopes.get(str(row.id), []), now_ms)
        for row, metrics, status in zip(rows, hashes[0::2], hashes[1::2], strict=True)
    ]


def _reading(
    row: ReplicatorRow,
    metrics_hash: dict[bytes | str, bytes | str],
    status_hash: dict[bytes | str, bytes | str],
    in_scope: list[tuple[str, int]],
    now_ms: int,
) -> ReplicatorReading:
    partitions = []
    for value in metrics_hash.values():
        report = PartitionReport.from_json(value)
        if report is None:
            continue  # another release's report (a rolling upgrade): it expires on its own
        partitions.append(_partition(report, now_ms))
    status_raw = {_text(k): v for k, v in status_hash.items()}
    reported = {(p.sourceTopic, p.partition) for p in partitions}
    topics = json.loads(status_raw.get(StatusField.TOPICS) or "{}")
    for topic, partition in in_scope:
        if (topic, partition) not in reported:
            partitions.append(_unreported(topic, partition, topics.get(topic)))
    partitions.sort(key=lambda p: (p.sourceTopic, p.partition))
    reported_at = int(status_raw.pop(StatusField.REPORTED_AT_MS, 0) or 0)
    # The metadata unit's readings (cluster pings, group sync) count only while it reports.
    fresh = now_ms - reported_at <= STATUS_STALE_AFTER_MS
    status = {k: json.loads(v) for k, v in status_raw.items()} if fresh else {}
    return ReplicatorReading(row, partitions, status)


def _sum(values: list[Any]) -> Any:
    # Starts from the int 0, so the sum stays an int when every value is one.
    return sum((v for v in values if v is not None), 0)


def _totals(partitions: list[PartitionMetrics]) -> MetricsTotals:
    """Sums and maxima over the partitions; a figure that needs a partition nobody reports now is null, not a
    number that would read as healthy."""
    errors: dict[str, int] = defaultdict(int)
    for p in partitions:
        for kind, count in p.errors.items():
            errors[kind] += count
    current = [p for p in partitions if p.health != "UNKNOWN"]
    complete = len(current) == len(partitions)
    lags = [p.lagRecords for p in current if p.lagRecords is not None]
    lag_seconds = [p.lagSeconds for p in current if p.lagSeconds is not None]
    latencies = [p.latencyMs for p in current if p.latencyMs is not None]
    return MetricsTotals(
        partitions=len(partitions),
        partitionsUnreported=len(partitions) - len(current),
        recordsCopied=_sum([p.recordsCopied for p in partitions]),
        bytesCopied=_sum([p.bytesCopied for p in partitions]),
        recordsPerSecond=_sum([p.recordsPerSecond for p in current]) if current else None,
        bytesPerSecond=_sum([p.bytesPerSecond for p in current]) if current else None,
        lagRecords=sum(lags) if lags and complete else None,
        maxLagSeconds=max(lag_seconds) if lag_seconds and complete else None,
        maxLatencyMs=max(latencies) if latencies else None,
        errors=dict(errors),
        unhealthyPartitions=sum(1 for p in partitions if p.health not in HEALTHY),
    )


@router.get(
    "/replication/v1/replicators/{replicatorArn:path}/metrics",
    operation_id="GetReplicatorMetrics",
    summary="Replication metrics of a replicator (Ferry extension)",
    response_model=ReplicatorMetrics,
    responses=error_responses(400, 404, 500),
)
async def replicator_metrics(replicatorArn: ReplicatorArn, request: Request, caller: CallerDep) -> ReplicatorMetrics:
    """Totals and per topic-partition lag, latency, throughput, errors, owner worker and health."""
    return await metrics_of(request, caller.account_id, replicatorArn)


async def metrics_of(request: Request, account_id: str, arn: str) -> ReplicatorMetrics:
    """One replicator's metrics as the account sees them (the metrics endpoint's and the console's reading)."""
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=account_id, arn=arn)
        scopes = await fleet_store.inventories(session, [str(row.id)])
    (reading,) = await read_replicators(request.app.state.redis, [row], scopes)
    return ReplicatorMetrics(
        replicatorArn=row.arn,
        replicatorName=row.name,
        replicatorState=row.state,
        stateInfo=row.state_info,
        totals=reading.totals,
        clusterPing=reading.status.get(StatusField.CLUSTER_PING, {}),
        topics=reading.status.get(StatusField.TOPICS, {}),
        topicErrors=reading.status.get(StatusField.TOPIC_ERRORS, {}),
        consumerGroups=ConsumerGroupSync.model_validate(reading.status.get(StatusField.GROUP_SYNC) or {}),
        partitions=reading.partitions,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics: MSK Replicator's names and conventional ferry_* names",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def prometheus_metrics(request: Request) -> Response:
    """Per replicator (and topic and partition where it applies) and for the fleet (docs/operations.md).

    With the metrics bearer token (Prometheus), every account's replicators, labelled with their account; signed
    with an access key, that key's account only. The fleet's series are there for both."""
    account = None if is_metrics_scraper(request) else current_caller(request).account_id
    async with transaction(request) as session:
        rows = await replicator_service.replicators_of(session, account_id=account, heads_only=True)
        scopes = await fleet_store.inventories(session, [str(row.id) for row in rows])
    readings, (load, demand) = await asyncio.gather(
        read_replicators(request.app.state.redis, rows, scopes), read_fleet(request)
    )
    # Rendering thousands of series takes a while of CPU: off the event loop, so other requests interleave.
    body = await asyncio.to_thread(exposition, readings, load, demand)
    return Response(body, media_type=CONTENT_TYPE)
