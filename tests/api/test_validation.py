"""Each rule the service model leaves to the server, through boto3: the exact exception class and a message
that names the member at fault."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.api.conftest import create_request

Mutation = Callable[[dict[str, Any]], None]


def _info(request: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = request["ReplicationInfoList"][0]
    return info


def _set(path: str, value: Any) -> Mutation:
    """Set a member of the request by a dotted path of boto3 names (ints index lists)."""

    def mutate(request: dict[str, Any]) -> None:
        node: Any = request
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[int(leaf) if leaf.isdigit() else leaf] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(request: dict[str, Any]) -> None:
        node: Any = request
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[leaf]

    return mutate


def _three_clusters(request: dict[str, Any]) -> None:
    third = copy.deepcopy(request["KafkaClusters"][1])
    third["ApacheKafkaCluster"]["ApacheKafkaClusterId"] = "third"
    request["KafkaClusters"].append(third)


def _both_cluster_kinds(request: dict[str, Any]) -> None:
    request["KafkaClusters"][0]["AmazonMskCluster"] = {
        "MskClusterArn": "arn:aws:kafka:us-east-1:123456789012:cluster/c/6357e0b2-0e6a-4b86-a0b4-70df934c2e31-5"
    }


def _same_cluster_twice(request: dict[str, Any]) -> None:
    request["KafkaClusters"][1] = copy.deepcopy(request["KafkaClusters"][0])


def _target_is_source(request: dict[str, Any]) -> None:
    _info(request)["TargetKafkaClusterId"] = _info(request)["SourceKafkaClusterId"]


def _two_replication_infos(request: dict[str, Any]) -> None:
    request["ReplicationInfoList"].append(copy.deepcopy(_info(request)))


def _both_arn_and_id(request: dict[str, Any]) -> None:
    _info(request)["SourceKafkaClusterArn"] = (
        "arn:aws:kafka:us-east-1:123456789012:cluster/c/6357e0b2-0e6a-4b86-a0b4-70df934c2e31-5"
    )


def _enhanced_with_prefixed(request: dict[str, Any]) -> None:
    _info(request)["ConsumerGroupReplication"]["ConsumerGroupOffsetSyncMode"] = "ENHANCED"


def _enhanced_with_explicit_prefixed(request: dict[str, Any]) -> None:
    _enhanced_with_prefixed(request)
    _info(request)["TopicReplication"]["TopicNameConfiguration"] = {"Type": "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"}


def _msk_cluster(arn: str) -> Mutation:
    def mutate(request: dict[str, Any]) -> None:
        request["KafkaClusters"][0] = {"AmazonMskCluster": {"MskClusterArn": arn}}
        info = _info(request)
        del info["SourceKafkaClusterId"]
        info["SourceKafkaClusterArn"] = arn

    return mutate


TOPICS = "ReplicationInfoList.0.TopicReplication"
GROUPS = "ReplicationInfoList.0.ConsumerGroupReplication"

CREATE_RULES: list[tuple[str, Mutation, str]] = [
    ("one cluster", lambda r: r["KafkaClusters"].pop(), "kafkaClusters"),
    ("three clusters", _three_clusters, "kafkaClusters"),
    ("a cluster of both kinds", _both_cluster_kinds, "kafkaClusters[0]"),
    ("a cluster of neither kind", _drop("KafkaClusters.1.ApacheKafkaCluster"), "kafkaClusters[1]"),
    ("the same cluster twice", _same_cluster_twice, "kafkaClusters"),
    ("no replication info", _set("ReplicationInfoList", []), "replicationInfoList"),
    ("two replication infos", _two_replication_infos, "replicationInfoList"),
    ("source is target", _target_is_source, "targetKafkaClusterId"),
    ("source by ARN and id", _both_arn_and_id, "sourceKafkaClusterArn"),
    ("source by neither ARN nor id", _drop("ReplicationInfoList.0.SourceKafkaClusterId"), "sourceKafkaClusterArn"),
    (
        "target id of no cluster",
        _set("ReplicationInfoList.0.TargetKafkaClusterId", "elsewhere"),
        "targetKafkaClusterId",
    ),
    ("name starting with a dash", _set("ReplicatorName", "-leading-dash"), "replicatorName"),
    ("name with an underscore", _set("ReplicatorName", "under_score"), "replicatorName"),
    ("name of 129 characters", _set("ReplicatorName", "n" * 129), "replicatorName"),
    ("description of 1025 characters", _set("Description", "d" * 1025), "description"),
    ("role that is not an IAM role ARN", _set("ServiceExecutionRoleArn", "my-role"), "serviceExecutionRoleArn"),
    ("unknown compression", _set("ReplicationInfoList.0.TargetCompressionType", "BROTLI"), "targetCompressionType"),
    ("unknown starting position", _set(f"{TOPICS}.StartingPosition", {"Type": "MIDDLE"}), "startingPosition"),
    ("unknown topic naming", _set(f"{TOPICS}.TopicNameConfiguration", {"Type": "SUFFIXED"}), "topicNameConfiguration"),
    ("unknown offset sync mode", _set(f"{GROUPS}.ConsumerGroupOffsetSyncMode", "TURBO"), "consumerGroupOffsetSyncMode"),
    (
        "unknown SCRAM mechanism",
        _set("KafkaClusters.0.ClientAuthentication", {"SaslScram": {"Mechanism": "MD5", "SecretArn": "s"}}),
        "mechanism",
    ),
    (
        "two authentication methods",
        _set(
            "KafkaClusters.0.ClientAuthentication",
            {"SaslScram": {"Mechanism": "SHA512", "SecretArn": "s"}, "MTLS": {"SecretArn": "s"}},
        ),
        "clientAuthentication",
    ),
    (
        "unknown encryption type",
        _set("KafkaClusters.0.EncryptionInTransit", {"EncryptionType": "SSL"}),
        "encryptionType",
    ),
    ("no topic pattern", _set(f"{TOPICS}.TopicsToReplicate", []), "topicsToReplicate"),
    ("101 topic patterns", _set(f"{TOPICS}.TopicsToReplicate", [f"t{i}" for i in range(101)]), "topicsToReplicate"),
    ("topic pattern of 250 characters", _set(f"{TOPICS}.TopicsToReplicate", ["t" * 250]), "topicsToReplicate[0]"),
    (
        "group pattern of 257 characters",
        _set(f"{GROUPS}.ConsumerGroupsToReplicate", ["g" * 257]),
        "consumerGroupsToReplicate[0]",
    ),
    ("empty topic pattern", _set(f"{TOPICS}.TopicsToReplicate", ["ok", ""]), "topicsToReplicate[1]"),
    (
        "topic regex that does not compile",
        _set(f"{TOPICS}.TopicsToReplicate", ["orders[", "x"]),
        "topicsToReplicate[0]",
    ),
    ("exclude regex that does not compile", _set(f"{TOPICS}.TopicsToExclude", ["(unclosed"]), "topicsToExclude[0]"),
    (
        "group regex that does not compile",
        _set(f"{GROUPS}.ConsumerGroupsToReplicate", ["*"]),
        "consumerGroupsToReplicate[0]",
    ),
    ("backreference", _set(f"{TOPICS}.TopicsToReplicate", ["(a)\\1"]), "topicsToReplicate[0]"),
    ("lookahead", _set(f"{TOPICS}.TopicsToExclude", ["orders(?!-private)"]), "topicsToExclude[0]"),
    (
        "lookbehind",
        _set(f"{GROUPS}.ConsumerGroupsToReplicate", ["(?<=x)y"]),
        "consumerGroupsToReplicate[0]",
    ),
    (
        "possessive quantifier",
        _set(f"{GROUPS}.ConsumerGroupsToExclude", ["x*+y"]),
        "consumerGroupsToExclude[0]",
    ),
    ("ENHANCED offset sync with default PREFIXED naming", _enhanced_with_prefixed, "consumerGroupOffsetSyncMode"),
    (
        "ENHANCED offset sync with explicit PREFIXED naming",
        _enhanced_with_explicit_prefixed,
        "consumerGroupOffsetSyncMode",
    ),
    (
        "bootstrap string that is not host:port",
        _set("KafkaClusters.0.ApacheKafkaCluster.BootstrapBrokerString", "localhost"),
        "bootstrapBrokerString",
    ),
    (
        "cluster id with spaces",
        _set("KafkaClusters.1.ApacheKafkaCluster.ApacheKafkaClusterId", "a b"),
        "apacheKafkaClusterId",
    ),
    ("MSK cluster ARN that is not one", _msk_cluster("arn:aws:kafka:us-east-1:123:cluster"), "mskClusterArn"),
    ("reserved tag prefix", _set("Tags", {"aws:created-by": "me"}), "tags"),
    ("tag key of 129 characters", _set("Tags", {"k" * 129: "v"}), "tags"),
    ("tag value of 257 characters", _set("Tags", {"k": "v" * 257}), "tags"),
    (
        "enabled log delivery without destination",
        _set("LogDelivery", {"ReplicatorLogDelivery": {"Firehose": {"Enabled": True}}}),
        "deliveryStream",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "member"), [(m, f) for _, m, f in CREATE_RULES], ids=[rule for rule, _, _ in CREATE_RULES]
)
def test_create_rule(kafka: Any, unique: str, clusters: dict[str, Any], mutation: Mutation, member: str) -> None:
    request = create_request(unique, clusters)
    mutation(request)

    with pytest.raises(kafka.exceptions.BadRequestException) as error:
        kafka.create_replicator(**request)

    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert member in error.value.response["Error"]["Message"]
    assert member in error.value.response["InvalidParameter"]
    assert kafka.list_replicators(ReplicatorNameFilter=unique)["Replicators"] == []


def test_enhanced_offset_sync_with_identical_names_is_accepted(
    kafka: Any, unique: str, clusters: dict[str, Any]
) -> None:
    request = create_request(unique, clusters)
    _enhanced_with_prefixed(request)
    _info(request)["TopicReplication"]["TopicNameConfiguration"] = {"Type": "IDENTICAL"}

    arn = kafka.create_replicator(**request)["ReplicatorArn"]

    info = kafka.describe_replicator(ReplicatorArn=arn)["ReplicationInfoList"][0]
    assert info["ConsumerGroupReplication"]["ConsumerGroupOffsetSyncMode"] == "ENHANCED"
    assert info["TopicReplication"]["TopicNameConfiguration"] == {"Type": "IDENTICAL"}


def test_msk_cluster_without_aws_credentials_is_a_clear_bad_request(
    kafka: Any, unique: str, clusters: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API runs in this process, so this is the environment its boto3 credential chain sees.
    for variable in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    request = create_request(unique, clusters)
    _msk_cluster("arn:aws:kafka:eu-west-1:123456789012:cluster/prod/6357e0b2-0e6a-4b86-a0b4-70df934c2e31-5")(request)

    with pytest.raises(kafka.exceptions.BadRequestException) as error:
        kafka.create_replicator(**request)

    message = error.value.response["Error"]["Message"]
    assert message.startswith("kafkaClusters[0].amazonMskCluster.mskClusterArn:")
    assert "no AWS credentials" in message
    assert error.value.response["InvalidParameter"] == "kafkaClusters[0].amazonMskCluster.mskClusterArn"


def test_existing_name_is_a_conflict(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    kafka.create_replicator(**create_request(unique, clusters))

    with pytest.raises(kafka.exceptions.ConflictException) as error:
        kafka.create_replicator(**create_request(unique, clusters))

    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert "replicatorName" in error.value.response["Error"]["Message"]
    assert unique in error.value.response["Error"]["Message"]


# ----- UpdateReplicationInfo ----------------------------------------------------------------------------------

TOPIC_UPDATE = {
    "CopyAccessControlListsForTopics": True,
    "CopyTopicConfigurations": True,
    "DetectAndCopyNewTopics": True,
    "TopicsToExclude": [],
    "TopicsToReplicate": ["orders.*", "payments"],
}
GROUP_UPDATE = {
    "ConsumerGroupsToExclude": [],
    "ConsumerGroupsToReplicate": [".*"],
    "DetectAndCopyNewConsumerGroups": True,
    "SynchroniseConsumerGroupOffsets": True,
}
LOGS = {"ReplicatorLogDelivery": {"CloudWatchLogs": {"Enabled": True, "LogGroup": "ferry"}}}

UPDATE_RULES: list[tuple[str, dict[str, Any], str]] = [
    ("no-op topic update", {"TopicReplication": TOPIC_UPDATE}, "identical to the current value"),
    ("no-op group update", {"ConsumerGroupReplication": GROUP_UPDATE}, "identical to the current value"),
    ("nothing to update", {}, "topicReplication"),
    (
        "log delivery with topic replication",
        {"TopicReplication": {**TOPIC_UPDATE, "TopicsToReplicate": ["x"]}, "LogDelivery": LOGS},
        "logDelivery",
    ),
    (
        "another source cluster",
        {"SourceKafkaClusterId": "elsewhere", "TopicReplication": TOPIC_UPDATE},
        "sourceKafkaClusterId",
    ),
    (
        "target given by ARN",
        {"TargetKafkaClusterArn": "arn:aws:kafka:us-east-1:123456789012:cluster/c/x", "TopicReplication": TOPIC_UPDATE},
        "targetKafkaClusterArn",
    ),
    ("no topic pattern", {"TopicReplication": {**TOPIC_UPDATE, "TopicsToReplicate": []}}, "topicsToReplicate"),
    (
        "topic pattern with an atomic group",
        {"TopicReplication": {**TOPIC_UPDATE, "TopicsToReplicate": ["(?>x+)y"]}},
        "topicReplication.topicsToReplicate[0]",
    ),
    (
        "group regex that does not compile",
        {"ConsumerGroupReplication": {**GROUP_UPDATE, "ConsumerGroupsToExclude": ["[z-a]"]}},
        "consumerGroupReplication.consumerGroupsToExclude[0]",
    ),
    (
        "group pattern of 257 characters",
        {"ConsumerGroupReplication": {**GROUP_UPDATE, "ConsumerGroupsToReplicate": ["g" * 257]}},
        "consumerGroupsToReplicate[0]",
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [(c, e) for _, c, e in UPDATE_RULES], ids=[rule for rule, _, _ in UPDATE_RULES]
)
def test_update_rule(kafka: Any, unique: str, clusters: dict[str, Any], changes: dict[str, Any], expected: str) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    before = kafka.describe_replicator(ReplicatorArn=arn)

    with pytest.raises(kafka.exceptions.BadRequestException) as error:
        kafka.update_replication_info(ReplicatorArn=arn, CurrentVersion=before["CurrentVersion"], **changes)

    assert expected in error.value.response["Error"]["Message"]
    after = kafka.describe_replicator(ReplicatorArn=arn)
    assert after["CurrentVersion"] == before["CurrentVersion"]
    assert after["ReplicationInfoList"] == before["ReplicationInfoList"]


def test_oversized_request_from_the_sdk_is_a_bad_request(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    request = create_request(unique, clusters, Description="d" * (2 * 1024 * 1024))

    with pytest.raises(kafka.exceptions.BadRequestException) as error:
        kafka.create_replicator(**request)

    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert error.value.response["InvalidParameter"] == "body"
