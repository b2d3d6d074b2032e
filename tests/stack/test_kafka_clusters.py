"""Proves the local Kafka 4.1 clusters work with aiokafka: produce, consume, groups, idempotence, transactions,
and the admin calls Ferry relies on; and that source and target are two separate clusters."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.structs import OffsetAndMetadata

CLUSTERS = ["source", "target"]


async def consume_exactly(bootstrap: str, topic: str, count: int, **kwargs: object) -> list[object]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, **kwargs
    )
    await consumer.start()
    records: list[object] = []
    try:
        async with asyncio.timeout(30):
            while len(records) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    records.extend(batch)
        # Nothing beyond the expected records: a further poll stays empty.
        extra = await consumer.getmany(timeout_ms=500)
        records.extend(r for batch in extra.values() for r in batch)
    finally:
        await consumer.stop()
    return records


@pytest.fixture(params=CLUSTERS)
def bootstrap(request: pytest.FixtureRequest, source_bootstrap: str, target_bootstrap: str) -> str:
    return source_bootstrap if request.param == "source" else target_bootstrap


async def test_produce_and_consume_keys_values_headers(bootstrap: str, unique: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, compression_type="zstd")
    await producer.start()
    try:
        sends = [
            await producer.send(
                unique,
                key=None if i % 10 == 0 else f"k{i}".encode(),
                value=None if i % 10 == 5 else f"v{i}".encode(),
                partition=i % 3,
                headers=[("h", b"1"), ("h", b"2"), ("n", str(i).encode())],
                timestamp_ms=1_700_000_000_000 + i,
            )
            for i in range(300)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    records = await consume_exactly(bootstrap, unique, 300)
    assert len(records) == 300
    by_n = {int(dict(r.headers)["n"]): r for r in records}  # type: ignore[attr-defined]
    assert sorted(by_n) == list(range(300))
    for i, record in by_n.items():
        assert record.partition == i % 3  # type: ignore[attr-defined]
        assert record.key == (None if i % 10 == 0 else f"k{i}".encode())  # type: ignore[attr-defined]
        assert record.value == (None if i % 10 == 5 else f"v{i}".encode())  # type: ignore[attr-defined]
        assert list(record.headers)[:2] == [("h", b"1"), ("h", b"2")]  # type: ignore[attr-defined]
        assert record.timestamp == 1_700_000_000_000 + i  # type: ignore[attr-defined]


async def test_transactions_and_read_committed(bootstrap: str, unique: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{unique}-tx")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(unique, b"committed-1")
            await producer.send_and_wait(unique, b"committed-2")
        await producer.begin_transaction()
        await producer.send_and_wait(unique, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(unique, b"committed-3")
    finally:
        await producer.stop()

    records = await consume_exactly(bootstrap, unique, 3, isolation_level="read_committed")
    assert [r.value for r in records] == [b"committed-1", b"committed-2", b"committed-3"]  # type: ignore[attr-defined]


async def test_group_commit_and_admin_calls(bootstrap: str, unique: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique, num_partitions=2, replication_factor=1)])
        await admin.create_partitions({unique: NewPartitions(total_count=4)})
        partitions = 0
        async with asyncio.timeout(30):  # metadata reaches the broker's cache a moment after the controller
            while partitions != 4:
                partitions = len((await admin.describe_topics([unique]))[0]["partitions"])
                await asyncio.sleep(0 if partitions == 4 else 0.1)
        assert unique in await admin.list_topics()

        tp = TopicPartition(unique, 1)
        committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=unique, enable_auto_commit=False)
        await committer.start()
        try:
            committer.assign([tp])
            await committer.commit({tp: OffsetAndMetadata(0, "")})
        finally:
            await committer.stop()
        offsets = await admin.list_consumer_group_offsets(unique)
        assert offsets[tp].offset == 0
        groups = {group_id for group_id, _ in await admin.list_consumer_groups()}
        assert unique in groups
    finally:
        await admin.close()


async def test_source_and_target_are_separate_clusters(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    ids = []
    for bootstrap in (source_bootstrap, target_bootstrap):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            ids.append((await admin.describe_cluster())["cluster_id"])
            if bootstrap == source_bootstrap:
                await admin.create_topics([NewTopic(unique, num_partitions=1, replication_factor=1)])
            else:
                assert unique not in await admin.list_topics()
        finally:
            await admin.close()
    assert ids[0] != ids[1]
