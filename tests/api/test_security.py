"""API security on a real server and database, with boto3, the AWS CLI and raw signed HTTP as clients: SigV4 on
every call, accounts that cannot see each other, read-only keys, rate and replicator quotas, and input that cannot
make the fleet reach where it must not (patterns RE2 cannot run, refused bootstrap addresses)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from sqlalchemy import Engine, delete

from api.app import create_app
from cli.admin import revoke_access_key
from models.access_keys import AccessKey, IssuedKey
from models.settings import FerrySettings
from tests.api.conftest import RunningServer, create_request, kafka_client
from tests.api.test_aws_cli import AWS
from tests.conftest import ACCOUNT, REGION, SigV4HttpxAuth, issue_key

OTHER_ACCOUNT = "111122223333"
LIST = "/replication/v1/replicators"


def signed_request(
    url: str,
    key: IssuedKey,
    *,
    method: str = "GET",
    body: bytes = b"",
    region: str = REGION,
    service: str = "kafka",
    when: dt.datetime | None = None,
) -> httpx.Request:
    """A request signed with botocore's signer as of ``when`` (default: now)."""
    headers = {"Content-Type": "application/json"} if body else {}
    aws = AWSRequest(method=method, url=url, data=body, headers=headers)
    signer = SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), service, region)
    if when is None:
        signer.add_auth(aws)
    else:
        stamp = when.strftime(SIGV4_TIMESTAMP)
        aws.context["timestamp"] = stamp
        aws.headers["X-Amz-Date"] = stamp
        aws.headers["Host"] = httpx.URL(url).netloc.decode()
        signature = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
        scope = f"{key.access_key_id}/{stamp[:8]}/{region}/{service}/aws4_request"
        signed = ";".join(sorted(h.lower() for h in aws.headers))
        aws.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={signed}, Signature={signature}"
        )
    return httpx.Request(method, url, content=body, headers=dict(aws.headers.items()))


def send(request: httpx.Request) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.send(request)


def assert_refused(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-ErrorType"] == error_type
    message: str = response.json()["message"]
    return message


@pytest.fixture(scope="module")
def other_key(test_settings: FerrySettings, migrated_test_database: str) -> IssuedKey:
    return issue_key(test_settings, OTHER_ACCOUNT)


# ----- signatures ---------------------------------------------------------------------------------------------


def test_no_signature_is_unauthorized(api_url: str) -> None:
    message = assert_refused(httpx.get(f"{api_url}{LIST}"), 401, "UnauthorizedException")
    assert message == "Missing Authentication Token"


def test_a_valid_signature_is_accepted(api_url: str, test_key: IssuedKey) -> None:
    assert send(signed_request(f"{api_url}{LIST}", test_key)).status_code == 200


@pytest.mark.parametrize(
    "forgery",
    ["wrong secret", "unknown key", "ten minutes old", "another region", "another service", "tampered body"],
)
def test_forged_or_stale_signatures_are_refused(
    api_url: str, test_key: IssuedKey, unique: str, clusters: dict[str, Any], forgery: str
) -> None:
    url = f"{api_url}{LIST}"
    body = json.dumps({"replicatorName": unique}).encode()
    if forgery == "wrong secret":
        request = signed_request(url, IssuedKey(test_key.access_key_id, "x" * 40, ACCOUNT, test_key.permission))
    elif forgery == "unknown key":
        request = signed_request(url, IssuedKey("FKIAAAAAAAAAAAAAAAAA", "x" * 40, ACCOUNT, test_key.permission))
    elif forgery == "ten minutes old":
        request = signed_request(url, test_key, when=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    elif forgery == "another region":
        request = signed_request(url, test_key, region="eu-west-1")
    elif forgery == "another service":
        request = signed_request(url, test_key, service="s3")
    else:
        signed = signed_request(url, test_key, method="POST", body=body)
        tampered = json.dumps({"replicatorName": unique + "-evil"}).encode()
        request = httpx.Request(
            "POST", url, content=tampered, headers={**signed.headers, "content-length": str(len(tampered))}
        )
    message = assert_refused(send(request), 401, "UnauthorizedException")
    assert test_key.secret_access_key not in message
    if forgery == "ten minutes old":
        assert message.startswith("Signature expired")


def test_boto3_with_a_wrong_secret_gets_unauthorized(api_url: str, test_key: IssuedKey) -> None:
    client = kafka_client(api_url, IssuedKey(test_key.access_key_id, "y" * 40, ACCOUNT, test_key.permission))
    with pytest.raises(client.exceptions.UnauthorizedException) as error:
        client.list_replicators()
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401


def test_a_presigned_url_works_until_it_expires(api_url: str, test_key: IssuedKey) -> None:
    client = kafka_client(api_url, test_key)
    url = client.generate_presigned_url("list_replicators", Params={"MaxResults": 5}, ExpiresIn=60)
    assert httpx.get(url).status_code == 200
    expired = url.replace("X-Amz-Expires=60", "X-Amz-Expires=1")
    assert_refused(httpx.get(expired), 401, "UnauthorizedException")  # the signature covered 60, not 1


def test_a_revoked_key_stops_working_at_once(api_url: str, test_settings: FerrySettings) -> None:
    key = issue_key(test_settings)
    client = kafka_client(api_url, key)
    for _ in range(3):
        client.list_replicators()  # the API's key cache holds the key now

    assert asyncio.run(revoke_access_key(test_settings, key.access_key_id))
    # The cache forgets the key when PostgreSQL's notification reaches the API (docs/security.md): within moments
    # of the commit, so a deadline of a second is generous. Once refused, the key stays refused.
    deadline = time.monotonic() + 1.0
    while True:
        try:
            client.list_replicators()
        except client.exceptions.UnauthorizedException:
            break
        assert time.monotonic() < deadline, "the revoked key was still accepted a second after its revocation"
    for _ in range(3):
        with pytest.raises(client.exceptions.UnauthorizedException):
            client.list_replicators()


def test_a_read_only_key_reads_but_may_not_write(
    api_url: str, test_settings: FerrySettings, unique: str, clusters: dict[str, Any]
) -> None:
    client = kafka_client(api_url, issue_key(test_settings, read_only=True))
    client.list_replicators()
    with pytest.raises(client.exceptions.ForbiddenException) as error:
        client.create_replicator(**create_request(unique, clusters))
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# ----- every operation, from boto3 and the AWS CLI ------------------------------------------------------------


def test_all_eight_operations_with_the_aws_cli(
    api_url: str, test_key: IssuedKey, unique: str, clusters: dict[str, Any], tmp_path: Path
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": test_key.access_key_id,
        "AWS_SECRET_ACCESS_KEY": test_key.secret_access_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_PAGER": "",
        "PATH": "/usr/bin:/bin",
    }

    def aws(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [AWS, "kafka", *args, "--endpoint-url", api_url, "--output", "json"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else {}

    request = create_request(unique, clusters)
    (tmp_path / "create.json").write_text(json.dumps(request))
    arn = aws("create-replicator", "--cli-input-json", f"file://{tmp_path / 'create.json'}")["ReplicatorArn"]
    version = aws("describe-replicator", "--replicator-arn", arn)["CurrentVersion"]
    assert [r["ReplicatorArn"] for r in aws("list-replicators", "--replicator-name-filter", unique)["Replicators"]] == [
        arn
    ]
    update = {
        "ReplicatorArn": arn,
        "CurrentVersion": version,
        "SourceKafkaClusterId": clusters["source_id"],
        "TargetKafkaClusterId": clusters["target_id"],
        "TopicReplication": {
            "TopicsToReplicate": ["orders.*", "refunds"],
            "TopicsToExclude": [],
            "CopyTopicConfigurations": True,
            "CopyAccessControlListsForTopics": True,
            "DetectAndCopyNewTopics": True,
        },
    }
    (tmp_path / "update.json").write_text(json.dumps(update))
    aws("update-replication-info", "--cli-input-json", f"file://{tmp_path / 'update.json'}")
    aws("tag-resource", "--resource-arn", arn, "--tags", "owner=payments")
    assert aws("list-tags-for-resource", "--resource-arn", arn)["Tags"]["owner"] == "payments"
    aws("untag-resource", "--resource-arn", arn, "--tag-keys", "owner")
    version = aws("describe-replicator", "--replicator-arn", arn)["CurrentVersion"]
    deleted = aws("delete-replicator", "--replicator-arn", arn, "--current-version", version)
    assert deleted["ReplicatorState"] == "DELETING"


# ----- accounts -----------------------------------------------------------------------------------------------


@pytest.fixture
def two_accounts(api_url: str, test_key: IssuedKey, other_key: IssuedKey) -> tuple[Any, Any]:
    return kafka_client(api_url, test_key), kafka_client(api_url, other_key)


def test_accounts_cannot_see_each_others_replicators(
    api_url: str,
    two_accounts: tuple[Any, Any],
    other_key: IssuedKey,
    unique: str,
    clusters: dict[str, Any],
) -> None:
    mine, theirs = two_accounts
    arn = mine.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    assert f":{ACCOUNT}:replicator/" in arn
    # The same name is free in the other account, and its ARN carries that account.
    their_arn = theirs.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    assert f":{OTHER_ACCOUNT}:replicator/" in their_arn and their_arn != arn

    assert [r["ReplicatorArn"] for r in theirs.list_replicators(ReplicatorNameFilter=unique)["Replicators"]] == [
        their_arn
    ]
    version = mine.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]
    attempts = {
        "describe": lambda: theirs.describe_replicator(ReplicatorArn=arn),
        "update": lambda: theirs.update_replication_info(
            ReplicatorArn=arn,
            CurrentVersion=version,
            SourceKafkaClusterId=clusters["source_id"],
            TargetKafkaClusterId=clusters["target_id"],
            TopicReplication={
                "TopicsToReplicate": ["x"],
                "TopicsToExclude": [],
                "CopyTopicConfigurations": True,
                "CopyAccessControlListsForTopics": True,
                "DetectAndCopyNewTopics": True,
            },
        ),
        "tag": lambda: theirs.tag_resource(ResourceArn=arn, Tags={"stolen": "yes"}),
        "untag": lambda: theirs.untag_resource(ResourceArn=arn, TagKeys=["team"]),
        "list tags": lambda: theirs.list_tags_for_resource(ResourceArn=arn),
        "delete": lambda: theirs.delete_replicator(ReplicatorArn=arn),
    }
    for what, attempt in attempts.items():
        with pytest.raises(theirs.exceptions.NotFoundException):
            attempt()
        assert mine.describe_replicator(ReplicatorArn=arn)["CurrentVersion"] == version, what

    with httpx.Client(base_url=api_url, timeout=30, auth=SigV4HttpxAuth(other_key)) as http:
        encoded = quote(arn, safe="")
        for path in (
            f"{LIST}/{encoded}/metrics",
            f"{LIST}/{encoded}/offset-translation?topic=orders&partition=0&offset=0",
        ):
            assert_refused(http.get(path), 404, "NotFoundException")
        started = http.post(f"{LIST}/{encoded}/failover", json={"consumerGroups": ["g"]})
        assert_refused(started, 404, "NotFoundException")
        # Prometheus with their key shows only their replicators.
        scraped = http.get("/metrics").text
        assert unique in scraped and f'account_id="{ACCOUNT}"' not in scraped
    assert mine.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"team": "platform"}


def test_metrics_are_not_served_to_anonymous_callers(api_url: str, test_settings: FerrySettings) -> None:
    assert_refused(httpx.get(f"{api_url}/metrics"), 401, "UnauthorizedException")
    assert_refused(
        httpx.get(f"{api_url}/metrics", headers={"Authorization": "Bearer wrong"}), 401, "UnauthorizedException"
    )
    token = test_settings.metrics_token
    assert token is not None
    scraped = httpx.get(f"{api_url}/metrics", headers={"Authorization": f"Bearer {token.get_secret_value()}"})
    assert scraped.status_code == 200
    health = httpx.get(f"{api_url}/healthz")
    assert health.status_code in (200, 503) and "replicator" not in health.text.lower()


# ----- quotas -------------------------------------------------------------------------------------------------


@pytest.fixture
def strict_api(test_settings: FerrySettings, migrated_test_database: str) -> Iterator[str]:
    """An API with small quotas and no loopback exception (the default allow list)."""
    settings = test_settings.model_copy(
        update={
            "api_requests_per_second": 1.0,
            "api_request_burst": 3,
            "max_replicators_per_account": 2,
            "allowed_bootstrap": [],
        }
    )
    with RunningServer(create_app(settings)) as server:
        yield server.url


def test_requests_beyond_a_keys_rate_are_throttled(strict_api: str, test_settings: FerrySettings) -> None:
    client = kafka_client(strict_api, issue_key(test_settings))
    outcomes = []
    for _ in range(6):
        try:
            client.list_replicators()
            outcomes.append("ok")
        except client.exceptions.TooManyRequestsException as error:
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            outcomes.append("throttled")
    assert outcomes[:3] == ["ok"] * 3 and "throttled" in outcomes[3:]


def test_replicators_beyond_the_account_quota_are_refused(
    strict_api: str, test_settings: FerrySettings, unique: str, clusters: dict[str, Any], db_engine: Engine
) -> None:
    account = str(uuid.uuid4().int)[:12]
    key = issue_key(test_settings, account)
    client = boto3.client(
        "kafka",
        endpoint_url=strict_api,
        region_name=REGION,
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret_access_key,
        config=BotoConfig(retries={"total_max_attempts": 1}),
    )
    routable = {**clusters, "source_bootstrap": "10.20.30.40:9092", "target_bootstrap": "10.20.30.41:9092"}
    for n in range(2):
        client.create_replicator(**create_request(f"{unique}-{n}", routable))
    with pytest.raises(client.exceptions.TooManyRequestsException) as error:
        client.create_replicator(**create_request(f"{unique}-2", routable))
    assert "at most 2" in error.value.response["Error"]["Message"]
    with db_engine.begin() as conn:
        conn.execute(delete(AccessKey).where(AccessKey.account_id == account))


# ----- input that must never reach a worker -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bootstrap", "reason"),
    [
        ("169.254.169.254:80", "cloud metadata endpoint"),
        ("0xa9fea9fe:80", "cloud metadata endpoint"),
        ("[fd00:ec2::254]:80", "cloud metadata endpoint"),
        ("metadata.google.internal:80", "cloud metadata endpoint"),
        ("localhost:5432", "loopback"),
        ("127.0.0.1:5432", "loopback"),
        ("[::1]:6379", "loopback"),
        ("169.254.10.10:9092", "link-local"),
        ("broker:70000", "port must be a number from 1 to 65535"),
        ("broker:0", "port must be a number from 1 to 65535"),
        ("broker :9092", "whitespace or control characters"),
        # (A NUL is refused before validation, for every field: tests/api/test_http_errors.py.)
        ("broker:9092\u0007", "whitespace or control characters"),
        ("broker:9092,", "not host:port"),
        ("::1:9092", "IPv6 address must be written in brackets"),
    ],
)
def test_bootstrap_addresses_workers_must_not_reach_are_refused(
    strict_api: str, test_settings: FerrySettings, unique: str, clusters: dict[str, Any], bootstrap: str, reason: str
) -> None:
    client = kafka_client(strict_api, issue_key(test_settings))
    request = create_request(unique, {**clusters, "source_bootstrap": bootstrap})
    with pytest.raises(client.exceptions.BadRequestException) as error:
        client.create_replicator(**request)
    member = "kafkaClusters[0].apacheKafkaCluster.bootstrapBrokerString"
    assert error.value.response["InvalidParameter"] == member
    assert error.value.response["Error"]["Message"].startswith(member)
    assert reason in error.value.response["Error"]["Message"]
    assert not client.list_replicators(ReplicatorNameFilter=unique)["Replicators"], "nothing was stored"


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        ("(a)\\1", "backreference"),
        ("orders(?=-eu)", "lookaround"),
        ("(?<!test-)orders", "lookaround"),
        ("(?>a+)b", "atomic group"),
        ("a++b", "possessive quantifier"),
        ("(?(1)a|b)", "conditional"),
        ("orders\\Z", "\\Z"),
    ],
)
def test_patterns_re2_cannot_run_are_refused_naming_the_construct(
    kafka: Any, unique: str, clusters: dict[str, Any], pattern: str, construct: str
) -> None:
    request = create_request(unique, clusters)
    request["ReplicationInfoList"][0]["TopicReplication"]["TopicsToReplicate"] = ["ok", pattern]
    with pytest.raises(kafka.exceptions.BadRequestException) as error:
        kafka.create_replicator(**request)
    assert error.value.response["InvalidParameter"] == "replicationInfoList[0].topicReplication.topicsToReplicate[1]"
    assert construct in error.value.response["Error"]["Message"]


def test_patterns_the_old_guard_refused_now_run_in_linear_time(
    kafka: Any, unique: str, clusters: dict[str, Any]
) -> None:
    request = create_request(unique, clusters)
    request["ReplicationInfoList"][0]["TopicReplication"]["TopicsToReplicate"] = ["(a+)+$", ".*-.*-.*-.*-dlq"]
    assert kafka.create_replicator(**request)["ReplicatorState"] == "CREATING"


# ----- secrets in clear ---------------------------------------------------------------------------------------


def test_secret_access_keys_are_never_stored_logged_or_returned_in_clear(
    api_url: str,
    test_key: IssuedKey,
    db_engine: Engine,
    unique: str,
    clusters: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = kafka_client(api_url, test_key)
    arn = client.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    bodies = [
        json.dumps(client.describe_replicator(ReplicatorArn=arn), default=str),
        json.dumps(client.list_replicators(), default=str),
        httpx.get(f"{api_url}/replication/v1/nothing-here").text,
    ]
    assert all(test_key.secret_access_key not in body for body in bodies)
    with db_engine.connect() as conn:
        dump = "\n".join(
            str(row)
            for table in ("access_keys", "replicators")
            for row in conn.exec_driver_sql(f"SELECT * FROM {table}")
        )
    assert test_key.access_key_id in dump
    assert test_key.secret_access_key not in dump
    assert test_key.secret_access_key.encode().hex() not in dump
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert logged and test_key.secret_access_key not in logged


def test_curl_signs_the_extension_endpoints_as_the_runbook_shows(
    api_url: str, test_key: IssuedKey, kafka: Any, unique: str, clusters: dict[str, Any]
) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    base = f"{api_url}/replication/v1/replicators/{quote(arn, safe='')}"
    sign = [
        "--aws-sigv4",
        f"aws:amz:{REGION}:kafka",
        "--user",
        f"{test_key.access_key_id}:{test_key.secret_access_key}",
    ]

    def curl(*args: str) -> dict[str, Any]:
        done = subprocess.run(["curl", "-s", *sign, *args], capture_output=True, text=True, timeout=30, check=True)
        parsed: dict[str, Any] = json.loads(done.stdout)
        return parsed

    assert curl(f"{base}/metrics")["replicatorArn"] == arn
    translated = curl(f"{base}/offset-translation?topic=orders&partition=0&offset=5")
    assert translated["message"].startswith("topic: nothing of orders:0 has been copied"), translated
    started = curl("-X", "POST", f"{base}/failover", "-H", "content-type: application/json", "-d",
                   '{"consumerGroups": ["orders-app"], "gracePeriodSeconds": 1}')  # fmt: skip
    assert started["state"] == "PENDING"
