"""The auditor on real brokers: a target written as the copier would (so the offset map is known exactly), then
damaged in each way the auditor must report: a record written by hand, a range removed with DeleteRecords, a
re-copied range (duplicates), a changed record, a record the map skips, and ranges it cannot check."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from models.offset_map import Run
from tests.engine.conftest import Rec, admin_client, create_topic, produce
from workers.engine.audit import PartitionAudit, audit_partition
from workers.engine.connection import ClusterConnection
from workers.engine.spec import PROVENANCE_HEADER

TOTAL = 5_000  # more than one fetch of the auditor (FETCH_RECORDS is per poll, records are small)
# Recent timestamps: records older than the topic's retention would be deleted by the broker mid-test.
BASE_MS = int(time.time() * 1000) - 3_600_000


def records(start: int, end: int, *, stamp: bool = False) -> list[Rec]:
    headers: tuple[tuple[str, bytes], ...] = ((PROVENANCE_HEADER, b"source-cluster"),) if stamp else ()
    return [
        Rec(0, f"k{i}".encode(), f"value-{i}".encode() * 3, (("h", f"{i}".encode()), *headers), BASE_MS + i)
        for i in range(start, end)
    ]


async def audit(source: str, target: str, topic: str, runs: list[Run], **kwargs: Any) -> PartitionAudit:
    return await audit_partition(
        ClusterConnection(source, alias="src"),
        ClusterConnection(target, alias="dst"),
        source_topic=topic,
        target_topic=f"src.{topic}",
        partition=0,
        runs=runs,
        **kwargs,
    )


async def test_a_faithful_copy_is_consistent_and_every_kind_of_damage_is_reported(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-audited"
    await create_topic(source_bootstrap, topic)
    await create_topic(target_bootstrap, f"src.{topic}")
    await produce(source_bootstrap, topic, records(0, TOTAL))
    # The copy, as the copier writes it (its provenance header does not count as a difference).
    await produce(target_bootstrap, f"src.{topic}", records(0, TOTAL, stamp=True))
    runs = [Run(0, TOTAL, 0, TOTAL)]

    clean = await audit(source_bootstrap, target_bootstrap, topic, runs)
    assert clean.consistent, clean.to_json()
    assert (clean.matched, clean.source_records, clean.unchecked) == (TOTAL, TOTAL, [])
    assert clean.bytes_compared > 0
    # A range inside the copy: the target records past its end are not counted as unexpected.
    middle = await audit(source_bootstrap, target_bootstrap, topic, runs, from_offset=1_000, to_offset=2_500)
    assert middle.consistent, middle.to_json()
    assert (middle.matched, middle.from_offset, middle.to_offset) == (1_500, 1_000, 2_500)

    # A record written by hand into the target partition, then 1,000 more copied after it: the map has a gap
    # on the target side there.
    await produce(target_bootstrap, f"src.{topic}", [Rec(0, b"intruder", b"not from the source")])
    await produce(source_bootstrap, topic, records(TOTAL, TOTAL + 1_000))
    await produce(target_bootstrap, f"src.{topic}", records(TOTAL, TOTAL + 1_000, stamp=True))
    runs.append(Run(TOTAL, TOTAL + 1_000, TOTAL + 1, TOTAL + 1_001))
    # A re-copy of source 5,800-5,999 after a crash: the map keeps the newest copy, the first becomes duplicates.
    await produce(target_bootstrap, f"src.{topic}", records(TOTAL + 800, TOTAL + 1_000, stamp=True))
    runs[-1] = Run(TOTAL, TOTAL + 800, TOTAL + 1, TOTAL + 801)
    runs.append(Run(TOTAL + 800, TOTAL + 1_000, TOTAL + 1_001, TOTAL + 1_201))
    # Source records 6,000-6,099 written, not copied yet.
    await produce(source_bootstrap, topic, records(TOTAL + 1_000, TOTAL + 1_100))

    damaged = await audit(source_bootstrap, target_bootstrap, topic, runs)
    assert damaged.unexpected.count == 1 and damaged.unexpected.offsets == [TOTAL], damaged.to_json()
    assert damaged.duplicated.count == 200
    assert damaged.duplicated.offsets[:2] == [TOTAL + 801, TOTAL + 802]
    assert damaged.missing.count == 0 and damaged.differing.count == 0
    assert damaged.matched == TOTAL + 1_000
    assert [(s.start, s.end) for s in damaged.unchecked] == [(TOTAL + 1_000, TOTAL + 1_100)]
    assert "not copied yet" in damaged.unchecked[0].reason

    # DeleteRecords removes target offsets below 300: source 0-299 are reported missing, nothing else changes.
    async with admin_client(target_bootstrap) as admin:
        await admin.delete_records({TopicPartition(f"src.{topic}", 0): RecordsToDelete(before_offset=300)})
    deleted = await audit(source_bootstrap, target_bootstrap, topic, runs, to_offset=TOTAL)
    assert deleted.missing.count == 300, deleted.to_json()
    assert deleted.missing.offsets[:3] == [0, 1, 2]
    assert (deleted.matched, deleted.duplicated.count, deleted.unexpected.count) == (TOTAL - 300, 0, 0)

    # A map that says a record went elsewhere (a differing record), and one that skips a source record.
    skewed = [Run(300, 1_000, 300, 1_000), Run(1_001, 2_000, 1_000, 1_999)]
    found = await audit(source_bootstrap, target_bootstrap, topic, skewed, from_offset=300, to_offset=2_000)
    assert found.missing.offsets == [1_000], found.to_json()
    assert found.differing.count == 999  # every record after the skipped one is paired with its predecessor
    assert found.differing.offsets[0] == [1_001, 1_000]
    assert found.unexpected.count == 0  # past the last run on the target: not within what the runs cover


async def test_ranges_that_cannot_be_checked_are_listed_with_their_reason(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-partial"
    await create_topic(source_bootstrap, topic)
    await create_topic(target_bootstrap, f"src.{topic}")
    await produce(source_bootstrap, topic, records(0, 1_000))
    # The replicator started at 400 (startingPosition LATEST) and copied 400-899; 0-99 were deleted by retention.
    await produce(target_bootstrap, f"src.{topic}", records(400, 900, stamp=True))
    async with admin_client(source_bootstrap) as admin:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=100)})

    result = await audit(source_bootstrap, target_bootstrap, topic, [Run(400, 900, 0, 500)], from_offset=0)
    assert result.consistent, result.to_json()
    assert result.matched == 500
    assert [(s.start, s.end) for s in result.unchecked] == [(0, 100), (100, 400), (900, 1_000)]
    assert "deleted from the source" in result.unchecked[0].reason
    assert "starting position" in result.unchecked[1].reason
    assert "not copied yet" in result.unchecked[2].reason


async def test_records_of_the_targets_origin_are_filtered_not_missing(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """IDENTICAL naming: records that came from the target cluster are not copied back, by design."""
    topic = f"{unique}-loop"
    await create_topic(source_bootstrap, topic)
    await create_topic(target_bootstrap, f"src.{topic}")
    mixed = [
        Rec(0, f"k{i}".encode(), b"v", ((PROVENANCE_HEADER, b"target-cluster"),) if i % 3 == 0 else (), BASE_MS + i)
        for i in range(300)
    ]
    await produce(source_bootstrap, topic, mixed)
    copied = [r for r in mixed if not r.headers]
    await produce(target_bootstrap, f"src.{topic}", copied)
    # The copier's runs break at every filtered record.
    runs: list[Run] = []
    target = 0
    for i in range(300):
        if i % 3 == 0:
            continue
        if runs and runs[-1].source_end == i:
            last = runs[-1]
            runs[-1] = Run(last.source_start, i + 1, last.target_start, target + 1)
        else:
            runs.append(Run(i, i + 1, target, target + 1))
        target += 1

    result = await audit(source_bootstrap, target_bootstrap, topic, runs, loop_origin=b"target-cluster", copied_from=0)
    assert result.consistent, result.to_json()
    assert (result.filtered, result.matched) == (100, 200)
    # The same map thinned into one inexact run: records are paired in order from the run's start, and a range
    # that ends inside it counts nothing past its end.
    thinned = [Run(0, 300, 0, 200)]
    origin = b"target-cluster"
    part = await audit(
        source_bootstrap, target_bootstrap, topic, thinned, loop_origin=origin, from_offset=150, to_offset=240
    )
    assert part.consistent, part.to_json()
    assert (part.filtered, part.matched) == (80, 160)
