"""A source log cut back below the copy's position by an unclean leader election, then written again: the copy
goes back to where the log diverges (found from the leader epoch of the last copied batch) instead of jumping to
the new end, so nothing written after the election is skipped. Needs brokers that come and go: a cluster of its
own (dev/cluster.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from dev.cluster import LocalCluster
from tests.engine.conftest import Rec, admin_client, produce, read_topic, running, spec_for, topic_count, wait_for
from workers.engine.metrics import Health


@pytest.fixture
def two_brokers(stack: dict[str, Any], tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(Path(stack["kafka_lib"]), tmp_path / "cluster", brokers=2) as cluster:
        yield cluster


async def leader_of(bootstrap: str, topic: str) -> int | None:
    async with admin_client(bootstrap) as admin:
        described = await admin.describe_topics([topic])
    partitions = described[0]["partitions"]
    return int(partitions[0]["leader"]) if partitions and partitions[0]["leader"] >= 0 else None


@pytest.mark.slow
async def test_a_source_log_truncated_by_an_unclean_election_is_copied_from_where_it_diverges(
    two_brokers: LocalCluster, target_bootstrap: str, unique: str
) -> None:
    cluster = two_brokers
    topic = f"{unique}-unclean"
    target = f"src.{topic}"
    first, second = cluster.broker_id(0), cluster.broker_id(1)
    async with admin_client(cluster.bootstrap) as admin:
        await admin.create_topics(
            [
                NewTopic(
                    topic, -1, -1, replica_assignments={0: [first, second]}, topic_configs={"min.insync.replicas": "1"}
                )
            ]
        )
    await wait_for(lambda: _leader_is(cluster.bootstrap, topic, first), 60, f"broker {first} leading {topic}")
    await produce(cluster.bootstrap, topic, [Rec(0, None, f"a-{i}".encode()) for i in range(100)])

    # The follower leaves; the leader alone takes 100 more records, and they are copied.
    cluster.stop_broker(1)
    await produce(cluster.bootstrap, topic, [Rec(0, None, f"b-{i}".encode()) for i in range(100)])
    spec = spec_for(unique, [topic])
    async with running(spec, cluster.bootstrap, target_bootstrap):
        await wait_for(lambda: _count_is(target_bootstrap, target, 200), 60, "200 records copied")

    # The leader dies; the stale follower is elected uncleanly: its log ends at offset 100 and takes new records.
    cluster.kill_broker(0)
    cluster.start_broker(1)
    await _elect_uncleanly(cluster, topic, second)
    await produce(cluster.bootstrap, topic, [Rec(0, None, f"c-{i}".encode()) for i in range(50)])

    async with running(spec, cluster.bootstrap, target_bootstrap) as replicator:
        await wait_for(
            lambda: _count_is(target_bootstrap, target, 250), 60, "the 50 records written after the election"
        )
        stats = replicator.snapshot().partitions[TopicPartition(topic, 0)]
    copied = [r.value for records in (await read_topic(target_bootstrap, target)).values() for r in records]
    assert copied == [
        *(f"a-{i}".encode() for i in range(100)),
        *(f"b-{i}".encode() for i in range(100)),
        *(f"c-{i}".encode() for i in range(50)),
    ]
    assert stats.health is Health.SOURCE_DIVERGED
    assert "truncated at offset 100" in stats.health_detail
    assert stats.truncated_offsets == 0


async def _elect_uncleanly(cluster: LocalCluster, topic: str, broker: int) -> None:
    """Run the unclean election until ``broker`` leads. It is asked again rather than once: a broker that has just
    started may still be fenced and refuse, and under load it can lose the leadership it won before the test saw it."""
    deadline = time.monotonic() + 180
    last_refusal = "none"
    while not await _leader_is(cluster.bootstrap, topic, broker):
        assert time.monotonic() < deadline, (
            f"broker {broker} never led {topic} after an unclean election; "
            f"leader seen: {await _leader_or_error(cluster.bootstrap, topic)}; last refusal: {last_refusal}"
        )
        try:
            cluster.run_tool(
                "org.apache.kafka.tools.LeaderElectionCommand",
                "--bootstrap-server",
                f"127.0.0.1:{cluster.brokers[1].port}",
                "--election-type",
                "unclean",
                "--topic",
                topic,
                "--partition",
                "0",
            )
        except RuntimeError as refused:
            last_refusal = str(refused)[-500:]
        # The election is asynchronous on the controller: give the new leader a few seconds to show in metadata.
        await _wait_quietly(lambda: _leader_is(cluster.bootstrap, topic, broker), 5)


async def _wait_quietly(condition: Callable[[], Awaitable[bool]], deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.2)
    return False


async def _leader_or_error(bootstrap: str, topic: str) -> str:
    try:
        return str(await leader_of(bootstrap, topic))
    except (KafkaError, OSError) as error:
        return repr(error)


async def _leader_is(bootstrap: str, topic: str, broker: int) -> bool:
    try:
        return await leader_of(bootstrap, topic) == broker
    except (KafkaError, OSError):  # a broker of the bootstrap list is down: ask again
        return False


async def _count_is(bootstrap: str, topic: str, expected: int) -> bool:
    return await topic_count(bootstrap, topic) == expected
