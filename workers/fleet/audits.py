"""Audit jobs on the fleet: the replicator's metadata unit runs the audits users ask for (``api/audits.py``).

Every few seconds it claims the replicator's oldest open job (``models/audits.py``), reads the offset map of each
partition asked for and runs the engine's auditor (``workers/engine/audit.py``) over the clusters' connections
the metadata unit resolved on this worker, writing progress as it goes and the result at the end. One job at a
time per replicator; a job whose worker died is claimed again by the next owner of the metadata unit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import audits, offset_store
from models.audits import AuditState, ClaimedAudit
from workers.engine.audit import AuditError, PartitionAudit, audit_partition
from workers.engine.connection import ClusterConnection
from workers.engine.spec import TopicNaming
from workers.fleet.runtime import ReplicatorRuntime
from workers.fleet.watches import ReplicatorsWatch

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0


class AuditRunner:
    def __init__(
        self,
        db: AsyncEngine,
        worker_id: str,
        *,
        runtime: Callable[[], ReplicatorRuntime],
        connections: Callable[[], tuple[ClusterConnection, ClusterConnection] | None],
        target_cluster_id: Callable[[], str | None],
        partitions: Callable[[], list[tuple[str, int]] | None],
        may_write: Callable[[], bool],
        watch: ReplicatorsWatch | None = None,
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self._runtime = runtime
        self._connections = connections
        self._target_cluster_id = target_cluster_id
        self._partitions = partitions
        self._may_write = may_write
        # The worker's shared answer to "has this replicator a job to claim?" (None: try to claim every poll).
        self.watch = watch

    async def run(self) -> None:
        while True:
            try:
                await self.run_next()
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                log.warning("audit jobs of %s: %s; retrying", self._runtime().name, exc)
            await asyncio.sleep(POLL_SECONDS)

    async def run_next(self) -> bool:
        """Run the oldest open job, if any and if the clusters are known; True when one ran."""
        connections = self._connections()
        if connections is None or self._partitions() is None or not self._may_write():
            return False  # the metadata unit has not had a good pass yet, or is losing its lease
        runtime = self._runtime()
        if self.watch is not None and not await self.watch.has(runtime.replicator_id):
            return False
        async with self.db.begin() as conn:
            job = await audits.claim_audit(conn, runtime.replicator_id, self.worker_id)
        if job is None:
            return False
        log.info("audit %s of %s: %s", job.id, runtime.name, job.topic)
        try:
            await self._run(job, runtime, connections)
        except (AuditError, KafkaError, OSError, TimeoutError) as exc:
            await self._record(job, AuditState.FAILED, None, error=f"{type(exc).__name__}: {exc}"[:1000])
        return True

    async def _run(
        self, job: ClaimedAudit, runtime: ReplicatorRuntime, connections: tuple[ClusterConnection, ClusterConnection]
    ) -> None:
        known = sorted(p for t, p in self._partitions() or () if t == job.topic)
        partitions = known if job.partition is None else [p for p in known if p == job.partition]
        if not partitions:
            what = f"partition {job.partition} of {job.topic}" if job.partition is not None else job.topic
            await self._record(
                job, AuditState.FAILED, None, error=f"{what} is not among the source partitions this replicator copies"
            )
            return
        spec = runtime.spec
        target_topic = spec.target_topic(job.topic)
        identical = spec.topic_naming is TopicNaming.IDENTICAL
        origin = self._target_cluster_id() if identical else None
        source, target = connections
        done: list[dict[str, Any]] = []
        for index, partition in enumerate(partitions):
            async with self.db.connect() as conn:
                runs = await offset_store.runs_of_partition(conn, runtime.replicator_id, job.topic, partition)
                copied_from = await offset_store.origin(conn, runtime.replicator_id, job.topic, partition)

            async def report(partial: PartitionAudit, index: int = index) -> None:
                span = max(1, partial.to_offset - partial.from_offset)
                share = min(100.0, 100.0 * (partial.position - partial.from_offset) / span)
                line = (
                    f"partition {partial.partition} ({index + 1} of {len(partitions)}): {share:.0f}% of offsets "
                    f"{partial.from_offset}-{partial.to_offset}, {partial.matched} matched, "
                    f"{partial.missing.count} missing, {partial.duplicated.count} duplicated, "
                    f"{partial.differing.count} differing, {partial.unexpected.count} unexpected"
                )
                if not await self._record(job, AuditState.RUNNING, line, result={"partitions": done}):
                    raise AuditError("the job was taken over by another worker")

            result = await audit_partition(
                source,
                target,
                source_topic=job.topic,
                target_topic=target_topic,
                partition=partition,
                runs=runs,
                from_offset=job.from_offset,
                to_offset=job.to_offset,
                loop_origin=origin.encode() if origin else None,
                copied_from=copied_from,
                progress=report,
            )
            done.append(result.to_json())
            await report(result)
        consistent = all(p["consistent"] for p in done)
        summary = (
            f"{len(done)} partitions: {sum(p['matched'] for p in done)} records matched, "
            f"{'consistent' if consistent else 'differences found'}"
        )
        await self._record(job, AuditState.SUCCEEDED, summary, result={"consistent": consistent, "partitions": done})

    async def _record(
        self,
        job: ClaimedAudit,
        state: AuditState,
        progress: str | None,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        async with self.db.begin() as conn:
            return await audits.record_audit(
                conn, job.id, self.worker_id, state=state, progress=progress, result=result, error=error
            )
