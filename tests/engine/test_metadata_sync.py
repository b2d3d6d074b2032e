"""New topics and partitions are followed within 10 s; topic config changes within 30 s."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.engine.conftest import (
    Rec,
    admin_client,
    create_topic,
    end_offsets,
    produce,
    running,
    spec_for,
    wait_for,
)
from workers.engine import admin as kafka_admin
from workers.engine import connection as engine_connection
from workers.engine.admin import describe_topic_configs, describe_topics
from workers.engine.aiokafka_hooks import WritesFenced
from workers.engine.connection import ClusterConnection
from workers.engine.topics import TopicSynchronizer


async def test_new_topic_and_new_partitions_are_followed_within_10s(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    first, second = f"{unique}-first", f"{unique}-second"
    await create_topic(source_bootstrap, first, 1)
    spec = spec_for(unique, [f"{unique}-.*"], starting="LATEST")
    async with running(spec, source_bootstrap, target_bootstrap):
        created_at = time.monotonic()
        await create_topic(source_bootstrap, second, 2)
        await produce(source_bootstrap, second, [Rec(1, b"k", b"in a new topic")])
        await wait_for(
            lambda: _partition_has(target_bootstrap, f"src.{second}", 1, 1), 10, "the new topic's record on the target"
        )
        assert time.monotonic() - created_at <= 10

        added_at = time.monotonic()
        async with admin_client(source_bootstrap) as admin:
            await admin.create_partitions({first: NewPartitions(3)})
        await produce(source_bootstrap, first, [Rec(2, b"k", b"in a new partition")])
        await wait_for(
            lambda: _partition_has(target_bootstrap, f"src.{first}", 2, 1),
            10,
            "the new partition's record on the target",
        )
        assert time.monotonic() - added_at <= 10
    assert len(await end_offsets(target_bootstrap, f"src.{first}")) == 3


async def test_config_changes_are_followed_within_30s(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-configured"
    await create_topic(
        source_bootstrap, topic, 1, {"retention.ms": "3600000", "min.insync.replicas": "1", "cleanup.policy": "delete"}
    )
    target_topic = f"src.{topic}"
    spec = spec_for(unique, [topic])
    async with running(spec, source_bootstrap, target_bootstrap):
        initial = await _dynamic_configs(target_bootstrap, target_topic)
        assert initial.get("retention.ms") == "3600000", "configs are copied at creation"
        assert "min.insync.replicas" not in initial, "per-cluster configs are not copied"
        # An operator's own per-cluster override on the target must survive syncs.
        async with admin_client(target_bootstrap) as admin:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, target_topic, {**initial, "min.insync.replicas": "1"})]
            )
        async with admin_client(source_bootstrap) as admin:
            await admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC,
                        topic,
                        {
                            "retention.ms": "7200000",
                            "min.insync.replicas": "1",
                            "cleanup.policy": "delete",
                            "max.message.bytes": "2000000",
                        },
                    )
                ]
            )
        changed_at = time.monotonic()

        async def followed() -> bool:
            configs = await _dynamic_configs(target_bootstrap, target_topic)
            return configs.get("retention.ms") == "7200000" and configs.get("max.message.bytes") == "2000000"

        await wait_for(followed, 30, "the target topic to follow the source config change", interval=0.5)
        assert time.monotonic() - changed_at <= 30
        final = await _dynamic_configs(target_bootstrap, target_topic)
    assert final.get("min.insync.replicas") == "1", "the target's per-cluster override was reset"


async def _dynamic_configs(bootstrap: str, topic: str) -> dict[str, str | None]:
    async with admin_client(bootstrap) as admin:
        entries = (await describe_topic_configs(admin, [topic]))[topic]
    return {name: entry.value for name, entry in entries.items() if entry.source == 1}


async def _partition_has(bootstrap: str, topic: str, partition: int, count: int) -> bool:
    ends = await end_offsets(bootstrap, topic)
    return ends.get(partition, 0) >= count


async def test_topic_sync_writes_nothing_once_its_write_gate_closes(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """The metadata unit's lease ends in the middle of a pass: the topic created before stays, nothing after it
    is created, and the pass stops with WritesFenced."""
    topics = [f"{unique}-g{i}" for i in range(3)]
    for topic in topics:
        await create_topic(source_bootstrap, topic, 1)
    spec = spec_for(unique, [f"{unique}-g.*"])
    writes_left = {"count": 1}

    def gate() -> bool:
        allowed = writes_left["count"] > 0
        writes_left["count"] -= 1
        return allowed

    sync = TopicSynchronizer(
        spec, ClusterConnection(source_bootstrap), ClusterConnection(target_bootstrap), write_gate=gate
    )
    await sync.start()
    try:
        with pytest.raises(WritesFenced):
            await sync.sync_once()
    finally:
        await sync.close()
    async with admin_client(target_bootstrap) as admin:
        present = {t for t in await admin.list_topics() if t.startswith(f"src.{unique}-g")}
    assert present == {f"src.{topics[0]}"}


async def test_describing_the_cluster_asks_for_no_topics(source_bootstrap: str, unique: str) -> None:
    """Every replicator's metadata unit counts the target's brokers when it starts, and every copier reads both
    clusters' ids: on a cluster of a thousand topics, aiokafka's describe_cluster (every topic's metadata, then
    dropped) made starting a thousand replicators CPU-bound. Ferry's asks for no topics and answers the same."""
    await create_topic(source_bootstrap, f"{unique}-present", 3)
    async with admin_client(source_bootstrap) as admin:
        responses: list[Any] = []
        send = admin._client.send

        async def recording(node_id: int, request: Any, **kwargs: Any) -> Any:
            response = await send(node_id, request, **kwargs)
            responses.append(response)
            return response

        admin._client.send = recording
        described = await kafka_admin.describe_cluster(admin)
        assert [len(r.topics) for r in responses] == [0]
        with_topics = await admin.describe_cluster()
        assert len(responses[-1].topics) > 0  # aiokafka's: every topic, then dropped
        assert described == with_topics
        assert await kafka_admin.broker_count(admin) == len(with_topics["brokers"]) >= 1
        assert await kafka_admin.cluster_id(admin) == with_topics["cluster_id"]
        assert [len(r.topics) for r in responses[-2:]] == [0, 0]


async def test_an_admin_clients_own_metadata_refreshes_ask_for_no_topics(source_bootstrap: str, unique: str) -> None:
    """aiokafka refreshes an admin client's metadata every 5 minutes and after every connection failure, asking for
    every topic when the client follows none: with 1,000 replicators starting, those refreshes on clusters of 1,300
    topics kept two workers' event loops too busy to answer in time, and hundreds of replicators FAILED. Ferry's
    admin clients ask for no topics there; their calls that name topics still get them."""
    topic = f"{unique}-named"
    await create_topic(source_bootstrap, topic, 2)
    plain = AIOKafkaAdminClient(bootstrap_servers=source_bootstrap)
    await plain.start()
    try:

        async def named_topic_listed() -> bool:
            # A topic just created reaches the broker's metadata cache a moment after CreateTopics answers.
            await plain._client.force_metadata_update()
            return topic in plain._client.cluster.topics()  # aiokafka's own: every topic of the cluster

        await wait_for(named_topic_listed, 15, f"{topic} in a plain admin client's metadata")
    finally:
        await plain.close()
    admin = engine_connection.admin_client(ClusterConnection(source_bootstrap), "test")
    await admin.start()
    try:
        await admin._client.force_metadata_update()
        assert admin._client.cluster.topics() == set()
        assert admin._client.cluster.brokers()  # what an admin client needs of it
        assert admin._client.cluster.controller is not None
        assert list(await describe_topics(admin, [topic])) == [topic]
        assert isinstance(await kafka_admin.list_consumer_groups(admin), list)
        assert admin._client.cluster.topics() == set()
    finally:
        await admin.close()
