"""Active-active in IDENTICAL mode: two engines in opposite directions; each record exactly once on each side."""

from __future__ import annotations

from collections import Counter

from tests.engine.conftest import Rec, admin_client, create_topic, produce, read_topic, running, spec_for, wait_for
from workers.engine.admin import cluster_id
from workers.engine.spec import PROVENANCE_HEADER
from workers.engine.standalone import StandaloneReplicator

PER_SIDE = 3000
PARTITIONS = 3
FILTERED = 2000


def filtered(replicator: StandaloneReplicator) -> int:
    return sum(s.records_filtered for s in replicator.snapshot().partitions.values())


def idle(replicator: StandaloneReplicator) -> bool:
    stats = replicator.snapshot().partitions.values()
    return bool(stats) and all(s.lag_records == 0 for s in stats)


async def test_two_engines_in_opposite_directions_copy_each_record_once(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-orders"
    await create_topic(source_bootstrap, topic, PARTITIONS)
    await create_topic(target_bootstrap, topic, PARTITIONS)
    east_to_west = spec_for(
        unique, [topic], naming="IDENTICAL", source_alias="east", target_alias="west", replicator_id=f"{unique}-e2w"
    )
    west_to_east = spec_for(
        unique, [topic], naming="IDENTICAL", source_alias="west", target_alias="east", replicator_id=f"{unique}-w2e"
    )
    async with (
        running(east_to_west, source_bootstrap, target_bootstrap) as e2w,
        running(west_to_east, target_bootstrap, source_bootstrap) as w2e,
    ):
        await produce(
            source_bootstrap,
            topic,
            [Rec(i % PARTITIONS, f"k{i}".encode(), f"east-{i}".encode()) for i in range(PER_SIDE)],
        )
        await produce(
            target_bootstrap,
            topic,
            [Rec(i % PARTITIONS, f"k{i}".encode(), f"west-{i}".encode()) for i in range(PER_SIDE)],
        )

        async def settled() -> bool:
            # Each engine has seen (and skipped) every record the other one wrote, and has nothing left.
            return filtered(e2w) == PER_SIDE and filtered(w2e) == PER_SIDE and idle(e2w) and idle(w2e)

        await wait_for(settled, 90, "both engines to copy their side and skip the records copied back")
        copied = {
            name: sum(s.records_copied for s in r.snapshot().partitions.values())
            for name, r in (("e2w", e2w), ("w2e", w2e))
        }
        assert copied == {"e2w": PER_SIDE, "w2e": PER_SIDE}

    expected = {f"east-{i}".encode() for i in range(PER_SIDE)} | {f"west-{i}".encode() for i in range(PER_SIDE)}
    for side in (source_bootstrap, target_bootstrap):
        data = await read_topic(side, topic)
        values = Counter(record.value for records in data.values() for record in records)
        assert set(values) == expected, f"{side}: records missing or foreign"
        assert max(values.values()) == 1, f"{side}: {sum(values.values()) - len(values)} records duplicated"


async def test_a_long_run_of_records_from_the_target_is_skipped_without_stalling(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    """Failback after a failover: everything on the standby came from the primary, so the copier back filters
    thousands of records in a row before the first it may copy. It must keep moving through them."""
    topic = f"{unique}-orders"
    await create_topic(source_bootstrap, topic, 2)
    await create_topic(target_bootstrap, topic, 2)
    async with admin_client(target_bootstrap) as admin:
        target_id = (await cluster_id(admin)).encode()
    back_home = ((PROVENANCE_HEADER, target_id),)
    # In many small batches, as records written one by one arrive: more of them than one poll takes.
    for start in range(0, FILTERED, 50):
        chunk = [Rec(i % 2, None, f"primary-{i}".encode(), back_home) for i in range(start, start + 50)]
        await produce(source_bootstrap, topic, chunk)
    spec = spec_for(unique, [topic], naming="IDENTICAL")
    async with running(spec, source_bootstrap, target_bootstrap) as copier_back:
        await produce(source_bootstrap, topic, [Rec(i % 2, None, f"standby-{i}".encode()) for i in range(100)])

        async def through() -> bool:
            copied = sum(s.records_copied for s in copier_back.snapshot().partitions.values())
            return filtered(copier_back) == FILTERED and copied == 100 and idle(copier_back)

        await wait_for(through, 60, f"the copier to move through {FILTERED} filtered records and copy 100")
        assert all(s.health.value == "REPLICATING" for s in copier_back.snapshot().partitions.values())
    values = [r.value for records in (await read_topic(target_bootstrap, topic)).values() for r in records]
    assert sorted(values) == sorted(f"standby-{i}".encode() for i in range(100))
