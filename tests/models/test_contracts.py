"""The typed contracts where Ferry's processes meet, without any service: the stored replicationInfo read the same
way by the API's normalisation and the engine's spec, and the versioned reports workers write to Redis."""

from __future__ import annotations

import json
from dataclasses import asdict

from models.bootstrap import AddressPolicy
from models.fleet_reports import PartitionReport, WorkerReport
from models.replicator_shapes import CreateReplicatorRequest
from models.replicator_spec import accept_create
from workers.engine.spec import OffsetSyncMode, ReplicationSpec, StartingPosition, TargetCompression, TopicNaming


def minimal_request() -> CreateReplicatorRequest:
    return CreateReplicatorRequest.model_validate(
        {
            "replicatorName": "contracts",
            "serviceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry",
            "kafkaClusters": [
                {"apacheKafkaCluster": {"apacheKafkaClusterId": "east", "bootstrapBrokerString": "h1:9092"}},
                {"apacheKafkaCluster": {"apacheKafkaClusterId": "west", "bootstrapBrokerString": "h2:9092"}},
            ],
            "replicationInfoList": [
                {
                    "sourceKafkaClusterId": "east",
                    "targetKafkaClusterId": "west",
                    "targetCompressionType": "NONE",
                    "topicReplication": {"topicsToReplicate": ["orders.*"]},
                    "consumerGroupReplication": {"consumerGroupsToReplicate": ["billing-.*"]},
                }
            ],
        }
    )


def test_the_stored_defaults_are_the_specs_defaults() -> None:
    """The API fills MSK's defaults into what it stores; the engine's spec applies the same ones to a shape that
    leaves them out: the two readings of one request agree."""
    stored = accept_create(minimal_request(), AddressPolicy()).replication_info
    bare = {
        "sourceKafkaClusterAlias": stored["sourceKafkaClusterAlias"],
        "targetKafkaClusterAlias": stored["targetKafkaClusterAlias"],
        "topicReplication": {"topicsToReplicate": ["orders.*"]},
        "consumerGroupReplication": {"consumerGroupsToReplicate": ["billing-.*"]},
    }
    from_stored = ReplicationSpec.from_replication_info(stored, replicator_id="r", created_at_ms=1)
    from_bare = ReplicationSpec.from_replication_info(bare, replicator_id="r", created_at_ms=1)
    assert from_stored == from_bare
    assert from_stored.starting_position is StartingPosition.LATEST
    assert from_stored.topic_naming is TopicNaming.PREFIXED_WITH_SOURCE_CLUSTER_ALIAS
    assert from_stored.target_compression is TargetCompression.NONE
    assert from_stored.groups.offset_sync_mode is OffsetSyncMode.LEGACY
    assert from_stored.groups.detect_and_copy_new_groups and from_stored.groups.synchronise_offsets
    assert from_stored.target_topic("orders") == f"{stored['sourceKafkaClusterAlias']}.orders"


def test_one_name_filter_serves_topics_and_groups() -> None:
    spec = ReplicationSpec.from_replication_info(
        {
            "sourceKafkaClusterAlias": "east",
            "targetKafkaClusterAlias": "west",
            "topicReplication": {"topicsToReplicate": ["orders.*"], "topicsToExclude": ["orders-private"]},
            "consumerGroupReplication": {
                "consumerGroupsToReplicate": ["billing-.*"],
                "consumerGroupsToExclude": ["billing-test"],
            },
        },
        replicator_id="r",
    )
    assert spec.should_replicate("orders-eu") and not spec.should_replicate("orders-private")
    assert spec.groups.filter.matches("billing-eu")
    assert not spec.groups.filter.matches("billing-test")
    assert not spec.groups.filter.matches("__consumer_offsets"), "internal names never match"
    assert not spec.groups.filter.matches("xbilling-eu"), "patterns match whole names"


def test_partition_reports_round_trip_and_other_versions_are_ignored() -> None:
    report = PartitionReport(
        source_topic="orders:eu",
        partition=7,
        target_topic="east.orders:eu",
        owner="w1",
        epoch=3,
        reported_at_ms=1_700_000_000_000,
        health="REPLICATING",
        lag_records=1_234_567,
        errors={"FETCH_FAILED": 2},
    )
    assert report.field_name == "orders:eu:7"
    assert PartitionReport.from_json(report.to_json()) == report
    # Readers of an older release parse the same text: every field, in declaration order, after the version.
    assert report.to_json() == json.dumps({"version": PartitionReport.VERSION, **asdict(report)}, separators=(",", ":"))
    newer = {**json.loads(report.to_json()), "version": PartitionReport.VERSION + 1}
    assert PartitionReport.from_json(json.dumps(newer)) is None
    assert PartitionReport.from_json(b"not json") is None
    assert PartitionReport.from_json(json.dumps({"version": PartitionReport.VERSION})) is None


def test_a_report_is_a_candidate_for_a_health_exactly_when_its_text_carries_it() -> None:
    markers = PartitionReport.health_markers(["AUTH_DENIED", "RECORD_TOO_LARGE"])
    for health, expected in (("AUTH_DENIED", True), ("RECORD_TOO_LARGE", True), ("REPLICATING", False)):
        report = PartitionReport("t", 0, "a.t", "w1", 1, 0, health, health_detail="AUTH_DENIED elsewhere")
        # As written by to_json and as read back from Redis (bytes), whatever the other fields hold.
        assert PartitionReport.may_have_health(report.to_json(), markers) is expected, health
        assert PartitionReport.may_have_health(report.to_json().encode(), markers) is expected, health


def test_worker_reports_round_trip() -> None:
    report = WorkerReport("w1", 5, {"r1": {"partitions": 3, "metadata": True}})
    assert WorkerReport.from_json(report.to_json()) == report
    assert WorkerReport.from_json("{}") is None
