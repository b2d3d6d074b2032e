"""Ferry extensions: how replication is doing, from what the fleet's workers report to Redis.

- ``GET /replication/v1/replicators/{replicatorArn}/metrics``: totals and per topic-partition lag (records and
  seconds), latency, throughput, errors, owner worker and health, for one replicator.
- ``GET /metrics``: every replicator in Prometheus text format, with MSK Replicator's CloudWatch metric names.

Workers publish at every tick (``workers/fleet/work.py``). Nothing reads as a healthy zero when nobody reports: a
reading older than ``STALE_AFTER_MS`` is shown as such (health ``UNKNOWN``, its age) rather than as if it were
current, a partition in scope that no worker reports at all is listed as ``UNKNOWN`` with no numbers, totals
that depend on them are null, and Prometheus series without a current value are absent.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.deps import transaction
from api.errors import error_responses
from api.fleet import read_fleet
from api.identity import CallerDep, current_caller, is_metrics_scraper
from api.replicators import ReplicatorArn
from models import fleet_store, replicator_service
from models.errors import DependencyUnavailableError
from models.fleet_reports import METRICS_KEY, STATUS_KEY, PartitionReport, StatusField
from models.replicator import ReplicatorRow, ReplicatorState

router = APIRouter(tags=["monitoring"])

STALE_AFTER_MS = 15_000
STATUS_STALE_AFTER_MS = 30_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class ReplicatorReading:
    replicator: ReplicatorRow
    partitions: list[dict[str, Any]]
    status: dict[str, Any]


async def _reading(redis: Redis, row: ReplicatorRow, in_scope: list[tuple[str, int]]) -> ReplicatorReading:
    try:
        return await _read(redis, row, in_scope)
    except RedisError as exc:
        raise DependencyUnavailableError(f"the fleet's measurements in Redis cannot be read now: {exc}") from None


def _unreported(topic: str, partition: int, target_topic: str | None) -> dict[str, Any]:
    return {
        "sourceTopic": topic,
        "partition": partition,
        "targetTopic": target_topic,
        "owner": None,
        "health": "UNKNOWN",
        "healthDetail": "no worker reports this partition: it may have no live owner",
        "lagRecords": None,
        "lagSeconds": None,
        "latencyMs": None,
        "recordsCopied": None,
        "bytesCopied": None,
        "recordsFiltered": None,
        "recordsPerSecond": None,
        "bytesPerSecond": None,
        "truncatedOffsets": None,
        "errors": {},
        "nextSourceOffset": None,
        "sourceEndOffset": None,
        "reportedAgeSeconds": None,
    }


async def _read(redis: Redis, row: ReplicatorRow, in_scope: list[tuple[str, int]]) -> ReplicatorReading:
    now_ms = int(time.time() * 1000)
    raw = await redis.hgetall(METRICS_KEY.format(replicator_id=row.id))
    partitions = []
    for value in raw.values():
        report = PartitionReport.from_json(value)
        if report is None:
            continue  # another release's report (a rolling upgrade): it expires on its own
        age = now_ms - report.reported_at_ms
        fresh = age <= STALE_AFTER_MS
        lag = report.lag_records
        last_ts = report.last_copied_timestamp_ms
        partitions.append(
            {
                "sourceTopic": report.source_topic,
                "partition": report.partition,
                "targetTopic": report.target_topic,
                "owner": report.owner,
                "health": report.health if fresh else "UNKNOWN",
                "healthDetail": report.health_detail if fresh else f"no report from its worker for {age // 1000}s",
                "lagRecords": lag,
                # Time behind: how old the newest copied record is while records wait; zero when caught up.
                "lagSeconds": 0.0 if lag == 0 else (None if last_ts is None else max(0.0, (now_ms - last_ts) / 1000)),
                "latencyMs": report.latency_ms_max_recent,
                "recordsCopied": report.records_copied,
                "bytesCopied": report.bytes_copied,
                "recordsFiltered": report.records_filtered,
                "recordsPerSecond": report.records_per_second,
                "bytesPerSecond": report.bytes_per_second,
                "truncatedOffsets": report.truncated_offsets,
                "errors": report.errors,
                "nextSourceOffset": report.next_source_offset,
                "sourceEndOffset": report.source_end_offset,
                "reportedAgeSeconds": age / 1000,
            }
        )
    reported = {(p["sourceTopic"], p["partition"]) for p in partitions}
    topics = json.loads(await redis.hget(STATUS_KEY.format(replicator_id=row.id), StatusField.TOPICS) or "{}")
    for topic, partition in in_scope:
        if (topic, partition) not in reported:
            partitions.append(_unreported(topic, partition, topics.get(topic)))
    partitions.sort(key=lambda p: (p["sourceTopic"], p["partition"]))
    status_raw = {_text(k): v for k, v in (await redis.hgetall(STATUS_KEY.format(replicator_id=row.id))).items()}
    reported_at = int(status_raw.pop(StatusField.REPORTED_AT_MS, 0) or 0)
    # The metadata unit's readings (cluster pings, group sync) count only while it reports.
    fresh = now_ms - reported_at <= STATUS_STALE_AFTER_MS
    status = {k: json.loads(v) for k, v in status_raw.items()} if fresh else {}
    return ReplicatorReading(row, partitions, status)


def _sum(partitions: list[dict[str, Any]], name: str) -> float:
    total: float = 0  # stays an int when every value is one
    for p in partitions:
        if p[name] is not None:
            total += p[name]
    return total


def _totals(partitions: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums and maxima over the partitions; a figure that needs a partition nobody reports now is null, not a
    number that would read as healthy."""
    errors: dict[str, int] = defaultdict(int)
    for p in partitions:
        for kind, count in p["errors"].items():
            errors[kind] += count
    current = [p for p in partitions if p["health"] != "UNKNOWN"]
    complete = len(current) == len(partitions)
    lags = [p["lagRecords"] for p in current if p["lagRecords"] is not None]
    lag_seconds = [p["lagSeconds"] for p in current if p["lagSeconds"] is not None]
    latencies = [p["latencyMs"] for p in current if p["latencyMs"] is not None]
    return {
        "partitions": len(partitions),
        "partitionsUnreported": len(partitions) - len(current),
        "recordsCopied": _sum(partitions, "recordsCopied"),
        "bytesCopied": _sum(partitions, "bytesCopied"),
        "recordsPerSecond": _sum(current, "recordsPerSecond") if current else None,
        "bytesPerSecond": _sum(current, "bytesPerSecond") if current else None,
        "lagRecords": sum(lags) if lags and complete else None,
        "maxLagSeconds": max(lag_seconds) if lag_seconds and complete else None,
        "maxLatencyMs": max(latencies) if latencies else None,
        "errors": dict(errors),
        "unhealthyPartitions": sum(1 for p in partitions if p["health"] not in ("REPLICATING", "STARTING")),
    }


@router.get(
    "/replication/v1/replicators/{replicatorArn:path}/metrics",
    operation_id="GetReplicatorMetrics",
    summary="Replication metrics of a replicator (Ferry extension)",
    responses=error_responses(400, 404, 500),
)
async def replicator_metrics(replicatorArn: ReplicatorArn, request: Request, caller: CallerDep) -> dict[str, Any]:
    """Totals and per topic-partition lag, latency, throughput, errors, owner worker and health."""
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        in_scope = (await fleet_store.inventories(session, [str(row.id)])).get(str(row.id), [])
    reading = await _reading(request.app.state.redis, row, in_scope)
    return {
        "replicatorArn": row.arn,
        "replicatorName": row.name,
        "replicatorState": row.state,
        "stateInfo": row.state_info,
        "totals": _totals(reading.partitions),
        "clusterPing": reading.status.get(StatusField.CLUSTER_PING, {}),
        "topics": reading.status.get(StatusField.TOPICS, {}),
        "topicErrors": reading.status.get(StatusField.TOPIC_ERRORS, {}),
        "consumerGroups": reading.status.get(StatusField.GROUP_SYNC) or {"groupCount": 0, "failures": 0, "groups": {}},
        "partitions": reading.partitions,
    }


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Exposition:
    """Prometheus text format, one HELP/TYPE block per metric name."""

    def __init__(self) -> None:
        self.samples: dict[str, list[str]] = defaultdict(list)
        self.help: dict[str, tuple[str, str]] = {}

    def add(self, name: str, kind: str, help_text: str, labels: dict[str, object], value: float | None) -> None:
        self.help[name] = (kind, help_text)
        if value is None:
            return
        rendered = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        # Whole numbers exactly (a lag of 1,234,567 must not read 1.23457e+06), the rest as repr does.
        number = float(value)
        shown = str(int(number)) if number.is_integer() else repr(number)
        self.samples[name].append(f"{name}{{{rendered}}} {shown}")

    def render(self) -> str:
        lines = []
        for name, (kind, help_text) in sorted(self.help.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *self.samples[name]]
        return "\n".join(lines) + "\n"


@router.get("/metrics", summary="Prometheus metrics with MSK Replicator's names", response_class=PlainTextResponse)
async def prometheus_metrics(request: Request) -> PlainTextResponse:
    """Per replicator (and topic and partition where it applies): ReplicationLatency, MessageLag, ...

    With the metrics bearer token (Prometheus), every account's replicators, labelled with their account; signed
    with an access key, that key's account only."""
    account = None if is_metrics_scraper(request) else current_caller(request).account_id
    async with transaction(request) as session:
        rows = await replicator_service.replicators_of(session, account_id=account)
        scopes = await fleet_store.inventories(session, [str(row.id) for row in rows])
    out = _Exposition()
    for row in rows:
        reading = await _reading(request.app.state.redis, row, scopes.get(str(row.id), []))
        name = row.name
        account_label = {"account_id": row.account_id}
        totals = _totals(reading.partitions)
        for p in reading.partitions:
            if p["health"] == "UNKNOWN":
                continue  # a stale reading is not a current value: leave the series absent
            labels = {**account_label, "replicator_name": name, "topic": p["sourceTopic"], "partition": p["partition"]}
            out.add(
                "ReplicationLatency",
                "gauge",
                "Milliseconds from a record's source timestamp to its acknowledgement by the target.",
                labels,
                p["latencyMs"],
            )
            out.add(
                "MessageLag",
                "gauge",
                "Records on the source not yet acknowledged by the target (true source-to-target lag).",
                labels,
                p["lagRecords"],
            )
            out.add(
                "ReplicatorThroughput",
                "gauge",
                "Bytes per second replicated to the target.",
                labels,
                p["bytesPerSecond"],
            )
        out.add(
            "ReplicatorBytesInPerSec",
            "gauge",
            "Bytes per second the replicator processed (replicated, without loop-filtered records).",
            {**account_label, "replicator_name": name},
            totals["bytesPerSecond"],
        )
        failures = sum(totals["errors"].values())
        out.add(
            "FerryUnreportedPartitions",
            "gauge",
            "Partitions in scope without a current report from a worker (not copied, or their worker is gone).",
            {**account_label, "replicator_name": name},
            totals["partitionsUnreported"],
        )
        out.add(
            "ReplicatorFailure",
            "gauge",
            "Partitions of the replicator that are not healthy now.",
            {**account_label, "replicator_name": name},
            totals["unhealthyPartitions"] + (1 if row.state == ReplicatorState.FAILED else 0),
        )
        out.add(
            "ReplicationErrors",
            "counter",
            "Errors the replicator's copiers met, by kind.",
            {**account_label, "replicator_name": name},
            failures,
        )
        out.add(
            "AuthError",
            "counter",
            "Authentication and authorization failures met by the replicator (refused credentials or TLS, denied "
            "operations).",
            {**account_label, "replicator_name": name},
            totals["errors"].get("AUTH_DENIED", 0) + int(reading.status.get(StatusField.AUTH_FAILURES) or 0),
        )
        out.add(
            "ThrottleTime",
            "gauge",
            "Milliseconds requests were throttled by brokers (not measured yet).",
            {**account_label, "replicator_name": name},
            None,
        )
        for alias, ok in sorted(reading.status.get(StatusField.CLUSTER_PING, {}).items()):
            out.add(
                "KafkaClusterPingSuccessCount",
                "gauge",
                "1 when the cluster answered the last probe, else 0.",
                {**account_label, "replicator_name": name, "cluster_alias": alias},
                ok,
            )
        groups = reading.status.get(StatusField.GROUP_SYNC) or {}
        out.add(
            "ConsumerGroupCount",
            "gauge",
            "Consumer groups whose offsets are synchronised.",
            {**account_label, "replicator_name": name},
            groups.get("groupCount"),
        )
        out.add(
            "ConsumerGroupOffsetSyncFailure",
            "counter",
            "Consumer group offset sync failures since the replicator's metadata unit started.",
            {**account_label, "replicator_name": name},
            groups.get("failures"),
        )
        for group, entry in sorted((groups.get("groups") or {}).items()):
            out.add(
                "ConsumerGroupTranslationLag",
                "gauge",
                "Records the target group's committed offsets trail the translation of the source group's.",
                {**account_label, "replicator_name": name, "consumer_group": group},
                entry.get("translationLagRecords"),
            )
    await _fleet_metrics(request, out)
    return PlainTextResponse(out.render(), media_type="text/plain; version=0.0.4")


async def _fleet_metrics(request: Request, out: _Exposition) -> None:
    """The fleet's size and load; ``ferry_fleet_desired_workers`` is what autoscalers follow."""
    load, demand = await read_fleet(request)
    out.add(
        "ferry_fleet_desired_workers",
        "gauge",
        "Workers the fleet needs to copy its current load with headroom and clear its lag in time.",
        {},
        demand.desired_workers,
    )
    out.add("ferry_fleet_live_workers", "gauge", "Workers heartbeating now.", {}, len(load.workers))
    out.add("ferry_fleet_units", "gauge", "Units of work (partitions and metadata units).", {}, load.units)
    out.add(
        "ferry_fleet_unassigned_units",
        "gauge",
        "Units the reconcile loop could give to no worker.",
        {},
        load.unassigned_units,
    )
    out.add(
        "ferry_fleet_copied_bytes_per_second",
        "gauge",
        "Bytes per second the fleet copies.",
        {},
        demand.bytes_per_second,
    )
    out.add(
        "ferry_fleet_lag_bytes", "gauge", "Bytes the fleet's partitions trail their sources by.", {}, demand.lag_bytes
    )
    if load.last_reconcile_age_seconds is not None:
        out.add(
            "ferry_fleet_last_reconcile_age_seconds",
            "gauge",
            "Seconds since the last reconcile pass.",
            {},
            load.last_reconcile_age_seconds,
        )
    for worker in load.workers:
        labels: dict[str, object] = {"worker_id": worker.worker_id}
        out.add("ferry_worker_cpu_cores", "gauge", "CPU cores a worker's process uses.", labels, worker.cpu_cores)
        out.add("ferry_worker_units", "gauge", "Units whose lease a worker holds.", labels, worker.units)
        out.add(
            "ferry_worker_copied_bytes_per_second",
            "gauge",
            "Bytes per second a worker copies.",
            labels,
            worker.bytes_per_second,
        )
