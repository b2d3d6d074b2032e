"""The auditor as users run it: through the API and the ``ferry audit`` command, against a replicator the fleet
runs. A faithful copy audits consistent; a record written by hand into a target partition is reported as
unexpected, and a target range removed with DeleteRecords as missing, each with its offsets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from sqlalchemy import Engine, text

from models.access_keys import IssuedKey
from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.records import all_delivered, produce_numbered
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe

PARTITIONS = 2
RECORDS = 3_000  # several fetches per partition, and more than one progress report's worth


@pytest.fixture(scope="module", autouse=True)
def _worker(fleet: Fleet) -> Any:
    fleet.start_worker("audit-w1")
    yield
    fleet.stop("audit-w1")


def mapped_to_end(db: Engine, arn: str, topic: str, ends: dict[int, int]) -> bool:
    """The offset map's heads reached the source's end on every partition (the audit can check everything)."""
    with db.connect() as conn:
        heads = dict(
            conn.execute(
                text(
                    "SELECT h.partition, h.next_source_offset FROM offset_map_heads h JOIN replicators r "
                    "ON r.id = h.replicator_id WHERE r.arn = :arn AND h.topic = :topic"
                ),
                {"arn": arn, "topic": topic},
            ).all()
        )
    return all(heads.get(p, -1) >= end for p, end in ends.items())


async def source_ends(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def write_by_hand(bootstrap: str, topic: str, partition: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"written by hand", partition=partition)
    finally:
        await producer.stop()


async def delete_target_records(bootstrap: str, topic: str, partition: int, before: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, partition): RecordsToDelete(before_offset=before)})
    finally:
        await admin.close()


def ferry_audit(fleet_api: str, key: IssuedKey, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": key.access_key_id,
        "AWS_SECRET_ACCESS_KEY": key.secret_access_key,
        "AWS_REGION": "us-east-1",
    }
    env.pop("AWS_PROFILE", None)
    return subprocess.run(
        [sys.executable, "-m", "cli", "audit", "--endpoint-url", fleet_api, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def audit_over_http(http: httpx.Client, arn: str, body: dict[str, Any]) -> dict[str, Any]:
    base = f"/replication/v1/replicators/{quote(arn, safe='')}/audits"
    started = http.post(base, json=body)
    assert started.status_code == 200, started.text
    audit_id = started.json()["auditId"]
    return wait_until(
        "the audit to finish",
        lambda: (s := http.get(f"{base}/{audit_id}").json())["state"] in ("SUCCEEDED", "FAILED") and s,
        120,
        interval=0.5,
    )


@pytest.mark.slow
def test_the_auditor_finds_a_hand_written_record_and_a_deleted_target_range(
    fleet_kafka: Any,
    fleet_http: httpx.Client,
    fleet_api: str,
    fleet_key: IssuedKey,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    topic = f"{unique}-audited"
    asyncio.run(create_topic(source_bootstrap, topic, PARTITIONS))
    asyncio.run(produce_numbered(source_bootstrap, topic, range(RECORDS), PARTITIONS))
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    running = wait_until("RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    target = f"{running['ReplicationInfoList'][0]['SourceKafkaClusterAlias']}.{topic}"
    assert all_delivered(target_bootstrap, target, RECORDS, 60).lost == 0
    ends = asyncio.run(source_ends(source_bootstrap, topic))
    wait_until("the offset map to cover the source", lambda: mapped_to_end(fleet_db, arn, topic, ends), 60)

    # A faithful copy, audited with the CLI: exit status 0, every record matched.
    clean = ferry_audit(fleet_api, fleet_key, "--replicator-arn", arn, "--topic", topic)
    assert clean.returncode == 0, clean.stderr + clean.stdout
    status = json.loads(clean.stdout)
    assert status["state"] == "SUCCEEDED" and status["consistent"] is True
    assert sum(p["matched"] for p in status["partitions"]) == RECORDS
    assert all(p["unchecked"] == [] for p in status["partitions"])

    # Damage: a record written by hand into target partition 0, with 200 more records copied after it; target
    # partition 1 loses its first 300 records to DeleteRecords.
    asyncio.run(write_by_hand(target_bootstrap, target, 0))
    asyncio.run(produce_numbered(source_bootstrap, topic, range(RECORDS, RECORDS + 200), PARTITIONS))
    assert all_delivered(target_bootstrap, target, RECORDS + 200 + 1, 60).lost == 0
    ends = asyncio.run(source_ends(source_bootstrap, topic))
    wait_until("the offset map to cover the source", lambda: mapped_to_end(fleet_db, arn, topic, ends), 60)
    asyncio.run(delete_target_records(target_bootstrap, target, 1, 300))

    damaged = audit_over_http(fleet_http, arn, {"topic": topic})
    assert damaged["state"] == "SUCCEEDED", damaged
    assert damaged["consistent"] is False
    by_partition = {p["partition"]: p for p in damaged["partitions"]}
    first, second = by_partition[0], by_partition[1]
    assert first["unexpected"]["count"] == 1, first
    assert first["unexpected"]["targetOffsets"] == [RECORDS // PARTITIONS]  # right after the first copy
    assert (first["missing"]["count"], first["differing"]["count"], first["duplicated"]["count"]) == (0, 0, 0)
    assert second["missing"]["count"] == 300, second
    assert second["missing"]["sourceOffsets"][:3] == [0, 1, 2]
    assert second["unexpected"]["count"] == 0 and second["matched"] == (RECORDS + 200) // PARTITIONS - 300

    # The same through the CLI: exit status 1 (differences found); one partition, a range.
    ranged = ferry_audit(
        fleet_api, fleet_key, "--replicator-arn", arn, "--topic", topic, "--partition", "1", "--to-offset", "500"
    )
    assert ranged.returncode == 1, ranged.stderr + ranged.stdout
    only = json.loads(ranged.stdout)["partitions"]
    # The target records past offset 500's copy are outside the range: not counted as unexpected.
    assert [(p["partition"], p["missing"]["count"], p["matched"], p["unexpected"]["count"]) for p in only] == [
        (1, 300, 200, 0)
    ]


def test_bad_audit_requests_get_clear_errors(
    fleet_kafka: Any, fleet_http: httpx.Client, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    topic = f"{unique}-scope"
    asyncio.run(create_topic(source_bootstrap, topic, 1))
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    base = f"/replication/v1/replicators/{quote(arn, safe='')}/audits"
    outside = fleet_http.post(base, json={"topic": "not-replicated"})
    assert outside.status_code == 400 and "not replicated by this replicator" in outside.json()["message"]
    huge = fleet_http.post(base, json={"topic": topic, "fromOffset": 2**70})
    assert huge.status_code == 400 and "fromOffset" in huge.json()["message"]
    backwards = fleet_http.post(base, json={"topic": topic, "fromOffset": 10, "toOffset": 5})
    assert backwards.status_code == 400 and "below fromOffset" in backwards.text
    bad_id = fleet_http.get(f"{base}/not-an-id")
    assert bad_id.status_code == 400 and "is not an audit id" in bad_id.json()["message"]
    unknown = fleet_http.get(f"{base}/00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404
    other = fleet_http.post(f"/replication/v1/replicators/{quote(arn + 'x', safe='')}/audits", json={"topic": topic})
    assert other.status_code == 404
