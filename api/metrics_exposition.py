"""The Prometheus exposition of ``GET /metrics``, rendered from one request's readings.

Two sets of names for the same readings:

- MSK Replicator's CloudWatch names (``ReplicationLatency``, ``MessageLag``, ...), for users who come with MSK
  dashboards; they are gauges, as CloudWatch shows them, in MSK's units (milliseconds);
- conventional names (``ferry_*``): base units in the name (``_seconds``, ``_bytes``, ``_records``), counters
  ending in ``_total`` (from the reports' cumulative counts), one series per state for states. The Grafana
  dashboard and alert rules under ``deploy/monitoring`` use these, and a test checks every name they use is here.

The fleet's series (``ferry_fleet_*``, ``ferry_worker_*``) come last; ``ferry_fleet_desired_workers`` is what the
Helm chart's KEDA or HPA autoscaling follows.

Every exposition is built afresh from the data read for that request (its scope depends on the caller), so nothing
is kept between scrapes. The text is the 0.0.4 format prometheus_client writes (tests parse it with prometheus_client's
parser), rendered here directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from models.fleet_capacity import FleetDemand
from models.fleet_reports import StatusField
from models.fleet_store import FleetLoad
from models.replicator import ReplicatorState

if TYPE_CHECKING:
    from api.replication_metrics import ReplicatorReading

# Healthy or on its way: every other health is a problem to look at.
HEALTHY = frozenset({"REPLICATING", "STARTING"})


class _Family:
    __slots__ = ("help_text", "kind", "lines", "name")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help_text = help_text
        self.lines: list[str] = []


class _Families:
    """Metric families by name, in the order first declared, rendered as the text format 0.0.4 as prometheus_client
    writes it, but directly: building its sample objects and formatting each value as a Go float was most of a
    scrape's time (and wrote counts as 1.234567e+06). A family is declared (HELP and TYPE) even when none of its
    series has a current value."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def gauge(self, name: str, help_text: str, labels: Labels, value: float | None) -> None:
        self._add("gauge", name, help_text, labels, value)

    def counter(self, name: str, help_text: str, labels: Labels, value: float | None) -> None:
        """``name`` without ``_total``: the samples are ``name_total``, as prometheus_client names them."""
        self._add("counter", name, help_text, labels, value)

    def _add(self, kind: str, name: str, help_text: str, labels: Labels, value: float | None) -> None:
        family = self._families.get(name)
        if family is None:
            sample = f"{name}_total" if kind == "counter" else name
            family = self._families[name] = _Family(sample, kind, help_text)
        if value is not None:
            rendered = labels if isinstance(labels, str) else _labels(labels)
            family.lines.append(
                f"{family.name}{{{rendered}}} {_number(value)}\n" if rendered else f"{family.name} {_number(value)}\n"
            )

    def render(self) -> bytes:
        out: list[str] = []
        for family in self._families.values():
            help_text = family.help_text.replace("\\", r"\\").replace("\n", r"\n")
            out.append(f"# HELP {family.name} {help_text}\n# TYPE {family.name} {family.kind}\n")
            out.extend(family.lines)
        return "".join(out).encode()


# A series' labels: names and values, or already rendered (``_labels``), so a replicator's labels are escaped and
# joined once for its dozens of series, not once per series.
Labels = dict[str, Any] | str


def _labels(labels: dict[str, Any]) -> str:
    return ",".join(f'{key}="{_label_value(value)}"' for key, value in labels.items())


def _more(rendered: str, **labels: Any) -> str:
    """Rendered labels with more after them."""
    return f"{rendered},{_labels(labels)}" if rendered else _labels(labels)


def _label_value(value: Any) -> str:
    text = str(value)
    if "\\" in text or "\n" in text or '"' in text:
        text = text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return text


def _number(value: float) -> str:
    """Whole numbers exactly (a count of 1,234,567 is 1234567), other floats as Python's shortest repr."""
    if isinstance(value, int):  # bool included: True is 1
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def exposition(readings: Sequence[ReplicatorReading], load: FleetLoad, demand: FleetDemand) -> bytes:
    """The text exposition (format 0.0.4) of these readings and the fleet."""
    out = _Families()
    _msk_names(out, readings)
    _ferry_names(out, readings)
    _fleet(out, load, demand)
    return out.render()


def _replicator_labels(reading: ReplicatorReading) -> str:
    return _labels({"account_id": reading.replicator.account_id, "replicator_name": reading.replicator.name})


def _msk_names(out: _Families, readings: Sequence[ReplicatorReading]) -> None:
    for reading in readings:
        row = reading.replicator
        labels = _replicator_labels(reading)
        totals = reading.totals
        for p in reading.partitions:
            if p.health == "UNKNOWN":
                continue  # a stale reading is not a current value: leave the series absent
            per_partition = _more(labels, topic=p.sourceTopic, partition=p.partition)
            out.gauge(
                "ReplicationLatency",
                "Milliseconds from a record's source timestamp to its acknowledgement by the target (MSK's name; "
                "ferry_replication_latency_seconds).",
                per_partition,
                p.latencyMs,
            )
            out.gauge(
                "MessageLag",
                "Records on the source not yet acknowledged by the target (MSK's name; ferry_replication_lag_records).",
                per_partition,
                p.lagRecords,
            )
            out.gauge(
                "ReplicatorThroughput",
                "Bytes per second replicated to the target (MSK's name; ferry_replicated_bytes_per_second).",
                per_partition,
                p.bytesPerSecond,
            )
        out.gauge(
            "ReplicatorBytesInPerSec",
            "Bytes per second the replicator processed (replicated, without loop-filtered records).",
            labels,
            totals.bytesPerSecond,
        )
        out.gauge(
            "FerryUnreportedPartitions",
            "Partitions in scope without a current report from a worker (ferry_unreported_partitions).",
            labels,
            totals.partitionsUnreported,
        )
        out.gauge(
            "ReplicatorFailure",
            "Partitions of the replicator that are not healthy now, plus 1 while the replicator is FAILED.",
            labels,
            totals.unhealthyPartitions + (1 if row.state == ReplicatorState.FAILED else 0),
        )
        out.gauge(
            "ReplicationErrors",
            "Errors the replicator's copiers met, cumulative (MSK's name; ferry_replication_errors_total by kind).",
            labels,
            sum(totals.errors.values()),
        )
        out.gauge(
            "AuthError",
            "Authentication and authorization failures met by the replicator, cumulative (MSK's name; "
            "ferry_auth_failures_total).",
            labels,
            _auth_failures(reading),
        )
        out.gauge("ThrottleTime", "Milliseconds requests were throttled by brokers (not measured yet).", labels, None)
        for alias, ok in sorted(reading.status.get(StatusField.CLUSTER_PING, {}).items()):
            out.gauge(
                "KafkaClusterPingSuccessCount",
                "1 when the cluster answered the last probe, else 0 (MSK's name; ferry_cluster_ping_success).",
                _more(labels, cluster_alias=alias),
                ok,
            )
        groups = reading.status.get(StatusField.GROUP_SYNC) or {}
        out.gauge(
            "ConsumerGroupCount", "Consumer groups whose offsets are synchronised.", labels, groups.get("groupCount")
        )
        out.gauge(
            "ConsumerGroupOffsetSyncFailure",
            "Consumer group offset sync failures since the replicator's metadata unit started, cumulative.",
            labels,
            groups.get("failures"),
        )
        for group, entry in sorted((groups.get("groups") or {}).items()):
            out.gauge(
                "ConsumerGroupTranslationLag",
                "Records the target group's committed offsets trail the translation of the source group's.",
                _more(labels, consumer_group=group),
                entry.get("translationLagRecords"),
            )


def _auth_failures(reading: ReplicatorReading) -> int:
    return reading.totals.errors.get("AUTH_DENIED", 0) + int(reading.status.get(StatusField.AUTH_FAILURES) or 0)


def _seconds(milliseconds: float | None) -> float | None:
    return None if milliseconds is None else milliseconds / 1000


def _ferry_names(out: _Families, readings: Sequence[ReplicatorReading]) -> None:
    for reading in readings:
        row = reading.replicator
        labels = _replicator_labels(reading)
        totals = reading.totals
        for state in ReplicatorState:
            out.gauge(
                "ferry_replicator_state",
                "1 for the replicator's current state (CREATING, RUNNING, UPDATING, DELETING, FAILED), else 0.",
                _more(labels, state=state.value),
                1 if row.state == state else 0,
            )
        out.gauge(
            "ferry_replicator_partitions",
            "Source partitions the replicator copies or should.",
            labels,
            totals.partitions,
        )
        out.gauge(
            "ferry_unreported_partitions",
            "Partitions in scope without a current report from a worker (not copied, or their worker is gone).",
            labels,
            totals.partitionsUnreported,
        )
        for p in reading.partitions:
            per_partition = _more(labels, topic=p.sourceTopic, partition=p.partition)
            # Health is a current fact even without a report: nobody copying the partition is worth an alert. Why
            # it is not healthy is in the metrics endpoint's JSON (one series per health would double the scrape).
            out.gauge(
                "ferry_partition_healthy",
                "1 while the partition replicates (REPLICATING or STARTING), else 0 (UNKNOWN: no current report).",
                per_partition,
                1 if p.health in HEALTHY else 0,
            )
            if p.health == "UNKNOWN":
                continue  # a stale reading is not a current value: leave the series absent
            out.gauge(
                "ferry_replication_lag_records",
                "Records on the source not yet acknowledged by the target.",
                per_partition,
                p.lagRecords,
            )
            out.gauge(
                "ferry_replication_lag_seconds",
                "How old the newest copied record is while records wait to be copied; 0 when caught up.",
                per_partition,
                p.lagSeconds,
            )
            out.gauge(
                "ferry_replication_latency_seconds",
                "The largest time from a record's source timestamp to its acknowledgement by the target lately.",
                per_partition,
                _seconds(p.latencyMs),
            )
            out.gauge(
                "ferry_replicated_bytes_per_second",
                "Bytes per second copied to the target over the worker's last report interval.",
                per_partition,
                p.bytesPerSecond,
            )
            out.counter(
                "ferry_replicated_records",
                "Records copied to the target (by the partition's current owner: it restarts from 0 on a move).",
                per_partition,
                p.recordsCopied,
            )
            out.counter("ferry_replicated_bytes", "Bytes copied to the target.", per_partition, p.bytesCopied)
            out.counter(
                "ferry_filtered_records",
                "Records not copied because they came from the target (loop prevention).",
                per_partition,
                p.recordsFiltered,
            )
            out.counter(
                "ferry_source_truncated_offsets",
                "Source offsets retention deleted before they were copied: data loss (health SOURCE_TRUNCATED).",
                per_partition,
                p.truncatedOffsets,
            )
        for kind, count in sorted(totals.errors.items()):
            out.counter(
                "ferry_replication_errors",
                "Errors the replicator's copiers met, by kind (FETCH_FAILED, PRODUCE_FAILED, AUTH_DENIED, ...).",
                _more(labels, kind=kind),
                count,
            )
        out.counter(
            "ferry_auth_failures",
            "Refused credentials, TLS handshakes and denied operations the replicator met.",
            labels,
            _auth_failures(reading),
        )
        for alias, ok in sorted(reading.status.get(StatusField.CLUSTER_PING, {}).items()):
            out.gauge(
                "ferry_cluster_ping_success",
                "1 when the cluster answered the metadata unit's last probe, else 0.",
                _more(labels, cluster_alias=alias),
                ok,
            )
        groups = reading.status.get(StatusField.GROUP_SYNC) or {}
        out.gauge(
            "ferry_consumer_groups_synced",
            "Consumer groups whose offsets are synchronised.",
            labels,
            groups.get("groupCount"),
        )
        out.counter(
            "ferry_consumer_group_offset_sync_failures",
            "Consumer group offset sync failures since the replicator's metadata unit started.",
            labels,
            groups.get("failures"),
        )
        for group, entry in sorted((groups.get("groups") or {}).items()):
            out.gauge(
                "ferry_consumer_group_translation_lag_records",
                "Records the target group's committed offsets trail the translation of the source group's.",
                _more(labels, consumer_group=group),
                entry.get("translationLagRecords"),
            )


def _fleet(out: _Families, load: FleetLoad, demand: FleetDemand) -> None:
    """The fleet's size and load; ``ferry_fleet_desired_workers`` is what autoscalers follow."""
    out.gauge(
        "ferry_fleet_desired_workers",
        "Workers the fleet needs to copy its current load with headroom and clear its lag in time.",
        {},
        demand.desired_workers,
    )
    out.gauge("ferry_fleet_live_workers", "Workers heartbeating now.", {}, len(load.workers))
    out.gauge(
        "ferry_fleet_draining_workers", "Live workers being drained.", {}, sum(1 for w in load.workers if w.draining)
    )
    out.gauge("ferry_fleet_units", "Units of work (partitions and metadata units).", {}, load.units)
    out.gauge(
        "ferry_fleet_unassigned_units", "Units the reconcile loop could give to no worker.", {}, load.unassigned_units
    )
    out.gauge(
        "ferry_fleet_units_without_owner",
        "Units no worker holds a live lease on right now.",
        {},
        load.units_without_owner,
    )
    out.gauge("ferry_fleet_copied_bytes_per_second", "Bytes per second the fleet copies.", {}, demand.bytes_per_second)
    out.gauge("ferry_fleet_lag_bytes", "Bytes the fleet's partitions trail their sources by.", {}, demand.lag_bytes)
    out.gauge("ferry_fleet_cpu_cores", "CPU cores the fleet's workers use.", {}, demand.cpu_cores)
    out.gauge(
        "ferry_fleet_last_reconcile_age_seconds",
        "Seconds since the last reconcile pass (any worker, API process or beat runs them every few seconds).",
        {},
        load.last_reconcile_age_seconds,
    )
    out.gauge(
        "ferry_fleet_last_reconcile_duration_seconds",
        "How long the last reconcile pass took (reads, plan and writes under the lock; passes are serialised).",
        {},
        load.last_reconcile_seconds,
    )
    for worker in load.workers:
        labels: dict[str, Any] = {"worker_id": worker.worker_id}
        out.gauge("ferry_worker_cpu_cores", "CPU cores a worker's process uses.", labels, worker.cpu_cores)
        out.gauge("ferry_worker_units", "Units whose lease a worker holds.", labels, worker.units)
        out.gauge(
            "ferry_worker_copied_bytes_per_second", "Bytes per second a worker copies.", labels, worker.bytes_per_second
        )
        out.gauge(
            "ferry_worker_lag_bytes", "Bytes a worker's partitions trail their sources by.", labels, worker.lag_bytes
        )
        out.gauge(
            "ferry_worker_heartbeat_age_seconds",
            "Seconds since the worker's last heartbeat.",
            labels,
            worker.heartbeat_age_seconds,
        )
        out.gauge("ferry_worker_draining", "1 while the worker is being drained, else 0.", labels, int(worker.draining))
