"""Hand-made hostile requests, beside what tests/api/test_fuzz.py generates: unicode and control characters in names.

Each gets the exact AWS error (status, ``x-amzn-ErrorType``, a message and ``invalidParameter`` naming the member)
or, where AWS takes any text, is stored and described back unchanged; never a 5xx. Malformed JSON and NUL
characters: test_http_errors.py; the rules of each member: test_validation.py.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.api.test_http_errors import CREATE, assert_aws_error, valid_body


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
