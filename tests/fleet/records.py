"""Counting what reached a target topic: records produced, copied, distinct (lost and duplicated follow)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.fleet.conftest import wait_until


@dataclass
class Delivery:
    produced: int
    copied: int
    distinct: int

    @property
    def lost(self) -> int:
        return self.produced - self.distinct

    @property
    def duplicated(self) -> int:
        return self.copied - self.distinct


async def produce_numbered(bootstrap: str, topic: str, numbers: Iterable[int], partitions: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value=str(n).encode(), partition=n % partitions) for n in numbers]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def delivered(bootstrap: str, topic: str, produced: int, *, committed_only: bool = False) -> Delivery:
    """Every record on the target topic, read to its end: how many, and how many distinct values.
    ``committed_only``: as a read_committed consumer sees it (exactly-once copies)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return Delivery(produced, 0, 0)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        values: list[bytes] = []
        deadline = time.monotonic() + 60
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            assert time.monotonic() < deadline, f"reading {topic} did not reach its end"
            for records in (await consumer.getmany(*remaining, timeout_ms=500)).values():
                values.extend(r.value for r in records)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return Delivery(produced, len(values), len(set(values)))
    finally:
        await consumer.stop()


class SteadyProducer:
    """Writes numbered records to every partition, a small batch every 20 ms, until stopped."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            while not self._stop.is_set():
                futures = [
                    await producer.send(self.topic, value=str(n).encode(), partition=n % self.partitions)
                    for n in range(self.sent, self.sent + 30)
                ]
                await asyncio.gather(*futures)
                self.sent += 30
                await asyncio.sleep(0.02)
        finally:
            await producer.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.sent


def all_delivered(
    bootstrap: str, topic: str, produced: int, timeout: float = 60, *, committed_only: bool = False
) -> Delivery:
    """Wait until every one of ``produced`` records is on ``topic``; the delivery counts, for the caller's checks."""
    return wait_until(
        f"all {produced} records on {topic}",
        lambda: (
            (d := asyncio.run(delivered(bootstrap, topic, produced, committed_only=committed_only))).distinct
            == produced
            and d
        ),
        timeout,
    )
