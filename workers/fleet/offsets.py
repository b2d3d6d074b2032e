"""The copy units' offset map sink: collects the copier's batch mappings in memory and writes them to
PostgreSQL (``models/offsets.py``) at every agent tick, together with each partition's head.

``record_batch`` is called synchronously by the copier after the target acknowledged a batch (in partition
order), so it only appends to an in-memory ``RangeMap`` per partition; ``flush`` (awaited by the agent) writes
the runs and the heads in one transaction. The head written is the copier's acknowledged position, taken after
the runs it covers were collected, so a stored head never claims copies the stored map does not hold.

A worker that dies loses at most one tick of runs: the records it copied in that tick have no mapping. The
map then shows a gap in source offsets whose target range is not contiguous with its neighbours, and a
translation into that gap resumes before it, with the gap's size as the stated re-read bound (never a skip).
"""

from __future__ import annotations

import logging

from aiokafka import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from models import offsets as offset_store
from workers.engine.copier import BatchMapping
from workers.engine.offset_map import RangeMap

log = logging.getLogger(__name__)


class OffsetMapBuffer:
    """An ``OffsetMapSink`` for one replicator's copier on this worker."""

    def __init__(self, replicator_id: str) -> None:
        self.replicator_id = replicator_id
        self._pending: dict[TopicPartition, RangeMap] = {}
        self._targets: dict[TopicPartition, str] = {}

    def record_batch(self, mapping: BatchMapping) -> None:
        self._pending.setdefault(mapping.source, RangeMap()).add_batch(
            mapping.source_offsets, mapping.target_base_offset
        )
        self._targets[mapping.source] = mapping.target.topic

    async def flush(self, db: AsyncEngine, heads: dict[TopicPartition, tuple[str, int, int | None]]) -> None:
        """Write what was collected, then the heads (source partition -> (target topic, next source offset, next
        target offset)). Take ``heads`` from the copier right before calling, with no await in between."""
        pending, self._pending = self._pending, {}
        try:
            async with db.begin() as conn:
                for tp, runs in sorted(pending.items()):
                    await offset_store.store_runs(conn, self.replicator_id, tp.topic, tp.partition, runs.runs)
                await offset_store.store_heads(
                    conn,
                    self.replicator_id,
                    [(tp.topic, tp.partition, *head) for tp, head in sorted(heads.items())],
                )
        except BaseException:
            # Keep what was not written for the next flush (merged in front of anything newer).
            for tp, runs in pending.items():
                newer = self._pending.get(tp)
                merged = RangeMap(runs.runs)
                if newer is not None:
                    for run in newer.runs:
                        merged.add(run)
                self._pending[tp] = merged
            raise
