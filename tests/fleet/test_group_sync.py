"""Consumer group offset sync with a real fleet and real brokers (issue 6).

- Groups that consumed part of plain, transactional and compacted source topics resume on the target exactly
  at the translated position: no record skipped, none re-read.
- A group with active members on the target is never overwritten; a target group is never moved back unless
  the source group moved back.
- ENHANCED mode: a planned failover to the target and a failback to the source with Ferry's operation; a
  consumer processes every record exactly once across source, target and source again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import Engine, text

from models.access_keys import IssuedKey
from models.settings import FerrySettings
from tests.conftest import SigV4HttpxAuth
from tests.exposition import metric_value
from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe
from workers.engine.admin import create_topic as admin_create_topic

pytestmark = pytest.mark.slow

ACCOUNT = "000000000000"


@pytest.fixture(scope="module")
def fleet_settings(fleet_settings: FerrySettings) -> FerrySettings:
    return fleet_settings.model_copy(update={"group_sync_interval_seconds": 1.0})


@pytest.fixture(scope="module")
def worker(fleet: Fleet) -> Iterator[None]:
    fleet.start_worker("groups-w1")
    yield


def request(name: str, source: str, target: str, topics: list[str], groups: list[str], **extra: Any) -> dict[str, Any]:
    naming = extra.pop("naming", "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS")
    mode = extra.pop("mode", "LEGACY")
    created = create_request(
        name,
        source,
        target,
        topics,
        TopicNameConfiguration={"Type": naming},
        # Target topics keep default configs: a compacting target would remove records under the test.
        CopyTopicConfigurations=False,
    )
    created["ReplicationInfoList"][0]["ConsumerGroupReplication"] = {
        "ConsumerGroupsToReplicate": groups,
        "ConsumerGroupOffsetSyncMode": mode,
    }
    return created


# ---------------------------------------------------------------------- Kafka helpers


async def read_partition(bootstrap: str, tp: TopicPartition) -> list[tuple[int, bytes]]:
    """Every committed record of a partition as (offset, value)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 30
        while await consumer.position(tp) < end and time.monotonic() < deadline:
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                out += [(r.offset, r.value) for r in records]
        return out
    finally:
        await consumer.stop()


async def commit_on(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit as a member-less client, like a consumer that processed records up to these offsets and left."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The group's committed offsets; empty while a fresh cluster is still creating its offsets topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
        return {}
    finally:
        await admin.close()
    return {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}


async def first_record_as_member(bootstrap: str, group: str, topic: str) -> dict[int, bytes | None]:
    """Join ``group`` on ``topic`` (a real subscribed consumer) and return the first value it gets per partition."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="latest"
    )
    await consumer.start()
    firsts: dict[int, bytes | None] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assigned = consumer.assignment()
            if assigned and all(tp.partition in firsts for tp in assigned):
                break
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                if records and tp.partition not in firsts:
                    firsts[tp.partition] = records[0].value
            for tp in assigned:
                if tp.partition not in firsts and await consumer.position(tp) >= (await consumer.end_offsets([tp]))[tp]:
                    firsts[tp.partition] = None
    finally:
        await consumer.stop()
    return firsts


async def produce_values(bootstrap: str, topic: str, values: list[tuple[int, bytes, bytes | None]]) -> dict[bytes, int]:
    """Produce (partition, value, key) records; return each value's source offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v, partition=p) for p, v, k in values]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {v: m.offset for (_, v, _), m in zip(values, metadata, strict=True)}


def sync_state(db: Engine, arn: str, group: str) -> dict[tuple[str, int], str]:
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.topic, s.partition, s.status FROM group_sync_state s JOIN replicators r "
                "ON r.id = s.replicator_id WHERE r.arn = :arn AND s.group_id = :g"
            ),
            {"arn": arn, "g": group},
        )
        return {(str(r[0]), int(r[1])): str(r[2]) for r in rows}


def expected_position(target: list[tuple[int, bytes]], source_offset: dict[bytes, int], committed_offset: int) -> int:
    """Target offset of the first copied record whose source offset is at or after the committed offset."""
    later = [offset for offset, value in target if source_offset[value] >= committed_offset]
    return min(later) if later else (target[-1][0] + 1 if target else 0)


# ---------------------------------------------------------------------- tests


async def _compacted_with_gaps(bootstrap: str, topic: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        stack.push_async_callback(admin.close)
        await admin_create_topic(
            admin,
            topic,
            1,
            1,
            {
                "cleanup.policy": "compact",
                "segment.ms": "100",
                "min.cleanable.dirty.ratio": "0.001",
                "min.compaction.lag.ms": "0",
                "delete.retention.ms": "100",
            },
        )


def test_groups_resume_exactly_on_the_target(
    worker: None,
    fleet: Fleet,
    fleet_kafka: Any,
    fleet_api: str,
    fleet_key: IssuedKey,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    plain, txn, compact = f"{unique}-plain", f"{unique}-txn", f"{unique}-compact"
    asyncio.run(_compacted_with_gaps(source_bootstrap, compact))
    round_number = [0]
    offset_of: dict[bytes, int] = {}

    def compaction_left_gaps() -> bool:
        # Each round writes unique keys between rewritten ones (the later records roll the 100 ms segments); the
        # cleaner removes the older rewrites, leaving gaps between the records it keeps.
        r = round_number[0]
        round_number[0] += 1
        batch = [(0, f"c{r}-{k}".encode(), (f"u{r}-{k}" if k % 2 == 0 else f"dup{k % 3}").encode()) for k in range(20)]
        offset_of.update(asyncio.run(produce_values(source_bootstrap, compact, batch)))
        offsets = [o for o, _ in asyncio.run(read_partition(source_bootstrap, TopicPartition(compact, 0)))]
        return any(b - a > 1 for a, b in itertools.pairwise(offsets))

    wait_until("compaction to leave offset gaps on the source", compaction_left_gaps, 90, interval=0.5)

    asyncio.run(create_topic(source_bootstrap, plain, 2))
    asyncio.run(create_topic(source_bootstrap, txn, 1))
    offset_of.update(
        asyncio.run(produce_values(source_bootstrap, plain, [(i % 2, f"p-{i}".encode(), None) for i in range(400)]))
    )
    offset_of.update(asyncio.run(_transactions(source_bootstrap, txn, f"{unique}-tx")))

    groups = [f"{unique}-g.*"]
    created = fleet_kafka.create_replicator(
        **request(unique, source_bootstrap, target_bootstrap, [f"{unique}-.*"], groups)
    )
    arn = created["ReplicatorArn"]
    wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)
    alias = describe(fleet_kafka, arn)["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]

    partitions = [TopicPartition(t, p) for t, p in [(plain, 0), (plain, 1), (txn, 0), (compact, 0)]]

    def copied() -> bool:
        # Source compaction may still remove records (never add): every value the source holds now is on the target.
        for tp in partitions:
            source_values = {v for _, v in asyncio.run(read_partition(source_bootstrap, tp))}
            target_tp = TopicPartition(f"{alias}.{tp.topic}", tp.partition)
            if not source_values <= {v for _, v in asyncio.run(read_partition(target_bootstrap, target_tp))}:
                return False
        return True

    wait_until("every source record on the target", copied, 90)
    sources = {tp: asyncio.run(read_partition(source_bootstrap, tp)) for tp in partitions}
    targets = {
        tp: asyncio.run(read_partition(target_bootstrap, TopicPartition(f"{alias}.{tp.topic}", tp.partition)))
        for tp in partitions
    }

    # Committed offsets: inside runs, at a transaction marker, inside an aborted range, in a compaction gap, at the
    # start, and at the end of everything copied.
    compact_offsets = [o for o, _ in sources[TopicPartition(compact, 0)]]
    compact_gap = next(a + 1 for a, b in itertools.pairwise(compact_offsets) if b - a > 1)
    txn_offsets = [o for o, _ in sources[TopicPartition(txn, 0)]]
    txn_gaps = [a + 1 for a, b in itertools.pairwise(txn_offsets) if b - a > 1]
    cases: dict[str, dict[TopicPartition, int]] = {
        f"{unique}-g-plain": {TopicPartition(plain, 0): 77, TopicPartition(plain, 1): 0},
        f"{unique}-g-end": {TopicPartition(plain, 1): 200},
        f"{unique}-g-marker": {TopicPartition(txn, 0): txn_gaps[0]},
        f"{unique}-g-aborted": {TopicPartition(txn, 0): txn_gaps[0] + 5},
        f"{unique}-g-txmid": {TopicPartition(txn, 0): txn_offsets[len(txn_offsets) // 2]},
        f"{unique}-g-compact": {TopicPartition(compact, 0): compact_gap},
    }
    for group, offsets in cases.items():
        asyncio.run(commit_on(source_bootstrap, group, offsets))

    expected = {
        group: {
            TopicPartition(f"{alias}.{tp.topic}", tp.partition): expected_position(targets[tp], offset_of, offset)
            for tp, offset in offsets.items()
        }
        for group, offsets in cases.items()
    }
    for group, wanted in expected.items():
        wait_until(
            f"group {group} synced to {wanted}",
            lambda group=group, wanted=wanted: asyncio.run(committed(target_bootstrap, group)) == wanted,
            30,
        )

    # A real consumer of each group on the target first reads exactly the first copied record at or after its
    # committed source offset: nothing skipped, nothing read again.
    for group, offsets in cases.items():
        for tp, offset in offsets.items():
            later = sorted((offset_of[v], v) for _, v in targets[tp] if offset_of[v] >= offset)
            firsts = asyncio.run(first_record_as_member(target_bootstrap, group, f"{alias}.{tp.topic}"))
            assert firsts.get(tp.partition) == (later[0][1] if later else None), (group, tp, offset)

    # The translation API gives the same answer for consumers without groups, with a zero re-read bound.
    with httpx.Client(base_url=fleet_api, auth=SigV4HttpxAuth(fleet_key)) as client:
        for group, offsets in cases.items():
            for tp, offset in offsets.items():
                response = client.get(
                    f"/replication/v1/replicators/{urllib.parse.quote(arn, safe='')}/offset-translation",
                    params={"topic": tp.topic, "partition": tp.partition, "offset": offset},
                )
                assert response.status_code == 200, response.text
                body = response.json()
                target_tp = TopicPartition(f"{alias}.{tp.topic}", tp.partition)
                assert body["targetOffset"] == expected[group][target_tp], (group, body)
                assert body["maxRecordsReread"] == 0, body
        metrics = client.get("/metrics").text
    mine = {"account_id": ACCOUNT, "replicator_name": unique}
    assert metric_value(metrics, "ConsumerGroupCount", **mine) == len(cases)
    assert metric_value(metrics, "ConsumerGroupOffsetSyncFailure", **mine) == 0
    for group in cases:
        assert metric_value(metrics, "ConsumerGroupTranslationLag", **mine, consumer_group=group) == 0
        assert metric_value(metrics, "ferry_consumer_group_translation_lag_records", **mine, consumer_group=group) == 0

    # Never backwards: the target group moved on by itself (consumers ran there); the sync leaves it ...
    group = f"{unique}-g-plain"
    target_tp = TopicPartition(f"{alias}.{plain}", 0)
    asyncio.run(commit_on(target_bootstrap, group, {target_tp: 150}))
    wait_until(
        "the sync to see the target group ahead",
        lambda: sync_state(fleet_db, arn, group).get((plain, 0)) == "TARGET_AHEAD",
        20,
    )
    assert asyncio.run(committed(target_bootstrap, group))[target_tp] == 150
    # ... unless the source group itself moved back.
    asyncio.run(commit_on(source_bootstrap, group, {TopicPartition(plain, 0): 10}))
    wait_until(
        "a source rewind to be followed",
        lambda: asyncio.run(committed(target_bootstrap, group)).get(target_tp) == 10,
        20,
    )

    # An active group on the target is never overwritten.
    active = f"{unique}-g-active"
    asyncio.run(_active_group_is_left_alone(source_bootstrap, target_bootstrap, fleet_db, arn, active, plain, alias))


async def _transactions(bootstrap: str, topic: str, transactional_id: str) -> dict[bytes, int]:
    """Six transactions of 20 records, the 2nd and 5th aborted; returns each value's source offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    await producer.start()
    offsets: dict[bytes, int] = {}
    try:
        for round_number in range(6):
            await producer.begin_transaction()
            values = [f"t{round_number}-{i}".encode() for i in range(20)]
            futures = [await producer.send(topic, value, partition=0) for value in values]
            for value, metadata in zip(values, await asyncio.gather(*futures), strict=True):
                offsets[value] = metadata.offset
            if round_number % 3 == 1:
                await producer.abort_transaction()
            else:
                await producer.commit_transaction()
    finally:
        await producer.stop()
    return offsets


async def _active_group_is_left_alone(
    source: str, target: str, db: Engine, arn: str, group: str, topic: str, alias: str
) -> None:
    target_topic = f"{alias}.{topic}"
    await commit_on(target, group, {TopicPartition(target_topic, 0): 5, TopicPartition(target_topic, 1): 5})
    member = AIOKafkaConsumer(target_topic, bootstrap_servers=target, group_id=group, enable_auto_commit=False)
    await member.start()
    try:
        deadline = time.monotonic() + 30
        while not member.assignment() and time.monotonic() < deadline:
            await member.getmany(timeout_ms=200)
        assert member.assignment(), "the target consumer joined its group"
        await commit_on(source, group, {TopicPartition(topic, 0): 100, TopicPartition(topic, 1): 100})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await member.getmany(timeout_ms=200)  # stays an active member meanwhile
            if sync_state(db, arn, group).get((topic, 0)) == "ACTIVE_ON_TARGET":
                break
        assert sync_state(db, arn, group).get((topic, 0)) == "ACTIVE_ON_TARGET"
        seen = await committed(target, group)
        assert seen[TopicPartition(target_topic, 0)] == 5, "an active target group was overwritten"
    finally:
        await member.stop()
    # Once its members left, the group follows the source again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (await committed(target, group)).get(TopicPartition(target_topic, 0)) == 100:
            break
        await asyncio.sleep(0.25)
    assert (await committed(target, group)).get(TopicPartition(target_topic, 0)) == 100


async def consume(bootstrap: str, group: str, topic: str, *, at_least: int | None = None) -> list[bytes]:
    """A subscribed group member that processes records and commits after each batch. Stops after ``at_least``
    records, or (None) once its position reached the end of every partition."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    processed: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300, max_records=50)
            for records in batches.values():
                processed += [r.value for r in records]
            if batches:
                await consumer.commit()
            if at_least is not None and len(processed) >= at_least:
                break
            assigned = consumer.assignment()
            if at_least is None and assigned:
                ends = await consumer.end_offsets(list(assigned))
                if len(assigned) == 2 and all([await consumer.position(tp) >= ends[tp] for tp in assigned]):
                    break
        else:
            pytest.fail(f"consumer of {group} on {bootstrap} did not finish: {len(processed)} records")
    finally:
        await consumer.stop()
    return processed


def run_failover(client: httpx.Client, arn: str, group: str) -> dict[str, Any]:
    base = f"/replication/v1/replicators/{urllib.parse.quote(arn, safe='')}/failover"
    started = client.post(base, json={"consumerGroups": [group], "gracePeriodSeconds": 2, "timeoutSeconds": 90})
    assert started.status_code == 200, started.text
    operation = started.json()["operationId"]
    progress: list[str] = []

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"{base}/{operation}").json()
        if body.get("progress") and body["progress"] not in progress:
            progress.append(body["progress"])
        return body if body["state"] in ("SUCCEEDED", "FAILED") else None

    body = wait_until(f"failover {operation} to finish", finished, 100)
    assert body["state"] == "SUCCEEDED", body
    assert any("producers" in line for line in progress), progress
    return body


def over_scram(created: dict[str, Any], stack: dict[str, Any]) -> dict[str, Any]:
    """The same request with both clusters reached over SASL_SSL with SCRAM-SHA-512 (the stack's listeners and
    secrets); the test's own clients keep using the PLAINTEXT listeners of the same clusters."""
    secure = stack["secure"]
    side_of = {address: side for side, address in stack["kafka"].items()}
    for entry in created["KafkaClusters"]:
        apache = entry["ApacheKafkaCluster"]
        apache["BootstrapBrokerString"] = secure[side_of[apache["BootstrapBrokerString"]]]["sasl_scram"]
        entry["EncryptionInTransit"] = {"EncryptionType": "TLS", "RootCaCertificate": secure["secrets"]["ca"]}
        entry["ClientAuthentication"] = {
            "SaslScram": {"Mechanism": "SHA512", "SecretArn": secure["secrets"]["scram_sha512"]}
        }
    return created


@pytest.mark.parametrize("transport", ["plaintext", "sasl-scram-over-tls"])
def test_enhanced_failover_and_failback_process_every_record_once(
    worker: None,
    fleet_kafka: Any,
    fleet_api: str,
    fleet_key: IssuedKey,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
    stack: dict[str, Any],
    transport: str,
) -> None:
    topic, group = f"{unique}-orders", f"{unique}-app"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    on_source = [f"a-{i}".encode() for i in range(300)]
    asyncio.run(produce_values(source_bootstrap, topic, [(i % 2, v, None) for i, v in enumerate(on_source)]))
    arns = {}
    for name, src, tgt in (("ab", source_bootstrap, target_bootstrap), ("ba", target_bootstrap, source_bootstrap)):
        wanted = request(f"{unique}-{name}", src, tgt, [topic], [group], naming="IDENTICAL", mode="ENHANCED")
        if transport != "plaintext":
            wanted = over_scram(wanted, stack)
        arns[name] = fleet_kafka.create_replicator(**wanted)["ReplicatorArn"]
    for arn in arns.values():
        wait_until("RUNNING", lambda arn=arn: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)

    # 1. The application consumes part of the topic on the source, then stops (planned failover).
    processed = asyncio.run(consume(source_bootstrap, group, topic, at_least=120))
    with httpx.Client(base_url=fleet_api, timeout=30, auth=SigV4HttpxAuth(fleet_key)) as client:

        def partner_found() -> bool:
            url = f"/replication/v1/replicators/{urllib.parse.quote(arns['ab'], safe='')}/metrics"
            groups = client.get(url).json()["consumerGroups"]
            partner = groups.get("enhancedPartner") or ""
            return groups.get("mode") == "ENHANCED" and bool(partner) and not partner.startswith("none")

        wait_until("the ENHANCED partner to be found", partner_found, 30)
        over = run_failover(client, arns["ab"], group)
        positions = {(p["topic"], p["partition"]): p for p in over["result"]["groups"][group]}
        assert set(positions) == {(topic, 0), (topic, 1)}
        assert all(p["maxReread"] == 0 for p in positions.values()), positions

        # 2. Producers and the application move to the target; the application reads the rest and part of what
        #    producers write there, then stops (planned failback).
        on_target = [f"b-{i}".encode() for i in range(100)]
        asyncio.run(produce_values(target_bootstrap, topic, [(i % 2, v, None) for i, v in enumerate(on_target)]))
        processed += asyncio.run(consume(target_bootstrap, group, topic, at_least=len(on_source) - len(processed) + 40))
        run_failover(client, arns["ba"], group)

    # 3. Back on the source: the application reads what is left.
    processed += asyncio.run(consume(source_bootstrap, group, topic))
    duplicates = {v for v in processed if processed.count(v) > 1}
    assert not duplicates, f"{len(duplicates)} records processed twice, e.g. {sorted(duplicates)[:5]}"
    assert sorted(processed) == sorted(on_source + on_target), "every record processed exactly once"


# Long enough for the failover's first steps (a step per metadata pass) on a worker busy with this module's other
# replicators, whose passes took 3-4 s each in a full run: with 8 s it could time out before reaching the consumers.
FAILOVER_TIMEOUT_S = 20


def test_failover_shows_what_it_waits_for_and_fails_with_the_reason(
    worker: None,
    fleet_kafka: Any,
    fleet_api: str,
    fleet_key: IssuedKey,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    topic, group = f"{unique}-t", f"{unique}-busy"
    asyncio.run(create_topic(source_bootstrap, topic, 1))
    asyncio.run(produce_values(source_bootstrap, topic, [(0, f"v-{i}".encode(), None) for i in range(20)]))
    arn = fleet_kafka.create_replicator(**request(unique, source_bootstrap, target_bootstrap, [topic], [group]))[
        "ReplicatorArn"
    ]
    wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)
    body, progress = asyncio.run(
        _failover_with_a_consumer_still_running(fleet_api, fleet_key, arn, source_bootstrap, group, topic)
    )
    assert body["state"] == "FAILED", body
    assert any("producers to stop" in line for line in progress), progress
    assert group in body["error"] and "Stable" in body["error"], body["error"]
    assert body["error"].startswith(f"timed out after {FAILOVER_TIMEOUT_S}s while waiting for consumers to stop"), body


async def _failover_with_a_consumer_still_running(
    api: str, key: IssuedKey, arn: str, source: str, group: str, topic: str
) -> tuple[dict[str, Any], list[str]]:
    member = AIOKafkaConsumer(topic, bootstrap_servers=source, group_id=group, auto_offset_reset="earliest")
    await member.start()
    progress: list[str] = []
    try:
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S + 40
        while not member.assignment() and time.monotonic() < deadline:
            await member.getmany(timeout_ms=200)
        base = f"/replication/v1/replicators/{urllib.parse.quote(arn, safe='')}/failover"
        async with httpx.AsyncClient(base_url=api, timeout=30, auth=SigV4HttpxAuth(key)) as client:
            started = await client.post(
                base, json={"consumerGroups": [group], "gracePeriodSeconds": 1, "timeoutSeconds": FAILOVER_TIMEOUT_S}
            )
            assert started.status_code == 200, started.text
            operation = started.json()["operationId"]
            missing = await client.get(f"{base}/{uuid.uuid4()}")
            assert missing.status_code == 404 and missing.headers["x-amzn-ErrorType"] == "NotFoundException"
            while time.monotonic() < deadline:
                await member.getmany(timeout_ms=200)  # the consumer keeps running on the source
                body: dict[str, Any] = (await client.get(f"{base}/{operation}")).json()
                if body.get("progress") and body["progress"] not in progress:
                    progress.append(body["progress"])
                if body["state"] in ("SUCCEEDED", "FAILED"):
                    return body, progress
    finally:
        await member.stop()
    pytest.fail(f"failover did not finish: {progress}")


def test_an_operation_nobody_advances_reads_failed_with_the_reason(
    fleet_kafka: Any,
    fleet_api: str,
    fleet_key: IssuedKey,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    arn = fleet_kafka.create_replicator(**request(unique, source_bootstrap, target_bootstrap, ["x"], [".*"]))[
        "ReplicatorArn"
    ]
    operation = uuid.uuid4()
    with fleet_db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO failover_operations (id, replicator_id, groups, grace_seconds, timeout_seconds, state, "
                "progress, created_at, updated_at) SELECT :id, id, '[\"g\"]', 1, 60, 'WAITING_FOR_LAG', "
                "'waiting for replication to catch up: 5 records behind on 1 partitions', now() - interval '1 hour', "
                "now() - interval '1 hour' FROM replicators WHERE arn = :arn"
            ),
            {"id": operation, "arn": arn},
        )
    url = f"/replication/v1/replicators/{urllib.parse.quote(arn, safe='')}/failover/{operation}"
    body = httpx.get(f"{fleet_api}{url}", auth=SigV4HttpxAuth(fleet_key)).json()
    assert body["state"] == "FAILED", body
    assert body["error"].startswith("timed out after 60s while waiting for replication to catch up"), body
