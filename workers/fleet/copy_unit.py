"""The copy units of one replicator held by this worker: one ``PartitionCopier`` with a changing assignment.

The agent (``workers/fleet/agent.py``) converges each ``CopyUnit`` on the partitions it holds leases for every
tick: new partitions are assigned, moved ones revoked (their data and progress durable first), a failed copier
is stopped and restarted after a pause. The copier's write gate and lease check ask the agent whether every
partition they judge is still under a valid lease; its acknowledged batches go to the replicator's offset map
(``workers/fleet/offset_map_sink.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import fleet_store
from models.bootstrap import AddressPolicy
from models.logs import in_log_context
from workers.engine.connection import classify
from workers.engine.copier import CopierError, PartitionCopier, fence_transactional_ids
from workers.fleet.address_vetting import AddressVetting
from workers.fleet.offset_map_sink import OffsetMapBuffer
from workers.fleet.runtime import ConnectionResolver, ReplicatorRuntime
from workers.fleet.secrets import SecretStore, SecretUnavailable
from workers.fleet.usage import UsageMeter, billed

log = logging.getLogger(__name__)

# The fewest new partitions a pass starts, however often starting more failed.
FEWEST_STARTED_PER_PASS = 25


def next_start_batch(current: int, most: int, *, failed: bool, refused_at: int | None = None) -> int:
    """How many new partitions the next pass starts: half as many after a start that failed (a broker too busy to
    answer for 500 partitions within the request timeout answers for fewer), twice as many after one that
    succeeded, between ``FEWEST_STARTED_PER_PASS`` and ``most`` (FERRY_FLEET_PARTITIONS_STARTED_PER_PASS).

    ``refused_at``: the smallest number that failed while these partitions start. Success below it grows half way
    towards it, and tries it again only from the size just below: doubling straight back made a worker at 10,000
    partitions alternate between a pass that worked and one that failed 16 times (bench.partitions, 2026-12-02),
    each failure a wasted wait. Success at or above it means the failure had another cause (the progress topic
    not ready yet, say), and doubling resumes: a cap kept at the floor started 5,000 partitions 25 a pass."""
    if failed:
        wanted = current // 2
    elif refused_at is None or current >= refused_at or current * 2 < refused_at:
        wanted = current * 2
    else:
        halfway = (current + refused_at) // 2
        wanted = halfway if halfway > current else refused_at
    return max(min(FEWEST_STARTED_PER_PASS, most), min(most, wanted))


# Its lines, and its copier's (whose tasks start inside these methods), carry the replicator's ARN.
_replicator_context = in_log_context(lambda unit: {"replicator_arn": unit.runtime.arn})


class CopyUnit:
    """The copy units of one replicator held by this worker: one PartitionCopier with a changing assignment."""

    def __init__(
        self,
        runtime: ReplicatorRuntime,
        holds: Callable[[str, frozenset[TopicPartition]], bool],
        db: AsyncEngine | None = None,
        *,
        vetting: AddressVetting | None = None,
        resolver: ConnectionResolver | None = None,
        worker_id: str = "standalone",
        usage: UsageMeter | None = None,
        started_per_pass: int = 500,
        assign_timeout_s: float = 10.0,
    ) -> None:
        self.runtime = runtime
        # How long starting one batch of new partitions may take. Past it the batch counts as failed, like a
        # broker's timeout, and the copier goes on: the work loop's own deadline stops the whole copier, whose
        # partitions then all start over from their last progress (copied again past it) on a box already slow.
        self.assign_timeout_s = assign_timeout_s
        # New partitions started per pass (FERRY_FLEET_PARTITIONS_STARTED_PER_PASS). Starting one reads its
        # progress, topic ids and starting offsets; a replicator of 10,000 partitions on two workers took the work
        # loop 20 s a pass to start all at once: the Kafka calls timed out, and the control loop in the other
        # thread starved until its leases lapsed. The rest start on the next passes, the first ones copying.
        self.started_per_pass = started_per_pass
        # What the next pass starts: fewer after a start that failed (``next_start_batch``).
        self.start_batch = started_per_pass
        # The smallest start that failed since partitions began to wait for their start (``next_start_batch``).
        self._refused_at: int | None = None
        # What its copiers copy is counted there (workers/fleet/usage.py).
        self.usage = usage
        self.vetting = vetting or AddressVetting(AddressPolicy())
        self.resolver = resolver or ConnectionResolver(SecretStore())
        # holds(replicator_id, partitions): whether this worker holds a valid lease on every one of them.
        self.holds = holds
        self.db = db
        self.offset_map = OffsetMapBuffer(runtime.replicator_id, db)
        self.copier: PartitionCopier | None = None
        self.last_failure: str | None = None
        self._retry_after = 0.0
        # Set by the work loop: this worker's id, which names its exactly-once producer.
        self.worker_id = worker_id

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        return self.copier.assignment() if self.copier is not None else frozenset()

    def _writes_allowed(self, partitions: frozenset[TopicPartition]) -> bool:
        """The write gate: the copier asks with the partitions it holds, also while it stops (a stopping copier
        must not write progress for partitions it lost)."""
        return self.holds(self.runtime.replicator_id, partitions)

    async def _lease_held(self, partitions: frozenset[TopicPartition]) -> bool:
        return self._writes_allowed(partitions)

    def transactional_id(self, worker_id: str) -> str:
        """The transactional id of a worker's exactly-once producer for this replicator."""
        return f"ferry-{self.runtime.replicator_id}-{worker_id}"

    @_replicator_context
    async def converge(
        self, wanted: set[TopicPartition], previous_owners: Mapping[TopicPartition, str] | None = None
    ) -> None:
        """Copy exactly ``wanted``. ``previous_owners``: the worker that held each partition before this one,
        whose exactly-once producer is fenced before the partition is copied here."""
        copier = self.copier
        failure = copier.failure if copier is not None else None
        if failure is not None:
            self.last_failure = f"{type(failure).__name__}: {failure}"[:500]
            log.warning("copier of replicator %s failed (%s); restarting", self.runtime.name, self.last_failure)
            if classify(failure) is not None:
                # Refused credentials or TLS: the secrets may have been rotated; read them again.
                self.resolver.forget(self.runtime.source)
                self.resolver.forget(self.runtime.target)
            await self.stop()
            self._retry_after = time.monotonic() + 2.0
            copier = None
        if not wanted:
            await self.stop()
            return
        if copier is None:
            if time.monotonic() < self._retry_after:
                return
            for connection in (self.runtime.source, self.runtime.target):
                refused = await self.vetting.refusal(connection)
                if refused is not None:
                    # The metadata unit reports it in StateInfo; nothing here connects.
                    self.last_failure = f"{connection.describe()}: {refused}"
                    self._retry_after = time.monotonic() + 10.0
                    return
            try:
                source = await self.resolver.resolve(self.runtime.source)
                target = await self.resolver.resolve(self.runtime.target)
            except SecretUnavailable as exc:
                # The metadata unit reports it in StateInfo.
                self.last_failure = str(exc)
                self._retry_after = time.monotonic() + 5.0
                return
            copier = PartitionCopier(
                self.runtime.spec,
                source,
                target,
                transactional_id=self.transactional_id(self.worker_id) if self.runtime.spec.exactly_once else None,
                lease_check=self._lease_held,
                write_gate=self._writes_allowed,
                offset_map_sink=self.offset_map,
            )
            try:
                await copier.start()
            except BaseException:
                # Cancelled by the work loop's deadline or failed half way: close what was opened.
                await copier.stop()
                raise
            self.copier = copier
        current = set(copier.assignment())
        if current - wanted:
            await copier.revoke(current - wanted)
            self.offset_map.forget_heads(current - wanted)
        if not wanted - current:
            self._refused_at = None  # every partition started: a later start (new topics) begins afresh
        else:
            new = sorted(wanted - current)
            if len(new) > self.start_batch:
                log.info(
                    "replicator %s: starting %d of %d new partitions now, the rest on the next passes",
                    self.runtime.name,
                    self.start_batch,
                    len(new),
                )
            await self._assign(copier, set(new[: self.start_batch]), previous_owners or {})

    async def _assign(
        self, copier: PartitionCopier, added: set[TopicPartition], previous_owners: Mapping[TopicPartition, str]
    ) -> None:
        try:
            from_beginning = await self._appeared_later(added)
        except (SQLAlchemyError, OSError) as exc:
            # The database is away: the partitions already copying go on; these wait for a later pass.
            self.last_failure = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("replicator %s: %d partitions not started yet: %s", self.runtime.name, len(added), exc)
            return
        if self.runtime.spec.exactly_once and previous_owners:
            owners = {previous_owners[tp] for tp in added if tp in previous_owners}
            await fence_transactional_ids(copier.target, [self.transactional_id(owner) for owner in owners])
        try:
            await asyncio.wait_for(copier.assign(added, from_beginning=from_beginning), self.assign_timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            if copier.failure is not None:
                raise
            # A broker slow to answer for the new partitions: those already copying go on; these wait for a
            # later pass, which asks for fewer at once. Nothing of them was applied, or, cut off by the timeout
            # after they were handed to the copy loop, they copy on and the next pass finds them there; their
            # first progress is written with the next periodic write.
            if isinstance(exc, TimeoutError) and not str(exc):
                exc = TimeoutError(f"starting them took longer than {self.assign_timeout_s:g}s")
            self.last_failure = f"{type(exc).__name__}: {exc}"[:500]
            self._refused_at = len(added) if self._refused_at is None else min(self._refused_at, len(added))
            self.start_batch = next_start_batch(len(added), self.started_per_pass, failed=True)
            log.warning(
                "replicator %s: %d partitions not started yet (the next pass starts %d): %s",
                self.runtime.name,
                len(added),
                self.start_batch,
                exc,
            )
            return
        started = self.start_batch
        self.start_batch = next_start_batch(started, self.started_per_pass, failed=False, refused_at=self._refused_at)
        if self._refused_at is not None and started >= self._refused_at:
            self._refused_at = None  # a size that failed before worked: that failure had another cause
        # Store the new partitions' heads at once: the first head stored is where the offset map begins. A
        # database that is away keeps them for the next flush; copying does not wait for it.
        try:
            await self.flush_offset_map()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("offset map of %s not stored yet (kept for the next flush): %s", self.runtime.name, exc)

    async def _appeared_later(self, partitions: set[TopicPartition]) -> set[TopicPartition]:
        """The partitions that were not in scope at the replicator's first inventory (startingPosition is not
        theirs: they are copied from their beginning)."""
        if self.db is None:
            return set()
        async with self.db.connect() as conn:
            scope = await fleet_store.initial_scope(conn, self.runtime.replicator_id)
        if scope is None:
            return set()  # no inventory yet: these are the first partitions
        return {tp for tp in partitions if tp.partition >= scope.get(tp.topic, 0)}

    def read_usage(self, copier: PartitionCopier | None = None) -> None:
        """Add what the copier copied since it was last read to the worker's usage."""
        copier = copier or self.copier
        if self.usage is not None and copier is not None:
            self.usage.copied(billed(self.runtime), copier, copier.copied_totals())

    @_replicator_context
    async def flush_offset_map(self) -> None:
        """Write the offset map runs collected since the last flush, and the heads they reach."""
        copier = self.copier
        await self.offset_map.flush(copier.positions if copier is not None else dict)

    @_replicator_context
    async def stop(self) -> None:
        if self.copier is not None:
            copier, self.copier = self.copier, None
            try:
                await copier.stop()
            except (CopierError, KafkaError, OSError) as exc:
                # Its final writes did not complete: progress stays at the last write, and its map may be behind
                # what a successor stores meanwhile, which must win. The copier's clients are closed either way.
                log.warning("copier of %s stopped with %s: %s", self.runtime.name, type(exc).__name__, exc)
                self.offset_map.discard()
                return
            finally:
                # Its last batches were acknowledged while it stopped: counted before the copier is dropped.
                self.read_usage(copier)
            if copier.failure is None:
                try:
                    await self.offset_map.flush(copier.positions)
                except IntegrityError:
                    # The replicator was deleted while it stopped: its map went with it.
                    log.info("offset map of %s not stored at stop: the replicator is deleted", self.runtime.name)
                    self.offset_map.discard()
                except (SQLAlchemyError, OSError) as exc:
                    # Consumer groups committed on the target over this stretch translate conservatively (from
                    # the last stored head), never past what was copied.
                    log.warning("offset map of %s lost at stop (database away): %s", self.runtime.name, exc)
                    self.offset_map.discard()
            else:
                # A copier that was fenced or failed may have a successor: its late map must not win.
                self.offset_map.discard()
