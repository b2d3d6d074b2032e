"""Two engine processes can share one replicator's partitions: started with slices 0/2 and 1/2, each copies its
own half (disjoint, together everything in scope), and the target ends up with every record where it belongs."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from tests.engine.conftest import Rec, caught_up, create_topic, produce, read_topic, running, spec_for, wait_for
from workers.engine.standalone import PartitionSlice


def test_a_slice_is_parsed_from_k_of_n_and_bad_ones_are_refused_by_name() -> None:
    assert PartitionSlice.parse("1/3") == PartitionSlice(1, 3)
    for bad in ("3/3", "-1/2", "1", "a/2", "0/0", "1/2/3"):
        with pytest.raises(ValueError, match="partition slice"):
            PartitionSlice.parse(bad)


def test_the_slices_of_a_topic_split_its_partitions_evenly_and_exactly_once() -> None:
    for count in (2, 3):
        slices = [PartitionSlice(i, count) for i in range(count)]
        for topic in ("orders", "payments", "x"):
            owners = [[s.index for s in slices if s.owns(TopicPartition(topic, p))] for p in range(12)]
            assert all(len(owner) == 1 for owner in owners), owners
            sizes = [sum(1 for owner in owners if owner == [i]) for i in range(count)]
            assert sizes == [12 // count] * count


async def test_two_processes_with_slices_copy_one_replicator_between_them(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"{unique}-sliced"
    await create_topic(source_bootstrap, topic, partitions=4)
    records = [Rec(p, f"k{p}-{i}".encode(), f"v{p}-{i}".encode()) for p in range(4) for i in range(50)]
    await produce(source_bootstrap, topic, records)
    spec = spec_for(unique, [topic])
    first, second = PartitionSlice(0, 2), PartitionSlice(1, 2)
    async with (
        running(spec, source_bootstrap, target_bootstrap, partition_slice=first) as one,
        running(spec, source_bootstrap, target_bootstrap, partition_slice=second) as two,
    ):
        await wait_for(caught_up(one), 60, "slice 0/2 caught up")
        await wait_for(caught_up(two), 60, "slice 1/2 caught up")
        mine, theirs = one.copier.assignment(), two.copier.assignment()
    everything = {TopicPartition(topic, p) for p in range(4)}
    assert mine and theirs
    assert not mine & theirs
    assert mine | theirs == everything
    assert all(first.owns(tp) for tp in mine) and all(second.owns(tp) for tp in theirs)
    copied = await read_topic(target_bootstrap, f"src.{topic}")
    for partition in range(4):
        assert [r.value for r in copied[partition]] == [f"v{partition}-{i}".encode() for i in range(50)]
