"""What the SDK cannot send: malformed bodies, wrong content types, unknown members, huge bodies, bad routes.

Every answer must be an AWS-style error (``x-amzn-ErrorType`` and a JSON ``message``), never a 5xx, never a
stack trace.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from models.access_keys import IssuedKey
from models.settings import FerrySettings
from tests.api.conftest import RunningServer, kafka_client
from tests.conftest import SigV4HttpxAuth

CREATE = "/replication/v1/replicators"
JSON = {"Content-Type": "application/json"}
FAKE_ARN = "arn:aws:kafka:us-east-1:000000000000:replicator/nope/0e6a4b86-a0b4"


def valid_body(name: str, clusters: dict[str, Any]) -> dict[str, Any]:
    return {
        "replicatorName": name,
        "serviceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry",
        "kafkaClusters": [
            {
                "apacheKafkaCluster": {
                    "apacheKafkaClusterId": clusters["source_id"],
                    "bootstrapBrokerString": clusters["source_bootstrap"],
                }
            },
            {
                "apacheKafkaCluster": {
                    "apacheKafkaClusterId": clusters["target_id"],
                    "bootstrapBrokerString": clusters["target_bootstrap"],
                }
            },
        ],
        "replicationInfoList": [
            {
                "sourceKafkaClusterId": clusters["source_id"],
                "targetKafkaClusterId": clusters["target_id"],
                "targetCompressionType": "NONE",
                "topicReplication": {"topicsToReplicate": [".*"]},
                "consumerGroupReplication": {"consumerGroupsToReplicate": [".*"]},
            }
        ],
    }


def assert_aws_error(response: httpx.Response, status: int, error_type: str, member: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-ErrorType"] == error_type
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-amzn-RequestId"]
    body = response.json()
    assert "Traceback" not in response.text
    if member is not None:
        assert member in body["message"]
        assert member in body["invalidParameter"]
    message: str = body["message"]
    return message


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(CREATE, content=b'{"replicatorName": "x",', headers=JSON)
    message = assert_aws_error(response, 400, "BadRequestException", "body")
    assert "not valid JSON" in message


def test_a_nul_character_anywhere_is_refused_not_a_server_error(
    http: httpx.Client, unique: str, clusters: dict[str, Any]
) -> None:
    """Found by the fuzzer: PostgreSQL cannot store NUL in text or JSON, so it surfaced as a 500."""
    body = valid_body(f"{unique}-nul", clusters)
    body["tags"] = {"team": "pay\u0000ments"}
    escaped = http.post(CREATE, content=json.dumps(body).encode(), headers=JSON)  # "pay\\u0000ments"
    assert "NUL character" in assert_aws_error(escaped, 400, "BadRequestException", "body")
    raw = http.post(CREATE, content=json.dumps(body).replace("\\u0000", "\x00").encode(), headers=JSON)
    assert "NUL character" in assert_aws_error(raw, 400, "BadRequestException", "body")
    listed = http.get("/replication/v1/replicators", params={"replicatorNameFilter": "a\x00"})
    assert "NUL character" in assert_aws_error(listed, 400, "BadRequestException")
    described = http.get(f"/replication/v1/replicators/{quote(FAKE_ARN + '%00', safe='%')}")
    assert "NUL character" in assert_aws_error(described, 400, "BadRequestException")


def test_wrong_or_missing_content_type(http: httpx.Client, unique: str, clusters: dict[str, Any]) -> None:
    body = json.dumps(valid_body(unique, clusters))
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        response = http.post(CREATE, content=body, headers=headers)
        assert_aws_error(response, 400, "BadRequestException", "Content-Type")
    assert http.get(CREATE, params={"replicatorNameFilter": unique}).json()["replicators"] == []


def test_unknown_members_are_refused_by_name(http: httpx.Client, unique: str, clusters: dict[str, Any]) -> None:
    top = {**valid_body(unique, clusters), "replicatorNmae": "typo"}
    nested = valid_body(unique, clusters)
    nested["replicationInfoList"][0]["topicReplication"]["topicsToReplicat"] = ["x"]
    snake = valid_body(unique, clusters)
    snake["replicator_name"] = snake.pop("replicatorName")

    assert_aws_error(http.post(CREATE, json=top), 400, "BadRequestException", "replicatorNmae")
    message = assert_aws_error(
        http.post(CREATE, json=nested),
        400,
        "BadRequestException",
        "replicationInfoList[0].topicReplication.topicsToReplicat",
    )
    assert "unknown field" in message
    assert_aws_error(http.post(CREATE, json=snake), 400, "BadRequestException", "replicator_name")


def test_wrong_json_types_are_refused_not_coerced(http: httpx.Client, unique: str, clusters: dict[str, Any]) -> None:
    number_name = {**valid_body(unique, clusters), "replicatorName": 12345}
    string_bool = valid_body(unique, clusters)
    string_bool["replicationInfoList"][0]["topicReplication"]["detectAndCopyNewTopics"] = "true"
    object_list = {**valid_body(unique, clusters), "kafkaClusters": {"a": 1}}

    assert_aws_error(http.post(CREATE, json=number_name), 400, "BadRequestException", "replicatorName")
    assert_aws_error(http.post(CREATE, json=string_bool), 400, "BadRequestException", "detectAndCopyNewTopics")
    assert_aws_error(http.post(CREATE, json=object_list), 400, "BadRequestException", "kafkaClusters")


def test_body_that_is_not_an_object(http: httpx.Client) -> None:
    for content in (b"[]", b"null", b"42", b'"text"', b""):
        response = http.post(CREATE, content=content, headers=JSON)
        assert_aws_error(response, 400, "BadRequestException", "body")


def test_missing_required_member(http: httpx.Client, unique: str, clusters: dict[str, Any]) -> None:
    body = valid_body(unique, clusters)
    del body["replicationInfoList"][0]["targetCompressionType"]

    message = assert_aws_error(
        http.post(CREATE, json=body), 400, "BadRequestException", "replicationInfoList[0].targetCompressionType"
    )
    assert message.endswith("is required")


def test_update_shapes_are_narrower_than_create(
    http: httpx.Client, kafka: Any, unique: str, clusters: dict[str, Any]
) -> None:
    arn = http.post(CREATE, json=valid_body(unique, clusters)).json()["replicatorArn"]
    version = kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]
    path = f"{CREATE}/{quote(arn, safe='')}/replication-info"
    topics = {
        "copyAccessControlListsForTopics": True,
        "copyTopicConfigurations": True,
        "detectAndCopyNewTopics": True,
        "topicsToExclude": [],
        "topicsToReplicate": ["x"],
    }

    fixed_at_creation = {
        "currentVersion": version,
        "topicReplication": {**topics, "startingPosition": {"type": "EARLIEST"}},
    }
    assert_aws_error(
        http.put(path, json=fixed_at_creation), 400, "BadRequestException", "topicReplication.startingPosition"
    )
    naming = {
        "currentVersion": version,
        "topicReplication": {**topics, "topicNameConfiguration": {"type": "IDENTICAL"}},
    }
    assert_aws_error(http.put(path, json=naming), 400, "BadRequestException", "topicNameConfiguration")
    sync_mode = {
        "currentVersion": version,
        "consumerGroupReplication": {
            "consumerGroupsToExclude": [],
            "consumerGroupsToReplicate": ["x"],
            "detectAndCopyNewConsumerGroups": True,
            "synchroniseConsumerGroupOffsets": True,
            "consumerGroupOffsetSyncMode": "ENHANCED",
        },
    }
    assert_aws_error(http.put(path, json=sync_mode), 400, "BadRequestException", "consumerGroupOffsetSyncMode")
    partial = {"currentVersion": version, "topicReplication": {"topicsToReplicate": ["x"]}}
    assert_aws_error(http.put(path, json=partial), 400, "BadRequestException", "topicReplication.")
    no_version = {"topicReplication": topics}
    assert_aws_error(http.put(path, json=no_version), 400, "BadRequestException", "currentVersion")
    assert kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"] == version


def test_query_parameters(http: httpx.Client) -> None:
    for value in ("abc", "0", "101", "-1", "1.5"):
        assert_aws_error(http.get(CREATE, params={"maxResults": value}), 400, "BadRequestException", "maxResults")
    assert_aws_error(http.get(CREATE, params={"nextToken": "%%%"}), 400, "BadRequestException", "nextToken")
    assert_aws_error(http.delete(f"/v1/tags/{quote(FAKE_ARN, safe='')}"), 400, "BadRequestException", "tagKeys")


@pytest.mark.parametrize(
    ("query", "member"),
    [
        ({"topic": "orders", "partition": 2**31, "offset": 0}, "partition"),
        ({"topic": "orders", "partition": 0, "offset": 2**63}, "offset"),
    ],
    ids=["partition over 2**31-1", "offset over 2**63-1"],
)
def test_numbers_beyond_kafkas_are_refused_by_name(
    http: httpx.Client, unique: str, clusters: dict[str, Any], query: dict[str, Any], member: str
) -> None:
    """Found by the stateful fuzzer: past the columns that keep them, these reached PostgreSQL as a 500."""
    arn = http.post(CREATE, json=valid_body(unique, clusters)).json()["replicatorArn"]

    response = http.get(f"{CREATE}/{quote(arn, safe='')}/offset-translation", params=query)

    assert "less than or equal to" in assert_aws_error(response, 400, "BadRequestException", member)


def test_a_forged_next_token_past_the_sequence_is_refused_by_name(http: httpx.Client) -> None:
    """Found while fuzzing: a token holding a number over the bigint column's range was a 500."""
    forged = base64.urlsafe_b64encode(b"ferry-list-v1:" + b"9" * 20).decode()

    message = assert_aws_error(http.get(CREATE, params={"nextToken": forged}), 400, "BadRequestException", "nextToken")

    assert "not one this service issued" in message


def test_body_over_the_limit_is_refused_unread(http: httpx.Client) -> None:
    huge = b'{"replicatorName": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    message = assert_aws_error(http.post(CREATE, content=huge, headers=JSON), 413, "BadRequestException", "body")
    assert "larger than" in message

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts what it reads and stops
        yield b'{"replicatorName": "'
        for _ in range(64):
            yield b"y" * 65536
        yield b'"}'

    assert_aws_error(http.post(CREATE, content=chunks(), headers=JSON), 413, "BadRequestException", "body")


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    message = assert_aws_error(http.get("/replication/v2/replicators"), 404, "NotFoundException")
    assert "/replication/v2/replicators" in message
    assert_aws_error(http.get("/"), 404, "NotFoundException")

    wrong = http.patch(CREATE, json={})
    assert_aws_error(wrong, 405, "BadRequestException")
    assert set(wrong.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}


MALFORMED: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", CREATE, JSON, b"\xff\xfe\x00garbage"),
    ("POST", CREATE, JSON, b"[" * 100_000 + b"]" * 100_000),
    ("POST", CREATE, JSON, b'{"replicatorName": "\\ud800"}'),
    ("POST", CREATE, JSON, b'{"kafkaClusters": [null, null], "replicationInfoList": [null]}'),
    ("POST", CREATE, JSON, b'{"replicatorName": {"$ne": 1}}'),
    ("POST", CREATE, JSON, b'{"tags": {"k": null}}'),
    ("POST", CREATE, {"Content-Type": "application/json; charset=utf-16"}, "{}".encode("utf-16")),
    ("POST", CREATE, {"Content-Type": "application/json"}, b"1e99999"),
    ("GET", f"{CREATE}/%00%ff", {}, b""),
    ("GET", f"{CREATE}/{'a' * 5000}", {}, b""),
    ("GET", f"{CREATE}?maxResults=99999999999999999999999", {}, b""),
    ("GET", f"{CREATE}?nextToken={'A' * 2000}", {}, b""),
    ("GET", f"{CREATE}?nextToken=ZmVycnktbGlzdC12MTotNQ==", {}, b""),
    ("DELETE", f"{CREATE}/{quote(FAKE_ARN, safe='')}?currentVersion={'v' * 500}", {}, b""),
    ("PUT", f"{CREATE}/{quote(FAKE_ARN, safe='')}/replication-info", JSON, b'{"currentVersion": []}'),
    ("PUT", f"{CREATE}/replication-info", JSON, b"{}"),
    ("POST", f"/v1/tags/{quote(FAKE_ARN, safe='')}", JSON, b'{"tags": ["a"]}'),
    ("POST", f"/v1/tags/{quote(FAKE_ARN, safe='')}", JSON, b'{"tags": {"a": 1}}'),
    ("GET", "/v1/tags/", {}, b""),
    ("GET", "/docs/../../etc/passwd", {}, b""),
    ("OPTIONS", CREATE, {}, b""),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "content"), MALFORMED, ids=[f"{m} {p[:40]} {c[:20]!r}" for m, p, _, c in MALFORMED]
)
def test_no_malformed_request_gets_a_5xx(
    http: httpx.Client, method: str, path: str, headers: dict[str, str], content: bytes
) -> None:
    response = http.request(method, path, headers=headers, content=content)

    assert 400 <= response.status_code < 500, response.text
    assert response.headers["x-amzn-ErrorType"] in {"BadRequestException", "NotFoundException"}
    assert isinstance(response.json()["message"], str)
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.fixture
def app_with_a_failing_route(test_settings: FerrySettings) -> Iterator[str]:
    app: FastAPI = create_app(test_settings)

    async def fail() -> None:
        raise RuntimeError("secret detail: password=hunter2")

    app.add_api_route("/replication/v1/failing", fail, methods=["GET"])
    with RunningServer(app) as server:
        yield server.url


def test_unexpected_exception_is_a_generic_internal_error(app_with_a_failing_route: str, test_key: IssuedKey) -> None:
    with httpx.Client(base_url=app_with_a_failing_route, auth=SigV4HttpxAuth(test_key)) as client:
        response = client.get("/replication/v1/failing")

    message = assert_aws_error(response, 500, "InternalServerErrorException")
    assert message == "An internal error occurred"
    assert "hunter2" not in response.text and "RuntimeError" not in response.text


def test_database_outage_is_service_unavailable(test_settings: FerrySettings, test_key: IssuedKey) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings = test_settings.model_copy(
        update={"database_url": f"postgresql+psycopg://ferry:ferry@127.0.0.1:{closed_port}/ferry_test"}
    )
    with RunningServer(create_app(settings)) as server:
        client = kafka_client(server.url, test_key)
        with pytest.raises(client.exceptions.ServiceUnavailableException) as error:
            client.list_replicators()

    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert "database is unavailable" in error.value.response["Error"]["Message"]
    assert str(closed_port) not in error.value.response["Error"]["Message"]
