"""What the chaos run writes and what it sees arrive: a producer that records every acknowledgement, and a
consumer that tails the target topic and records when each record first arrived.

Records carry their serial number as key and value (``c-<n>``), so the ledger of acknowledgements and the
target's contents can be compared record by record, whatever offsets the target gave them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

BATCH_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int
    at: float  # time.monotonic() when the broker acknowledged it


def value_of(serial: int) -> bytes:
    return f"c-{serial}".encode()


class AckedProducer:
    """Writes ``rate`` records a second, round-robin over the topic's partitions, until stopped.

    ``acked`` maps each acknowledged record's value to where the source put it and when; ``sent`` counts every
    record handed to the producer (acknowledged or not); ``failures`` counts the errors of the others.
    Idempotent with ``acks=all``: an acknowledgement means the record is in the source log once.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: int = 300) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.per_batch = max(1, int(rate * BATCH_INTERVAL_S))
        self.sent = 0
        self.acked: dict[bytes, Ack] = {}
        self.failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="chaos-producer", daemon=True)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=30_000,
        )
        await producer.start()
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                batch = []
                for serial in range(self.sent, self.sent + self.per_batch):
                    value = value_of(serial)
                    try:
                        future = await producer.send(
                            self.topic, key=value, value=value, partition=serial % self.partitions
                        )
                    except KafkaError as exc:
                        self.failures[type(exc).__name__] += 1
                        continue
                    finally:
                        self.sent += 1
                    batch.append((value, future))
                for value, future in batch:
                    try:
                        metadata = await future
                    except KafkaError as exc:
                        self.failures[type(exc).__name__] += 1
                        continue
                    self.acked[value] = Ack(metadata.partition, metadata.offset, time.monotonic())
                # Pacing, not synchronisation: a steady rate whatever the acknowledgements took.
                await asyncio.sleep(max(0.0, BATCH_INTERVAL_S - (time.monotonic() - started)))
        finally:
            await producer.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)

    def acked_snapshot(self) -> dict[bytes, Ack]:
        return self.acked.copy()


class TargetTail:
    """Reads a target topic from its beginning as long as it runs; records each value's first arrival.

    ``read_committed`` for exactly-once replicators (what their consumers see). ``records`` counts every record
    read, so ``records - len(first_seen)`` is the number of duplicates on the target.
    """

    def __init__(self, bootstrap: str, topic: str, *, read_committed: bool) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.read_committed = read_committed
        self.first_seen: dict[bytes, float] = {}
        self.records = 0
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="chaos-tail", daemon=True)

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if self.read_committed else "read_uncommitted",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            partitions: set[int] = set()
            while not partitions and not self._stop.is_set():
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self.topic) or set()
                if not partitions:
                    await asyncio.sleep(0.2)
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
            while not self._stop.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=200)
                except KafkaError as exc:  # the target broker is down: the consumer reconnects by itself
                    self.errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.5)
                    continue
                now = time.monotonic()
                for records in batches.values():
                    for record in records:
                        self.records += 1
                        if record.value is not None:
                            self.first_seen.setdefault(record.value, now)
        finally:
            await consumer.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def seen_snapshot(self) -> dict[bytes, float]:
        return self.first_seen.copy()
