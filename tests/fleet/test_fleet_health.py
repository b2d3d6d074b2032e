"""What users see about a replicator's health: metrics that match what was produced, FAILED with a readable
reason when a cluster is unreachable and back to RUNNING once it is fixed, a notice for a topic list that
matches nothing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import Engine

from models.access_keys import IssuedKey
from tests.engine.test_recreated_topics import recreate_topic
from tests.exposition import metric_value
from tests.fleet.conftest import Fleet, unit_owners, wait_until
from tests.fleet.test_fleet_lifecycle import count_records, create_request, create_topic, describe, produce

ACCOUNT = "000000000000"


@pytest.fixture(scope="module", autouse=True)
def _one_worker(fleet: Fleet) -> None:
    fleet.start_worker("health-w1")


def metrics(http: httpx.Client, arn: str) -> dict[str, Any]:
    response = http.get(f"/replication/v1/replicators/{quote(arn, safe='')}/metrics")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.slow
def test_metrics_match_what_was_produced(
    fleet_http: httpx.Client, fleet_kafka: Any, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    topic = f"{unique}-m"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    asyncio.run(produce(source_bootstrap, topic, 500, 2, "m"))
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)

    def caught_up() -> dict[str, Any] | None:
        body = metrics(fleet_http, arn)
        totals = body["totals"]
        return body if totals["recordsCopied"] == 500 and totals["lagRecords"] == 0 else None

    body = wait_until("metrics to show 500 records copied and no lag", caught_up, 60)
    assert body["replicatorState"] == "RUNNING"
    assert body["totals"]["partitions"] == 2
    assert body["totals"]["maxLagSeconds"] == 0
    assert body["totals"]["errors"] == {}
    for partition in body["partitions"]:
        assert partition["health"] == "REPLICATING"
        assert partition["owner"].startswith("health-w1")
        assert partition["recordsCopied"] == 250
        assert partition["lagRecords"] == 0
        assert partition["latencyMs"] is not None and partition["latencyMs"] >= 0
    assert set(body["clusterPing"].values()) == {1}
    alias = describe(fleet_kafka, arn)["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    assert asyncio.run(count_records(target_bootstrap, f"{alias}.{topic}")) == 500

    exposition = fleet_http.get("/metrics").text
    for partition in (0, 1):
        labels = {"account_id": ACCOUNT, "replicator_name": unique, "topic": topic, "partition": partition}
        assert metric_value(exposition, "MessageLag", **labels) == 0
        assert metric_value(exposition, "ReplicationLatency", **labels) is not None
        assert metric_value(exposition, "ferry_replicated_records_total", **labels) == 250
    ping = {"account_id": ACCOUNT, "replicator_name": unique, "cluster_alias": alias}
    assert metric_value(exposition, "KafkaClusterPingSuccessCount", **ping) == 1
    assert "# TYPE ReplicatorThroughput gauge" in exposition


class TcpForwarder:
    """A switchable TCP forwarder on a fixed port: 'off' means the port refuses connections."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def on(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.mark.slow
def test_unreachable_target_fails_with_a_reason_and_recovers(
    fleet_kafka: Any, fleet_http: httpx.Client, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    topic = f"{unique}-u"
    asyncio.run(create_topic(source_bootstrap, topic, 1))
    forwarder = TcpForwarder(int(target_bootstrap.rsplit(":", 1)[1]))
    try:
        request = create_request(unique, source_bootstrap, f"127.0.0.1:{forwarder.port}", [topic])
        arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
        failed = wait_until(
            "FAILED", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "FAILED" and d, 60
        )
        assert failed["StateInfo"]["Code"] == "TARGET_CLUSTER_UNREACHABLE"
        assert f"127.0.0.1:{forwarder.port}" in failed["StateInfo"]["Message"]
        target_alias = failed["ReplicationInfoList"][0]["TargetKafkaClusterAlias"]
        assert metrics(fleet_http, arn)["clusterPing"][target_alias] == 0

        forwarder.on()  # the target becomes reachable: the state model says this recovers by itself
        recovered = wait_until(
            "RUNNING again", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60
        )
        assert "StateInfo" not in recovered or not recovered["StateInfo"].get("Code")
        asyncio.run(produce(source_bootstrap, topic, 50, 1, "u"))
        alias = recovered["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
        wait_until(
            "records copied after recovery",
            lambda: asyncio.run(count_records(target_bootstrap, f"{alias}.{topic}")) == 50,
            60,
        )
    finally:
        forwarder.close()


@pytest.mark.slow
def test_a_source_port_that_is_not_kafka_fails_with_a_reason_within_30s(
    fleet_kafka: Any, fleet_api: str, unique: str, target_bootstrap: str
) -> None:
    """The bootstrap points at a live port that speaks HTTP (the API's own): FAILED with a readable reason."""
    not_kafka = fleet_api.removeprefix("http://")
    created = time.monotonic()
    arn = fleet_kafka.create_replicator(**create_request(unique, not_kafka, target_bootstrap, [f"{unique}-.*"]))[
        "ReplicatorArn"
    ]
    failed = wait_until(
        "FAILED", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "FAILED" and d, 30, interval=0.5
    )
    print(f"a port that is not Kafka: FAILED after {time.monotonic() - created:.1f}s")
    assert failed["StateInfo"]["Code"] == "SOURCE_CLUSTER_UNREACHABLE"
    assert not_kafka in failed["StateInfo"]["Message"]
    assert "did not answer as a Kafka broker" in failed["StateInfo"]["Message"]


@pytest.mark.slow
def test_a_topic_list_matching_nothing_is_explained_until_fixed(
    fleet_kafka: Any, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    topic = f"{unique}-r"
    asyncio.run(create_topic(source_bootstrap, topic, 1))
    request = create_request(unique, source_bootstrap, target_bootstrap, [f"{unique}-typo.*"])
    arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
    running = wait_until(
        "RUNNING with a notice",
        lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d.get("StateInfo") and d,
        60,
    )
    assert running["StateInfo"]["Code"] == "NO_MATCHING_TOPICS"
    assert f"{unique}-typo.*" in running["StateInfo"]["Message"]

    fleet_kafka.update_replication_info(
        ReplicatorArn=arn,
        CurrentVersion=running["CurrentVersion"],
        SourceKafkaClusterId=f"{unique}-src",
        TargetKafkaClusterId=f"{unique}-tgt",
        TopicReplication={
            "TopicsToReplicate": [f"{unique}-r"],
            "TopicsToExclude": [],
            "CopyTopicConfigurations": True,
            "CopyAccessControlListsForTopics": True,
            "DetectAndCopyNewTopics": True,
        },
    )
    fixed = wait_until(
        "RUNNING without the notice",
        lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and not d.get("StateInfo") and d,
        60,
    )
    asyncio.run(produce(source_bootstrap, topic, 20, 1, "r"))
    alias = fixed["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    wait_until(
        "records copied once the list matches",
        lambda: asyncio.run(count_records(target_bootstrap, f"{alias}.{topic}")) == 20,
        60,
    )


@pytest.mark.slow
def test_a_recreated_source_topic_is_copied_again_and_said_in_state_info(
    fleet_kafka: Any, fleet_http: httpx.Client, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    topic = f"{unique}-again"
    asyncio.run(create_topic(source_bootstrap, topic, 1))
    asyncio.run(produce(source_bootstrap, topic, 1000, 1, "old"))
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    running = wait_until("RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
    wait_until("1,000 records", lambda: asyncio.run(count_records(target_bootstrap, target)) == 1000, 60)

    asyncio.run(recreate_topic(source_bootstrap, topic))
    asyncio.run(produce(source_bootstrap, topic, 300, 1, "new"))
    wait_until("the new topic's 300 records", lambda: asyncio.run(count_records(target_bootstrap, target)) == 1300, 60)
    notice = wait_until(
        "StateInfo telling of the re-creation",
        lambda: (
            (info := describe(fleet_kafka, arn).get("StateInfo") or {}).get("Code") == "SOURCE_TOPIC_RECREATED" and info
        ),
        30,
    )
    assert topic in notice["Message"]
    assert describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING"
    # The notice is in the database; the partition's reading is the owner's next report to Redis, a tick later.
    partition = wait_until(
        "the partition's report telling of the re-creation",
        lambda: (p := metrics(fleet_http, arn)["partitions"][0])["health"] == "SOURCE_RECREATED" and p,
        30,
    )
    assert partition["errors"].get("SOURCE_RECREATED") == 1, partition


async def produce_backfill(bootstrap: str, topic: str, count: int, timestamp_ms: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=f"old-{i}".encode(), timestamp_ms=timestamp_ms + i) for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@pytest.mark.slow
def test_a_topic_created_after_a_latest_replicator_started_is_copied_whole(
    fleet_kafka: Any, fleet_db: Engine, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    existing = f"{unique}-was"
    asyncio.run(create_topic(source_bootstrap, existing, 1))
    asyncio.run(produce(source_bootstrap, existing, 50, 1, "before"))
    request = create_request(
        unique, source_bootstrap, target_bootstrap, [f"{unique}-.*"], StartingPosition={"Type": "LATEST"}
    )
    arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
    running = wait_until("RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    alias = running["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    wait_until("the existing topic's copy", lambda: (existing, 0) in unit_owners(fleet_db, arn), 30)

    backfilled = f"{unique}-new"
    asyncio.run(create_topic(source_bootstrap, backfilled, 2))
    # Older than the replicator, within the default retention (7 days) of both clusters.
    days_ago = int(time.time() * 1000) - 3 * 24 * 3600 * 1000
    asyncio.run(produce_backfill(source_bootstrap, backfilled, 300, days_ago))
    wait_until(
        "every backfilled record of the new topic",
        lambda: asyncio.run(count_records(target_bootstrap, f"{alias}.{backfilled}")) == 300,
        60,
    )
    # LATEST still held for the topic that existed at the start.
    asyncio.run(produce(source_bootstrap, existing, 20, 1, "after"))
    counts: list[int] = []

    def only_the_later_records() -> bool:
        counts.append(asyncio.run(count_records(target_bootstrap, f"{alias}.{existing}")))
        return counts[-1] == 20

    with contextlib.suppress(AssertionError):
        wait_until("only the records produced after the start", only_the_later_records, 60)
    assert counts[-1] == 20, f"the existing topic's copy holds {counts[-1]} records (seen: {sorted(set(counts))})"


def test_worker_and_beat_logs_hold_no_secret_access_key(fleet: Fleet, fleet_key: IssuedKey) -> None:
    """After this module's replicators ran, nothing of the access key's secret is in any process's log."""
    logs = {path.name: path.read_text(errors="replace") for path in fleet.logs.glob("*.log")}
    assert logs, "the fleet wrote logs"
    for name, text in logs.items():
        assert fleet_key.secret_access_key not in text, name
