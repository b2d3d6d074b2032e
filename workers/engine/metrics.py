"""Per-partition measurements the fleet reads through ``snapshot()`` and reports (issue 5)."""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from aiokafka import TopicPartition

# How long a problem keeps a partition's health reason after it last happened.
HEALTH_MEMORY_SECONDS = 60.0
# A partition with lag whose position has not moved for this long is STALLED.
STALL_SECONDS = 30.0


class Health(enum.StrEnum):
    STARTING = "STARTING"
    REPLICATING = "REPLICATING"
    SOURCE_TRUNCATED = "SOURCE_TRUNCATED"
    SOURCE_UNAVAILABLE = "SOURCE_UNAVAILABLE"
    TARGET_UNAVAILABLE = "TARGET_UNAVAILABLE"
    AUTH_DENIED = "AUTH_DENIED"
    RECORD_TOO_LARGE = "RECORD_TOO_LARGE"
    FENCED = "FENCED"
    STALLED = "STALLED"
    SOURCE_RECREATED = "SOURCE_RECREATED"
    TARGET_RECREATED = "TARGET_RECREATED"
    SOURCE_DIVERGED = "SOURCE_DIVERGED"


class ErrorKind(enum.StrEnum):
    SOURCE_TRUNCATED = "SOURCE_TRUNCATED"
    FETCH_FAILED = "FETCH_FAILED"
    PRODUCE_FAILED = "PRODUCE_FAILED"
    RECORD_TOO_LARGE = "RECORD_TOO_LARGE"
    AUTH_DENIED = "AUTH_DENIED"
    TRANSACTION_FAILED = "TRANSACTION_FAILED"
    PROGRESS_COMMIT_FAILED = "PROGRESS_COMMIT_FAILED"
    LEASE_LOST = "LEASE_LOST"
    FENCED = "FENCED"
    # Events rather than errors: the copy restarted from the new topic's beginning, or (diverged) went back to
    # where the source log now diverges from what was copied. Counted, and shown as health for a while.
    SOURCE_RECREATED = "SOURCE_RECREATED"
    TARGET_RECREATED = "TARGET_RECREATED"
    SOURCE_DIVERGED = "SOURCE_DIVERGED"


_HEALTH_OF_ERROR = {
    ErrorKind.SOURCE_TRUNCATED: Health.SOURCE_TRUNCATED,
    ErrorKind.FETCH_FAILED: Health.SOURCE_UNAVAILABLE,
    ErrorKind.PRODUCE_FAILED: Health.TARGET_UNAVAILABLE,
    ErrorKind.TRANSACTION_FAILED: Health.TARGET_UNAVAILABLE,
    ErrorKind.PROGRESS_COMMIT_FAILED: Health.TARGET_UNAVAILABLE,
    ErrorKind.RECORD_TOO_LARGE: Health.RECORD_TOO_LARGE,
    ErrorKind.AUTH_DENIED: Health.AUTH_DENIED,
    ErrorKind.LEASE_LOST: Health.FENCED,
    ErrorKind.FENCED: Health.FENCED,
    ErrorKind.SOURCE_RECREATED: Health.SOURCE_RECREATED,
    ErrorKind.TARGET_RECREATED: Health.TARGET_RECREATED,
    ErrorKind.SOURCE_DIVERGED: Health.SOURCE_DIVERGED,
}


@dataclass(frozen=True)
class PartitionStats:
    """An immutable reading of one source partition's replication.

    ``lag_records`` is the source end offset (last stable offset, as only committed data is copied) minus the
    next source offset whose copy the target acknowledged; ``latency_ms_*`` are target ack time minus the
    record's timestamp.
    """

    source_topic: str
    partition: int
    target_topic: str
    records_copied: int
    bytes_copied: int
    records_filtered: int
    next_source_offset: int | None
    source_end_offset: int | None
    lag_records: int | None
    latency_ms_last: float | None
    latency_ms_max_recent: float | None
    last_copied_timestamp_ms: int | None
    truncated_offsets: int
    redelivered_records: int
    errors: dict[str, int]
    health: Health
    health_detail: str


class CopyCounts(NamedTuple):
    """The counters a load reading needs of one partition: far cheaper than a ``PartitionStats`` (no health, no
    copy of the errors), and read every few seconds for thousands of partitions."""

    records_copied: int
    bytes_copied: int
    lag_records: int | None


@dataclass
class PartitionMetrics:
    """Mutable counters owned by the copier for one source partition."""

    source: TopicPartition
    target_topic: str
    records_copied: int = 0
    bytes_copied: int = 0
    records_filtered: int = 0
    next_source_offset: int | None = None
    source_end_offset: int | None = None
    latency_ms_last: float | None = None
    latency_ms_max_recent: float | None = None
    last_copied_timestamp_ms: int | None = None
    truncated_offsets: int = 0
    redelivered_records: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    problem: Health | None = None
    problem_detail: str = ""
    problem_at: float = 0.0
    started: bool = False
    _window_started: float = field(default_factory=time.monotonic)
    # The position last seen by a snapshot, and since when it has not moved.
    _seen_position: int | None = None
    _position_since: float = field(default_factory=time.monotonic)
    _errors_recorded: int = field(default=0, repr=False, compare=False)
    _last_reading: tuple[tuple[object, ...], PartitionStats] | None = field(default=None, repr=False, compare=False)

    def record_copied(self, records: int, size: int, max_timestamp_ms: int, ack_time_ms: float) -> None:
        self.records_copied += records
        self.bytes_copied += size
        latency = max(0.0, ack_time_ms - max_timestamp_ms)
        self.latency_ms_last = latency
        now = time.monotonic()
        # The recent maximum covers about the last 10 s, like a CloudWatch-style per-period maximum.
        if now - self._window_started > 10.0 or self.latency_ms_max_recent is None:
            self.latency_ms_max_recent = latency
            self._window_started = now
        else:
            self.latency_ms_max_recent = max(self.latency_ms_max_recent, latency)
        self.last_copied_timestamp_ms = max_timestamp_ms
        self.started = True

    def record_error(self, kind: ErrorKind, detail: str) -> None:
        self.errors[kind.value] += 1
        self._errors_recorded += 1
        self.problem = _HEALTH_OF_ERROR[kind]
        self.problem_detail = detail[:300]
        self.problem_at = time.monotonic()

    def health(self, lag: int | None = None) -> tuple[Health, str]:
        now = time.monotonic()
        if self.next_source_offset != self._seen_position:
            self._seen_position, self._position_since = self.next_source_offset, now
        if self.problem is not None and now - self.problem_at < HEALTH_MEMORY_SECONDS:
            return self.problem, self.problem_detail
        if not self.started and self.next_source_offset is None:
            return Health.STARTING, ""
        still = now - self._position_since
        if lag and still >= STALL_SECONDS:
            return (
                Health.STALLED,
                f"no progress for {still:.0f}s with {lag} records of lag at offset {self._seen_position}",
            )
        return Health.REPLICATING, ""

    def _lag(self) -> int | None:
        if self.source_end_offset is None or self.next_source_offset is None:
            return None
        return max(0, self.source_end_offset - self.next_source_offset)

    def counts(self) -> CopyCounts:
        return CopyCounts(self.records_copied, self.bytes_copied, self._lag())

    def snapshot(self) -> PartitionStats:
        lag = self._lag()
        health, detail = self.health(lag)
        # A quiet partition reads the same every time: the last reading is handed out again rather than rebuilt
        # (a worker reads all of its thousands of partitions every tick). Every field of the reading is in the
        # key, the errors by how many were recorded.
        key = (
            self.records_copied, self.bytes_copied, self.records_filtered, self.next_source_offset,
            self.source_end_offset, self.latency_ms_last, self.latency_ms_max_recent, self.last_copied_timestamp_ms,
            self.truncated_offsets, self.redelivered_records, self._errors_recorded, health, detail,
        )  # fmt: skip
        if self._last_reading is not None and self._last_reading[0] == key:
            return self._last_reading[1]
        stats = PartitionStats(
            source_topic=self.source.topic,
            partition=self.source.partition,
            target_topic=self.target_topic,
            records_copied=self.records_copied,
            bytes_copied=self.bytes_copied,
            records_filtered=self.records_filtered,
            next_source_offset=self.next_source_offset,
            source_end_offset=self.source_end_offset,
            lag_records=lag,
            latency_ms_last=self.latency_ms_last,
            latency_ms_max_recent=self.latency_ms_max_recent,
            last_copied_timestamp_ms=self.last_copied_timestamp_ms,
            truncated_offsets=self.truncated_offsets,
            redelivered_records=self.redelivered_records,
            errors=dict(self.errors),
            health=health,
            health_detail=detail,
        )
        self._last_reading = (key, stats)
        return stats
