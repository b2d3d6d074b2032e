"""terraform-provider-aws's ``aws_msk_replicator`` against the real API: its exact requests, byte for byte, and
everything its Read takes from the answers (tests/api/terraform_provider.py says where each shape comes from).

These tests run without a fleet, so a replicator stays where the API puts it; where the provider's waiter needs
the fleet's transition (CREATING -> RUNNING, UPDATING -> RUNNING), the test writes the state the fleet would write.
tests/fleet/test_terraform_lifecycle.py runs the same sequence with real workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, update

from models.access_keys import IssuedKey
from models.errors import InvalidRequestError
from models.replicator import ReplicatorRow
from models.replicator_shapes import UpdateReplicationInfoRequest
from models.replicator_spec import accept_update
from tests.api.terraform_provider import (
    ExampleReplicator,
    ProviderError,
    TerraformProvider,
    assert_no_drift,
    create_body,
    example_variables,
    provider_state,
    update_body,
)

CA_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ferry/dev/ca-KcVqsL"


@pytest.fixture
def provider(api_url: str, test_key: IssuedKey) -> Iterator[TerraformProvider]:
    client = TerraformProvider(api_url, test_key)
    yield client
    client.close()


@pytest.fixture
def example(unique: str, stack: dict[str, Any]) -> ExampleReplicator:
    listeners = (stack.get("secure") or {}).get("source", {}), (stack.get("secure") or {}).get("target", {})
    return ExampleReplicator.load(
        unique,
        listeners[0].get("tls", "127.0.0.1:19097"),
        listeners[1].get("tls", "127.0.0.1:29097"),
        root_ca_secret_arn=CA_SECRET,
    )


def _set_state(db_engine: Engine, arn: str, state: str) -> None:
    """What the fleet writes when the replicator's units run (this test has no fleet)."""
    with db_engine.begin() as connection:
        connection.execute(update(ReplicatorRow).where(ReplicatorRow.arn == arn).values(state=state))


def test_the_example_module_is_what_the_tests_replay() -> None:
    values = example_variables()
    assert values["topics_to_replicate"] == ["orders.*", "payments"]
    assert values["tags"] == {"team": "payments", "env": "dr"}
    assert "ferry_endpoint" not in values and "source_bootstrap" not in values  # required: no default


def test_create_body_is_the_sdks(example: ExampleReplicator) -> None:
    body = create_body(example)
    assert b" " not in body.replace(b"orders and payments to the DR cluster", b"")
    document = json.loads(body)
    assert list(document) == [
        "description",
        "kafkaClusters",
        "replicationInfoList",
        "replicatorName",
        "serviceExecutionRoleArn",
        "tags",
    ]
    (info,) = document["replicationInfoList"]
    assert "sourceKafkaClusterArn" not in info and "targetKafkaClusterArn" not in info
    assert document["kafkaClusters"][0]["encryptionInTransit"] == {
        "encryptionType": "TLS",
        "rootCaCertificate": CA_SECRET,
    }


def test_apply_refresh_update_retag_and_destroy(
    provider: TerraformProvider, example: ExampleReplicator, db_engine: Engine
) -> None:
    # terraform apply: CreateReplicator, then the create waiter polls while CREATING
    created = provider.create(create_body(example))
    assert set(created) == {"replicatorArn", "replicatorName", "replicatorState"}
    assert created["replicatorName"] == example.name and created["replicatorState"] == "CREATING"
    arn = created["replicatorArn"]
    assert provider.describe(arn)["replicatorState"] == "CREATING"  # pending for waitReplicatorCreated
    _set_state(db_engine, arn, "RUNNING")
    running = provider.wait(arn, ("CREATING",), "RUNNING", timeout=10)
    assert running is not None

    # Read after create, and every refresh: no drift against the configuration
    state = provider_state(running)
    assert state["arn"] == arn
    assert_no_drift(state, example)
    assert provider.list_tags(arn) == example.tags

    # terraform apply after adding a topic pattern and an exclusion: the provider sends both cluster ARNs as ""
    version = state["current_version"]
    topics = {"replicate": [*example.topics_to_replicate, "refunds"], "exclude": []}
    answer = provider.update(arn, update_body(version, topics=topics))
    assert answer == {"replicatorArn": arn, "replicatorState": "UPDATING"}
    updating = provider.describe(arn)
    assert updating["replicatorState"] == "UPDATING"  # pending for waitReplicatorUpdated
    _set_state(db_engine, arn, "RUNNING")
    after = provider_state(provider.wait(arn, ("UPDATING",), "RUNNING", timeout=10) or {})
    assert after["current_version"] != version
    assert after["replication_info_list"]["topic_replication"]["topics_to_replicate"] == set(topics["replicate"])
    assert after["replication_info_list"]["topic_replication"]["topics_to_exclude"] == set()
    # what the update cannot carry is unchanged
    assert after["replication_info_list"]["topic_replication"]["starting_position"] == example.starting_position
    assert after["replication_info_list"]["source_kafka_cluster_id"] == example.source_id

    # a consumer group change on its own, again with empty ARNs and an empty exclusion set
    groups = {"replicate": [*example.groups_to_replicate, "ledger"]}
    provider.update(arn, update_body(after["current_version"], groups=groups))
    _set_state(db_engine, arn, "RUNNING")
    regrouped = provider_state(provider.describe(arn))
    assert regrouped["replication_info_list"]["consumer_group_replication"]["consumer_groups_to_replicate"] == set(
        groups["replicate"]
    )

    # tags only: no UpdateReplicationInfo, the generated updateTags instead
    new_tags = {"team": "payments", "owner": "sre"}
    provider.update_tags(arn, example.tags, new_tags)
    assert provider.list_tags(arn) == new_tags
    assert provider_state(provider.describe(arn))["tags"] == new_tags

    # terraform destroy: DeleteReplicator without currentVersion; the waiter polls while RUNNING or DELETING
    assert provider.delete(arn) == {"replicatorArn": arn, "replicatorState": "DELETING"}
    assert provider.describe(arn)["replicatorState"] == "DELETING"
    methods = [(method, path.split("/")[1]) for method, path, _ in provider.requests]
    assert ("PUT", "replication") in methods and ("DELETE", "v1") in methods and ("POST", "v1") in methods


def test_refresh_of_a_replicator_removed_elsewhere_is_not_found(
    provider: TerraformProvider, example: ExampleReplicator
) -> None:
    """What Read and the delete waiter take as "gone": 404 with x-amzn-ErrorType NotFoundException."""
    arn = provider.create(create_body(example))["replicatorArn"]
    missing = arn.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000-1"
    with pytest.raises(ProviderError) as error:
        provider.describe(missing)
    assert (error.value.status, error.value.error_type) == (404, "NotFoundException")
    # the provider's delete treats NotFoundException as already deleted
    with pytest.raises(ProviderError) as error:
        provider.delete(missing)
    assert (error.value.status, error.value.error_type) == (404, "NotFoundException")
    assert provider.wait(missing, ("RUNNING", "DELETING"), None, timeout=5) is None


@pytest.mark.parametrize(
    ("source_arn", "target_arn", "parameter"),
    [
        ("arn:aws:kafka:us-east-1:000000000000:cluster/other/11111111-2222", "", "sourceKafkaClusterArn"),
        ("", "arn:aws:kafka:us-east-1:000000000000:cluster/other/11111111-2222", "targetKafkaClusterArn"),
    ],
)
def test_an_arn_that_names_another_cluster_is_still_refused(
    provider: TerraformProvider, example: ExampleReplicator, source_arn: str, target_arn: str, parameter: str
) -> None:
    arn = provider.create(create_body(example))["replicatorArn"]
    before = provider.describe(arn)
    body = update_body(
        before["currentVersion"],
        topics={"replicate": ["refunds"]},
        source_arn=source_arn,
        target_arn=target_arn,
    )

    with pytest.raises(ProviderError) as error:
        provider.update(arn, body)

    assert (error.value.status, error.value.error_type) == (400, "BadRequestException")
    assert error.value.message.startswith(f"{parameter}: ")
    assert "source and target cannot be changed" in error.value.message
    assert provider.describe(arn)["currentVersion"] == before["currentVersion"]


def test_an_update_that_changes_nothing_is_refused_as_msk_refuses_it(
    provider: TerraformProvider, example: ExampleReplicator
) -> None:
    """A description-only change makes the provider send UpdateReplicationInfo with nothing to update."""
    arn = provider.create(create_body(example))["replicatorArn"]
    version = provider.describe(arn)["currentVersion"]

    with pytest.raises(ProviderError) as error:
        provider.update(arn, update_body(version))

    assert (error.value.status, error.value.error_type) == (400, "BadRequestException")
    assert error.value.message.startswith("topicReplication: one of topicReplication")


def _stored_cluster(kind: str, reference: str) -> dict[str, Any]:
    return {"kafkaClusterAlias": f"{kind}-alias", "ferry": {"kind": kind, "reference": reference}}


def test_an_empty_arn_for_an_msk_cluster_is_refused() -> None:
    """Only a self-managed cluster has no ARN to send; for an MSK cluster an empty ARN is a caller's mistake."""
    msk_arn = "arn:aws:kafka:us-east-1:000000000000:cluster/source/11111111-2222"
    clusters = {
        "amazonMskCluster-alias": _stored_cluster("amazonMskCluster", msk_arn),
        "apacheKafkaCluster-alias": _stored_cluster("apacheKafkaCluster", "onprem"),
    }
    stored = {
        "sourceKafkaClusterAlias": "amazonMskCluster-alias",
        "targetKafkaClusterAlias": "apacheKafkaCluster-alias",
        "topicReplication": {"topicsToReplicate": ["a"]},
        "consumerGroupReplication": {},
    }
    topics = {
        "copyAccessControlListsForTopics": True,
        "copyTopicConfigurations": True,
        "detectAndCopyNewTopics": True,
        "topicsToExclude": [],
        "topicsToReplicate": ["b"],
    }

    def attempt(source_arn: str) -> dict[str, Any]:
        request = UpdateReplicationInfoRequest.model_validate(
            {
                "currentVersion": "v",
                "sourceKafkaClusterArn": source_arn,
                "targetKafkaClusterArn": "",
                "topicReplication": topics,
            }
        )
        accepted = accept_update(request, stored_info=stored, stored_log_delivery=None, clusters_by_alias=clusters)
        return accepted.replication_info

    assert attempt(msk_arn)["topicReplication"]["topicsToReplicate"] == ["b"]  # "" target: self-managed, absent
    with pytest.raises(InvalidRequestError) as error:
        attempt("")
    assert str(error.value).startswith("sourceKafkaClusterArn: is empty")
