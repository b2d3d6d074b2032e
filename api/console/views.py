"""What the console's pages show, built from the API's own readings: no SQL or Redis of its own.

The form readers turn posted fields into the MSK request shapes the API validates (``CreateReplicatorRequest``,
``UpdateReplicationInfoRequest``), so the console refuses exactly what the API refuses, with the same message.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from api.replication_metrics import MetricsTotals, PartitionMetrics
from models.replicator import ReplicatorRow

STARTING_POSITIONS = ("LATEST", "EARLIEST")
NAMING_MODES = ("PREFIXED_WITH_SOURCE_CLUSTER_ALIAS", "IDENTICAL")
COMPRESSION_TYPES = ("NONE", "GZIP", "SNAPPY", "LZ4", "ZSTD")
DEFAULT_ROLE = "arn:aws:iam::{account}:role/ferry-replicator"

# Where a member the API names in an error is shown on the create form (the first match wins).
_FIELD_OF_MEMBER = (
    ("replicatorName", "name"),
    ("replicatorDescription", "description"),
    ("description", "description"),
    ("serviceExecutionRoleArn", "role"),
    ("kafkaClusters[0]", "source_bootstrap"),
    ("kafkaClusters[1]", "target_bootstrap"),
    ("topicsToExclude", "topics_exclude"),
    ("topicsToReplicate", "topics"),
    ("consumerGroupsToExclude", "groups_exclude"),
    ("consumerGroupsToReplicate", "groups"),
    ("startingPosition", "starting_position"),
    ("topicNameConfiguration", "naming"),
    ("targetCompressionType", "compression"),
    ("SourceKafkaCluster", "source_id"),
    ("TargetKafkaCluster", "target_id"),
)


def field_of(member: str | None) -> str | None:
    """The create form's field that a member path the API names (``invalidParameter``) belongs to."""
    if not member:
        return None
    lowered = member.lower()
    return next((field for name, field in _FIELD_OF_MEMBER if name.lower() in lowered), None)


def lines(value: str) -> list[str]:
    """A textarea's patterns: one a line, blank lines and surrounding spaces dropped."""
    return [line.strip() for line in value.splitlines() if line.strip()]


def create_request_of(form: dict[str, str]) -> dict[str, Any]:
    """The CreateReplicator request (wire names) for two self-managed clusters a create form describes."""
    source_id = form.get("source_id", "").strip()
    target_id = form.get("target_id", "").strip()
    topic_replication: dict[str, Any] = {
        "topicsToReplicate": lines(form.get("topics", "")),
        "startingPosition": {"type": form.get("starting_position", "LATEST")},
        "topicNameConfiguration": {"type": form.get("naming", "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS")},
    }
    if lines(form.get("topics_exclude", "")):
        topic_replication["topicsToExclude"] = lines(form.get("topics_exclude", ""))
    groups: dict[str, Any] = {"consumerGroupsToReplicate": lines(form.get("groups", ""))}
    if lines(form.get("groups_exclude", "")):
        groups["consumerGroupsToExclude"] = lines(form.get("groups_exclude", ""))
    request: dict[str, Any] = {
        "replicatorName": form.get("name", "").strip(),
        "serviceExecutionRoleArn": form.get("role", "").strip(),
        "kafkaClusters": [
            _self_managed(source_id, form.get("source_bootstrap", "")),
            _self_managed(target_id, form.get("target_bootstrap", "")),
        ],
        "replicationInfoList": [
            {
                "sourceKafkaClusterId": source_id,
                "targetKafkaClusterId": target_id,
                "targetCompressionType": form.get("compression", "NONE"),
                "topicReplication": topic_replication,
                "consumerGroupReplication": groups,
            }
        ],
    }
    if form.get("description", "").strip():
        request["description"] = form["description"].strip()
    return request


def _self_managed(cluster_id: str, bootstrap: str) -> dict[str, Any]:
    return {"apacheKafkaCluster": {"apacheKafkaClusterId": cluster_id, "bootstrapBrokerString": bootstrap.strip()}}


def topics_update_of(form: dict[str, str], stored_info: dict[str, Any], current_version: str) -> dict[str, Any]:
    """An UpdateReplicationInfo request (wire names) changing only the topic lists; the switches keep their
    stored values (the update shape requires them all)."""
    stored = stored_info.get("topicReplication") or {}
    return {
        "currentVersion": current_version,
        "topicReplication": {
            "topicsToReplicate": lines(form.get("topics", "")),
            "topicsToExclude": lines(form.get("topics_exclude", "")),
            "copyAccessControlListsForTopics": bool(stored.get("copyAccessControlListsForTopics", True)),
            "copyTopicConfigurations": bool(stored.get("copyTopicConfigurations", True)),
            "detectAndCopyNewTopics": bool(stored.get("detectAndCopyNewTopics", True)),
        },
    }


@dataclass(frozen=True)
class TopicView:
    """One source topic's partitions summed up: what the detail page's table and charts show per topic."""

    source_topic: str
    target_topic: str | None
    partitions: int
    unhealthy: int
    unreported: int
    lag_records: int | None
    records_per_second: float | None
    bytes_per_second: float | None
    latency_ms: float | None


def topics_of(partitions: list[PartitionMetrics], healthy: frozenset[str]) -> list[TopicView]:
    by_topic: dict[str, list[PartitionMetrics]] = defaultdict(list)
    for partition in partitions:
        by_topic[partition.sourceTopic].append(partition)
    views = []
    for topic, members in sorted(by_topic.items()):
        current = [p for p in members if p.health != "UNKNOWN"]
        complete = len(current) == len(members)
        lags = [p.lagRecords for p in current if p.lagRecords is not None]
        latencies = [p.latencyMs for p in current if p.latencyMs is not None]
        views.append(
            TopicView(
                source_topic=topic,
                target_topic=next((p.targetTopic for p in members if p.targetTopic), None),
                partitions=len(members),
                unhealthy=sum(1 for p in members if p.health not in healthy),
                unreported=len(members) - len(current),
                lag_records=sum(lags) if lags and complete else None,
                records_per_second=sum(p.recordsPerSecond or 0.0 for p in current) if current else None,
                bytes_per_second=sum(p.bytesPerSecond or 0.0 for p in current) if current else None,
                latency_ms=max(latencies) if latencies else None,
            )
        )
    return views


@dataclass(frozen=True)
class ReplicatorRowView:
    """A replicator on the list page."""

    row: ReplicatorRow
    totals: MetricsTotals

    @property
    def state_code(self) -> str | None:
        return (self.row.state_info or {}).get("code")


MISSING = "\u2013"  # an en dash: no reading


def human_bytes(value: float | None) -> str:
    if value is None:
        return MISSING
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return MISSING
    return f"{value:,.{digits}f}"
