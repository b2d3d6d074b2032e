"""What terraform-provider-aws (>= 6.64.0) sends for ``aws_msk_replicator``, replayed over raw HTTP.

Terraform is not installed here, so this module is the provider's side of the conversation, written from its
``internal/service/kafka/replicator.go`` and the AWS SDK for Go v2's rest-json serializers:

* bodies are compact JSON with members in the SDK's (alphabetical) order; a string member the provider sets with
  ``aws.String(...)`` is sent even when empty, a list built from a set is sent even when empty (``[]``), an enum
  or pointer left unset is omitted;
* requests carry the SDK's ``amz-sdk-invocation-id`` and ``amz-sdk-request`` headers and are SigV4-signed over
  them, ``content-length`` included, as the Go signer does;
* the waiters are the provider's: after CreateReplicator it polls DescribeReplicator while CREATING until RUNNING,
  after UpdateReplicationInfo while UPDATING until RUNNING, after DeleteReplicator while RUNNING or DELETING until
  DescribeReplicator answers NotFoundException; any other state ends the wait with ``stateInfo`` as the error.

The values come from the example module in examples/terraform (its variable defaults and literals), so the example
and the tests cannot drift apart.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from models.access_keys import IssuedKey
from tests.conftest import REGION, ROOT

EXAMPLE = ROOT / "examples" / "terraform"
CREATE_PENDING, UPDATE_PENDING, DELETE_PENDING = ("CREATING",), ("UPDATING",), ("RUNNING", "DELETING")


# ----- the example module's values ----------------------------------------------------------------------------


def _hcl_value(text: str) -> Any:
    """A literal of the few kinds the example uses: a string, a list of strings, a map of strings."""
    text = text.strip()
    if text.startswith("{"):
        return dict(re.findall(r'^\s*"?([\w:.-]+)"?\s*=\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE))
    return json.loads(text)  # HCL strings and lists of strings are JSON


def example_variables(directory: Path = EXAMPLE) -> dict[str, Any]:
    """Each variable's default in variables.tf (variables without one are left out)."""
    text = (directory / "variables.tf").read_text()
    defaults: dict[str, Any] = {}
    for name, body in re.findall(r'^variable "(\w+)" \{\n(.*?)^\}', text, re.MULTILINE | re.DOTALL):
        found = re.search(r"^  default\s*=\s*(.*?)(?=^  \w+\s*=|\Z)", body, re.MULTILINE | re.DOTALL)
        if found and found.group(1).strip() != "null":
            defaults[name] = _hcl_value(found.group(1))
    return defaults


def example_literal(attribute: str, directory: Path = EXAMPLE) -> str:
    """The one string literal main.tf assigns to ``attribute`` (``type`` inside a named block: "block.type")."""
    text = (directory / "main.tf").read_text()
    block, _, name = attribute.rpartition(".")
    if block:
        text = re.search(rf"{block} \{{(.*?)\}}", text, re.DOTALL).group(1)  # type: ignore[union-attr]
    (value,) = re.findall(rf'^\s*{name}\s*=\s*"([^"]*)"', text, re.MULTILINE)
    return str(value)


@dataclass
class ExampleReplicator:
    """The example's ``aws_msk_replicator`` with ``unique`` in its name and cluster ids and the given brokers."""

    name: str
    description: str
    role_arn: str
    source_id: str
    source_bootstrap: str
    target_id: str
    target_bootstrap: str
    root_ca_secret_arn: str | None
    compression: str
    starting_position: str
    topic_name_type: str
    topics_to_replicate: list[str]
    topics_to_exclude: list[str]
    groups_to_replicate: list[str]
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls, unique: str, source_bootstrap: str, target_bootstrap: str, root_ca_secret_arn: str | None = None
    ) -> ExampleReplicator:
        values = example_variables()
        return cls(
            name=f"{values['replicator_name']}-{unique}",
            description=example_literal("description"),
            role_arn=values["service_execution_role_arn"],
            source_id=f"{values['source_cluster_id']}-{unique}",
            source_bootstrap=source_bootstrap,
            target_id=f"{values['target_cluster_id']}-{unique}",
            target_bootstrap=target_bootstrap,
            root_ca_secret_arn=root_ca_secret_arn,
            compression=example_literal("target_compression_type"),
            starting_position=example_literal("starting_position.type"),
            topic_name_type=example_literal("topic_name_configuration.type"),
            topics_to_replicate=values["topics_to_replicate"],
            topics_to_exclude=values["topics_to_exclude"],
            groups_to_replicate=values["consumer_groups_to_replicate"],
            tags=values["tags"],
        )


# ----- request bodies as the provider's SDK serialises them ---------------------------------------------------


def go_json(document: dict[str, Any]) -> bytes:
    """smithy-go's encoder: no whitespace; members in the order given (the callers give the SDK's order)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _apache_cluster(cluster_id: str, bootstrap: str, root_ca_secret_arn: str | None) -> dict[str, Any]:
    # expandKafkaCluster: no vpcConfig for a self-managed cluster, and encryptionInTransit {TLS} always, with the
    # root CA only when encryption_in_transit is configured.
    tls: dict[str, Any] = {"encryptionType": "TLS"}
    if root_ca_secret_arn is not None:
        tls["rootCaCertificate"] = root_ca_secret_arn
    return {
        "apacheKafkaCluster": {"apacheKafkaClusterId": cluster_id, "bootstrapBrokerString": bootstrap},
        "encryptionInTransit": tls,
    }


def create_body(example: ExampleReplicator) -> bytes:
    """resourceReplicatorCreate's CreateReplicatorInput for the example (topic/group sets in the plan's order)."""
    topic_replication: dict[str, Any] = {
        # schema defaults (true) are always in the plan, so always sent
        "copyAccessControlListsForTopics": True,
        "copyTopicConfigurations": True,
        "detectAndCopyNewTopics": True,
        "startingPosition": {"type": example.starting_position},
        "topicNameConfiguration": {"type": example.topic_name_type},
    }
    if example.topics_to_exclude:  # expandTopicReplication: only a non-empty set
        topic_replication["topicsToExclude"] = example.topics_to_exclude
    topic_replication["topicsToReplicate"] = example.topics_to_replicate
    group_replication: dict[str, Any] = {}
    if example.groups_to_replicate:
        group_replication["consumerGroupsToReplicate"] = example.groups_to_replicate
    group_replication["detectAndCopyNewConsumerGroups"] = True
    group_replication["synchroniseConsumerGroupOffsets"] = True
    return go_json(
        {
            "description": example.description,
            "kafkaClusters": [
                _apache_cluster(example.source_id, example.source_bootstrap, example.root_ca_secret_arn),
                _apache_cluster(example.target_id, example.target_bootstrap, example.root_ca_secret_arn),
            ],
            # expandReplicationInfo: ARNs are "" for self-managed clusters, and "" is not sent at creation
            "replicationInfoList": [
                {
                    "consumerGroupReplication": group_replication,
                    "sourceKafkaClusterId": example.source_id,
                    "targetCompressionType": example.compression,
                    "targetKafkaClusterId": example.target_id,
                    "topicReplication": topic_replication,
                }
            ],
            "replicatorName": example.name,
            "serviceExecutionRoleArn": example.role_arn,
            "tags": example.tags,
        }
    )


def update_body(
    current_version: str,
    *,
    topics: dict[str, Any] | None = None,
    groups: dict[str, Any] | None = None,
    source_arn: str = "",
    target_arn: str = "",
) -> bytes:
    """resourceReplicatorUpdate's UpdateReplicationInfoInput: both ARNs always (``""`` for a self-managed cluster,
    whose id is never sent), and the whole topic or group block that changed, empty sets as ``[]``."""
    document: dict[str, Any] = {}
    if groups is not None:
        document["consumerGroupReplication"] = {
            "consumerGroupsToExclude": groups.get("exclude", []),
            "consumerGroupsToReplicate": groups["replicate"],
            "detectAndCopyNewConsumerGroups": True,
            "synchroniseConsumerGroupOffsets": True,
        }
    document["currentVersion"] = current_version
    document["sourceKafkaClusterArn"] = source_arn
    document["targetKafkaClusterArn"] = target_arn
    if topics is not None:
        document["topicReplication"] = {
            "copyAccessControlListsForTopics": True,
            "copyTopicConfigurations": True,
            "detectAndCopyNewTopics": True,
            "topicsToExclude": topics.get("exclude", []),
            "topicsToReplicate": topics["replicate"],
        }
    return go_json(document)


# ----- the SDK's transport ------------------------------------------------------------------------------------


class GoSdkSigV4(httpx.Auth):
    """SigV4 over the headers the Go SDK signs: host, content-length, content-type, x-amz-date and its amz-sdk-*
    headers (user-agent is never signed)."""

    requires_request_body = True

    def __init__(self, key: IssuedKey, region: str = REGION) -> None:
        self.credentials = Credentials(key.access_key_id, key.secret_access_key)
        self.region = region

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["amz-sdk-invocation-id"] = str(uuid.uuid4())
        request.headers["amz-sdk-request"] = "attempt=1; max=3"
        request.headers["User-Agent"] = "APN/1.0 HashiCorp/1.0 Terraform/1.9.8 terraform-provider-aws/6.64.0"
        signed = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("host", "content-length", "content-type", "amz-sdk-invocation-id", "amz-sdk-request")
        }
        aws = AWSRequest(method=request.method, url=str(request.url), data=request.content, headers=signed)
        SigV4Auth(self.credentials, "kafka", self.region).add_auth(aws)
        for name in ("Authorization", "X-Amz-Date"):
            request.headers[name] = aws.headers[name]
        yield request


def label(arn: str) -> str:
    """A path label as smithy-go escapes it: everything but unreserved characters (``:`` and ``/`` too)."""
    return quote(arn, safe="")


class ProviderError(AssertionError):
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.error_type = response.headers.get("x-amzn-ErrorType", "").split(":")[0]
        self.message = response.json().get("message", "") if response.content else ""
        request = f"{response.request.method} {response.request.url.path}"
        super().__init__(f"{request}: {self.status} {self.error_type} {self.message}")


class TerraformProvider:
    """The calls ``aws_msk_replicator`` makes, each checked the way the SDK's deserializer and the resource read
    them. ``requests`` records every (method, path, body) sent."""

    def __init__(self, endpoint: str, key: IssuedKey) -> None:
        self.http = httpx.Client(base_url=endpoint, timeout=30, auth=GoSdkSigV4(key))
        self.requests: list[tuple[str, str, bytes]] = []

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: bytes | None = None, *, expect: int = 200) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.requests.append((method, path, body or b""))
        response = self.http.request(method, path, content=body, headers=headers)
        if response.status_code != expect:
            raise ProviderError(response)
        return response.json() if response.content else None

    def create(self, body: bytes) -> dict[str, Any]:
        created: dict[str, Any] = self.call("POST", "/replication/v1/replicators", body)
        return created

    def describe(self, arn: str) -> dict[str, Any]:
        described: dict[str, Any] = self.call("GET", f"/replication/v1/replicators/{label(arn)}")
        return described

    def update(self, arn: str, body: bytes) -> dict[str, Any]:
        updated: dict[str, Any] = self.call("PUT", f"/replication/v1/replicators/{label(arn)}/replication-info", body)
        return updated

    def delete(self, arn: str) -> dict[str, Any]:
        deleted: dict[str, Any] = self.call("DELETE", f"/replication/v1/replicators/{label(arn)}")
        return deleted

    def list_tags(self, arn: str) -> dict[str, str]:
        tags: dict[str, str] = self.call("GET", f"/v1/tags/{label(arn)}")["tags"]
        return tags

    def update_tags(self, arn: str, old: dict[str, str], new: dict[str, str]) -> None:
        """The generated updateTags: UntagResource for removed keys, then TagResource for added or changed ones."""
        removed = sorted(set(old) - set(new))
        if removed:
            query = "&".join(f"tagKeys={quote(key, safe='')}" for key in removed)
            self.call("DELETE", f"/v1/tags/{label(arn)}?{query}", expect=204)
        changed = {key: value for key, value in new.items() if old.get(key) != value}
        if changed:
            self.call("POST", f"/v1/tags/{label(arn)}", go_json({"tags": changed}), expect=204)

    def wait(self, arn: str, pending: tuple[str, ...], target: str | None, timeout: float) -> dict[str, Any] | None:
        """StateChangeConf: poll while the state is pending; a state neither pending nor target is an error (with
        stateInfo as the provider prints it); target None means "until NotFoundException"."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            try:
                described = self.describe(arn)
            except ProviderError as error:
                if target is None and error.status == 404 and error.error_type == "NotFoundException":
                    return None
                raise
            state = described["replicatorState"]
            if state == target:
                return described
            if state not in pending:
                info = described.get("stateInfo") or {}
                raise AssertionError(f"unexpected state {state}: {info.get('code')}: {info.get('message')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"still {state} after {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


# ----- what resourceReplicatorRead reads ----------------------------------------------------------------------


def provider_state(described: dict[str, Any]) -> dict[str, Any]:
    """resourceReplicatorRead's flattening of a DescribeReplicator answer into the attributes Terraform stores,
    failing where the provider would fail or where a field has a type the Go SDK could not decode."""
    assert isinstance(described["replicatorArn"], str) and described["replicatorArn"]
    assert isinstance(described["currentVersion"], str) and described["currentVersion"]
    assert isinstance(described["replicatorName"], str)
    assert isinstance(described["serviceExecutionRoleArn"], str)
    assert described["replicatorState"] in ("RUNNING", "CREATING", "UPDATING", "DELETING", "FAILED")
    assert isinstance(described["isReplicatorReference"], bool)
    # __timestampIso8601, parsed by smithy-go's ParseDateTime (RFC 3339, zone required)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", described["creationTime"])
    assert isinstance(described["tags"], dict) and all(isinstance(v, str) for v in described["tags"].values())

    clusters = described["kafkaClusters"]
    assert isinstance(clusters, list) and len(clusters) == 2
    (info,) = described["replicationInfoList"]
    by_alias = {cluster["kafkaClusterAlias"]: cluster for cluster in clusters}
    replication: dict[str, Any] = {
        "source_kafka_cluster_alias": info["sourceKafkaClusterAlias"],
        "target_kafka_cluster_alias": info["targetKafkaClusterAlias"],
        "target_compression_type": info["targetCompressionType"],
    }
    # flattenReplicationInfoDescription: an MSK cluster is referenced by ARN, a self-managed one by id; a missing
    # id here would leave source_kafka_cluster_id empty in state and force a replacement on every plan.
    for role in ("source", "target"):
        cluster = by_alias[info[f"{role}KafkaClusterAlias"]]
        if "amazonMskCluster" in cluster:
            replication[f"{role}_kafka_cluster_arn"] = cluster["amazonMskCluster"]["mskClusterArn"]
        else:
            replication[f"{role}_kafka_cluster_id"] = cluster["apacheKafkaCluster"]["apacheKafkaClusterId"]
    topics = info["topicReplication"]
    replication["topic_replication"] = {
        "copy_access_control_lists_for_topics": topics["copyAccessControlListsForTopics"],
        "copy_topic_configurations": topics["copyTopicConfigurations"],
        "detect_and_copy_new_topics": topics["detectAndCopyNewTopics"],
        "starting_position": topics["startingPosition"]["type"],
        "topic_name_configuration": topics["topicNameConfiguration"]["type"],
        "topics_to_exclude": set(topics["topicsToExclude"]),
        "topics_to_replicate": set(topics["topicsToReplicate"]),
    }
    groups = info["consumerGroupReplication"]
    replication["consumer_group_replication"] = {
        "consumer_group_offset_sync_mode": groups["consumerGroupOffsetSyncMode"],
        "consumer_groups_to_exclude": set(groups["consumerGroupsToExclude"]),
        "consumer_groups_to_replicate": set(groups["consumerGroupsToReplicate"]),
        "detect_and_copy_new_consumer_groups": groups["detectAndCopyNewConsumerGroups"],
        "synchronise_consumer_group_offsets": groups["synchroniseConsumerGroupOffsets"],
    }
    for block in (replication["topic_replication"], replication["consumer_group_replication"]):
        for name, value in block.items():
            assert isinstance(value, bool | str | set), (name, value)
    return {
        "arn": described["replicatorArn"],
        "current_version": described["currentVersion"],
        "description": described.get("replicatorDescription"),
        "replicator_name": described["replicatorName"],
        "service_execution_role_arn": described["serviceExecutionRoleArn"],
        "kafka_cluster": [
            {
                "apache_kafka_cluster_id": cluster["apacheKafkaCluster"]["apacheKafkaClusterId"],
                "bootstrap_broker_string": cluster["apacheKafkaCluster"]["bootstrapBrokerString"],
                "root_ca_certificate": (cluster.get("encryptionInTransit") or {}).get("rootCaCertificate"),
            }
            for cluster in clusters
        ],
        "replication_info_list": replication,
        "tags": described["tags"],
        "state": described["replicatorState"],
    }


def expected_state(example: ExampleReplicator) -> dict[str, Any]:
    """The attributes Terraform holds right after applying the example: the plan, as Read must reproduce it."""
    return {
        "description": example.description,
        "replicator_name": example.name,
        "service_execution_role_arn": example.role_arn,
        "kafka_cluster": [
            {
                "apache_kafka_cluster_id": example.source_id,
                "bootstrap_broker_string": example.source_bootstrap,
                "root_ca_certificate": example.root_ca_secret_arn,
            },
            {
                "apache_kafka_cluster_id": example.target_id,
                "bootstrap_broker_string": example.target_bootstrap,
                "root_ca_certificate": example.root_ca_secret_arn,
            },
        ],
        "source_kafka_cluster_id": example.source_id,
        "target_kafka_cluster_id": example.target_id,
        "target_compression_type": example.compression,
        "topic_replication": {
            "copy_access_control_lists_for_topics": True,
            "copy_topic_configurations": True,
            "detect_and_copy_new_topics": True,
            "starting_position": example.starting_position,
            "topic_name_configuration": example.topic_name_type,
            "topics_to_exclude": set(example.topics_to_exclude),
            "topics_to_replicate": set(example.topics_to_replicate),
        },
        "consumer_group_replication": {
            "consumer_group_offset_sync_mode": "LEGACY",
            "consumer_groups_to_exclude": set(),
            "consumer_groups_to_replicate": set(example.groups_to_replicate),
            "detect_and_copy_new_consumer_groups": True,
            "synchronise_consumer_group_offsets": True,
        },
        "tags": example.tags,
    }


def assert_no_drift(state: dict[str, Any], example: ExampleReplicator) -> None:
    """A plan after apply is empty: every configured attribute reads back as configured."""
    expected = expected_state(example)
    replication = state["replication_info_list"]
    for name in ("description", "replicator_name", "service_execution_role_arn", "kafka_cluster", "tags"):
        assert state[name] == expected[name], name
    for name in ("source_kafka_cluster_id", "target_kafka_cluster_id", "target_compression_type"):
        assert replication[name] == expected[name], name
    assert "source_kafka_cluster_arn" not in replication and "target_kafka_cluster_arn" not in replication
    assert replication["topic_replication"] == expected["topic_replication"]
    assert replication["consumer_group_replication"] == expected["consumer_group_replication"]
