"""The offset map survives a worker killed mid-stream (SIGKILL): translations afterwards never skip a record, and
the records re-read stay within the bound the API states. A module of its own: it kills its workers."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from sqlalchemy import Engine

from models.access_keys import IssuedKey
from models.settings import FerrySettings
from tests.conftest import SigV4HttpxAuth
from tests.fleet.conftest import Fleet, unit_owners, wait_until
from tests.fleet.test_fleet_lifecycle import create_topic, describe
from tests.fleet.test_group_sync import commit_on, committed, read_partition, request

pytestmark = pytest.mark.slow

PARTITIONS = 2


@pytest.fixture(scope="module")
def fleet_settings(fleet_settings: FerrySettings) -> FerrySettings:
    return fleet_settings.model_copy(update={"group_sync_interval_seconds": 1.0})


class Producer(threading.Thread):
    """Writes numbered records at a steady pace until stopped; remembers each value's source offset."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.stop_event = threading.Event()
        self.offset_of: dict[bytes, tuple[int, int]] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except Exception as exc:  # noqa: BLE001  (surfaced by the test)
            self.error = exc

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            i = 0
            while not self.stop_event.is_set():
                values = [f"v-{i + k}".encode() for k in range(100)]
                futures = [
                    await producer.send(self.topic, v, partition=(i + k) % PARTITIONS) for k, v in enumerate(values)
                ]
                for value, meta in zip(values, await asyncio.gather(*futures), strict=True):
                    self.offset_of[value] = (meta.partition, meta.offset)
                i += len(values)
                await asyncio.sleep(0.02)  # pacing, so the copy is mid-stream when the worker dies
        finally:
            await producer.stop()


def synced_group(bootstrap: str, group: str) -> dict[TopicPartition, int] | None:
    offsets = asyncio.run(committed(bootstrap, group))
    return offsets if len(offsets) == PARTITIONS else None


def test_translation_after_a_worker_is_killed_never_skips(
    fleet: Fleet,
    fleet_kafka: Any,
    fleet_api: str,
    fleet_key: IssuedKey,
    fleet_db: Engine,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    fleet.start_worker("crash-w1")
    topic = f"{unique}-stream"
    asyncio.run(create_topic(source_bootstrap, topic, PARTITIONS))
    producer = Producer(source_bootstrap, topic)
    producer.start()
    try:
        arn = fleet_kafka.create_replicator(
            **request(unique, source_bootstrap, target_bootstrap, [topic], [f"{unique}-g.*"])
        )["ReplicatorArn"]
        wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)
        alias = describe(fleet_kafka, arn)["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
        target_topic = f"{alias}.{topic}"
        wait_until(
            "records flowing to the target",
            lambda: len(asyncio.run(read_partition(target_bootstrap, TopicPartition(target_topic, 0)))) > 2000,
            60,
        )
        fleet.start_worker("crash-w2")
        fleet.kill("crash-w1")  # mid-stream, holding every partition (w2 only just started)
        wait_until(
            "the partitions to move to the surviving worker",
            lambda: all(owner and "crash-w2" in owner for owner, _ in unit_owners(fleet_db, arn).values()),
            60,
        )
    finally:
        producer.stop_event.set()
        producer.join(30)
    assert producer.error is None, producer.error

    offset_of = producer.offset_of
    sources = {p: sorted(o for part, o in offset_of.values() if part == p) for p in range(PARTITIONS)}

    def all_copied() -> bool:
        for p in range(PARTITIONS):
            values = {v for _, v in asyncio.run(read_partition(target_bootstrap, TopicPartition(target_topic, p)))}
            if len(values) < len(sources[p]):
                return False
        return True

    wait_until("every record on the target", all_copied, 90)
    targets = {
        p: asyncio.run(read_partition(target_bootstrap, TopicPartition(target_topic, p))) for p in range(PARTITIONS)
    }
    duplicates = sum(len(targets[p]) - len(sources[p]) for p in range(PARTITIONS))

    # Groups committed all along the partitions, including around where the worker died.
    cases = {
        f"{unique}-g{i}": {TopicPartition(topic, p): sources[p][len(sources[p]) * i // 10] for p in range(PARTITIONS)}
        for i in range(10)
    }
    for group, offsets in cases.items():
        asyncio.run(commit_on(source_bootstrap, group, offsets))
    worst_reread, worst_bound = 0, 0
    with httpx.Client(base_url=fleet_api, auth=SigV4HttpxAuth(fleet_key)) as client:
        for group, offsets in cases.items():
            synced = wait_until(f"group {group} synced", lambda group=group: synced_group(target_bootstrap, group), 30)
            for tp, source_offset in offsets.items():
                target_offset = synced[TopicPartition(target_topic, tp.partition)]
                copies = [(t, offset_of[v][1]) for t, v in targets[tp.partition]]
                # Nothing skipped: every source record at or after the committed offset has a copy at or after the
                # target offset the group resumes from.
                resumed = {s for t, s in copies if t >= target_offset}
                assert {s for s in sources[tp.partition] if s >= source_offset} <= resumed, (group, tp)
                reread = len({s for t, s in copies if t >= target_offset and s < source_offset})
                answer = client.get(
                    f"/replication/v1/replicators/{urllib.parse.quote(arn, safe='')}/offset-translation",
                    params={"topic": tp.topic, "partition": tp.partition, "offset": source_offset},
                ).json()
                assert answer["targetOffset"] == target_offset, answer
                assert reread <= answer["maxRecordsReread"], (group, tp, reread, answer)
                worst_reread, worst_bound = max(worst_reread, reread), max(worst_bound, answer["maxRecordsReread"])
    print(f"duplicates after SIGKILL: {duplicates}; worst re-read {worst_reread}, worst stated bound {worst_bound}")
