"""The fleet agent's work loop: runs the units the control loop holds leases for, on a thread of its own.

Given a ``DesiredWork`` (``workers/fleet/control.py``) it converges: first it stops what is no longer wanted
(the units of replicators that are gone or DELETING first, then units moved away, whose final progress is
written while their lease is still renewed), then starts what is new: a replicator's metadata unit
(``workers/fleet/metadata_unit.py``) and its copy units, one ``CopyUnit`` per replicator
(``workers/fleet/copy_unit.py``; assign/revoke never pause the others). Between changes it flushes the offset
maps and publishes per-partition measurements to Redis (``workers/fleet/reporting.py``).

``running`` tells the control loop which units still have work going, so it releases a moved unit only once its
work stopped. The work never decides ownership: every write it makes is gated by the control loop's leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from models import audits, fleet_store, group_store
from models.bootstrap import AddressPolicy
from models.db import make_async_engine
from models.fleet import UnitKey
from models.settings import FerrySettings
from workers.engine.cluster_metadata import ClusterMetadataHub
from workers.engine.copier import CopierError
from workers.fleet.address_vetting import AddressVetting
from workers.fleet.control import DesiredWork
from workers.fleet.copy_unit import CopyUnit
from workers.fleet.load import LoadMeter
from workers.fleet.metadata_unit import MetadataUnit
from workers.fleet.reporting import MetricsReporter
from workers.fleet.runtime import ConnectionResolver, ReplicatorRuntime
from workers.fleet.secrets import SecretStore
from workers.fleet.usage import UsageMeter
from workers.fleet.watches import ReplicatorsWatch

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Replicators whose copy units are started or stopped at the same time.
_CONVERGE_CONCURRENCY = 8

# Metadata units of one worker that open their clients and run their first pass at the same time: 1,000
# replicators offered to two workers at once otherwise bootstrapped 500 clients per worker together.
METADATA_STARTS_AT_ONCE = 16

# Redis connections of one worker process: its units' reports and status writes share them.
REDIS_CONNECTIONS = 64

# An iteration longer than this many ticks is logged with its phases.
SLOW_ITERATION_TICKS = 3


def redis_client(settings: FerrySettings) -> Redis:
    """Redis with deadlines: a Redis that stops answering fails a call within seconds instead of hanging it. The pool
    is bounded and a call waits (up to the same deadline) for a free connection: a worker with hundreds of metadata
    units publishes from many at once, and redis-py's default pool fails every call beyond its 100th connection at
    once (``MaxConnectionsError``: thousands of lost group-sync reports with 1,000 replicators on two workers)."""
    return Redis.from_pool(
        BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REDIS_CONNECTIONS,
            timeout=5,
            socket_timeout=5,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=10,
            retry_on_timeout=False,
        )
    )


class WorkLoop:
    def __init__(
        self,
        settings: FerrySettings,
        worker_id: str,
        *,
        holds: Callable[[str, frozenset[TopicPartition]], bool],
        holds_unit: Callable[[UnitKey], bool],
        lease_epochs: Callable[[], Mapping[UnitKey, int]],
        request_reconcile: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.tick_s = settings.fleet_tick_seconds
        self._holds = holds
        self._holds_unit = holds_unit
        self._lease_epochs = lease_epochs
        self._request_reconcile = request_reconcile  # thread-safe: asks the control loop for a pass now
        self.metadata: dict[str, tuple[MetadataUnit, asyncio.Task[None]]] = {}
        self.copiers: dict[str, CopyUnit] = {}
        # How many new partitions a replicator's next copy unit starts per pass, kept from the one stopped last: when
        # every lease of a worker lapses, its copy unit stops, and a new one must not forget that 500 at once failed.
        self._start_batches: dict[str, int] = {}
        # The offset maps' store, one pass at a time beside the iterations (``_flush_offset_maps``).
        self._map_flush: asyncio.Task[None] | None = None
        # Replicators with nothing left here, stopping in the background: the partitions they had, and the task.
        self._stopping: dict[str, tuple[frozenset[TopicPartition], asyncio.Task[None]]] = {}
        # Metadata units cancelled and closing their clients in the background.
        self._stopping_metadata: dict[str, asyncio.Task[None]] = {}
        # Read by the control loop's thread: replaced whole, never mutated.
        self.running: frozenset[UnitKey] = frozenset()
        self._starting: set[UnitKey] = set()  # being started by the converge under way (count as running)
        # (replicator, stopping) -> its partitions and their unit keys, while the partitions stay the same
        self._unit_keys: dict[tuple[str, bool], tuple[frozenset[TopicPartition], frozenset[UnitKey]]] = {}
        self.last_beat = 0.0  # wall clock of the last iteration
        self._desired = DesiredWork()
        self._wanted_cache: (
            tuple[DesiredWork, dict[str, set[TopicPartition]], dict[str, dict[TopicPartition, str]]] | None
        ) = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._db: AsyncEngine | None = None
        self._redis: Redis | None = None
        self._reporter: MetricsReporter | None = None
        # Read by the control loop's thread (its ``sample``), which writes it to the database.
        self.load_meter = LoadMeter()
        self.usage = UsageMeter(worker_id, flush_seconds=settings.usage_flush_seconds)  # docs/usage.md
        self.vetting = AddressVetting(AddressPolicy(settings.allowed_bootstrap))
        # What the metadata units read of their clusters, read once per cluster and principal and shared.
        self.metadata_hub = ClusterMetadataHub()
        # Shared by the metadata units: one query a second each tells which replicators have a failover under way
        # and which an audit job to claim.
        self.watches: dict[str, ReplicatorsWatch] = {}
        # Metadata units running their first pass (clients opened, first inventory) at once on this worker.
        self.metadata_starts = asyncio.Semaphore(METADATA_STARTS_AT_ONCE)
        # Secrets are read here, on the worker, and kept in memory only (workers/fleet/secrets.py).
        self.resolver = ConnectionResolver(
            SecretStore(
                endpoint_url=settings.secrets_manager_endpoint,
                secrets_dir=settings.secrets_dir,
                cache_seconds=settings.secret_cache_seconds,
            ),
            request_timeout_ms=int(settings.fleet_write_timeout_seconds * 1000),
        )
        # Bounded so a replicator whose copier blocks (e.g. a target that stopped answering) is given up on
        # and retried well within the time other workers would take over.
        self.converge_timeout_s = max(5.0, settings.fleet_lease_seconds * 2)

    def offer(self, desired: DesiredWork) -> None:
        """Called from the control loop's thread: run this from now on."""
        self._desired = desired
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._on_offer)

    def _on_offer(self) -> None:
        try:
            self._converge_metadata(self._desired)
        except Exception:
            log.exception("fleet agent %s: converging metadata units failed", self.worker_id)
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._db = make_async_engine(self.settings)
        self._redis = redis_client(self.settings)
        self._reporter = MetricsReporter(self._redis, self.worker_id)
        log.info("fleet agent %s: work loop started", self.worker_id)
        try:
            while not stop.is_set():
                started = time.monotonic()
                await self._iteration()
                self.last_beat = time.time()
                self._wake.clear()
                waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
                _, pending = await asyncio.wait(
                    waits,
                    timeout=max(0.05, self.tick_s - (time.monotonic() - started)),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in pending:
                    waiter.cancel()
        finally:
            await self.shutdown()

    async def _iteration(self) -> None:
        started = time.monotonic()
        try:
            await self.converge(self._desired)
        except Exception:
            log.exception("fleet agent %s: converging failed", self.worker_id)
        except asyncio.CancelledError:
            # A library's stray CancelledError must not end the work loop; a real stop still does.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.exception("fleet agent %s: converging failed with a stray cancellation", self.worker_id)
        converged = time.monotonic()
        if self._map_flush is None or self._map_flush.done():
            # Aside, not awaited: under load a flush took PostgreSQL up to 19 s, and an iteration waiting for it
            # converged that much later, so a partition moved to another worker was not revoked before the lease
            # kept for its hand-over ran out, and was abandoned without its final progress (copied twice).
            self._map_flush = asyncio.create_task(self._flush_offset_maps(), name="ferry-offset-maps")
        await self.usage.tick(self.copiers, self.metadata, self._db)
        usage_ticked = time.monotonic()
        try:
            reporter = self._require(self._reporter)
            await asyncio.wait_for(reporter.publish(self.copiers, self.metadata, self._lease_epochs()), 10)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("measurements not published: %s", exc)
        if self.load_meter.due():
            self.load_meter.observe(
                {
                    UnitKey(replicator_id, tp.topic, tp.partition): stats
                    for replicator_id, unit in self.copiers.items()
                    if unit.copier is not None
                    for tp, stats in unit.copier.counts().items()
                }
            )
        published = time.monotonic()
        if published - started > SLOW_ITERATION_TICKS * self.tick_s:
            # New units start only between iterations: say where the time went.
            log.warning(
                "fleet agent %s: work iteration took %.1fs (converge %.2fs, usage %.2fs, reports %.2fs)",
                self.worker_id,
                published - started,
                converged - started,
                usage_ticked - converged,
                published - usage_ticked,
            )

    async def _flush_offset_maps(self) -> None:
        started = time.monotonic()
        for runner in list(self.copiers.values()):
            try:
                await asyncio.wait_for(runner.flush_offset_map(), self.converge_timeout_s)
            except (TimeoutError, SQLAlchemyError, OSError) as exc:
                # Kept in memory for the next flush; the copy and the reports go on meanwhile.
                log.warning("offset map of %s not stored: %s", runner.runtime.name, exc)
        took = time.monotonic() - started
        if took > SLOW_ITERATION_TICKS * self.tick_s:
            log.warning("fleet agent %s: storing the offset maps took %.1fs", self.worker_id, took)

    async def shutdown(self) -> None:
        """Stop every unit (copiers write their final progress while the control loop still renews)."""
        self.usage.read(self.copiers, self.metadata)
        await self.converge(DesiredWork())
        if self._map_flush is not None:
            await asyncio.wait({self._map_flush})
        while self._stopping or self._stopping_metadata:
            await asyncio.wait(
                [*(task for _, task in self._stopping.values()), *self._stopping_metadata.values()], timeout=1.0
            )
        if self._db is not None:
            await self.usage.flush(self._db)  # what the stopped copiers copied last included
        if self._reporter is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._reporter.forget_worker(), 5)
        await self.metadata_hub.close()
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()
        if self._db is not None:
            await self._db.dispose()
        log.info("fleet agent %s: work loop stopped", self.worker_id)

    # ------------------------------------------------------------------ converging

    def _converge_metadata(self, desired: DesiredWork) -> None:
        """Stop the metadata units no longer held (in the background) and start or update those held. Never
        waits, so it also runs the moment the control loop offers new work, even while an iteration is busy
        starting copy units: a new replicator's copy units wait for its metadata unit's first inventory."""
        if self._db is None or self._redis is None:
            return  # the loop has not started yet: its first iteration converges
        held_metadata = {k.replicator_id for k in desired.units if k.is_metadata}
        for replicator_id in list(self.metadata):
            if replicator_id not in held_metadata or replicator_id not in desired.runtimes:
                self._stop_metadata(replicator_id)
        for replicator_id in held_metadata:
            runtime = desired.runtimes.get(replicator_id)
            if (
                runtime is not None
                and replicator_id not in self._stopping_metadata  # the old one's writes must end first
                and self._still_wanted(UnitKey.metadata(replicator_id))
            ):
                self._ensure_metadata(runtime)
        self._note_running()

    def _wanted_partitions(
        self, desired: DesiredWork
    ) -> tuple[dict[str, set[TopicPartition]], dict[str, dict[TopicPartition, str]]]:
        """Per replicator, the partitions ``desired`` holds and their previous owners; kept for as long as the
        control loop offers the same work (converging every iteration rebuilt 5,000 of each at 5,000 partitions)."""
        cached = self._wanted_cache
        if cached is not None and cached[0] is desired:
            return cached[1], cached[2]
        runtimes = desired.runtimes
        wanted: dict[str, set[TopicPartition]] = {}
        for key in desired.units:
            if not key.is_metadata and key.replicator_id in runtimes:
                wanted.setdefault(key.replicator_id, set()).add(TopicPartition(key.topic, key.partition))
        previous: dict[str, dict[TopicPartition, str]] = {}
        for key, owner in desired.previous_owners.items():
            previous.setdefault(key.replicator_id, {})[TopicPartition(key.topic, key.partition)] = owner
        self._wanted_cache = (desired, wanted, previous)
        return wanted, previous

    async def converge(self, desired: DesiredWork) -> None:
        runtimes = desired.runtimes
        wanted, previous = self._wanted_partitions(desired)

        # 1. Stop replicators with nothing left here (deleted, DELETING) in the background: their writes are
        #    gated by their leases already, and closing clients on a busy broker must not hold up starting
        #    anything else. Their units count as running until they have stopped.
        for rid in list(self.copiers):
            if rid not in wanted and rid not in self._stopping:
                self._begin_stop(rid)
        # 2. Start and update metadata units, before anything that waits on brokers.
        self._converge_metadata(desired)

        async def shrink(rid: str) -> None:
            await self._converge_copy_unit(rid, wanted[rid], runtimes[rid], previous.get(rid))

        shrinking = [
            rid
            for rid, unit in self.copiers.items()
            if rid in wanted and rid not in self._stopping and unit.partitions - wanted[rid]
        ]
        # 3. Shrink copy units whose partitions moved away (their final progress written under the lease), then
        #    start and update copy units.
        await self._each(shrinking, shrink)
        self._note_running()

        starting = [rid for rid in wanted if rid not in self._stopping]
        # What is about to start counts as running from now, before any copier takes it: the control loop
        # (another thread) releases a unit that moved away at once when it is not running, and a copier that took
        # a partition whose lease was just released fails its lease check for every partition it holds (all of
        # them are copied again from their last progress).
        starting_here = set(starting)
        self._starting = {k for k in desired.units if k.replicator_id in starting_here and not k.is_metadata}
        self._note_running()
        try:
            await self._each(
                starting,
                lambda rid: self._start_or_update(rid, wanted[rid], runtimes[rid], previous.get(rid), desired),
            )
        finally:
            self._starting = set()
        self._note_running()

    async def _start_or_update(
        self,
        rid: str,
        partitions: set[TopicPartition],
        runtime: ReplicatorRuntime,
        previous_owners: Mapping[TopicPartition, str] | None,
        desired: DesiredWork,
    ) -> None:
        # Skip what the control loop dropped since this pass began (a replicator deleted meanwhile): the next
        # pass stops it before it starts anything. Nothing was dropped while the offer is still the same.
        if self._desired is desired:
            still = partitions
        else:
            still = {tp for tp in partitions if self._still_wanted(UnitKey(rid, tp.topic, tp.partition))}
        if still == partitions or rid in self.copiers:
            await self._converge_copy_unit(rid, still, runtime, previous_owners)

    def _still_wanted(self, key: UnitKey) -> bool:
        return key in self._desired.units

    async def _each(self, replicator_ids: list[str], work: Callable[[str], Awaitable[None]]) -> None:
        limit = asyncio.Semaphore(_CONVERGE_CONCURRENCY)

        async def one(replicator_id: str) -> None:
            async with limit:
                await work(replicator_id)

        await asyncio.gather(*(one(rid) for rid in replicator_ids))

    def _note_running(self) -> None:
        units = {UnitKey.metadata(rid) for rid, (_, task) in self.metadata.items() if not task.done()}
        units |= {UnitKey.metadata(rid) for rid in self._stopping_metadata}
        known, self._unit_keys = self._unit_keys, {}
        for replicator_id, partitions, stopping in (
            *((rid, unit.partitions, False) for rid, unit in self.copiers.items()),
            *((rid, partitions, True) for rid, (partitions, _) in self._stopping.items()),
        ):
            cached = known.get((replicator_id, stopping))
            if cached is None or cached[0] != partitions:
                # Noted several times an iteration: 5,000 new keys each time were 6% of a worker's CPU under load.
                cached = (partitions, frozenset(UnitKey(replicator_id, tp.topic, tp.partition) for tp in partitions))
            self._unit_keys[(replicator_id, stopping)] = cached
            units |= cached[1]
        self.running = frozenset(units | self._starting)

    def _begin_stop(self, replicator_id: str) -> None:
        unit = self.copiers.get(replicator_id)
        partitions = unit.partitions if unit is not None else frozenset()
        task = asyncio.create_task(self._stop_copy_unit(replicator_id), name=f"stop-{replicator_id}")
        self._stopping[replicator_id] = (partitions, task)
        task.add_done_callback(functools.partial(self._stopped, replicator_id))

    def _stopped(self, replicator_id: str, task: asyncio.Task[None]) -> None:
        if self._stopping.get(replicator_id, (None, None))[1] is task:
            del self._stopping[replicator_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping replicator %s failed: %r", replicator_id, task.exception())
        self._note_running()

    async def _stop_copy_unit(self, replicator_id: str) -> None:
        unit = self.copiers.pop(replicator_id, None)
        if unit is not None:
            if unit.start_batch < unit.started_per_pass:
                self._start_batches[replicator_id] = unit.start_batch
            else:
                self._start_batches.pop(replicator_id, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(unit.stop(), self.converge_timeout_s)

    async def _converge_copy_unit(
        self,
        replicator_id: str,
        partitions: set[TopicPartition],
        runtime: ReplicatorRuntime,
        previous_owners: Mapping[TopicPartition, str] | None,
    ) -> None:
        copy_unit = self.copiers.get(replicator_id)
        if copy_unit is None:
            copy_unit = CopyUnit(
                runtime,
                self._holds,
                self._db,
                vetting=self.vetting,
                resolver=self.resolver,
                worker_id=self.worker_id,
                usage=self.usage,
                started_per_pass=self.settings.fleet_partitions_started_per_pass,
                # Half the pass's deadline: a slow start of new partitions is retried smaller, and the copier
                # with the partitions already copying is kept.
                assign_timeout_s=self.converge_timeout_s / 2,
            )
            copy_unit.start_batch = self._start_batches.pop(replicator_id, copy_unit.start_batch)
            self.copiers[replicator_id] = copy_unit
        try:
            await asyncio.wait_for(copy_unit.converge(partitions, previous_owners), self.converge_timeout_s)
        except (TimeoutError, CopierError, KafkaError, OSError, SQLAlchemyError) as exc:
            # One replicator's trouble (an unreachable target, a slow progress read) must not hold up the
            # others: stop its copier and retry on a later pass.
            if isinstance(exc, TimeoutError) and not str(exc):
                why = f"starting or changing the copy took longer than {self.converge_timeout_s:g}s"
            else:
                why = f"{type(exc).__name__}: {exc}"
            copy_unit.last_failure = why[:500]
            log.warning("replicator %s: %s; retrying", copy_unit.runtime.name, copy_unit.last_failure)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(copy_unit.stop(), self.converge_timeout_s)

    def _ensure_metadata(self, runtime: ReplicatorRuntime) -> None:
        replicator_id = runtime.replicator_id
        if replicator_id in self.metadata:
            runner, task = self.metadata[replicator_id]
            if not task.done():
                runner.update(runtime)
                return
            if not task.cancelled() and task.exception() is not None:
                log.error("metadata unit of %s ended: %r; restarting it", runtime.name, task.exception())
        key = UnitKey.metadata(replicator_id)
        metadata_unit = MetadataUnit(
            runtime,
            self._require(self._db),
            self._require(self._redis),
            probe_timeout_s=min(5.0, self.settings.fleet_lease_seconds / 2),
            config_interval_s=self.settings.topic_config_sync_seconds,
            hub=self.metadata_hub,
            failover_watch=self._watch("failovers", group_store.replicators_with_open_failovers),
            audit_watch=self._watch("audits", audits.replicators_with_claimable_audits),
            starting=self.metadata_starts,
            group_sync_interval_s=self.settings.group_sync_interval_seconds,
            offset_map_max_runs=self.settings.offset_map_max_runs,
            vetting=self.vetting,
            resolver=self.resolver,
            may_write=lambda: self._holds_unit(key),
            confirm_writes=functools.partial(self._confirm_unit, key),
            on_inventory=self._request_reconcile,
            worker_id=self.worker_id,
        )
        self.metadata[replicator_id] = (
            metadata_unit,
            asyncio.create_task(metadata_unit.run(), name=f"metadata-{runtime.name}"),
        )
        log.info("metadata unit of %s started", runtime.name)

    def _watch(self, kind: str, fetch: Callable[[AsyncConnection], Awaitable[set[str]]]) -> ReplicatorsWatch:
        if kind not in self.watches:
            self.watches[kind] = ReplicatorsWatch(self._require(self._db), fetch)
        return self.watches[kind]

    async def _confirm_unit(self, key: UnitKey) -> bool:
        """Ask the database whether this worker's lease on the unit stands and its replicator is not being
        deleted. The in-memory check learns of a delete only at the next control tick; a unit about to act on
        what it just read asks this first, so nothing it saw after a delete is ever written."""
        epoch = self._lease_epochs().get(key)
        if epoch is None or not self._holds_unit(key):
            return False
        try:
            async with self._require(self._db).connect() as conn:
                return await fleet_store.may_write(conn, self.worker_id, key, epoch)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not confirm the lease of %s, so nothing is written this pass: %s", key, exc)
            return False

    def _stop_metadata(self, replicator_id: str) -> None:
        _, task = self.metadata.pop(replicator_id)
        task.cancel()
        self._stopping_metadata[replicator_id] = task
        task.add_done_callback(functools.partial(self._metadata_stopped, replicator_id))

    def _metadata_stopped(self, replicator_id: str, task: asyncio.Task[None]) -> None:
        if self._stopping_metadata.get(replicator_id) is task:
            del self._stopping_metadata[replicator_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("metadata unit of %s ended: %r", replicator_id, task.exception())
        self._note_running()
        if self._wake is not None:
            self._wake.set()  # its replicator's metadata unit may be wanted here again

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise RuntimeError("WorkLoop.run() has not started")
        return value
