"""The MSK Replicator wire shapes (``kafka`` API 2018-11-14), as pydantic models with the exact camelCase names.

Request shapes accept only their wire names and refuse unknown members, so a typo is an error that names the
member instead of a silently ignored setting. They check what the service model states (types, required
members, enums, lengths, the name pattern); the rules the model leaves to the server are in
``models.replicator_spec``. Response shapes are built by ``models.replicator_service`` and serialised by alias.

The stored JSONB of a replicator uses these same wire names (see ``models.replicator``).

Their JSON schemas (the OpenAPI document) describe each shape and member in MSK's words, from ``models.msk_docs``
(a shape is documented as the MSK shape of its class name, or of ``msk_shape``); a ``Field(description=...)`` here
takes precedence where Ferry has more to say.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from models.msk_docs import MEMBER_DOCS, SHAPE_DOCS

ReplicatorState = Literal["RUNNING", "CREATING", "UPDATING", "DELETING", "FAILED"]
TargetCompressionType = Literal["NONE", "GZIP", "SNAPPY", "LZ4", "ZSTD"]
StartingPositionType = Literal["LATEST", "EARLIEST"]
TopicNameConfigurationType = Literal["PREFIXED_WITH_SOURCE_CLUSTER_ALIAS", "IDENTICAL"]
ConsumerGroupOffsetSyncMode = Literal["LEGACY", "ENHANCED"]
SaslScramMechanism = Literal["SHA256", "SHA512"]
JwtSigningAlgorithm = Literal["RS256", "ES384"]
TokenEndpointAuthenticationMethod = Literal["POST", "BASIC", "NONE"]

REPLICATOR_NAME_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z-]{0,}$"
ReplicatorName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=REPLICATOR_NAME_PATTERN)]
TopicPattern = Annotated[str, StringConstraints(max_length=249)]
ConsumerGroupPattern = Annotated[str, StringConstraints(max_length=256)]
Description = Annotated[str, StringConstraints(max_length=1024)]


def msk_documentation(shape: str, member: str) -> str:
    """MSK's description of a member of one of its shapes (``ListReplicatorsRequest``, ``maxResults``)."""
    return MEMBER_DOCS[(shape, member)]


def _describe_in_msk_words(schema: dict[str, Any], cls: type) -> None:
    shape = getattr(cls, "msk_shape", cls.__name__)
    if "description" not in schema and shape in SHAPE_DOCS:
        schema["description"] = SHAPE_DOCS[shape]
    for member, member_schema in schema.get("properties", {}).items():
        if "description" not in member_schema and (shape, member) in MEMBER_DOCS:
            member_schema["description"] = MEMBER_DOCS[(shape, member)]


class RequestShape(BaseModel):
    """Accepts wire names only, refuses unknown members and never coerces types (a string is not a bool)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        extra="forbid",
        strict=True,
        json_schema_extra=_describe_in_msk_words,
    )


class ResponseShape(BaseModel):
    """Built in Python by field name, serialised by wire name."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        json_schema_extra=_describe_in_msk_words,
    )


# ----- clusters -----------------------------------------------------------------------------------------------


class AmazonMskCluster(RequestShape):
    msk_cluster_arn: str


class ApacheKafkaCluster(RequestShape):
    apache_kafka_cluster_id: str
    bootstrap_broker_string: str


class KafkaClusterClientVpcConfig(RequestShape):
    security_group_ids: list[str] | None = None
    subnet_ids: list[str]


class KafkaClusterSaslScramAuthentication(RequestShape):
    mechanism: SaslScramMechanism
    secret_arn: str


class KafkaClusterMTLSAuthentication(RequestShape):
    secret_arn: str


class KafkaClusterOAuthClientCredentials(RequestShape):
    token_request_secret_arn: str


class KafkaClusterOAuthIamJwtBearer(RequestShape):
    audience: str
    signing_algorithm: JwtSigningAlgorithm
    token_request_secret_arn: str | None = None


class KafkaClusterOAuthClientCredentialsAssertion(RequestShape):
    audience: str
    signing_algorithm: JwtSigningAlgorithm
    token_request_secret_arn: str | None = None


class KafkaClusterSaslOAuthBearerAuthentication(RequestShape):
    token_endpoint_url: str
    client_credentials: KafkaClusterOAuthClientCredentials | None = None
    iam_jwt_bearer: KafkaClusterOAuthIamJwtBearer | None = None
    client_credentials_assertion: KafkaClusterOAuthClientCredentialsAssertion | None = None
    token_endpoint_authentication_method: TokenEndpointAuthenticationMethod
    scope: str | None = None
    token_endpoint_tls_certificate_arn: str | None = None


class KafkaClusterClientAuthentication(RequestShape):
    sasl_scram: KafkaClusterSaslScramAuthentication | None = None
    m_tls: KafkaClusterMTLSAuthentication | None = Field(default=None, alias="mTLS")
    sasl_oauth_bearer: KafkaClusterSaslOAuthBearerAuthentication | None = Field(default=None, alias="saslOAuthBearer")


class KafkaClusterEncryptionInTransit(RequestShape):
    encryption_type: Literal["TLS"]
    root_ca_certificate: str | None = None


class KafkaCluster(RequestShape):
    amazon_msk_cluster: AmazonMskCluster | None = None
    apache_kafka_cluster: ApacheKafkaCluster | None = None
    vpc_config: KafkaClusterClientVpcConfig | None = None
    client_authentication: KafkaClusterClientAuthentication | None = None
    encryption_in_transit: KafkaClusterEncryptionInTransit | None = None


class KafkaClusterDescription(KafkaCluster):
    kafka_cluster_alias: str | None = None


class KafkaClusterSummary(RequestShape):
    amazon_msk_cluster: AmazonMskCluster | None = None
    apache_kafka_cluster: ApacheKafkaCluster | None = None
    kafka_cluster_alias: str | None = None


# ----- replication info ---------------------------------------------------------------------------------------


class ConsumerGroupReplication(RequestShape):
    consumer_groups_to_exclude: list[ConsumerGroupPattern] | None = None
    consumer_groups_to_replicate: list[ConsumerGroupPattern]
    detect_and_copy_new_consumer_groups: bool | None = None
    synchronise_consumer_group_offsets: bool | None = None
    consumer_group_offset_sync_mode: ConsumerGroupOffsetSyncMode | None = None


class ReplicationStartingPosition(RequestShape):
    type: StartingPositionType | None = None


class ReplicationTopicNameConfiguration(RequestShape):
    type: TopicNameConfigurationType | None = None


class TopicReplication(RequestShape):
    copy_access_control_lists_for_topics: bool | None = None
    copy_topic_configurations: bool | None = None
    detect_and_copy_new_topics: bool | None = None
    starting_position: ReplicationStartingPosition | None = None
    topic_name_configuration: ReplicationTopicNameConfiguration | None = None
    topics_to_exclude: list[TopicPattern] | None = None
    topics_to_replicate: list[TopicPattern]


class ReplicationInfo(RequestShape):
    consumer_group_replication: ConsumerGroupReplication
    source_kafka_cluster_arn: str | None = None
    source_kafka_cluster_id: str | None = None
    target_compression_type: TargetCompressionType
    target_kafka_cluster_arn: str | None = None
    target_kafka_cluster_id: str | None = None
    topic_replication: TopicReplication


class ReplicationInfoDescription(RequestShape):
    consumer_group_replication: ConsumerGroupReplication | None = None
    source_kafka_cluster_alias: str | None = None
    target_compression_type: TargetCompressionType | None = None
    target_kafka_cluster_alias: str | None = None
    topic_replication: TopicReplication | None = None


class ReplicationInfoSummary(RequestShape):
    source_kafka_cluster_alias: str | None = None
    target_kafka_cluster_alias: str | None = None


class ConsumerGroupReplicationUpdate(RequestShape):
    consumer_groups_to_exclude: list[ConsumerGroupPattern]
    consumer_groups_to_replicate: list[ConsumerGroupPattern]
    detect_and_copy_new_consumer_groups: bool
    synchronise_consumer_group_offsets: bool


class TopicReplicationUpdate(RequestShape):
    copy_access_control_lists_for_topics: bool
    copy_topic_configurations: bool
    detect_and_copy_new_topics: bool
    topics_to_exclude: list[TopicPattern]
    topics_to_replicate: list[TopicPattern]


# ----- log delivery -------------------------------------------------------------------------------------------


class ReplicatorCloudWatchLogs(RequestShape):
    enabled: bool
    log_group: str | None = None


class ReplicatorFirehose(RequestShape):
    enabled: bool
    delivery_stream: str | None = None


class ReplicatorS3(RequestShape):
    enabled: bool
    bucket: str | None = None
    prefix: str | None = None


class ReplicatorLogDelivery(RequestShape):
    cloud_watch_logs: ReplicatorCloudWatchLogs | None = None
    firehose: ReplicatorFirehose | None = None
    s3: ReplicatorS3 | None = None


class LogDelivery(RequestShape):
    replicator_log_delivery: ReplicatorLogDelivery | None = None


# ----- operations ---------------------------------------------------------------------------------------------


class CreateReplicatorRequest(RequestShape):
    description: Description | None = None
    kafka_clusters: list[KafkaCluster]
    replication_info_list: list[ReplicationInfo]
    replicator_name: ReplicatorName
    service_execution_role_arn: str
    tags: dict[str, str] | None = None
    log_delivery: LogDelivery | None = None


class CreateReplicatorResponse(ResponseShape):
    """The new replicator, in state CREATING."""

    replicator_arn: str
    replicator_name: str
    replicator_state: ReplicatorState


class ReplicationStateInfo(ResponseShape):
    code: str | None = None
    message: str | None = None


class DescribeReplicatorResponse(ResponseShape):
    """A replicator: its configuration, state and currentVersion."""

    creation_time: datetime
    current_version: str
    is_replicator_reference: bool
    kafka_clusters: list[KafkaClusterDescription]
    replication_info_list: list[ReplicationInfoDescription]
    replicator_arn: str
    replicator_description: str | None = None
    replicator_name: str
    replicator_resource_arn: str
    replicator_state: ReplicatorState
    service_execution_role_arn: str | None = None
    state_info: ReplicationStateInfo | None = None
    tags: dict[str, str]
    log_delivery: LogDelivery | None = None


class ReplicatorSummary(ResponseShape):
    creation_time: datetime
    current_version: str
    is_replicator_reference: bool
    kafka_clusters_summary: list[KafkaClusterSummary]
    replication_info_summary_list: list[ReplicationInfoSummary]
    replicator_arn: str
    replicator_name: str
    replicator_resource_arn: str
    replicator_state: ReplicatorState


class ListReplicatorsResponse(ResponseShape):
    """One page of the account's replicators."""

    next_token: str | None = None
    replicators: list[ReplicatorSummary]


class UpdateReplicationInfoRequest(RequestShape):
    consumer_group_replication: ConsumerGroupReplicationUpdate | None = None
    current_version: str
    source_kafka_cluster_arn: str | None = None
    source_kafka_cluster_id: str | None = None
    target_kafka_cluster_arn: str | None = None
    target_kafka_cluster_id: str | None = None
    topic_replication: TopicReplicationUpdate | None = None
    log_delivery: LogDelivery | None = None


class ReplicatorStateResponse(ResponseShape):
    """DeleteReplicatorResponse and UpdateReplicationInfoResponse have this same shape."""

    msk_shape: ClassVar[str] = "UpdateReplicationInfoResponse"
    replicator_arn: str
    replicator_state: ReplicatorState


class TagResourceRequest(RequestShape):
    """Tags to add to a replicator."""

    tags: dict[str, str]


class ListTagsForResourceResponse(ResponseShape):
    """A replicator's tags."""

    tags: dict[str, str]
