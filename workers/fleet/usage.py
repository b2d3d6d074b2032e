"""Usage accounting on a worker: what its copiers copied and what units it ran, per replicator per UTC hour,
added to ``usage_hours`` (``models/usage_store.py``) every ``FERRY_USAGE_FLUSH_SECONDS``.

- **Records and bytes.** Each copier's ``copied_totals()`` never decrease for as long as that copier lives; the
  meter keeps, per copier object, the totals it last read, and adds the difference. A new copier (a restart
  after a failure, a replicator started again) is a new object read from zero, so a copier's restart neither
  loses nor repeats a count; a reading below the last one (which a living copier never gives) counts as a
  counter that started again from zero, never as a negative delta. A copy unit reads its copier a last time
  after the copier stopped (its final in-flight batches acknowledged), before dropping it.
- **Replicator and partition seconds.** At every reading, the time since the previous reading is added to each
  replicator whose metadata unit runs here (replicator seconds: one metadata unit per running replicator in the
  fleet) and, per partition its copy unit holds, to partition seconds; an interval that straddles an hour is
  split between the two hours.
- **Storing.** Increments wait in memory and are stored in numbered batches, each at most once
  (``usage_writers``): a batch whose write failed or went unanswered is sent again, under its number, before
  anything newer, and new increments keep accumulating meanwhile. A clean stop (SIGTERM) stores everything; a
  SIGKILL loses what was not stored yet (at most ``FERRY_USAGE_FLUSH_SECONDS`` of it, docs/usage.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import usage_store
from models.usage_store import UsageIncrement

if TYPE_CHECKING:
    from workers.fleet.copy_unit import CopyUnit
    from workers.fleet.metadata_unit import MetadataUnit
    from workers.fleet.runtime import ReplicatorRuntime

log = logging.getLogger(__name__)

HOUR_SECONDS = 3600
# A gap between two readings longer than this (a process suspended, a clock jump) is not counted as time run.
MAX_INTERVAL_SECONDS = 60.0
# How long one write may take before it is abandoned (and sent again later).
WRITE_TIMEOUT_SECONDS = 10.0
# How often a worker forgets the batch numbers of long-gone workers.
FORGET_WRITERS_EVERY_SECONDS = 3600.0


@dataclass(frozen=True)
class Billed:
    """What a usage row names besides the replicator's id: usage outlives the replicator, so it keeps them."""

    replicator_id: str
    arn: str
    name: str

    @property
    def account_id(self) -> str:
        # arn:aws:kafka:<region>:<account>:replicator/<name>/<id>
        parts = self.arn.split(":")
        return parts[4] if len(parts) > 5 else ""


def billed(runtime: ReplicatorRuntime) -> Billed:
    return Billed(runtime.replicator_id, runtime.arn, runtime.name)


def hour_of(at: float) -> int:
    """The start of ``at``'s UTC hour, in epoch seconds."""
    return int(at // HOUR_SECONDS) * HOUR_SECONDS


def split_by_hour(start: float, end: float) -> list[tuple[int, float]]:
    """[start, end) as (hour start, seconds in that hour) pieces."""
    pieces: list[tuple[int, float]] = []
    while start < end:
        hour = hour_of(start)
        stop = min(end, hour + HOUR_SECONDS)
        pieces.append((hour, stop - start))
        start = stop
    return pieces


@dataclass
class _Amounts:
    records: int = 0
    bytes: int = 0
    replicator_seconds: float = 0.0
    partition_seconds: float = 0.0

    def add(self, other: _Amounts) -> None:
        self.records += other.records
        self.bytes += other.bytes
        self.replicator_seconds += other.replicator_seconds
        self.partition_seconds += other.partition_seconds


@dataclass(frozen=True)
class UsageBatch:
    number: int
    increments: tuple[UsageIncrement, ...]


class UsageMeter:
    """One worker's usage: readings in, numbered batches of increments out. Not thread-safe: the work loop's."""

    def __init__(self, writer_id: str, *, flush_seconds: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        # Unique per process: a restarted worker starts its batch numbers again under a new writer id.
        self.writer_id = f"{writer_id[:150]}/{uuid.uuid4().hex[:16]}"
        self.flush_seconds = flush_seconds
        self._clock = clock
        # Per copier object: the totals last read, per partition. Weak, so a dropped copier is forgotten.
        self._seen: weakref.WeakKeyDictionary[Any, dict[Hashable, tuple[int, int]]] = weakref.WeakKeyDictionary()
        self._pending: dict[tuple[str, int], _Amounts] = {}
        self._names: dict[str, Billed] = {}
        self._last_reading: float | None = None
        self._next_batch = 1
        self._unstored: UsageBatch | None = None
        self._last_flush = clock()
        self._writers_forgotten_at = 0.0

    # ------------------------------------------------------------------ readings

    def copied(self, replicator: Billed, copier: Any, totals: Mapping[Hashable, tuple[int, int]]) -> None:
        """Add what ``copier`` copied since it was last read (``totals``: its ``copied_totals()``)."""
        seen = self._seen.get(copier)
        if seen is None:
            seen = self._seen[copier] = {}
        records = size = 0
        for partition, (total_records, total_bytes) in totals.items():
            last_records, last_bytes = seen.get(partition, (0, 0))
            # Below the last reading: a counter that started again from zero, all of it new.
            records += total_records - last_records if total_records >= last_records else total_records
            size += total_bytes - last_bytes if total_bytes >= last_bytes else total_bytes
            seen[partition] = (total_records, total_bytes)
        if records or size:
            amounts = self._amounts(replicator, hour_of(self._clock()))
            amounts.records += records
            amounts.bytes += size

    def ran(self, metadata: Iterable[Billed], partitions: Mapping[Billed, int]) -> None:
        """Add the time since the previous reading: to each replicator whose metadata unit runs here, and per
        partition held, to partition seconds of each replicator with copy units here."""
        now = self._clock()
        start, self._last_reading = self._last_reading, now
        if start is None or now <= start or now - start > MAX_INTERVAL_SECONDS:
            return
        pieces = split_by_hour(start, now)
        for replicator in metadata:
            for hour, seconds in pieces:
                self._amounts(replicator, hour).replicator_seconds += seconds
        for replicator, count in partitions.items():
            if count:
                for hour, seconds in pieces:
                    self._amounts(replicator, hour).partition_seconds += seconds * count

    def _amounts(self, replicator: Billed, hour: int) -> _Amounts:
        self._names[replicator.replicator_id] = replicator
        key = (replicator.replicator_id, hour)
        amounts = self._pending.get(key)
        if amounts is None:
            amounts = self._pending[key] = _Amounts()
        return amounts

    # ------------------------------------------------------------------ batches

    def next_batch(self) -> UsageBatch | None:
        """The batch to store now: the unstored one again, or a new one of everything pending (None: nothing).
        Until ``stored`` is called, the same batch comes back."""
        if self._unstored is None and self._pending:
            pending, self._pending = self._pending, {}
            increments = []
            for (replicator_id, hour), amounts in sorted(pending.items()):
                names = self._names[replicator_id]
                increments.append(
                    UsageIncrement(
                        replicator_id=replicator_id,
                        hour=datetime.fromtimestamp(hour, UTC),
                        account_id=names.account_id,
                        replicator_arn=names.arn,
                        replicator_name=names.name,
                        records=amounts.records,
                        bytes=amounts.bytes,
                        replicator_seconds=amounts.replicator_seconds,
                        partition_seconds=amounts.partition_seconds,
                    )
                )
            self._unstored = UsageBatch(self._next_batch, tuple(increments))
            self._next_batch += 1
        return self._unstored

    def stored(self, batch: UsageBatch) -> None:
        if self._unstored is batch:
            self._unstored = None

    @property
    def unstored(self) -> bool:
        return self._unstored is not None or bool(self._pending)

    def due(self) -> bool:
        return self._clock() - self._last_flush >= self.flush_seconds

    async def flush(self, db: AsyncEngine) -> bool:
        """Store the unstored batch, then what is pending: True when nothing is left unstored. A failure is
        logged and kept for the next flush."""
        self._last_flush = self._clock()
        for _ in range(2):  # the batch left over from a failed flush, then the new one
            batch = self.next_batch()
            if batch is None:
                return True
            try:
                await asyncio.wait_for(self._store(db, batch), WRITE_TIMEOUT_SECONDS)
            except (TimeoutError, SQLAlchemyError, OSError) as exc:
                log.warning("usage not stored yet (batch %d kept for the next try): %s", batch.number, exc)
                return False
            self.stored(batch)
        return not self.unstored

    async def _store(self, db: AsyncEngine, batch: UsageBatch) -> None:
        async with db.begin() as conn:
            added = await usage_store.add_usage(conn, self.writer_id, batch.number, batch.increments)
            now = self._clock()
            if now - self._writers_forgotten_at > FORGET_WRITERS_EVERY_SECONDS:
                await usage_store.forget_old_writers(conn)
                self._writers_forgotten_at = now
        if not added:
            log.info("usage batch %d was stored before (its commit went unanswered)", batch.number)

    # ------------------------------------------------------------------ the work loop's side

    def read(
        self, copy_units: Mapping[str, CopyUnit], metadata_units: Mapping[str, tuple[MetadataUnit, asyncio.Task[None]]]
    ) -> None:
        """Read every copier and count the time since the last reading against the units running now."""
        partitions: dict[Billed, int] = {}
        for unit in copy_units.values():
            unit.read_usage()
            partitions[billed(unit.runtime)] = len(unit.partitions)
        running = [billed(runner.runtime) for runner, task in metadata_units.values() if not task.done()]
        self.ran(running, partitions)

    async def tick(
        self,
        copy_units: Mapping[str, CopyUnit],
        metadata_units: Mapping[str, tuple[MetadataUnit, asyncio.Task[None]]],
        db: AsyncEngine | None,
    ) -> None:
        """Each work loop iteration: read, and store when a flush is due."""
        self.read(copy_units, metadata_units)
        if db is not None and self.due():
            await self.flush(db)
