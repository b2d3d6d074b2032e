"""The rules of CreateReplicator and UpdateReplicationInfo that the service model leaves to the server.

Plain functions over the request shapes: each refusal is an ``InvalidRequestError`` whose message starts with
the wire path of the member at fault (``replicationInfoList[0].sourceKafkaClusterId: ...``). They also
normalise what they accept into the stored form (wire names, defaults filled in), so the workers read one
complete shape and never guess defaults.

Cluster aliases: each cluster gets ``<name>-<hash>``, where ``name`` is the first 28 characters of the MSK
cluster name or of the apacheKafkaClusterId (as MSK derives its aliases), and ``hash`` is derived from the
cluster's ARN or id. The alias is the same for the same cluster in every replicator, which bidirectional
(ENHANCED) setups and PREFIXED target names (``<sourceAlias>.<topic>``) rely on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from models.bootstrap import AddressPolicy, parse_bootstrap
from models.errors import InvalidRequestError
from models.patterns import check_pattern
from models.replicator_shapes import (
    ConsumerGroupReplication,
    CreateReplicatorRequest,
    KafkaCluster,
    LogDelivery,
    ReplicationInfo,
    TopicReplication,
    UpdateReplicationInfoRequest,
)

MAX_PATTERNS_PER_LIST = 100
MAX_TAGS = 50
ALIAS_NAME_LENGTH = 28

# Each of these is matched against the whole value (fullmatch): with match, "$" would also let a trailing
# newline through.
MSK_CLUSTER_ARN = re.compile(
    r"^arn:aws[a-z-]*:kafka:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):cluster/(?P<name>[A-Za-z0-9-]{1,64})/[A-Za-z0-9-]+$"
)
REPLICATOR_ARN = re.compile(
    r"^arn:aws[a-z-]*:kafka:[a-z0-9-]+:\d{12}:replicator/[0-9A-Za-z][0-9A-Za-z-]{0,127}/[A-Za-z0-9-]+$"
)
IAM_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
APACHE_CLUSTER_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,256}$")
# AWS's tag text, [\p{L}\p{Z}\p{N}_.:/=+\-@]*: letters, digits, space separators (not tabs, newlines or other
# control characters, which \s would let in) and _.:/=+-@.
TAG_TEXT = re.compile(r"(?:[\w.:/=+\-@]|[^\S\x00-\x1f\x7f-\x9f])*")

ClusterKind = Literal["amazonMskCluster", "apacheKafkaCluster"]


@dataclass(frozen=True)
class ClusterPlan:
    """One accepted kafkaClusters entry, before MSK clusters are resolved to bootstrap servers."""

    wire: dict[str, Any]
    kind: ClusterKind
    reference: str
    alias: str
    bootstrap_servers: str | None
    parameter: str


@dataclass(frozen=True)
class AcceptedCreate:
    name: str
    description: str | None
    service_execution_role_arn: str
    clusters: list[ClusterPlan]
    replication_info: dict[str, Any]
    tags: dict[str, str]
    log_delivery: dict[str, Any] | None


@dataclass(frozen=True)
class AcceptedUpdate:
    replication_info: dict[str, Any]
    log_delivery: dict[str, Any] | None


def refuse(parameter: str, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"{parameter}: {problem}", parameter)


def wire(shape: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = shape.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


def cluster_alias(reference: str, display_name: str) -> str:
    prefix = re.sub(r"[^A-Za-z0-9-]+", "-", display_name)[:ALIAS_NAME_LENGTH].strip("-") or "cluster"
    return f"{prefix}-{hashlib.sha256(reference.encode()).hexdigest()[:8]}"


# ----- CreateReplicator ---------------------------------------------------------------------------------------


def accept_create(request: CreateReplicatorRequest, policy: AddressPolicy) -> AcceptedCreate:
    """Validate a CreateReplicator request and return it in stored form (without MSK bootstrap servers)."""
    if not IAM_ROLE_ARN.fullmatch(request.service_execution_role_arn):
        raise refuse("serviceExecutionRoleArn", "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
    clusters = _accept_clusters(request.kafka_clusters, policy)
    if len(request.replication_info_list) != 1:
        raise refuse(
            "replicationInfoList",
            f"must contain exactly 1 replication info entry, got {len(request.replication_info_list)}",
        )
    replication_info = _accept_replication_info(request.replication_info_list[0], clusters)
    log_delivery = accept_log_delivery(request.log_delivery) if request.log_delivery else None
    return AcceptedCreate(
        name=request.replicator_name,
        description=request.description,
        service_execution_role_arn=request.service_execution_role_arn,
        clusters=clusters,
        replication_info=replication_info,
        tags=accept_tags(request.tags or {}, "tags"),
        log_delivery=log_delivery,
    )


def _accept_clusters(clusters: Sequence[KafkaCluster], policy: AddressPolicy) -> list[ClusterPlan]:
    if len(clusters) != 2:
        raise refuse("kafkaClusters", f"must contain exactly 2 clusters (source and target), got {len(clusters)}")
    plans = [_accept_cluster(cluster, f"kafkaClusters[{index}]", policy) for index, cluster in enumerate(clusters)]
    if plans[0].reference == plans[1].reference:
        raise refuse("kafkaClusters", f"both entries describe the same cluster {plans[0].reference!r}")
    if plans[0].alias == plans[1].alias:
        raise refuse("kafkaClusters", "the two clusters would get the same alias; use distinct cluster ids")
    return plans


def _accept_cluster(cluster: KafkaCluster, parameter: str, policy: AddressPolicy) -> ClusterPlan:
    if (cluster.amazon_msk_cluster is None) == (cluster.apache_kafka_cluster is None):
        raise refuse(parameter, "exactly one of amazonMskCluster and apacheKafkaCluster is required")
    _accept_security(cluster, parameter, policy)
    if cluster.amazon_msk_cluster is not None:
        arn = cluster.amazon_msk_cluster.msk_cluster_arn
        match = MSK_CLUSTER_ARN.fullmatch(arn)
        if not match:
            raise refuse(
                f"{parameter}.amazonMskCluster.mskClusterArn",
                f"{arn!r} is not an MSK cluster ARN (arn:aws:kafka:<region>:<account>:cluster/<name>/<uuid>)",
            )
        return ClusterPlan(
            wire=wire(cluster),
            kind="amazonMskCluster",
            reference=arn,
            alias=cluster_alias(arn, match["name"]),
            bootstrap_servers=None,
            parameter=f"{parameter}.amazonMskCluster.mskClusterArn",
        )
    apache = cluster.apache_kafka_cluster
    assert apache is not None
    if not APACHE_CLUSTER_ID.fullmatch(apache.apache_kafka_cluster_id):
        raise refuse(
            f"{parameter}.apacheKafkaCluster.apacheKafkaClusterId",
            "must be 1-256 characters of letters, digits and ._:/+=@-",
        )
    member = f"{parameter}.apacheKafkaCluster.bootstrapBrokerString"
    try:
        brokers = parse_bootstrap(apache.bootstrap_broker_string)
    except ValueError as exc:
        raise refuse(member, f"is not a host:port[,host:port...] list: {exc}") from None
    for broker in brokers:
        reason = policy.broker_refusal(broker)
        if reason is not None:
            raise refuse(
                member,
                f"{broker} is {reason}, which replicators may not connect to "
                "(an operator can allow it with FERRY_ALLOWED_BOOTSTRAP)",
            )
    return ClusterPlan(
        wire=wire(cluster),
        kind="apacheKafkaCluster",
        reference=apache.apache_kafka_cluster_id,
        alias=cluster_alias(apache.apache_kafka_cluster_id, apache.apache_kafka_cluster_id),
        bootstrap_servers=apache.bootstrap_broker_string,
        parameter=f"{parameter}.apacheKafkaCluster.apacheKafkaClusterId",
    )


SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}$")
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")


def _accept_security(cluster: KafkaCluster, parameter: str, policy: AddressPolicy) -> None:
    """Refuse what workers cannot honour, naming the member: no setting is ever silently dropped or downgraded."""
    auth = cluster.client_authentication
    tls = cluster.encryption_in_transit
    base = f"{parameter}.clientAuthentication"
    if tls is not None and tls.root_ca_certificate is not None:
        ca = tls.root_ca_certificate
        if not SECRET_ARN.fullmatch(ca) and not PEM_CERTIFICATE.search(ca):
            raise refuse(
                f"{parameter}.encryptionInTransit.rootCaCertificate",
                "must be PEM certificates (-----BEGIN CERTIFICATE-----) or the ARN of a Secrets Manager secret "
                "holding them",
            )
    if auth is None:
        return
    methods = [m for m in (auth.sasl_scram, auth.m_tls, auth.sasl_oauth_bearer) if m is not None]
    if len(methods) != 1:
        raise refuse(base, "exactly one of saslScram, mTLS and saslOAuthBearer is required")
    if cluster.amazon_msk_cluster is not None and auth.sasl_oauth_bearer is not None:
        raise refuse(f"{base}.saslOAuthBearer", "MSK clusters are reached with IAM or SCRAM, not OAUTHBEARER")
    if auth.sasl_scram is not None:
        _secret_arn(auth.sasl_scram.secret_arn, f"{base}.saslScram.secretArn")
        if tls is None and cluster.apache_kafka_cluster is not None:
            raise refuse(
                f"{base}.saslScram",
                "SASL/SCRAM needs encryptionInTransit {encryptionType: TLS}: Ferry never sends credentials to a "
                "cluster in clear",
            )
    if auth.m_tls is not None:
        _secret_arn(auth.m_tls.secret_arn, f"{base}.mTLS.secretArn")
    oauth = auth.sasl_oauth_bearer
    if oauth is not None:
        member = f"{base}.saslOAuthBearer"
        if tls is None:
            raise refuse(
                member,
                "SASL/OAUTHBEARER needs encryptionInTransit {encryptionType: TLS}: Ferry never sends tokens in clear",
            )
        grants = [g for g in (oauth.client_credentials, oauth.iam_jwt_bearer, oauth.client_credentials_assertion) if g]
        if len(grants) != 1:
            raise refuse(member, "exactly one of clientCredentials, iamJwtBearer and clientCredentialsAssertion")
        _token_endpoint(oauth.token_endpoint_url, f"{member}.tokenEndpointUrl", policy)
        if oauth.client_credentials is not None:
            _secret_arn(
                oauth.client_credentials.token_request_secret_arn, f"{member}.clientCredentials.tokenRequestSecretArn"
            )
            if oauth.token_endpoint_authentication_method == "NONE":
                raise refuse(
                    f"{member}.tokenEndpointAuthenticationMethod",
                    "clientCredentials sends the client secret: use POST or BASIC",
                )
        for name, grant in (
            ("iamJwtBearer", oauth.iam_jwt_bearer),
            ("clientCredentialsAssertion", oauth.client_credentials_assertion),
        ):
            if grant is None:
                continue
            if grant.token_request_secret_arn is None:
                raise refuse(
                    f"{member}.{name}.tokenRequestSecretArn",
                    "is required: Ferry signs the assertion with the private key this secret holds "
                    "(assertions issued by AWS IAM are not supported)",
                )
            _secret_arn(grant.token_request_secret_arn, f"{member}.{name}.tokenRequestSecretArn")
        if oauth.token_endpoint_tls_certificate_arn is not None:
            _secret_arn(oauth.token_endpoint_tls_certificate_arn, f"{member}.tokenEndpointTlsCertificateArn")


def _secret_arn(arn: str, parameter: str) -> None:
    if not SECRET_ARN.fullmatch(arn):
        raise refuse(parameter, f"{arn[:200]!r} is not a Secrets Manager secret ARN (arn:aws:secretsmanager:...)")


def _token_endpoint(url: str, parameter: str, policy: AddressPolicy) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or len(url) > 2048:
        raise refuse(parameter, "must be an https:// URL")
    try:
        port = parts.port or 443
        broker = parse_bootstrap(f"{'[' + parts.hostname + ']' if ':' in parts.hostname else parts.hostname}:{port}")[0]
    except ValueError as exc:
        raise refuse(parameter, f"is not a valid URL: {exc}") from None
    reason = policy.broker_refusal(broker)
    if reason is not None:
        raise refuse(parameter, f"{broker} is {reason}, which workers may not connect to")


def _accept_replication_info(info: ReplicationInfo, clusters: list[ClusterPlan]) -> dict[str, Any]:
    base = "replicationInfoList[0]"
    source = _referenced_cluster(base, "source", info.source_kafka_cluster_arn, info.source_kafka_cluster_id, clusters)
    target = _referenced_cluster(base, "target", info.target_kafka_cluster_arn, info.target_kafka_cluster_id, clusters)
    if source is target:
        member = "targetKafkaClusterArn" if info.target_kafka_cluster_arn is not None else "targetKafkaClusterId"
        raise refuse(f"{base}.{member}", "the target cluster must be different from the source cluster")
    topics = _normalised_topic_replication(info.topic_replication, f"{base}.topicReplication")
    groups = _normalised_group_replication(info.consumer_group_replication, f"{base}.consumerGroupReplication")
    if groups["consumerGroupOffsetSyncMode"] == "ENHANCED" and topics["topicNameConfiguration"]["type"] != "IDENTICAL":
        raise refuse(
            f"{base}.consumerGroupReplication.consumerGroupOffsetSyncMode",
            "ENHANCED offset sync is only supported when topicNameConfiguration type is IDENTICAL",
        )
    return {
        "sourceKafkaClusterAlias": source.alias,
        "targetKafkaClusterAlias": target.alias,
        "targetCompressionType": info.target_compression_type,
        "topicReplication": topics,
        "consumerGroupReplication": groups,
    }


def _referenced_cluster(
    base: str, role: str, arn: str | None, cluster_id: str | None, clusters: list[ClusterPlan]
) -> ClusterPlan:
    if (arn is None) == (cluster_id is None):
        raise refuse(
            f"{base}.{role}KafkaClusterArn",
            f"exactly one of {role}KafkaClusterArn and {role}KafkaClusterId is required",
        )
    kind: ClusterKind = "amazonMskCluster" if arn is not None else "apacheKafkaCluster"
    reference = arn if arn is not None else cluster_id
    for cluster in clusters:
        if cluster.kind == kind and cluster.reference == reference:
            return cluster
    member = f"{role}KafkaClusterArn" if arn is not None else f"{role}KafkaClusterId"
    described_by = "amazonMskCluster.mskClusterArn" if arn is not None else "apacheKafkaCluster.apacheKafkaClusterId"
    raise refuse(f"{base}.{member}", f"{reference!r} matches no kafkaClusters entry's {described_by}")


def _normalised_topic_replication(topics: TopicReplication, base: str) -> dict[str, Any]:
    check_patterns(topics.topics_to_replicate, f"{base}.topicsToReplicate", minimum=1)
    check_patterns(topics.topics_to_exclude or [], f"{base}.topicsToExclude", minimum=0)
    starting = topics.starting_position.type if topics.starting_position else None
    naming = topics.topic_name_configuration.type if topics.topic_name_configuration else None
    return {
        # MSK (console and Terraform) turns all three on when they are not given.
        "copyAccessControlListsForTopics": _default_true(topics.copy_access_control_lists_for_topics),
        "copyTopicConfigurations": _default_true(topics.copy_topic_configurations),
        "detectAndCopyNewTopics": _default_true(topics.detect_and_copy_new_topics),
        "startingPosition": {"type": starting or "LATEST"},
        "topicNameConfiguration": {"type": naming or "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"},
        "topicsToExclude": list(topics.topics_to_exclude or []),
        "topicsToReplicate": list(topics.topics_to_replicate),
    }


def _normalised_group_replication(groups: ConsumerGroupReplication, base: str) -> dict[str, Any]:
    check_patterns(groups.consumer_groups_to_replicate, f"{base}.consumerGroupsToReplicate", minimum=0)
    check_patterns(groups.consumer_groups_to_exclude or [], f"{base}.consumerGroupsToExclude", minimum=0)
    return {
        "consumerGroupsToExclude": list(groups.consumer_groups_to_exclude or []),
        "consumerGroupsToReplicate": list(groups.consumer_groups_to_replicate),
        "detectAndCopyNewConsumerGroups": _default_true(groups.detect_and_copy_new_consumer_groups),
        "synchroniseConsumerGroupOffsets": _default_true(groups.synchronise_consumer_group_offsets),
        "consumerGroupOffsetSyncMode": groups.consumer_group_offset_sync_mode or "LEGACY",
    }


def _default_true(value: bool | None) -> bool:
    return True if value is None else value


def check_patterns(patterns: Sequence[str], parameter: str, *, minimum: int) -> None:
    if not minimum <= len(patterns) <= MAX_PATTERNS_PER_LIST:
        raise refuse(parameter, f"must contain {minimum} to {MAX_PATTERNS_PER_LIST} patterns, got {len(patterns)}")
    for index, pattern in enumerate(patterns):
        if not pattern:
            raise refuse(f"{parameter}[{index}]", "a pattern must not be empty")
        check_pattern(pattern, f"{parameter}[{index}]")


def accept_log_delivery(log_delivery: LogDelivery) -> dict[str, Any]:
    destinations = log_delivery.replicator_log_delivery
    base = "logDelivery.replicatorLogDelivery"
    if destinations is not None:
        required = (
            ("cloudWatchLogs", destinations.cloud_watch_logs, "logGroup"),
            ("firehose", destinations.firehose, "deliveryStream"),
            ("s3", destinations.s3, "bucket"),
        )
        for member, destination, target_member in required:
            if destination is not None and destination.enabled and not wire(destination).get(target_member):
                raise refuse(f"{base}.{member}.{target_member}", f"is required when {member} is enabled")
    return wire(log_delivery)


# A reserved tag, set at creation only: the replicator's delivery guarantee (MSK's API has no field for it, and a
# tag is what boto3 and the AWS CLI can send unchanged). Absent: FERRY_DEFAULT_DELIVERY.
DELIVERY_TAG = "ferry:delivery"
AT_LEAST_ONCE = "at-least-once"
EXACTLY_ONCE = "exactly-once"
DELIVERIES = (AT_LEAST_ONCE, EXACTLY_ONCE)


def accept_delivery_tag(tags: dict[str, str], parameter: str) -> str | None:
    """The delivery a creation asks for through the reserved tag, or None."""
    value = tags.get(DELIVERY_TAG)
    if value is not None and value not in DELIVERIES:
        raise refuse(parameter, f"tag {DELIVERY_TAG!r} must be one of {', '.join(DELIVERIES)}; got {value[:64]!r}")
    return value


def accept_tags(tags: dict[str, str], parameter: str) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise refuse(parameter, f"a resource can have at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or not TAG_TEXT.fullmatch(key):
            raise refuse(
                parameter,
                f"tag key {key[:140]!r} must be 1-128 letters, digits, spaces and _.:/=+-@",
            )
        if key.lower().startswith("aws:"):
            raise refuse(parameter, f"tag key {key!r} uses the reserved prefix 'aws:'")
        if len(value) > 256 or not TAG_TEXT.fullmatch(value):
            raise refuse(
                parameter,
                f"the value of tag {key!r} must be at most 256 letters, digits, spaces and _.:/=+-@",
            )
    return dict(tags)


# ----- UpdateReplicationInfo ----------------------------------------------------------------------------------


def accept_update(
    request: UpdateReplicationInfoRequest,
    *,
    stored_info: dict[str, Any],
    stored_log_delivery: dict[str, Any] | None,
    clusters_by_alias: dict[str, dict[str, Any]],
) -> AcceptedUpdate:
    """Apply an update to the stored replication info, or refuse it (including when it changes nothing)."""
    has_replication_change = request.topic_replication is not None or request.consumer_group_replication is not None
    if request.log_delivery is not None and has_replication_change:
        raise refuse(
            "logDelivery",
            "cannot be updated in the same request as topicReplication or consumerGroupReplication",
        )
    if request.log_delivery is None and not has_replication_change:
        raise refuse("topicReplication", "one of topicReplication, consumerGroupReplication or logDelivery is required")
    _check_same_cluster(
        request.source_kafka_cluster_arn,
        request.source_kafka_cluster_id,
        "source",
        clusters_by_alias[stored_info["sourceKafkaClusterAlias"]],
    )
    _check_same_cluster(
        request.target_kafka_cluster_arn,
        request.target_kafka_cluster_id,
        "target",
        clusters_by_alias[stored_info["targetKafkaClusterAlias"]],
    )

    info = {**stored_info}
    if request.topic_replication is not None:
        update = request.topic_replication
        check_patterns(update.topics_to_replicate, "topicReplication.topicsToReplicate", minimum=1)
        check_patterns(update.topics_to_exclude, "topicReplication.topicsToExclude", minimum=0)
        # startingPosition and topicNameConfiguration are fixed at creation; the update shape cannot carry them.
        info["topicReplication"] = {**stored_info["topicReplication"], **wire(update)}
    if request.consumer_group_replication is not None:
        groups = request.consumer_group_replication
        check_patterns(
            groups.consumer_groups_to_replicate, "consumerGroupReplication.consumerGroupsToReplicate", minimum=0
        )
        check_patterns(groups.consumer_groups_to_exclude, "consumerGroupReplication.consumerGroupsToExclude", minimum=0)
        info["consumerGroupReplication"] = {**stored_info["consumerGroupReplication"], **wire(groups)}
    log_delivery = stored_log_delivery
    if request.log_delivery is not None:
        log_delivery = accept_log_delivery(request.log_delivery)

    if info == stored_info and log_delivery == stored_log_delivery:
        raise InvalidRequestError(
            "The specified replication info is identical to the current value. "
            "Specify a different value, then try again.",
            "replicationInfo",
        )
    return AcceptedUpdate(replication_info=info, log_delivery=log_delivery)


def _check_same_cluster(arn: str | None, cluster_id: str | None, role: str, stored: dict[str, Any]) -> None:
    if arn == "" and stored["ferry"]["kind"] == "apacheKafkaCluster":
        # terraform-provider-aws sends `aws.String(<source|target>_kafka_cluster_arn)` on every update, which is ""
        # for a self-managed cluster (identified by id, and it sends no id): an empty ARN there names no cluster.
        arn = None
    if arn is not None and cluster_id is not None:
        raise refuse(f"{role}KafkaClusterArn", f"give at most one of {role}KafkaClusterArn and {role}KafkaClusterId")
    reference = stored["ferry"]["reference"]
    if arn == "":
        raise refuse(f"{role}KafkaClusterArn", f"is empty: give this replicator's {role} cluster ARN or leave it out")
    if arn is not None and (stored["ferry"]["kind"] != "amazonMskCluster" or arn != reference):
        raise refuse(
            f"{role}KafkaClusterArn",
            f"{arn!r} is not this replicator's {role} cluster; source and target cannot be changed",
        )
    if cluster_id is not None and (stored["ferry"]["kind"] != "apacheKafkaCluster" or cluster_id != reference):
        raise refuse(
            f"{role}KafkaClusterId",
            f"{cluster_id!r} is not this replicator's {role} cluster; source and target cannot be changed",
        )


def is_replicator_arn(arn: str) -> bool:
    return REPLICATOR_ARN.fullmatch(arn) is not None
