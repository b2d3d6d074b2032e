"""Reading progress: the latest committed value, even when another producer's transaction is still open on the same
progress partition.

Under read_committed a partition's end offset is its last stable offset: where the first still-open transaction
begins. The progress topic is shared by every replicator on the target cluster, so a live exactly-once copier
almost always has a transaction open on some of its partitions. Progress committed after that transaction began
(by an owner killed a moment after its commit) lies beyond that offset: a new owner reading only to it would
start from older progress and copy committed records a second time (seen by `make chaos`: 274 duplicates in an
exactly-once replicator after a worker was SIGKILLed).

Creating it: the store that creates the topic returns once every partition has a leader."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from workers.engine import admin as kafka_admin
from workers.engine.connection import ClusterConnection, admin_client
from workers.engine.progress import (
    PROGRESS_TOPIC_PARTITIONS,
    PartitionProgress,
    ProgressStore,
    encode_progress,
    now_ms,
    progress_key,
)


async def test_progress_committed_after_an_open_transaction_began_is_read(target_bootstrap: str, unique: str) -> None:
    store = ProgressStore(ClusterConnection(target_bootstrap), f"{unique}-replicator", topic=f"{unique}-progress")
    await store.ensure_topic()
    source = TopicPartition(f"{unique}-source", 0)
    key = progress_key(store.replicator_id, source)
    every = list(range(PROGRESS_TOPIC_PARTITIONS))
    partition = DefaultPartitioner()(key, every, every)

    def progress(offset: int) -> bytes:
        return encode_progress(PartitionProgress(f"{unique}-target", offset, offset, now_ms()))

    survivor = AIOKafkaProducer(bootstrap_servers=target_bootstrap, transactional_id=f"{unique}-survivor")
    killed_owner = AIOKafkaProducer(bootstrap_servers=target_bootstrap, transactional_id=f"{unique}-killed")
    await survivor.start()
    await killed_owner.start()
    try:
        async with killed_owner.transaction():
            await killed_owner.send_and_wait(store.topic, key=key, value=progress(100), partition=partition)
        # Another replicator's live copier opens a transaction on the same progress partition...
        await survivor.begin_transaction()
        await survivor.send_and_wait(store.topic, key=b"another-replicator/x/0", value=b"-", partition=partition)
        # ...and the owner of our partition commits its next progress, then dies.
        async with killed_owner.transaction():
            await killed_owner.send_and_wait(store.topic, key=key, value=progress(200), partition=partition)

        loading = asyncio.create_task(store.load([source]))
        done, _ = await asyncio.wait({loading}, timeout=2.0)
        assert not done, f"progress was read while a transaction before it was open: {loading.result()}"
        await survivor.commit_transaction()  # the live copier's transaction ends, as every one does within seconds
        found = await asyncio.wait_for(loading, 30)
    finally:
        await killed_owner.stop()
        await survivor.stop()
    assert found[source].next_source_offset == 200, f"read older progress: {found[source]}"


async def test_the_store_that_creates_the_topic_returns_once_every_partition_has_a_leader(
    target_bootstrap: str, unique: str
) -> None:
    connection = ClusterConnection(target_bootstrap)
    store = ProgressStore(connection, f"{unique}-replicator", topic=f"{unique}-progress")
    await store.ensure_topic()
    # Asked of a client of its own: what any later reader or writer of the progress sees.
    admin = admin_client(connection, "test")
    await admin.start()
    try:
        assert await kafka_admin.partitions_without_leader(admin, store.topic) == []
        assert await kafka_admin.partitions_without_leader(admin, f"{unique}-never-created") is None
    finally:
        await admin.close()
    await store.ensure_topic()  # existing: returns at once
