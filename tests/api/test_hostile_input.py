"""Hand-made hostile requests, beside what tests/api/test_fuzz.py generates: 10 MB bodies, wrong JSON types, unknown
enum values, unicode and control characters in names, very long lists, malformed and foreign ARNs in paths and
bodies, conflicting concurrent writes.

Each gets the exact AWS error (status, ``x-amzn-ErrorType``, a message and ``invalidParameter`` naming the member)
or, where AWS takes any text, is stored and described back unchanged; never a 5xx. Malformed JSON and NUL
characters: test_http_errors.py; the rules of each member: test_validation.py.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import Engine, delete

from models.access_keys import IssuedKey
from models.replicator import ReplicatorRow
from models.settings import FerrySettings
from tests.api.test_http_errors import CREATE, assert_aws_error, valid_body
from tests.conftest import SigV4HttpxAuth, issue_key

OTHER_ACCOUNT = "111122223333"


def with_member(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``body`` with the member at ``path`` (dotted wire names, ints index lists) set to ``value``."""
    changed = copy.deepcopy(body)
    node: Any = changed
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(leaf) if leaf.isdigit() else leaf] = value
    return changed


def _cluster_id(value: str) -> Any:
    def mutate(body: dict[str, Any]) -> dict[str, Any]:
        body = with_member(body, "kafkaClusters.0.apacheKafkaCluster.apacheKafkaClusterId", value)
        return with_member(body, "replicationInfoList.0.sourceKafkaClusterId", value)

    return mutate


def _member(path: str, value: Any) -> Any:
    return lambda body: with_member(body, path, value)


ROLE = "arn:aws:iam::000000000000:role/ferry"
TOPICS = "replicationInfoList.0.topicReplication.topicsToReplicate"
GROUPS = "replicationInfoList.0.consumerGroupReplication.consumerGroupsToReplicate"
CLUSTER_ID = "kafkaClusters[0].apacheKafkaCluster.apacheKafkaClusterId"

# What AWS refuses by its patterns (names, cluster ids, ARNs: ASCII; tags: letters, digits, space separators and
# _.:/=+-@), including a trailing newline, which a "$" anchor lets through.
REFUSED_TEXT: list[tuple[str, Any, str]] = [
    ("name with an accent", _member("replicatorName", "ordérs"), "replicatorName"),
    ("name in CJK", _member("replicatorName", "名前"), "replicatorName"),
    ("name with an emoji", _member("replicatorName", "orders-😀"), "replicatorName"),
    ("name with a bell", _member("replicatorName", "orders\u0007"), "replicatorName"),
    ("name with a trailing newline", _member("replicatorName", "orders\n"), "replicatorName"),
    ("name with a right-to-left override", _member("replicatorName", "a\u202eb"), "replicatorName"),
    ("cluster id with an umlaut", _cluster_id("clüster"), CLUSTER_ID),
    ("cluster id with an escape", _cluster_id("c\u001b[31m"), CLUSTER_ID),
    ("cluster id with a trailing newline", _cluster_id("source\n"), CLUSTER_ID),
    ("role ARN with a trailing newline", _member("serviceExecutionRoleArn", f"{ROLE}\n"), "serviceExecutionRoleArn"),
    ("tag key with a trailing newline", _member("tags", {"team\n": "x"}), "tags"),
    ("tag key with a tab", _member("tags", {"a\tb": "x"}), "tags"),
    ("tag key with a bell", _member("tags", {"\u0007": "x"}), "tags"),
    ("tag key with an emoji", _member("tags", {"😀": "x"}), "tags"),
    ("tag value with a trailing newline", _member("tags", {"team": "data\n"}), "tags"),
    ("tag value with a tab", _member("tags", {"team": "a\tb"}), "tags"),
    ("tag value with a C1 control", _member("tags", {"team": "a\u0085b"}), "tags"),
]


@pytest.mark.parametrize(
    ("mutate", "member"), [(m, f) for _, m, f in REFUSED_TEXT], ids=[case for case, _, _ in REFUSED_TEXT]
)
def test_unicode_and_control_characters_refused_by_name(
    http: httpx.Client, unique: str, clusters: dict[str, Any], mutate: Any, member: str
) -> None:
    response = http.post(CREATE, json=mutate(valid_body(unique, clusters)))

    assert_aws_error(response, 400, "BadRequestException", member)
    assert http.get(CREATE, params={"replicatorNameFilter": unique}).json()["replicators"] == []


@pytest.mark.parametrize(
    "tags",
    [{"team\n": "x"}, {"a\tb": "x"}, {"team": "data\n"}, {"team": "\u001b[31m"}],
    ids=["key with a newline", "key with a tab", "value with a newline", "value with an escape"],
)
def test_control_characters_in_tags_are_refused_by_tag_resource(
    http: httpx.Client, unique: str, clusters: dict[str, Any], tags: dict[str, str]
) -> None:
    arn = http.post(CREATE, json=valid_body(unique, clusters)).json()["replicatorArn"]
    path = f"/v1/tags/{quote(arn, safe='')}"

    assert_aws_error(http.post(path, json={"tags": tags}), 400, "BadRequestException", "tags")
    assert http.get(path).json()["tags"] == {}


def test_unicode_and_control_characters_where_aws_takes_any_text_are_kept_exactly(
    http: httpx.Client, unique: str, clusters: dict[str, Any]
) -> None:
    """The description and the topic and group patterns have no pattern in MSK's model: what is sent is what is
    described; tags take letters and space separators of every script."""
    description = "données 😀 名前\nline two\tand a bell \u0007"
    topics = ["ordérs.*", "名前-.*", "a\nb", "\u202eevil"]
    groups = ["grüppe-.*", "\u0007"]
    tags = {"équipe": "données", "名前": "値", "no break": "a\u00a0b\u3000c"}
    body = with_member(valid_body(unique, clusters), "description", description)
    body = with_member(with_member(body, TOPICS, topics), GROUPS, groups)
    body["tags"] = tags

    created = http.post(CREATE, json=body)
    assert created.status_code == 200, created.text
    arn = created.json()["replicatorArn"]
    described = http.get(f"{CREATE}/{quote(arn, safe='')}").json()

    assert described["replicatorDescription"] == description
    info = described["replicationInfoList"][0]
    assert info["topicReplication"]["topicsToReplicate"] == topics
    assert info["consumerGroupReplication"]["consumerGroupsToReplicate"] == groups
    assert described["tags"] == tags
    assert http.get(f"/v1/tags/{quote(arn, safe='')}").json()["tags"] == tags


# ----- replicators the path tests act on ----------------------------------------------------------------------


def _create(url: str, key: IssuedKey, name: str, source: str, target: str) -> str:
    clusters = {
        "source_id": "hostile-src",
        "target_id": "hostile-tgt",
        "source_bootstrap": source,
        "target_bootstrap": target,
    }
    with httpx.Client(base_url=url, auth=SigV4HttpxAuth(key), timeout=30) as client:
        created = client.post(CREATE, json=valid_body(name, clusters))
    assert created.status_code == 200, created.text
    arn: str = created.json()["replicatorArn"]
    return arn


@pytest.fixture(scope="module")
def other_key(test_settings: FerrySettings, migrated_test_database: str) -> IssuedKey:
    return issue_key(test_settings, OTHER_ACCOUNT)


@pytest.fixture(scope="module")
def arns(
    api_url: str,
    test_key: IssuedKey,
    other_key: IssuedKey,
    source_bootstrap: str,
    target_bootstrap: str,
    db_engine: Engine,
) -> Iterator[dict[str, str]]:
    """One replicator of the test account ("own") and one of another account ("other"), both named alike."""
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    yield {
        "own": _create(api_url, test_key, name, source_bootstrap, target_bootstrap),
        "other": _create(api_url, other_key, name, source_bootstrap, target_bootstrap),
    }
    with db_engine.begin() as connection:
        connection.execute(delete(ReplicatorRow).where(ReplicatorRow.name == name))


# ----- 10 MB bodies, wrong types, unknown enum values, very long lists -------------------------------------------

TOPIC_UPDATE = {
    "copyAccessControlListsForTopics": True,
    "copyTopicConfigurations": True,
    "detectAndCopyNewTopics": True,
    "topicsToExclude": [],
    "topicsToReplicate": ["orders.*"],
}
TEN_MB = 10 * 1024 * 1024
# The operations with a body, their path after the ARN and a body each accepts (but for currentVersion).
BODIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "UpdateReplicationInfo": ("PUT", "/replication-info", {"currentVersion": "v", "topicReplication": TOPIC_UPDATE}),
    "TagResource": ("POST", "", {"tags": {"team": "data"}}),
    "StartFailover": ("POST", "/failover", {"consumerGroups": ["app"]}),
    "StartAudit": ("POST", "/audits", {"topic": "orders"}),
}


def _send(http: httpx.Client, operation: str, arn: str, body: Any) -> httpx.Response:
    method, suffix, _ = BODIES[operation]
    base = "/v1/tags" if operation == "TagResource" else CREATE
    return http.request(method, f"{base}/{quote(arn, safe='')}{suffix}", json=body)


def test_a_10_mb_json_body_is_refused_unread_by_every_operation_with_a_body(
    http: httpx.Client, arns: dict[str, str], unique: str, clusters: dict[str, Any]
) -> None:
    padding = "x" * TEN_MB
    create = with_member(valid_body(unique, clusters), "description", padding)
    responses = [http.post(CREATE, json=create)]
    for operation, (_, _, body) in BODIES.items():
        responses.append(_send(http, operation, arns["own"], {**body, "padding": padding}))

    for response in responses:
        assert "larger than 1048576 bytes" in assert_aws_error(response, 413, "BadRequestException", "body")
    assert http.get(f"/v1/tags/{quote(arns['own'], safe='')}").json()["tags"] == {}


WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("name as a list", _member("replicatorName", ["orders"]), "replicatorName"),
    ("description as an object", _member("description", {"text": "x"}), "description"),
    ("cluster as a string", _member("kafkaClusters.0", "cluster"), "kafkaClusters[0]"),
    (
        "bootstrap as a number",
        _member("kafkaClusters.0.apacheKafkaCluster.bootstrapBrokerString", 9092),
        "kafkaClusters[0].apacheKafkaCluster.bootstrapBrokerString",
    ),
    (
        "pattern list as a string",
        _member(TOPICS, "orders"),
        "replicationInfoList[0].topicReplication.topicsToReplicate",
    ),
    ("pattern as a number", _member(TOPICS, [1]), "replicationInfoList[0].topicReplication.topicsToReplicate[0]"),
    (
        "compression as a number",
        _member("replicationInfoList.0.targetCompressionType", 4),
        "replicationInfoList[0].targetCompressionType",
    ),
    (
        "starting position as a string",
        _member("replicationInfoList.0.topicReplication.startingPosition", "LATEST"),
        "replicationInfoList[0].topicReplication.startingPosition",
    ),
    ("tags as a list", _member("tags", ["team"]), "tags"),
    ("tag value as a number", _member("tags", {"team": 1}), "tags.team"),
]


@pytest.mark.parametrize(
    ("mutate", "member"), [(m, f) for _, m, f in WRONG_TYPES], ids=[case for case, _, _ in WRONG_TYPES]
)
def test_wrong_types_in_create_are_refused_by_name(
    http: httpx.Client, unique: str, clusters: dict[str, Any], mutate: Any, member: str
) -> None:
    assert_aws_error(http.post(CREATE, json=mutate(valid_body(unique, clusters))), 400, "BadRequestException", member)


WRONG_TYPES_ON_A_REPLICATOR: list[tuple[str, dict[str, Any], str]] = [
    ("UpdateReplicationInfo", {"currentVersion": 12, "topicReplication": TOPIC_UPDATE}, "currentVersion"),
    ("UpdateReplicationInfo", {"currentVersion": "v", "topicReplication": []}, "topicReplication"),
    ("UpdateReplicationInfo", {"currentVersion": "v", "logDelivery": "on"}, "logDelivery"),
    ("TagResource", {"tags": ["team"]}, "tags"),
    ("TagResource", {"tags": {"team": None}}, "tags.team"),
    ("StartFailover", {"consumerGroups": "app"}, "consumerGroups"),
    ("StartFailover", {"consumerGroups": ["app"], "timeoutSeconds": "long"}, "timeoutSeconds"),
    ("StartAudit", {"topic": 5}, "topic"),
    ("StartAudit", {"topic": "orders", "partition": 1.5}, "partition"),
]


@pytest.mark.parametrize(
    ("operation", "body", "member"),
    WRONG_TYPES_ON_A_REPLICATOR,
    ids=[f"{operation} {member}" for operation, _, member in WRONG_TYPES_ON_A_REPLICATOR],
)
def test_wrong_types_on_a_replicator_are_refused_by_name(
    http: httpx.Client, arns: dict[str, str], operation: str, body: dict[str, Any], member: str
) -> None:
    assert_aws_error(_send(http, operation, arns["own"], body), 400, "BadRequestException", member)


INFO = "replicationInfoList[0]"
UNKNOWN_ENUMS: list[tuple[str, str, Any, str]] = [
    (
        "replicationInfoList.0.targetCompressionType",
        f"{INFO}.targetCompressionType",
        "lz4",
        "'NONE', 'GZIP', 'SNAPPY', 'LZ4' or 'ZSTD'",
    ),
    ("replicationInfoList.0.targetCompressionType", f"{INFO}.targetCompressionType", "", "'NONE', 'GZIP'"),
    (
        "replicationInfoList.0.topicReplication.startingPosition",
        f"{INFO}.topicReplication.startingPosition.type",
        {"type": "earliest"},
        "'LATEST' or 'EARLIEST'",
    ),
    (
        "replicationInfoList.0.topicReplication.startingPosition",
        f"{INFO}.topicReplication.startingPosition.type",
        {"type": "FROM_TIMESTAMP"},
        "'LATEST' or 'EARLIEST'",
    ),
    (
        "replicationInfoList.0.topicReplication.topicNameConfiguration",
        f"{INFO}.topicReplication.topicNameConfiguration.type",
        {"type": "identical"},
        "'PREFIXED_WITH_SOURCE_CLUSTER_ALIAS' or 'IDENTICAL'",
    ),
    (
        "replicationInfoList.0.topicReplication.topicNameConfiguration",
        f"{INFO}.topicReplication.topicNameConfiguration.type",
        {"type": "PREFIXED"},
        "'PREFIXED_WITH_SOURCE_CLUSTER_ALIAS' or 'IDENTICAL'",
    ),
    (
        "replicationInfoList.0.consumerGroupReplication.consumerGroupOffsetSyncMode",
        f"{INFO}.consumerGroupReplication.consumerGroupOffsetSyncMode",
        "enhanced",
        "'LEGACY' or 'ENHANCED'",
    ),
]


@pytest.mark.parametrize(
    ("path", "member", "value", "allowed"),
    UNKNOWN_ENUMS,
    ids=[f"{member.rsplit('.', 1)[-1]} {value}" for _, member, value, _ in UNKNOWN_ENUMS],
)
def test_unknown_enum_values_are_refused_naming_the_member_and_the_values(
    http: httpx.Client, unique: str, clusters: dict[str, Any], path: str, member: str, value: Any, allowed: str
) -> None:
    response = http.post(CREATE, json=with_member(valid_body(unique, clusters), path, value))

    assert allowed in assert_aws_error(response, 400, "BadRequestException", member)


def _many(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


LONG_LISTS: list[tuple[str, Any, str, str]] = [
    ("10,000 topics", _member(TOPICS, _many("t", 10_000)), f"{INFO}.topicReplication.topicsToReplicate", "got 10000"),
    (
        "10,000 excluded topics",
        _member("replicationInfoList.0.topicReplication.topicsToExclude", _many("t", 10_000)),
        f"{INFO}.topicReplication.topicsToExclude",
        "got 10000",
    ),
    (
        "10,000 groups",
        _member(GROUPS, _many("g", 10_000)),
        f"{INFO}.consumerGroupReplication.consumerGroupsToReplicate",
        "got 10000",
    ),
    (
        "10,000 excluded groups",
        _member("replicationInfoList.0.consumerGroupReplication.consumerGroupsToExclude", _many("g", 10_000)),
        f"{INFO}.consumerGroupReplication.consumerGroupsToExclude",
        "got 10000",
    ),
    (
        "1,000 clusters",
        lambda body: {**body, "kafkaClusters": body["kafkaClusters"] * 500},
        "kafkaClusters",
        "got 1000",
    ),
    (
        "1,000 replication infos",
        lambda body: {**body, "replicationInfoList": body["replicationInfoList"] * 1000},
        "replicationInfoList",
        "got 1000",
    ),
    ("10,000 tags", _member("tags", {f"k{i}": "v" for i in range(10_000)}), "tags", "at most 50 tags, got 10000"),
]


@pytest.mark.parametrize(
    ("mutate", "member", "says"), [(m, f, t) for _, m, f, t in LONG_LISTS], ids=[case for case, *_ in LONG_LISTS]
)
def test_very_long_lists_in_create_are_refused_by_name(
    http: httpx.Client, unique: str, clusters: dict[str, Any], mutate: Any, member: str, says: str
) -> None:
    response = http.post(CREATE, json=mutate(valid_body(unique, clusters)))

    assert says in assert_aws_error(response, 400, "BadRequestException", member)


def test_very_long_lists_on_a_replicator(http: httpx.Client, arns: dict[str, str]) -> None:
    arn = arns["own"]
    version = http.get(f"{CREATE}/{quote(arn, safe='')}").json()["currentVersion"]
    topics = {**TOPIC_UPDATE, "topicsToReplicate": _many("t", 10_000)}
    update = _send(http, "UpdateReplicationInfo", arn, {"currentVersion": version, "topicReplication": topics})
    assert "got 10000" in assert_aws_error(update, 400, "BadRequestException", "topicReplication.topicsToReplicate")
    tags = _send(http, "TagResource", arn, {"tags": {f"k{i}": "v" for i in range(10_000)}})
    assert "at most 50 tags" in assert_aws_error(tags, 400, "BadRequestException", "tags")
    groups = _send(http, "StartFailover", arn, {"consumerGroups": _many("g", 10_000)})
    assert "at most 100" in assert_aws_error(groups, 400, "BadRequestException", "consumerGroups")
    # UntagResource has no limit on its keys (nor has MSK's): 3,000 absent keys (a 30 kB query) change nothing.
    untag = http.delete(f"/v1/tags/{quote(arn, safe='')}", params=[("tagKeys", key) for key in _many("k", 3_000)])
    assert untag.status_code == 204, untag.text
    assert http.get(f"{CREATE}/{quote(arn, safe='')}").json()["currentVersion"] == version


# ----- malformed and foreign ARNs ------------------------------------------------------------------------------

# Every operation on one replicator: method, path with {arn}, request options, the member naming the ARN.
ON_A_REPLICATOR: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "DescribeReplicator": ("GET", f"{CREATE}/{{arn}}", {}, "replicatorArn"),
    "UpdateReplicationInfo": (
        "PUT",
        f"{CREATE}/{{arn}}/replication-info",
        {"json": {"currentVersion": "v", "topicReplication": TOPIC_UPDATE}},
        "replicatorArn",
    ),
    "DeleteReplicator": ("DELETE", f"{CREATE}/{{arn}}", {}, "replicatorArn"),
    "TagResource": ("POST", "/v1/tags/{arn}", {"json": {"tags": {"stolen": "yes"}}}, "resourceArn"),
    "UntagResource": ("DELETE", "/v1/tags/{arn}", {"params": {"tagKeys": "team"}}, "resourceArn"),
    "ListTagsForResource": ("GET", "/v1/tags/{arn}", {}, "resourceArn"),
    "GetReplicatorMetrics": ("GET", f"{CREATE}/{{arn}}/metrics", {}, "replicatorArn"),
    "TranslateOffset": (
        "GET",
        f"{CREATE}/{{arn}}/offset-translation",
        {"params": {"topic": "orders", "partition": 0, "offset": 0}},
        "replicatorArn",
    ),
    "StartFailover": ("POST", f"{CREATE}/{{arn}}/failover", {"json": {"consumerGroups": ["app"]}}, "replicatorArn"),
    "StartAudit": ("POST", f"{CREATE}/{{arn}}/audits", {"json": {"topic": "orders"}}, "replicatorArn"),
}

# (case, how the ARN is made of the test account's replicator's, status, error type).
PATH_ARNS: list[tuple[str, Any, int, str]] = [
    ("empty", lambda arn: "", 400, "BadRequestException"),
    ("arn: alone", lambda arn: "arn:", 400, "BadRequestException"),
    ("11-digit account", lambda arn: arn.replace(":000000000000:", ":00000000000:"), 400, "BadRequestException"),
    ("trailing slash", lambda arn: f"{arn}/", 400, "BadRequestException"),
    ("space inside", lambda arn: arn.replace("replicator/", "replicator /"), 400, "BadRequestException"),
    ("accented name", lambda arn: arn.replace("/hostile-", "/hôstile-"), 400, "BadRequestException"),
    ("name of 5,000 characters", lambda arn: arn.replace("/hostile-", "/" + "h" * 5000), 400, "BadRequestException"),
    ("percent-encoded twice", lambda arn: quote(arn, safe=""), 400, "BadRequestException"),
    ("an S3 bucket's", lambda arn: "arn:aws:s3:::ferry-bucket", 400, "BadRequestException"),
    ("an MSK cluster's", lambda arn: arn.replace(":replicator/", ":cluster/"), 400, "BadRequestException"),
    ("an IAM role's", lambda arn: "arn:aws:iam::000000000000:role/ferry", 400, "BadRequestException"),
    ("another region's", lambda arn: arn.replace(":us-east-1:", ":eu-west-1:"), 404, "NotFoundException"),
    ("another partition's", lambda arn: arn.replace("arn:aws:", "arn:aws-cn:"), 404, "NotFoundException"),
]


def _on_a_replicator(http: httpx.Client, operation: str, arn: str) -> httpx.Response:
    method, path, options, _ = ON_A_REPLICATOR[operation]
    return http.request(method, path.format(arn=quote(arn, safe="")), **options)


@pytest.mark.parametrize(
    ("make", "status", "error_type"), [(m, s, e) for _, m, s, e in PATH_ARNS], ids=[case for case, *_ in PATH_ARNS]
)
def test_malformed_and_foreign_arns_in_the_path_of_every_operation(
    http: httpx.Client, arns: dict[str, str], make: Any, status: int, error_type: str
) -> None:
    arn = make(arns["own"])
    for operation, (_, _, _, member) in ON_A_REPLICATOR.items():
        message = assert_aws_error(_on_a_replicator(http, operation, arn), status, error_type, member)
        assert message.startswith(f"{member}: "), (operation, message)
    assert http.get(f"/v1/tags/{quote(arns['own'], safe='')}").json()["tags"] == {}


@pytest.mark.parametrize("control", ["\n", "\r", "\t", "\u001b", "\u007f"], ids=["LF", "CR", "TAB", "ESC", "DEL"])
def test_a_control_character_in_the_path_is_refused_before_routing(
    http: httpx.Client, arns: dict[str, str], control: str
) -> None:
    """Routing would let a trailing %0A fall off the path parameter (and act on the ARN without it)."""
    for operation in ON_A_REPLICATOR:
        for arn in (f"{arns['own']}{control}", arns["own"].replace("/hostile-", f"/hostile{control}-")):
            response = _on_a_replicator(http, operation, arn)
            assert "control character" in assert_aws_error(response, 400, "BadRequestException"), operation
    assert http.get(f"/v1/tags/{quote(arns['own'], safe='')}").json()["tags"] == {}


def test_another_accounts_replicator_is_not_found_by_any_operation_and_stays_untouched(
    http: httpx.Client, api_url: str, other_key: IssuedKey, arns: dict[str, str]
) -> None:
    foreign = arns["other"]
    with httpx.Client(base_url=api_url, auth=SigV4HttpxAuth(other_key), timeout=30) as owner:
        before = owner.get(f"{CREATE}/{quote(foreign, safe='')}").json()

        for operation, (_, _, _, member) in ON_A_REPLICATOR.items():
            response = _on_a_replicator(http, operation, foreign)
            assert "does not exist" in assert_aws_error(response, 404, "NotFoundException", member), operation

        after = owner.get(f"{CREATE}/{quote(foreign, safe='')}").json()
    assert after == before
    assert after["replicatorState"] == "CREATING" and after.get("tags") in (None, {})


SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ferry/scram-AbCdEf"
MSK = "arn:aws:kafka:us-east-1:123456789012:cluster/prod/6357e0b2-0e6a-4b86-a0b4-70df934c2e31-5"
REPLICATOR = "arn:aws:kafka:us-east-1:000000000000:replicator/orders/0e6a4b86-a0b4-70df934c2e31"


def _scram(secret: str) -> Any:
    def mutate(body: dict[str, Any]) -> dict[str, Any]:
        body = with_member(body, "kafkaClusters.0.encryptionInTransit", {"encryptionType": "TLS"})
        return with_member(
            body, "kafkaClusters.0.clientAuthentication", {"saslScram": {"mechanism": "SHA512", "secretArn": secret}}
        )

    return mutate


def _source_by_arn(body: dict[str, Any]) -> dict[str, Any]:
    body = with_member(body, "replicationInfoList.0.sourceKafkaClusterArn", MSK)
    del body["replicationInfoList"][0]["sourceKafkaClusterId"]
    return body


BODY_ARNS: list[tuple[str, Any, str]] = [
    (
        "role that is an S3 bucket's",
        _member("serviceExecutionRoleArn", "arn:aws:s3:::ferry"),
        "serviceExecutionRoleArn",
    ),
    (
        "role that is an IAM user's",
        _member("serviceExecutionRoleArn", "arn:aws:iam::000000000000:user/ferry"),
        "serviceExecutionRoleArn",
    ),
    ("role that is a replicator's", _member("serviceExecutionRoleArn", REPLICATOR), "serviceExecutionRoleArn"),
    (
        "MSK cluster that is a replicator",
        lambda body: with_member(body, "kafkaClusters.0", {"amazonMskCluster": {"mskClusterArn": REPLICATOR}}),
        "kafkaClusters[0].amazonMskCluster.mskClusterArn",
    ),
    (
        "secret that is a KMS key",
        _scram("arn:aws:kms:us-east-1:123456789012:key/ferry"),
        "kafkaClusters[0].clientAuthentication.saslScram.secretArn",
    ),
    (
        "secret with a trailing newline",
        _scram(f"{SECRET}\n"),
        "kafkaClusters[0].clientAuthentication.saslScram.secretArn",
    ),
    (
        "CA that is an S3 object",
        _member(
            "kafkaClusters.0.encryptionInTransit",
            {"encryptionType": "TLS", "rootCaCertificate": "arn:aws:s3:::b/ca.pem"},
        ),
        "kafkaClusters[0].encryptionInTransit.rootCaCertificate",
    ),
    ("source cluster of no listed cluster", _source_by_arn, f"{INFO}.sourceKafkaClusterArn"),
]


@pytest.mark.parametrize(
    ("mutate", "member"), [(m, f) for _, m, f in BODY_ARNS], ids=[case for case, _, _ in BODY_ARNS]
)
def test_malformed_and_foreign_arns_in_the_create_body_are_refused_by_name(
    http: httpx.Client, unique: str, clusters: dict[str, Any], mutate: Any, member: str
) -> None:
    assert_aws_error(http.post(CREATE, json=mutate(valid_body(unique, clusters))), 400, "BadRequestException", member)


def test_another_clusters_arn_in_an_update_is_refused_by_name(http: httpx.Client, arns: dict[str, str]) -> None:
    version = http.get(f"{CREATE}/{quote(arns['own'], safe='')}").json()["currentVersion"]
    for member in ("sourceKafkaClusterArn", "targetKafkaClusterArn"):
        body = {
            "currentVersion": version,
            member: MSK,
            "topicReplication": {**TOPIC_UPDATE, "topicsToReplicate": ["x"]},
        }
        assert "cannot be changed" in assert_aws_error(
            _send(http, "UpdateReplicationInfo", arns["own"], body), 400, "BadRequestException", member
        )


# ----- conflicting concurrent writes ---------------------------------------------------------------------------


def test_concurrent_updates_and_deletes_with_one_version_never_both_apply(
    http: httpx.Client, unique: str, clusters: dict[str, Any]
) -> None:
    arn = http.post(CREATE, json=valid_body(unique, clusters)).json()["replicatorArn"]
    path = f"{CREATE}/{quote(arn, safe='')}"
    version = http.get(path).json()["currentVersion"]
    start = threading.Barrier(12)

    def write(index: int) -> tuple[str, httpx.Response]:
        start.wait()
        if index % 2:
            return "delete", http.delete(path, params={"currentVersion": version})
        body = {"currentVersion": version, "topicReplication": {**TOPIC_UPDATE, "topicsToReplicate": [f"t{index}"]}}
        return f"t{index}", http.put(f"{path}/replication-info", json=body)

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(write, range(12)))

    for _, response in outcomes:
        if response.status_code != 200:
            message = assert_aws_error(response, 400, "BadRequestException")
            assert response.json()["invalidParameter"] in ("currentVersion", "replicatorArn"), message
    updated = [what for what, response in outcomes if what != "delete" and response.status_code == 200]
    deleted = any(what == "delete" and response.status_code == 200 for what, response in outcomes)
    described = http.get(path).json()
    topics = described["replicationInfoList"][0]["topicReplication"]["topicsToReplicate"]
    if deleted:  # a delete went first: every update was refused, the settings are the created ones
        assert (updated, described["replicatorState"], topics) == ([], "DELETING", [".*"])
    else:  # an update went first: it alone applied, and every delete was refused for its stale version
        assert len(updated) == 1 and topics == updated and described["replicatorState"] == "CREATING"


def test_concurrent_tag_writes_never_exceed_the_tag_limit(
    http: httpx.Client, unique: str, clusters: dict[str, Any]
) -> None:
    arn = http.post(CREATE, json=valid_body(unique, clusters)).json()["replicatorArn"]
    path = f"/v1/tags/{quote(arn, safe='')}"
    start = threading.Barrier(10)

    def tag(writer: int) -> httpx.Response:  # 10 writers of 10 new keys each: room for 5 of them
        start.wait()
        return http.post(path, json={"tags": {f"w{writer}-k{i}": "v" for i in range(10)}})

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(tag, range(10)))

    refused = [response for response in responses if response.status_code != 204]
    for response in refused:
        assert "at most 50 tags" in assert_aws_error(response, 400, "BadRequestException", "tags")
    assert len(refused) == 5
    assert len(http.get(path).json()["tags"]) == 50
