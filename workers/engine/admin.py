"""Small checked wrappers over aiokafka's admin client: its create/alter calls return raw responses whose
per-resource error codes the caller would otherwise have to remember to inspect."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest, DescribeAclsRequest
from aiokafka.protocol.metadata import MetadataRequest

from workers.engine.aiokafka_hooks import describe_all_topics, describe_named_topics

# DescribeConfigs config_source values (KIP-226).
CONFIG_SOURCE_DYNAMIC_TOPIC = 1
TOPIC_ALREADY_EXISTS = 36
# The refusals of a principal that lacks a permission (no retry helps until an ACL changes).
TOPIC_AUTHORIZATION_FAILED = 29
CLUSTER_AUTHORIZATION_FAILED = 31
AUTHORIZATION_FAILED = frozenset({TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED})


@dataclass(frozen=True)
class TopicMetadata:
    name: str
    partitions: int
    is_internal: bool


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    value: str | None
    source: int
    read_only: bool
    sensitive: bool


class AdminError(Exception):
    """A broker refused an admin operation on one resource; ``code`` is the Kafka error code."""

    def __init__(self, resource: str, code: int, message: str) -> None:
        self.resource = resource
        self.code = code
        self.error_name = for_code(code).__name__
        super().__init__(f"{resource}: {self.error_name} ({code}){': ' + message if message else ''}")


async def describe_topics(admin: AIOKafkaAdminClient, topics: list[str] | None = None) -> dict[str, TopicMetadata]:
    """Topics that exist and answer without error (None lists all topics)."""
    try:
        if topics is None:
            listing = await describe_all_topics(admin)
        else:
            listing = await describe_named_topics(admin, topics) if topics else {}
    except NotImplementedError:
        pass  # a broker older than Kafka 2.8: aiokafka's own request below
    else:
        return {name: TopicMetadata(name, count, internal) for name, (count, internal, _) in listing.items()}
    found: dict[str, TopicMetadata] = {}
    for entry in await admin.describe_topics(topics):
        if entry["error_code"] != 0:
            continue
        found[entry["topic"]] = TopicMetadata(entry["topic"], len(entry["partitions"]), bool(entry["is_internal"]))
    return found


async def describe_cluster(admin: AIOKafkaAdminClient) -> dict[str, Any]:
    """The cluster's id, controller and brokers. aiokafka's ``describe_cluster`` asks for every topic's metadata as
    well (a null topic array) and then drops it: on a cluster of 1,300 topics, decoding that was the largest part of
    a worker's CPU while it started a thousand replicators. An empty topic array (Metadata v1 and later; Kafka 4
    speaks no older) asks for none."""
    response = await admin._send_request(MetadataRequest([]))  # aiokafka's own request, minus the topics
    described: dict[str, Any] = response.to_object()
    described.pop("topics", None)
    return described


async def list_consumer_groups(admin: AIOKafkaAdminClient) -> list[Any]:
    """aiokafka's ``list_consumer_groups``, asked of the brokers the client knows: left to itself it first asks for
    every topic's metadata to learn the broker ids (see ``describe_cluster``)."""
    brokers = [broker.nodeId for broker in admin._client.cluster.brokers()]  # the client's metadata, no request
    if not brokers:
        brokers = [broker["node_id"] for broker in (await describe_cluster(admin))["brokers"]]
    return list(await admin.list_consumer_groups(broker_ids=brokers))


async def broker_count(admin: AIOKafkaAdminClient) -> int:
    cluster = await describe_cluster(admin)
    return len(cluster["brokers"])


async def cluster_id(admin: AIOKafkaAdminClient) -> str:
    cluster = await describe_cluster(admin)
    return str(cluster["cluster_id"])


async def create_topic(
    admin: AIOKafkaAdminClient, name: str, partitions: int, replication_factor: int, configs: Mapping[str, str]
) -> bool:
    """Create a topic; False if it already existed. Raises AdminError for any other refusal."""
    response = await admin.create_topics([NewTopic(name, partitions, replication_factor, topic_configs=dict(configs))])
    for topic_error in response.topic_errors:
        topic, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else ""
        if code == TOPIC_ALREADY_EXISTS:
            return False
        if code != 0:
            raise AdminError(f"topic {topic}", code, message or "")
    return True


async def partitions_without_leader(admin: AIOKafkaAdminClient, name: str) -> list[int] | None:
    """The topic's partitions that have no leader yet as the broker asked sees it; None if it does not know the
    topic yet (a topic just created reaches each broker's metadata a moment after the controller accepts it)."""
    [entry] = await admin.describe_topics([name])
    if entry["error_code"] != 0 or not entry["partitions"]:
        return None
    return sorted(p["partition"] for p in entry["partitions"] if p["error_code"] != 0 or p["leader"] < 0)


async def add_partitions(admin: AIOKafkaAdminClient, name: str, total: int) -> None:
    try:
        await admin.create_partitions({name: NewPartitions(total)})
    except Exception as exc:
        code = getattr(exc, "errno", -1)
        raise AdminError(f"topic {name}", int(code) if isinstance(code, int) else -1, str(exc)) from exc


async def describe_topic_configs(
    admin: AIOKafkaAdminClient, topics: Iterable[str]
) -> dict[str, dict[str, ConfigEntry]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
    if not resources:
        return {}
    result: dict[str, dict[str, ConfigEntry]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[0], resource[1], resource[2], resource[3], resource[4]
            if error_code != 0:
                continue
            result[name] = {entry[0]: _config_entry(entry) for entry in entries}
    return result


def _config_entry(entry: Any) -> ConfigEntry:
    # DescribeConfigs v1+: (name, value, read_only, config_source, is_sensitive, synonyms)
    return ConfigEntry(
        name=entry[0], value=entry[1], read_only=bool(entry[2]), source=int(entry[3]), sensitive=bool(entry[4])
    )


async def replace_topic_configs(admin: AIOKafkaAdminClient, topic: str, configs: Mapping[str, str]) -> None:
    """Set the topic's complete dynamic config set (legacy AlterConfigs: keys left out are reset)."""
    responses = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, dict(configs))])
    for response in responses:
        for resource in response.resources:
            code, message, name = resource[0], resource[1], resource[3]
            if code != 0:
                raise AdminError(f"topic {name} configs", code, message or "")


# ACL enums of the Kafka protocol (ResourceType, PatternType, AclOperation, AclPermissionType).
RESOURCE_TOPIC = 2
PATTERN_LITERAL = 3
OPERATION_ANY = 1
OPERATION_ALL = 2
OPERATION_READ = 3
OPERATION_WRITE = 4
PERMISSION_ANY = 1
PERMISSION_ALLOW = 3
SECURITY_DISABLED = 54


@dataclass(frozen=True, order=True)
class TopicAcl:
    """One ACL binding on a literal topic name."""

    topic: str
    principal: str
    host: str
    operation: int
    permission: int


async def describe_topic_acls(admin: AIOKafkaAdminClient) -> list[TopicAcl] | None:
    """Every ACL bound to a literal topic name; None when the cluster has no authorizer.

    aiokafka's admin client has no ACL calls; its protocol classes and request routing are used directly.
    """
    # None for name, principal and host: match any.
    request = DescribeAclsRequest(RESOURCE_TOPIC, None, PATTERN_LITERAL, None, None, OPERATION_ANY, PERMISSION_ANY)
    response = await admin._send_request(request)
    if response.error_code == SECURITY_DISABLED:
        return None
    if response.error_code != 0:
        raise AdminError("topic ACLs", response.error_code, response.error_message or "")
    return [
        TopicAcl(resource[1], acl[0], acl[1], acl[2], acl[3]) for resource in response.resources for acl in resource[-1]
    ]


async def create_topic_acl(admin: AIOKafkaAdminClient, acl: TopicAcl) -> None:
    request = CreateAclsRequest(
        RESOURCE_TOPIC, acl.topic, PATTERN_LITERAL, acl.principal, acl.host, acl.operation, acl.permission
    )
    response = await admin._send_request(request)
    for code, message in response.creation_responses:
        if code != 0:
            raise AdminError(f"ACL on topic {acl.topic} for {acl.principal}", code, message or "")
