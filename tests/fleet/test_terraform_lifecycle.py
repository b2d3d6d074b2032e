"""terraform apply / update / destroy of the example module, as terraform-provider-aws drives it, against a real
fleet: the provider's exact requests (tests/api/terraform_provider.py) and its waiters, on the stack's TLS
listeners with the CA in Secrets Manager, which is what the provider's always-TLS self-managed clusters need."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from models.access_keys import IssuedKey
from tests.api.terraform_provider import (
    ExampleReplicator,
    TerraformProvider,
    assert_no_drift,
    create_body,
    provider_state,
    update_body,
)
from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.test_fleet_lifecycle import count_records, create_topic, produce


@pytest.fixture(scope="module", autouse=True)
def _one_worker(fleet: Fleet) -> None:
    fleet.start_worker("terraform-w1")


@pytest.fixture
def provider(fleet_api: str, fleet_key: IssuedKey) -> Iterator[TerraformProvider]:
    client = TerraformProvider(fleet_api, fleet_key)
    yield client
    client.close()


def test_apply_update_and_destroy_with_the_providers_waiters(
    provider: TerraformProvider, stack: dict[str, Any], unique: str
) -> None:
    secure = stack.get("secure") or {}
    if not secure:
        pytest.fail(".run/stack.json has no 'secure' section: start the stack with this checkout's dev.stack up")
    example = ExampleReplicator.load(
        unique, secure["source"]["tls"], secure["target"]["tls"], root_ca_secret_arn=secure["secrets"]["ca"]
    )
    # The example's patterns would match other tests' topics on the shared clusters: same shape, unique names.
    first, second = f"{unique}-orders", f"{unique}-refunds"
    example = dataclasses.replace(example, topics_to_replicate=[first], groups_to_replicate=[f"{unique}-billing"])
    plain_source, plain_target = stack["kafka"]["source"], stack["kafka"]["target"]
    for topic in (first, second):
        asyncio.run(create_topic(plain_source, topic, 1))
        asyncio.run(produce(plain_source, topic, 20, 1, "tf"))

    arn = provider.create(create_body(example))["replicatorArn"]
    running = provider.wait(arn, ("CREATING",), "RUNNING", timeout=120)
    assert running is not None
    state = provider_state(running)
    assert_no_drift(state, example)
    alias = state["replication_info_list"]["source_kafka_cluster_alias"]
    wait_until(
        f"{first} copied", lambda: asyncio.run(count_records(plain_target, f"{alias}.{first}")) >= 20, timeout=60
    )

    body = update_body(state["current_version"], topics={"replicate": [first, second], "exclude": []})
    assert provider.update(arn, body)["replicatorState"] == "UPDATING"
    updated = provider.wait(arn, ("UPDATING",), "RUNNING", timeout=120)
    assert updated is not None
    assert provider_state(updated)["replication_info_list"]["topic_replication"]["topics_to_replicate"] == {
        first,
        second,
    }
    wait_until(
        f"{second} copied after the update",
        lambda: asyncio.run(count_records(plain_target, f"{alias}.{second}")) >= 20,
        timeout=60,
    )

    provider.update_tags(arn, example.tags, {**example.tags, "owner": "sre"})
    assert provider.list_tags(arn) == {**example.tags, "owner": "sre"}

    assert provider.delete(arn)["replicatorState"] == "DELETING"
    assert provider.wait(arn, ("RUNNING", "DELETING"), None, timeout=120) is None
