"""Every replicator operation through boto3 against the real API, PostgreSQL included."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from models.access_keys import IssuedKey
from models.replicator import ReplicatorRow
from tests.api.conftest import create_request

TOPIC_UPDATE = {
    "CopyAccessControlListsForTopics": False,
    "CopyTopicConfigurations": True,
    "DetectAndCopyNewTopics": True,
    "TopicsToExclude": ["orders\\.internal.*"],
    "TopicsToReplicate": ["orders.*"],
}


def _row(db_engine: Engine, arn: str) -> ReplicatorRow:
    with Session(db_engine) as session:
        return session.scalars(select(ReplicatorRow).where(ReplicatorRow.arn == arn)).one()


def test_create_then_describe_returns_the_full_shape(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    created = kafka.create_replicator(**create_request(unique, clusters))

    assert created["ReplicatorName"] == unique
    assert created["ReplicatorState"] == "CREATING"
    arn = created["ReplicatorArn"]
    prefix = f"arn:aws:kafka:us-east-1:000000000000:replicator/{unique}/"
    assert arn.startswith(prefix) and len(arn) > len(prefix) + 30

    described = kafka.describe_replicator(ReplicatorArn=arn)
    assert described["ReplicatorArn"] == arn
    assert described["ReplicatorResourceArn"] == arn
    assert described["ReplicatorName"] == unique
    assert described["ReplicatorDescription"] == "made by a test"
    assert described["ReplicatorState"] == "CREATING"
    assert described["IsReplicatorReference"] is False
    assert described["ServiceExecutionRoleArn"] == "arn:aws:iam::000000000000:role/ferry-replicator"
    assert described["Tags"] == {"team": "platform"}
    assert before <= described["CreationTime"] <= datetime.now(UTC) + timedelta(seconds=5)
    assert len(described["CurrentVersion"]) == 12

    source, target = described["KafkaClusters"]
    assert source["ApacheKafkaCluster"] == {
        "ApacheKafkaClusterId": clusters["source_id"],
        "BootstrapBrokerString": clusters["source_bootstrap"],
    }
    assert target["ApacheKafkaCluster"]["ApacheKafkaClusterId"] == clusters["target_id"]
    assert source["KafkaClusterAlias"] != target["KafkaClusterAlias"]
    assert source["KafkaClusterAlias"].startswith(clusters["source_id"][:28].rstrip("-"))

    (info,) = described["ReplicationInfoList"]
    # Clients (Terraform among them) map aliases back to clusters: both places must agree.
    assert info["SourceKafkaClusterAlias"] == source["KafkaClusterAlias"]
    assert info["TargetKafkaClusterAlias"] == target["KafkaClusterAlias"]
    assert info["TargetCompressionType"] == "LZ4"
    assert info["TopicReplication"] == {
        "CopyAccessControlListsForTopics": True,
        "CopyTopicConfigurations": True,
        "DetectAndCopyNewTopics": True,
        "StartingPosition": {"Type": "LATEST"},
        "TopicNameConfiguration": {"Type": "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"},
        "TopicsToExclude": [],
        "TopicsToReplicate": ["orders.*", "payments"],
    }
    assert info["ConsumerGroupReplication"]["ConsumerGroupOffsetSyncMode"] == "LEGACY"
    assert info["ConsumerGroupReplication"]["ConsumerGroupsToReplicate"] == [".*"]


def test_workers_find_bootstrap_servers_and_aliases_in_the_stored_row(
    kafka: Any, unique: str, clusters: dict[str, Any], db_engine: Engine
) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]

    row = _row(db_engine, arn)
    by_alias = {cluster["kafkaClusterAlias"]: cluster for cluster in row.kafka_clusters}
    source = by_alias[row.replication_info["sourceKafkaClusterAlias"]]
    target = by_alias[row.replication_info["targetKafkaClusterAlias"]]
    assert source["ferry"] == {
        "kind": "apacheKafkaCluster",
        "reference": clusters["source_id"],
        "bootstrapServers": clusters["source_bootstrap"],
    }
    assert target["ferry"]["bootstrapServers"] == clusters["target_bootstrap"]
    assert (row.state, row.generation, row.observed_generation) == ("CREATING", 1, 0)


def test_the_same_cluster_gets_the_same_alias_in_every_replicator(
    kafka: Any, unique: str, clusters: dict[str, Any]
) -> None:
    first = kafka.create_replicator(**create_request(f"{unique}-a", clusters))["ReplicatorArn"]
    second = kafka.create_replicator(**create_request(f"{unique}-b", clusters))["ReplicatorArn"]

    aliases = [
        [c["KafkaClusterAlias"] for c in kafka.describe_replicator(ReplicatorArn=arn)["KafkaClusters"]]
        for arn in (first, second)
    ]
    assert aliases[0] == aliases[1]


def test_update_changes_version_and_generation_and_keeps_creating(
    kafka: Any, unique: str, clusters: dict[str, Any], db_engine: Engine
) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    version = kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]

    updated = kafka.update_replication_info(
        ReplicatorArn=arn,
        CurrentVersion=version,
        SourceKafkaClusterId=clusters["source_id"],
        TargetKafkaClusterId=clusters["target_id"],
        TopicReplication=TOPIC_UPDATE,
    )

    assert updated["ReplicatorArn"] == arn
    assert updated["ReplicatorState"] == "CREATING"
    described = kafka.describe_replicator(ReplicatorArn=arn)
    assert described["CurrentVersion"] != version
    topics = described["ReplicationInfoList"][0]["TopicReplication"]
    assert topics["TopicsToReplicate"] == ["orders.*"]
    assert topics["TopicsToExclude"] == ["orders\\.internal.*"]
    assert topics["CopyAccessControlListsForTopics"] is False
    # Fixed at creation; the update shape cannot carry them, so they survive.
    assert topics["StartingPosition"] == {"Type": "LATEST"}
    assert topics["TopicNameConfiguration"] == {"Type": "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"}
    assert _row(db_engine, arn).generation == 2


def test_update_of_a_running_replicator_makes_it_updating(
    kafka: Any, unique: str, clusters: dict[str, Any], db_engine: Engine
) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    with db_engine.begin() as connection:  # what the worker fleet does once the replicator runs
        connection.execute(update(ReplicatorRow).where(ReplicatorRow.arn == arn).values(state="RUNNING"))
    version = kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]

    updated = kafka.update_replication_info(
        ReplicatorArn=arn,
        CurrentVersion=version,
        ConsumerGroupReplication={
            "ConsumerGroupsToExclude": ["tmp-.*"],
            "ConsumerGroupsToReplicate": ["app-.*"],
            "DetectAndCopyNewConsumerGroups": False,
            "SynchroniseConsumerGroupOffsets": True,
        },
    )

    assert updated["ReplicatorState"] == "UPDATING"
    groups = kafka.describe_replicator(ReplicatorArn=arn)["ReplicationInfoList"][0]["ConsumerGroupReplication"]
    assert groups["ConsumerGroupsToReplicate"] == ["app-.*"]
    assert groups["DetectAndCopyNewConsumerGroups"] is False
    assert groups["ConsumerGroupOffsetSyncMode"] == "LEGACY"


def test_log_delivery_is_updated_on_its_own(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    version = kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]
    log_delivery = {"ReplicatorLogDelivery": {"S3": {"Enabled": True, "Bucket": "logs", "Prefix": "ferry/"}}}

    kafka.update_replication_info(ReplicatorArn=arn, CurrentVersion=version, LogDelivery=log_delivery)

    assert kafka.describe_replicator(ReplicatorArn=arn)["LogDelivery"] == log_delivery


def test_stale_current_version_is_refused_on_update_and_delete(
    kafka: Any, unique: str, clusters: dict[str, Any]
) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    stale = kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]
    kafka.update_replication_info(ReplicatorArn=arn, CurrentVersion=stale, TopicReplication=TOPIC_UPDATE)

    with pytest.raises(kafka.exceptions.BadRequestException) as update_error:
        kafka.update_replication_info(
            ReplicatorArn=arn, CurrentVersion=stale, TopicReplication={**TOPIC_UPDATE, "TopicsToReplicate": ["x"]}
        )
    with pytest.raises(kafka.exceptions.BadRequestException) as delete_error:
        kafka.delete_replicator(ReplicatorArn=arn, CurrentVersion=stale)

    for error in (update_error, delete_error):
        assert error.value.response["Error"]["Message"].startswith("currentVersion:")
        assert error.value.response["InvalidParameter"] == "currentVersion"
    assert kafka.describe_replicator(ReplicatorArn=arn)["ReplicatorState"] == "CREATING"


def test_delete_marks_deleting_and_describe_shows_it(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    version = kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]

    deleted = kafka.delete_replicator(ReplicatorArn=arn, CurrentVersion=version)
    again = kafka.delete_replicator(ReplicatorArn=arn)

    assert deleted["ReplicatorArn"] == arn
    assert deleted["ReplicatorState"] == again["ReplicatorState"] == "DELETING"
    assert kafka.describe_replicator(ReplicatorArn=arn)["ReplicatorState"] == "DELETING"
    with pytest.raises(kafka.exceptions.BadRequestException, match=r"replicatorArn: .*DELETING"):
        kafka.update_replication_info(ReplicatorArn=arn, CurrentVersion=version, TopicReplication=TOPIC_UPDATE)


def test_unknown_replicator_is_not_found_everywhere(kafka: Any) -> None:
    arn = "arn:aws:kafka:us-east-1:000000000000:replicator/never-created/0e6a4b86-a0b4-70df934c2e31"
    calls = [
        lambda: kafka.describe_replicator(ReplicatorArn=arn),
        lambda: kafka.delete_replicator(ReplicatorArn=arn),
        lambda: kafka.update_replication_info(ReplicatorArn=arn, CurrentVersion="X", TopicReplication=TOPIC_UPDATE),
        lambda: kafka.tag_resource(ResourceArn=arn, Tags={"a": "b"}),
        lambda: kafka.untag_resource(ResourceArn=arn, TagKeys=["a"]),
        lambda: kafka.list_tags_for_resource(ResourceArn=arn),
    ]
    for call in calls:
        with pytest.raises(kafka.exceptions.NotFoundException, match="never-created"):
            call()


def test_a_replicator_of_another_account_is_not_visible(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    other_account = arn.replace(":000000000000:", ":111111111111:")

    with pytest.raises(kafka.exceptions.NotFoundException):
        kafka.describe_replicator(ReplicatorArn=other_account)


def test_a_string_that_is_not_a_replicator_arn_is_a_bad_request(kafka: Any) -> None:
    with pytest.raises(kafka.exceptions.BadRequestException, match=r"replicatorArn: .*not a replicator ARN"):
        kafka.describe_replicator(ReplicatorArn="not-an-arn")


def test_tag_untag_and_list_tags(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    version = kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]

    tagged = kafka.tag_resource(ResourceArn=arn, Tags={"env": "prod", "team": "data", "cost center": "42"})
    assert tagged["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert kafka.list_tags_for_resource(ResourceArn=arn)["Tags"] == {
        "env": "prod",
        "team": "data",
        "cost center": "42",
    }

    untagged = kafka.untag_resource(ResourceArn=arn, TagKeys=["env", "cost center", "never-set"])
    assert untagged["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert kafka.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"team": "data"}
    described = kafka.describe_replicator(ReplicatorArn=arn)
    assert described["Tags"] == {"team": "data"}
    # Tags are not replication settings: the version the fleet and clients track stays put.
    assert described["CurrentVersion"] == version


def test_tag_validation(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]

    for tags in ({"aws:owner": "me"}, {"k" * 129: "v"}, {"k": "v" * 257}, {"bad<key>": "v"}, {}):
        with pytest.raises(kafka.exceptions.BadRequestException) as error:
            kafka.tag_resource(ResourceArn=arn, Tags=tags)
        assert error.value.response["Error"]["Message"].startswith("tags:")
    too_many = {f"k{i}": "v" for i in range(50)}
    with pytest.raises(kafka.exceptions.BadRequestException, match=r"tags: .*at most 50"):
        kafka.tag_resource(ResourceArn=arn, Tags=too_many)
    assert kafka.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"team": "platform"}


def test_delivery_is_chosen_at_creation_with_the_reserved_tag(
    kafka: Any, unique: str, clusters: dict[str, Any], db_engine: Engine
) -> None:
    """MSK's API has no delivery field: the reserved tag ferry:delivery (which boto3 and the AWS CLI send
    unchanged) asks for exactly-once at creation; without it, FERRY_DEFAULT_DELIVERY applies. It cannot change
    later."""
    request = create_request(f"{unique}-eos", clusters)
    request["Tags"] = {"ferry:delivery": "exactly-once"}
    exactly_once = kafka.create_replicator(**request)["ReplicatorArn"]
    plain = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    assert _row(db_engine, exactly_once).delivery == "exactly-once"
    assert _row(db_engine, plain).delivery == "at-least-once"
    assert kafka.list_tags_for_resource(ResourceArn=exactly_once)["Tags"]["ferry:delivery"] == "exactly-once"

    with pytest.raises(kafka.exceptions.BadRequestException, match=r"ferry:delivery.*cannot change"):
        kafka.tag_resource(ResourceArn=plain, Tags={"ferry:delivery": "exactly-once"})
    with pytest.raises(kafka.exceptions.BadRequestException, match=r"ferry:delivery.*cannot be removed"):
        kafka.untag_resource(ResourceArn=exactly_once, TagKeys=["ferry:delivery"])
    kafka.tag_resource(ResourceArn=exactly_once, Tags={"ferry:delivery": "exactly-once", "team": "x"})  # unchanged
    bad = create_request(f"{unique}-bad", clusters)
    bad["Tags"] = {"ferry:delivery": "at-most-once"}
    with pytest.raises(kafka.exceptions.BadRequestException, match=r"ferry:delivery.*must be one of"):
        kafka.create_replicator(**bad)


def test_list_pages_through_250_replicators_with_the_sdk_paginator(
    kafka: Any, unique: str, clusters: dict[str, Any]
) -> None:
    names = [f"{unique}-{i:03d}" for i in range(250)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        arns = set(
            pool.map(lambda name: kafka.create_replicator(**create_request(name, clusters))["ReplicatorArn"], names)
        )
    kafka.create_replicator(**create_request(f"x{unique}", clusters))  # contains the prefix, does not start with it

    paginator = kafka.get_paginator("list_replicators")
    pages = list(paginator.paginate(ReplicatorNameFilter=unique, PaginationConfig={"PageSize": 100}))
    listed = [summary for page in pages for summary in page["Replicators"]]

    assert [len(page["Replicators"]) for page in pages] == [100, 100, 50]
    assert "NextToken" not in pages[-1]
    assert {summary["ReplicatorArn"] for summary in listed} == arns
    assert len(listed) == 250
    # The order is stable: another walk with another page size sees the same sequence.
    again = paginator.paginate(ReplicatorNameFilter=unique, PaginationConfig={"PageSize": 7}).build_full_result()
    assert [s["ReplicatorArn"] for s in again["Replicators"]] == [s["ReplicatorArn"] for s in listed]
    summary = listed[0]
    assert summary["ReplicatorState"] == "CREATING"
    assert summary["IsReplicatorReference"] is False
    assert summary["ReplicatorResourceArn"] == summary["ReplicatorArn"]
    assert {c["KafkaClusterAlias"] for c in summary["KafkaClustersSummary"]} == {
        summary["ReplicationInfoSummaryList"][0]["SourceKafkaClusterAlias"],
        summary["ReplicationInfoSummaryList"][0]["TargetKafkaClusterAlias"],
    }


def test_list_filter_is_a_literal_prefix(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    kafka.create_replicator(**create_request(f"{unique}-alpha", clusters))
    kafka.create_replicator(**create_request(f"{unique}-beta", clusters))

    listed = kafka.list_replicators(ReplicatorNameFilter=f"{unique}-a")["Replicators"]
    wildcard = kafka.list_replicators(ReplicatorNameFilter=f"{unique}-%")["Replicators"]

    assert [s["ReplicatorName"] for s in listed] == [f"{unique}-alpha"]
    assert wildcard == []


def test_list_paging_errors(kafka: Any) -> None:
    with pytest.raises(kafka.exceptions.BadRequestException) as too_many:
        kafka.list_replicators(MaxResults=101)
    with pytest.raises(kafka.exceptions.BadRequestException) as garbage:
        kafka.list_replicators(NextToken="definitely-not-a-token")
    assert too_many.value.response["InvalidParameter"] == "maxResults"
    assert "maxResults" in too_many.value.response["Error"]["Message"]
    assert garbage.value.response["InvalidParameter"] == "nextToken"


def test_fifty_concurrent_creates_of_one_name_one_wins(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    start = threading.Barrier(50)

    def create() -> str:
        start.wait()
        try:
            kafka.create_replicator(**create_request(unique, clusters))
        except kafka.exceptions.ConflictException as error:
            assert error.response["InvalidParameter"] == "replicatorName"
            return "conflict"
        return "created"

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(lambda _: create(), range(50)))

    assert outcomes.count("created") == 1
    assert outcomes.count("conflict") == 49
    assert len(kafka.list_replicators(ReplicatorNameFilter=unique)["Replicators"]) == 1


def test_concurrent_updates_with_one_version_only_one_applies(
    kafka: Any, unique: str, clusters: dict[str, Any], db_engine: Engine
) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    version = kafka.describe_replicator(ReplicatorArn=arn)["CurrentVersion"]
    start = threading.Barrier(10)

    def update_to(index: int) -> str:
        start.wait()
        try:
            kafka.update_replication_info(
                ReplicatorArn=arn,
                CurrentVersion=version,
                TopicReplication={**TOPIC_UPDATE, "TopicsToReplicate": [f"topic-{index}"]},
            )
        except kafka.exceptions.BadRequestException as error:
            assert error.response["InvalidParameter"] == "currentVersion"
            return "stale"
        return f"topic-{index}"

    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(update_to, range(10)))

    winners = [outcome for outcome in outcomes if outcome != "stale"]
    assert len(winners) == 1
    topics = kafka.describe_replicator(ReplicatorArn=arn)["ReplicationInfoList"][0]["TopicReplication"]
    assert topics["TopicsToReplicate"] == winners
    assert _row(db_engine, arn).generation == 2


def test_describe_reports_the_state_the_fleet_wrote(
    kafka: Any, unique: str, clusters: dict[str, Any], db_engine: Engine
) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    with db_engine.begin() as connection:  # what the worker fleet writes when a replicator cannot start
        connection.execute(
            update(ReplicatorRow)
            .where(ReplicatorRow.arn == arn)
            .values(state="FAILED", state_info={"code": "SourceUnreachable", "message": "no broker answered"})
        )

    described = kafka.describe_replicator(ReplicatorArn=arn)

    assert described["ReplicatorState"] == "FAILED"
    assert described["StateInfo"] == {"Code": "SourceUnreachable", "Message": "no broker answered"}
    # A FAILED replicator accepts an update (the fix may be in its topic lists) and stays FAILED until it runs.
    updated = kafka.update_replication_info(
        ReplicatorArn=arn, CurrentVersion=described["CurrentVersion"], TopicReplication=TOPIC_UPDATE
    )
    assert updated["ReplicatorState"] == "FAILED"
    assert _row(db_engine, arn).generation == 2


def test_endpoint_from_the_environment(
    api_url: str, test_key: IssuedKey, unique: str, clusters: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scripts switch to Ferry by setting AWS_ENDPOINT_URL_KAFKA; their code does not change.
    monkeypatch.setenv("AWS_ENDPOINT_URL_KAFKA", api_url)
    client = boto3.client(
        "kafka",
        region_name="us-east-1",
        aws_access_key_id=test_key.access_key_id,
        aws_secret_access_key=test_key.secret_access_key,
    )

    created = client.create_replicator(**create_request(unique, clusters))

    assert client.meta.endpoint_url == api_url
    assert created["ReplicatorName"] == unique


def test_ferry_annotations_stay_internal(
    kafka: Any, http: httpx.Client, unique: str, clusters: dict[str, Any], db_engine: Engine
) -> None:
    arn = kafka.create_replicator(**create_request(unique, clusters))["ReplicatorArn"]
    with db_engine.begin() as connection:  # the fleet may annotate stored clusters further
        stored = _row(db_engine, arn).kafka_clusters
        annotated = [{**cluster, "fleetNote": "x", "ferry": {**cluster["ferry"], "leader": "w1"}} for cluster in stored]
        connection.execute(update(ReplicatorRow).where(ReplicatorRow.arn == arn).values(kafka_clusters=annotated))

    raw = http.get(f"/replication/v1/replicators/{quote(arn, safe='')}")

    assert raw.status_code == 200
    for cluster in raw.json()["kafkaClusters"]:
        assert set(cluster) == {"apacheKafkaCluster", "kafkaClusterAlias"}
