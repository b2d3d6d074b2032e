"""The spec built from the MSK replicationInfo shape, and which topics a flow may copy (loop prevention)."""

from __future__ import annotations

import pytest

from workers.engine.admin import ConfigEntry
from workers.engine.connection import ClusterConnection, client_kwargs
from workers.engine.spec import ReplicationSpec, StartingPosition, TargetCompression, TopicNaming
from workers.engine.topics import copyable_configs, is_per_cluster_config


def test_from_replication_info_reads_the_stored_camel_case_shape() -> None:
    spec = ReplicationSpec.from_replication_info(
        {
            "sourceKafkaClusterArn": "arn:aws:kafka:us-east-1:000000000000:cluster/a/1",
            "targetKafkaClusterArn": "arn:aws:kafka:us-east-1:000000000000:cluster/b/2",
            "targetCompressionType": "ZSTD",
            "topicReplication": {
                "topicsToReplicate": ["orders.*"],
                "topicsToExclude": ["orders-private"],
                "copyTopicConfigurations": False,
                "detectAndCopyNewTopics": False,
                "startingPosition": {"type": "EARLIEST"},
                "topicNameConfiguration": {"type": "IDENTICAL"},
            },
            "consumerGroupReplication": {"consumerGroupsToReplicate": [".*"]},
        },
        "east",
        "west",
        "arn:aws:kafka:us-east-1:000000000000:replicator/r/3",
        created_at_ms=42,
    )
    assert spec.target_compression is TargetCompression.ZSTD
    assert spec.starting_position is StartingPosition.EARLIEST
    assert spec.topic_naming is TopicNaming.IDENTICAL
    assert not spec.copy_topic_configurations and not spec.detect_and_copy_new_topics
    assert spec.created_at_ms == 42
    assert spec.target_topic("orders") == "orders"


def test_msk_defaults_apply_when_fields_are_missing() -> None:
    spec = ReplicationSpec.from_replication_info(
        {"topicReplication": {"topicsToReplicate": [".*"]}}, "east", "west", "r"
    )
    assert spec.starting_position is StartingPosition.LATEST
    assert spec.topic_naming is TopicNaming.PREFIXED_WITH_SOURCE_CLUSTER_ALIAS
    assert spec.copy_topic_configurations and spec.detect_and_copy_new_topics
    assert spec.target_compression is TargetCompression.NONE
    assert spec.target_topic("orders") == "east.orders"


def test_topic_scope_excludes_internal_topics_and_replicas_of_the_target() -> None:
    spec = ReplicationSpec("r", "east", "west", topics_to_replicate=(".*",), topics_to_exclude=("secret-.*",))
    assert spec.should_replicate("orders")
    assert spec.should_replicate("north.orders"), "replicas of third clusters may be chained"
    assert not spec.should_replicate("west.orders"), "copying the target's own replica back would loop"
    for internal in ("__consumer_offsets", "__transaction_state", "__ferry_progress"):
        assert not spec.should_replicate(internal)
    assert not spec.should_replicate("secret-payroll")
    identical = ReplicationSpec(
        "r", "east", "west", topics_to_replicate=("west.*",), topic_naming=TopicNaming.IDENTICAL
    )
    assert identical.should_replicate("west.orders"), "IDENTICAL mode prevents loops per record, not by name"


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="topicsToReplicate"):
        ReplicationSpec("r", "east", "west", topics_to_replicate=("(",))
    with pytest.raises(ValueError, match="aliases must differ"):
        ReplicationSpec("r", "same", "same", topics_to_replicate=(".*",))


def test_per_cluster_configs_are_not_copied() -> None:
    entries = {
        "retention.ms": ConfigEntry("retention.ms", "1000", 1, False, False),
        "min.insync.replicas": ConfigEntry("min.insync.replicas", "2", 1, False, False),
        "segment.bytes": ConfigEntry("segment.bytes", "1073741824", 5, False, False),
        "leader.replication.throttled.replicas": ConfigEntry(
            "leader.replication.throttled.replicas", "*", 1, False, False
        ),
    }
    assert copyable_configs(entries) == {"retention.ms": "1000"}
    assert is_per_cluster_config("message.timestamp.type")


def test_credentials_stay_out_of_repr_and_descriptions() -> None:
    connection = ClusterConnection(
        "broker:9096",
        alias="east",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="ferry",
        sasl_password="s3cret",
    )
    assert "s3cret" not in repr(connection) and "s3cret" not in connection.describe()
    kwargs = client_kwargs(connection, "copier")
    assert kwargs["sasl_plain_password"] == "s3cret" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    with pytest.raises(ValueError, match="needs a sasl_mechanism"):
        ClusterConnection("broker:9096", security_protocol="SASL_SSL")


def test_tls_settings_become_one_verified_context_per_certificate_set() -> None:
    plain = ClusterConnection("broker:9093", security_protocol="SSL")
    context = client_kwargs(plain, "copier")["ssl_context"]
    assert context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"
    assert client_kwargs(plain, "probe")["ssl_context"] is context, "built once, shared by every client"
    with pytest.raises(ValueError, match="needs its private key"):
        ClusterConnection("broker:9093", security_protocol="SSL", certificate_pem="-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError, match="needs TLS"):
        ClusterConnection("broker:9092", certificate_pem="c", private_key_pem="k")
    with pytest.raises(ValueError, match="token provider"):
        ClusterConnection("broker:9096", security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")
