"""Starting new partitions that takes longer than the copy unit allows fails only that start: the copier and the
partitions it already copies go on, the next pass asks for fewer, and every record is copied once.

At 10,000 partitions on a saturated box (bench.partitions, 2026-12-02) a pass starting 500 partitions outlived the
work loop's deadline, which stopped the whole copier: its 5,000 partitions all started over from their last
progress, copying again what they had copied since."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
from aiokafka import TopicPartition

from models.bootstrap import AddressPolicy
from tests.fleet.conftest import plaintext_runtime
from tests.fleet.records import Delivery, delivered, produce_numbered
from tests.fleet.test_fleet_lifecycle import create_topic
from workers.engine.copier import PartitionCopier
from workers.fleet.address_vetting import AddressVetting
from workers.fleet.copy_unit import CopyUnit

PARTITIONS = 6
STARTED_PER_PASS = 2
RECORDS = 300 * PARTITIONS
ASSIGN_TIMEOUT_S = 1.0


def copy_unit(unique: str, source: str, target: str, topic: str) -> CopyUnit:
    runtime = plaintext_runtime(
        str(uuid.uuid4()),
        unique,
        source,
        target,
        {"topicsToReplicate": [topic], "startingPosition": {"type": "EARLIEST"}},
        state="RUNNING",
    )
    return CopyUnit(
        runtime,
        lambda _replicator, _partitions: True,
        None,
        vetting=AddressVetting(AddressPolicy(["127.0.0.0/8"])),
        started_per_pass=STARTED_PER_PASS,
        assign_timeout_s=ASSIGN_TIMEOUT_S,
    )


async def slow_then_fast(unit: CopyUnit, wanted: set[TopicPartition], monkeypatch: pytest.MonkeyPatch) -> None:
    await unit.converge(wanted)
    first = unit.copier
    assert first is not None and len(unit.partitions) == STARTED_PER_PASS

    original = PartitionCopier.assign

    async def slow(self: PartitionCopier, partitions: Iterable[TopicPartition], **kwargs: Any) -> None:
        await asyncio.sleep(ASSIGN_TIMEOUT_S * 3)
        await original(self, partitions, **kwargs)

    monkeypatch.setattr(PartitionCopier, "assign", slow)
    await unit.converge(wanted)  # must not raise: only this start failed
    assert unit.copier is first, "the copier was replaced: its partitions would start over"
    assert len(unit.partitions) == STARTED_PER_PASS
    assert unit.last_failure is not None and f"longer than {ASSIGN_TIMEOUT_S:g}s" in unit.last_failure
    monkeypatch.setattr(PartitionCopier, "assign", original)

    async def every_partition() -> bool:
        await unit.converge(wanted)
        return unit.partitions == wanted

    deadline = asyncio.get_running_loop().time() + 60
    while not await every_partition():
        assert asyncio.get_running_loop().time() < deadline, f"only {sorted(unit.partitions)} copying"
    assert unit.copier is first


async def copied_in_full(unit: CopyUnit, target: str, topic: str) -> Delivery:
    deadline = asyncio.get_running_loop().time() + 60
    while (found := await delivered(target, topic, RECORDS)).copied < RECORDS:
        assert asyncio.get_running_loop().time() < deadline, f"{found} after 60s; {unit.last_failure}"
        await asyncio.sleep(0.25)
    return found


def test_a_start_that_outlives_its_time_keeps_the_copier_and_copies_every_record_once(
    monkeypatch: pytest.MonkeyPatch, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    topic = f"{unique}-t"
    asyncio.run(create_topic(source_bootstrap, topic, PARTITIONS))
    asyncio.run(create_topic(target_bootstrap, f"src.{topic}", PARTITIONS))
    asyncio.run(produce_numbered(source_bootstrap, topic, range(RECORDS), PARTITIONS))
    unit = copy_unit(unique, source_bootstrap, target_bootstrap, topic)
    wanted = {TopicPartition(topic, p) for p in range(PARTITIONS)}

    async def scenario() -> Delivery:
        try:
            await slow_then_fast(unit, wanted, monkeypatch)
            return await copied_in_full(unit, target_bootstrap, f"src.{topic}")
        finally:
            await unit.stop()

    copied = asyncio.run(scenario())
    assert (copied.distinct, copied.duplicated) == (RECORDS, 0), copied
