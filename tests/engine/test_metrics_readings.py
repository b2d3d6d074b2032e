"""A partition's reading is built again only when something in it changed: a worker reads every one of its
thousands of partitions each tick, and most of them are quiet."""

from __future__ import annotations

from aiokafka import TopicPartition

from workers.engine.metrics import ErrorKind, Health, PartitionMetrics


def test_a_quiet_partition_hands_out_its_last_reading_again() -> None:
    metrics = PartitionMetrics(TopicPartition("orders", 3), "src.orders")
    metrics.next_source_offset = metrics.source_end_offset = 10
    first = metrics.snapshot()
    assert metrics.snapshot() is first


def test_every_change_makes_a_new_reading() -> None:
    metrics = PartitionMetrics(TopicPartition("orders", 3), "src.orders")
    metrics.next_source_offset = metrics.source_end_offset = 10
    reading = metrics.snapshot()

    metrics.source_end_offset = 12
    moved_end = metrics.snapshot()
    assert moved_end is not reading and moved_end.lag_records == 2

    metrics.record_copied(2, 2048, max_timestamp_ms=1_000, ack_time_ms=1_250.0)
    metrics.next_source_offset = 12
    copied = metrics.snapshot()
    assert (copied.records_copied, copied.bytes_copied, copied.lag_records, copied.latency_ms_last) == (
        2,
        2048,
        0,
        250.0,
    )

    metrics.record_error(ErrorKind.FETCH_FAILED, "broker away")
    failed = metrics.snapshot()
    assert failed.errors == {ErrorKind.FETCH_FAILED.value: 1} and failed.health is not Health.REPLICATING
    metrics.record_error(ErrorKind.FETCH_FAILED, "broker away")
    assert metrics.snapshot().errors == {ErrorKind.FETCH_FAILED.value: 2}, "a second error of the same kind"

    metrics.truncated_offsets += 5
    assert metrics.snapshot().truncated_offsets == 5


def test_a_reading_is_not_changed_by_what_happens_after_it() -> None:
    metrics = PartitionMetrics(TopicPartition("orders", 3), "src.orders")
    metrics.record_error(ErrorKind.FETCH_FAILED, "broker away")
    reading = metrics.snapshot()
    metrics.record_error(ErrorKind.FETCH_FAILED, "broker away")
    assert reading.errors == {ErrorKind.FETCH_FAILED.value: 1}
