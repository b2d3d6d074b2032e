"""The worker's usage accounting without I/O (workers/fleet/usage.py): deltas from copiers' totals, time run
split by hour, and numbered batches that come back until stored."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import TopicPartition

from workers.fleet.usage import Billed, UsageMeter, split_by_hour

A = Billed("00000000-0000-0000-0000-00000000000a", "arn:aws:kafka:us-east-1:123456789012:replicator/a/x", "a")
B = Billed("00000000-0000-0000-0000-00000000000b", "arn:aws:kafka:us-east-1:123456789012:replicator/b/y", "b")
P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Copier:
    """Stands for a PartitionCopier: the meter only keys its readings by the object."""


def totals(meter: UsageMeter) -> dict[tuple[str, datetime], tuple[int, int, float, float]]:
    batch = meter.next_batch()
    assert batch is not None
    meter.stored(batch)
    return {
        (i.replicator_id, i.hour): (i.records, i.bytes, i.replicator_seconds, i.partition_seconds)
        for i in batch.increments
    }


def test_a_copier_restart_neither_repeats_nor_loses_nor_goes_negative() -> None:
    meter = UsageMeter("w", clock=Clock(T0 + 5))
    first = Copier()
    meter.copied(A, first, {P0: (10, 1000), P1: (4, 400)})
    meter.copied(A, first, {P0: (10, 1000), P1: (4, 400)})  # read again: nothing new
    meter.copied(A, first, {P0: (15, 1500), P1: (4, 400)})
    # The copier failed and a new one took over: its totals start from zero again, below the old ones.
    second = Copier()
    meter.copied(A, second, {P0: (3, 300)})
    meter.copied(A, first, {P0: (15, 1500), P1: (4, 400)})  # the old one's last reading (at its stop): no more
    meter.copied(A, second, {P0: (7, 700), P1: (2, 200)})
    hour = datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert totals(meter) == {(A.replicator_id, hour): (15 + 4 + 7 + 2, 1500 + 400 + 700 + 200, 0.0, 0.0)}


def test_a_reading_below_the_last_one_counts_as_a_counter_started_again() -> None:
    meter = UsageMeter("w", clock=Clock(T0))
    copier = Copier()
    meter.copied(A, copier, {P0: (10, 100)})
    meter.copied(A, copier, {P0: (4, 40)})  # a counter that restarted from zero: 4 new, never -6
    meter.copied(A, copier, {P0: (6, 60)})
    assert totals(meter)[(A.replicator_id, datetime(2026, 3, 1, 10, tzinfo=UTC))][:2] == (16, 160)


def test_records_go_to_the_hour_they_were_read_in() -> None:
    clock = Clock(T0 - 1)
    meter = UsageMeter("w", clock=clock)
    copier = Copier()
    meter.copied(A, copier, {P0: (5, 50)})
    clock.now = T0 + 1
    meter.copied(A, copier, {P0: (8, 80)})
    got = totals(meter)
    assert got[(A.replicator_id, datetime(2026, 3, 1, 9, tzinfo=UTC))][:2] == (5, 50)
    assert got[(A.replicator_id, datetime(2026, 3, 1, 10, tzinfo=UTC))][:2] == (3, 30)


def test_time_run_is_split_at_the_hour_and_a_long_gap_is_not_counted() -> None:
    assert split_by_hour(T0 - 2.5, T0 + 1) == [(int(T0) - 3600, 2.5), (int(T0), 1.0)]
    clock = Clock(T0 - 4)
    meter = UsageMeter("w", clock=clock)
    meter.ran([A], {A: 3, B: 2})  # the first reading only starts the clock
    clock.now = T0 + 2
    meter.ran([A], {A: 3, B: 2})
    clock.now = T0 + 500  # the process was suspended: not time it ran
    meter.ran([A], {A: 3, B: 2})
    clock.now = T0 + 510
    meter.ran([], {A: 1})
    got = totals(meter)
    nine, ten = datetime(2026, 3, 1, 9, tzinfo=UTC), datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert got[(A.replicator_id, nine)] == (0, 0, 4.0, 12.0)
    assert got[(A.replicator_id, ten)] == (0, 0, 2.0, 6.0 + 10.0)
    assert got[(B.replicator_id, nine)] == (0, 0, 0.0, 8.0)
    assert got[(B.replicator_id, ten)] == (0, 0, 0.0, 4.0)


def test_an_unstored_batch_comes_back_unchanged_while_new_counts_wait_for_the_next() -> None:
    meter = UsageMeter("w", clock=Clock(T0))
    copier = Copier()
    meter.copied(A, copier, {P0: (10, 100)})
    first = meter.next_batch()
    assert first is not None and first.number == 1
    meter.copied(A, copier, {P0: (12, 120)})
    again = meter.next_batch()
    assert again is first  # its write failed or went unanswered: sent again under its number, nothing added
    meter.stored(first)
    second = meter.next_batch()
    assert second is not None and second.number == 2
    assert [(i.records, i.bytes, i.account_id, i.replicator_arn) for i in second.increments] == [
        (2, 20, "123456789012", A.arn)
    ]
    meter.stored(second)
    assert meter.next_batch() is None and not meter.unstored
