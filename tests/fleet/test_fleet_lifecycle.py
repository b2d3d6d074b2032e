"""A replicator's life through the API with a real fleet: CREATING -> RUNNING, records flow, an update is applied,
delete leaves nothing running and Describe answers 404."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis import Redis
from sqlalchemy import Engine, text

from tests.fleet.conftest import Fleet, unit_owners, wait_until


def create_request(name: str, source: str, target: str, topics: list[str], **replication: Any) -> dict[str, Any]:
    return {
        "ReplicatorName": name,
        "ServiceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry",
        "KafkaClusters": [
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": f"{name}-src", "BootstrapBrokerString": source}},
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": f"{name}-tgt", "BootstrapBrokerString": target}},
        ],
        "ReplicationInfoList": [
            {
                "SourceKafkaClusterId": f"{name}-src",
                "TargetKafkaClusterId": f"{name}-tgt",
                "TargetCompressionType": "NONE",
                "TopicReplication": {
                    "TopicsToReplicate": topics,
                    "StartingPosition": {"Type": "EARLIEST"},
                    **replication,
                },
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": []},
            }
        ],
    }


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, count: int, partitions: int, tag: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=f"{tag}-{i}".encode(), value=f"{tag}-{i}".encode(), partition=i % partitions)
            for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def count_records(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return 0
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await consumer.stop()


def describe(kafka: Any, arn: str) -> dict[str, Any]:
    response: dict[str, Any] = kafka.describe_replicator(ReplicatorArn=arn)
    return response


def copiers_running(redis: Redis, replicator_id: str) -> int:
    total = 0
    for key in redis.scan_iter("ferry:worker:*"):
        raw = redis.get(key)
        if raw:
            total += int(json.loads(raw)["replicators"].get(replicator_id, {}).get("partitions", 0))
    return total


@pytest.mark.slow
def test_create_run_update_delete(
    fleet: Fleet,
    fleet_kafka: Any,
    fleet_db: Engine,
    fleet_redis: Redis,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    fleet.start_worker("lifecycle-w1")
    first, second = f"{unique}-a", f"{unique}-b"
    asyncio.run(create_topic(source_bootstrap, first, 3))
    asyncio.run(create_topic(source_bootstrap, second, 2))
    asyncio.run(produce(source_bootstrap, first, 300, 3, "before"))

    created = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [first]))
    arn = created["ReplicatorArn"]
    assert created["ReplicatorState"] == "CREATING"

    running = wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)
    assert running
    info = describe(fleet_kafka, arn)["ReplicationInfoList"][0]
    alias = info["SourceKafkaClusterAlias"]
    wait_until(
        f"300 records on {alias}.{first}",
        lambda: asyncio.run(count_records(target_bootstrap, f"{alias}.{first}")) == 300,
        60,
    )
    assert set(unit_owners(fleet_db, arn)) == {(first, p) for p in range(3)}

    described = describe(fleet_kafka, arn)
    fleet_kafka.update_replication_info(
        ReplicatorArn=arn,
        CurrentVersion=described["CurrentVersion"],
        SourceKafkaClusterId=f"{unique}-src",
        TargetKafkaClusterId=f"{unique}-tgt",
        TopicReplication={
            "TopicsToReplicate": [first, second],
            "TopicsToExclude": [],
            "CopyTopicConfigurations": True,
            "CopyAccessControlListsForTopics": True,
            "DetectAndCopyNewTopics": True,
        },
    )
    assert describe(fleet_kafka, arn)["ReplicatorState"] == "UPDATING"
    wait_until("RUNNING after the update", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 30)
    asyncio.run(produce(source_bootstrap, second, 100, 2, "after"))
    wait_until(
        f"100 records on {alias}.{second}",
        lambda: asyncio.run(count_records(target_bootstrap, f"{alias}.{second}")) == 100,
        60,
    )
    assert set(unit_owners(fleet_db, arn)) == {(first, p) for p in range(3)} | {(second, p) for p in range(2)}

    replicator_id = _replicator_id(fleet_db, arn)
    # The worker's status report is written every few seconds: the new partitions' records can land before it.
    wait_until("the worker to report 5 partitions", lambda: copiers_running(fleet_redis, replicator_id) == 5, 20)
    deleted = fleet_kafka.delete_replicator(ReplicatorArn=arn)
    assert deleted["ReplicatorState"] == "DELETING"

    def gone() -> bool:
        try:
            fleet_kafka.describe_replicator(ReplicatorArn=arn)
        except fleet_kafka.exceptions.NotFoundException:
            return True
        return False

    wait_until("Describe to answer 404", gone, 60)
    assert unit_owners(fleet_db, arn) == {}
    wait_until("no copier left for the replicator", lambda: copiers_running(fleet_redis, replicator_id) == 0, 10)


def _replicator_id(db: Engine, arn: str) -> str:
    with db.connect() as conn:
        return str(conn.execute(text("SELECT id FROM replicators WHERE arn = :arn"), {"arn": arn}).scalar_one())
