"""The copy units' offset map sink: collects the copier's batch mappings in memory and writes them to
PostgreSQL (``models/offset_store.py``) with each partition's head.

``record_batch`` is called synchronously by the copier after the target acknowledged a batch (in partition order),
so it only appends to an in-memory ``RangeMap`` per partition. ``flush`` writes the runs and the heads in one
transaction; it runs before every progress write of the copier (``before_progress``; exactly-once lanes that wait
behind one flush share the next), at every agent tick, right after an assignment (the first head ever stored for a
partition is where its map begins: its origin) and when the copier stops. Flushes are serialised, and the heads are
the copier's acknowledged positions taken in the same instant as the runs they cover (no await in between), so the
stored map and heads always agree.

Because the map is stored before the progress that covers it, a worker that dies leaves no copied-but-unmapped
records behind: its successor resumes from that progress and its re-copies replace the older mapping. Only when
a flush fails (database unavailable) can copies go unmapped; a translation into such a hole resumes before it
and states the hole's size as the re-read bound, never skipping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from aiokafka import TopicPartition
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import offset_store
from models.offset_map import RangeMap
from workers.engine.batches import AckedPosition, BatchMapping

log = logging.getLogger(__name__)

Positions = Mapping[TopicPartition, AckedPosition]


class OffsetMapBuffer:
    """An ``OffsetMapSink`` for one replicator's copier on this worker."""

    def __init__(self, replicator_id: str, db: AsyncEngine | None = None) -> None:
        self.replicator_id = replicator_id
        self.db = db
        self._pending: dict[TopicPartition, RangeMap] = {}
        # Partitions whose stored map and head are deleted by the next flush, before anything newer is stored.
        self._restarted: set[TopicPartition] = set()
        # The head last stored per partition: a flush writes only heads that moved (every tick and every progress
        # write would otherwise upsert a row per partition held, idle ones included).
        self._stored_heads: dict[TopicPartition, AckedPosition] = {}
        # Forgotten while a flush was writing: that flush must not remember them as stored.
        self._forgotten: set[TopicPartition] = set()
        self._lock = asyncio.Lock()
        # Flushes begun, and the number of the last one that succeeded: a ``before_progress`` after whose call a
        # flush began and succeeded need not flush again (that flush took its mappings and heads after the call).
        self._flushes_begun = 0
        self._last_stored = 0
        self.flushes = 0

    def record_batch(self, mapping: BatchMapping) -> None:
        self._pending.setdefault(mapping.source, RangeMap()).add_batch(
            mapping.source_offsets, mapping.target_base_offset
        )

    def restart(self, source: TopicPartition) -> None:
        self._pending.pop(source, None)
        self._restarted.add(source)
        self.forget_heads([source])

    def discard(self) -> None:
        """Forget what was not stored yet (the copier that produced it may have a successor)."""
        self._pending = {}
        self.forget_heads(list(self._stored_heads))

    def forget_heads(self, partitions: Iterable[TopicPartition]) -> None:
        """These partitions left this copier: another worker may store their heads meanwhile, so if they come back
        their head is stored again whatever it was before."""
        for tp in partitions:
            self._stored_heads.pop(tp, None)
            self._forgotten.add(tp)

    async def before_progress(self, positions: Callable[[], Positions]) -> None:
        """Store what was handed over so far, and the heads, before the caller writes its progress. Callers that
        wait behind one flush (an exactly-once copier's lanes, each before its commit) share the next one: a flush
        that began after a call took everything that call would have."""
        called_after = self._flushes_begun
        try:
            async with self._lock:
                if self._last_stored > called_after:
                    return
                await self._flush_locked(positions)
        except (SQLAlchemyError, OSError) as exc:
            log.warning(
                "offset map of %s not stored before progress (kept for the next flush): %s", self.replicator_id, exc
            )

    async def flush(self, positions: Callable[[], Positions]) -> None:
        """Write what was collected and the heads it reaches; ``positions`` gives the copier's acknowledged
        positions and is called with the collected runs taken, so every run below a head is written with it."""
        async with self._lock:
            await self._flush_locked(positions)

    async def _flush_locked(self, positions: Callable[[], Positions]) -> None:
        if self.db is None:
            return
        # No await between taking the heads and the runs: every run below a head is in ``pending``.
        self._flushes_begun += 1
        number = self._flushes_begun
        heads = positions()
        pending, self._pending = self._pending, {}
        restarted, self._restarted = self._restarted, set()
        # Partitions no longer copied here are forgotten too (revoked: stored again if they come back).
        self._stored_heads = {tp: head for tp, head in self._stored_heads.items() if tp in heads}
        self._forgotten = set()
        moved = {tp: head for tp, head in heads.items() if self._stored_heads.get(tp) != head}
        try:
            async with self.db.begin() as conn:
                for tp in sorted(restarted):
                    # The next head stored becomes the partition's new origin.
                    await offset_store.forget_partition(conn, self.replicator_id, tp.topic, tp.partition)
                await offset_store.store_runs_of(
                    conn, self.replicator_id, {(tp.topic, tp.partition): runs.runs for tp, runs in pending.items()}
                )
                await offset_store.store_heads(
                    conn,
                    self.replicator_id,
                    [(tp.topic, tp.partition, *head) for tp, head in sorted(moved.items())],
                )
        except BaseException:
            # Keep what was not written for the next flush (in front of anything newer).
            self._restarted |= restarted
            for tp, runs in pending.items():
                merged = RangeMap(runs.runs)
                for run in self._pending.get(tp, RangeMap()).runs:
                    merged.add(run)
                self._pending[tp] = merged
            raise
        for tp, head in moved.items():
            if tp not in self._forgotten:
                self._stored_heads[tp] = head
        self._last_stored = number
        self.flushes += 1
