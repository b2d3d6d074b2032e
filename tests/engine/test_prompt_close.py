"""A client stopped while a broker holds its fetch closes its TLS connections at once, on either event loop.

uvloop kept such a transport open until its 30 s SSL shutdown timeout (MagicStack/uvloop#471); asyncio waited for
the held fetch's answer. A copier's progress reader is stopped this way on every start, and the fleet gives a
converge 2 lease periods: on a TLS target the copier failed to start again and again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.engine.conftest import create_topic
from workers.engine import event_loop
from workers.engine.connection import ClusterConnection, client_kwargs

FETCH_HELD_MS = 20_000  # how long the broker holds a fetch of a partition without new records
STOPPED_WITHIN_S = 5.0  # well under FETCH_HELD_MS and uvloop's 30 s


async def stop_seconds_with_a_fetch_held(connection: ClusterConnection, topic: str) -> float:
    consumer = AIOKafkaConsumer(
        **client_kwargs(connection, "prompt-close"),
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_HELD_MS,
        request_timeout_ms=FETCH_HELD_MS + 20_000,
    )
    await consumer.start()
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    await consumer.seek_to_end(partition)
    # The empty partition's fetch goes out and the broker holds it.
    assert await consumer.getmany(partition, timeout_ms=500) == {}
    started = time.monotonic()
    try:
        await asyncio.wait_for(consumer.stop(), STOPPED_WITHIN_S * 4)
    except TimeoutError:
        return float("inf")
    return time.monotonic() - started


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_consumer_stops_at_once_while_the_broker_holds_its_fetch_over_tls(
    monkeypatch: pytest.MonkeyPatch, stack: dict[str, Any], target_bootstrap: str, unique: str, loop: str
) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, loop)
    secure = stack["secure"]
    topic = f"{unique}-t"
    asyncio.run(create_topic(target_bootstrap, topic))
    tls = ClusterConnection(secure["target"]["tls"], security_protocol="SSL", ca_pem=Path(secure["ca"]).read_text())
    # uvloop's hang came about half the time: several stops make a pass mean something.
    for attempt in range(4):
        took = event_loop.run(stop_seconds_with_a_fetch_held(tls, topic))
        assert took < STOPPED_WITHIN_S, f"stop {attempt + 1} took {took:.1f}s on {loop}"
