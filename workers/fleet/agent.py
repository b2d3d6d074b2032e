"""The fleet agent: runs inside every Celery worker process and does what the reconcile loop assigned to it.

Celery supervises the process (start, stop, restart); the agent is a plain asyncio loop in a thread of its own
(``AgentThread``), started and stopped by a worker bootstep (``workers/celery_app.py``). Every tick it:

1. heartbeats (``fleet_workers``), so the reconcile loop counts it as live (a task of its own, with renewal);
2. stops and releases units that were moved to another worker;
3. renews its leases, and stops at once whatever it no longer holds (``workers/fleet/leases.py``);
4. acquires the units newly assigned to it and starts their work: a replicator's metadata unit
   (``workers/fleet/metadata_unit.py``) and its copy units, one ``CopyUnit`` per replicator
   (``workers/fleet/copy_unit.py``; assign/revoke never pause the others);
5. publishes per-partition measurements to Redis (``workers/fleet/reporting.py``), where the API reads them.

Nothing here depends on Celery messages for ownership: a redelivered or late task cannot start copying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import fleet_store
from models.bootstrap import AddressPolicy
from models.db import make_async_engine
from models.fleet import UnitKey
from models.settings import FerrySettings
from workers.engine.copier import CopierError
from workers.fleet.address_vetting import AddressVetting
from workers.fleet.copy_unit import CopyUnit
from workers.fleet.leases import Lease, LeaseStore
from workers.fleet.metadata_unit import MetadataUnit
from workers.fleet.reporting import MetricsReporter
from workers.fleet.runtime import ConnectionResolver, ReplicatorRuntime, runtime_of
from workers.fleet.secrets import SecretStore

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def new_worker_id(hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FleetAgent:
    def __init__(
        self, settings: FerrySettings, worker_id: str | None = None, *, tick_s: float = 1.0, lease_seconds: float = 10.0
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.tick_s = tick_s
        self.lease_seconds = lease_seconds
        self.leases: dict[UnitKey, Lease] = {}
        # Units moved to another worker: still ours (and valid) until their work stopped and they are released.
        self.releasing: dict[UnitKey, Lease] = {}
        self.runtimes: dict[str, ReplicatorRuntime] = {}
        self.metadata: dict[str, tuple[MetadataUnit, asyncio.Task[None]]] = {}
        self.copiers: dict[str, CopyUnit] = {}
        self._db: AsyncEngine | None = None
        self._redis: Redis | None = None
        self._store: LeaseStore | None = None
        self._reporter: MetricsReporter | None = None
        # One policy and one cache of vetted bootstrap addresses for every unit of this worker.
        self.vetting = AddressVetting(AddressPolicy(settings.allowed_bootstrap))
        # Secrets are read here, on the worker, and kept in memory only (workers/fleet/secrets.py).
        self.resolver = ConnectionResolver(
            SecretStore(
                endpoint_url=settings.secrets_manager_endpoint,
                secrets_dir=settings.secrets_dir,
                cache_seconds=settings.secret_cache_seconds,
            )
        )
        # Bounded so a replicator whose copier blocks (e.g. a target that stopped answering) is given up on
        # and retried well within the time other workers would take over.
        self.converge_timeout_s = max(5.0, lease_seconds * 2)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        self._db = make_async_engine(self.settings)
        self._redis = Redis.from_url(self.settings.redis_url)
        self._store = LeaseStore(self._db, self.worker_id, self.lease_seconds)
        self._reporter = MetricsReporter(self._redis, self.worker_id)
        log.info("fleet agent %s started", self.worker_id)
        upkeep = asyncio.create_task(self._lease_upkeep(stop), name="lease-upkeep")
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self.tick()
                except (OSError, KafkaError, ConnectionError) as exc:
                    log.warning("fleet agent tick failed: %s", exc)
                except Exception:
                    # A bug in one tick must not kill the agent: the next tick re-reads everything.
                    log.exception("fleet agent tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, self.tick_s - (time.monotonic() - started)))
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            await self.shutdown()

    async def _lease_upkeep(self, stop: asyncio.Event) -> None:
        """Heartbeat and renew every tick, apart from the work: a slow copier start or progress read must
        never let this worker's leases lapse or make it look dead."""
        store = self._require(self._store)
        while not stop.is_set():
            started = time.monotonic()
            try:
                await store.heartbeat(socket.gethostname(), os.getpid())
                lost = await store.renew([*self.leases.values(), *self.releasing.values()])
                for key in lost:
                    if self.leases.pop(key, None) is not None:
                        log.warning("lease on %s lost; stopping it", key)
            except (OSError, SQLAlchemyError) as exc:
                log.warning("heartbeat or lease renewal failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, self.tick_s - (time.monotonic() - started)))

    async def shutdown(self) -> None:
        for replicator_id in list(self.copiers):
            await self.copiers.pop(replicator_id).stop()
        for replicator_id in list(self.metadata):
            await self._stop_metadata(replicator_id)
        if self._store is not None:
            with contextlib.suppress(OSError):
                await self._store.leave()
        if self._reporter is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await self._reporter.forget_worker()
        if self._redis is not None:
            await self._redis.aclose()
        if self._db is not None:
            await self._db.dispose()
        log.info("fleet agent %s stopped", self.worker_id)

    # ------------------------------------------------------------------ one tick

    async def tick(self) -> None:
        store = self._require(self._store)
        mine = await store.units_of_mine()
        moved = [self.leases[u.key] for u in mine if u.key in self.leases and u.assigned_worker != self.worker_id]
        mine_keys = {u.key for u in mine}
        gone = [lease for key, lease in self.leases.items() if key not in mine_keys]
        for lease in moved + gone:
            self.leases.pop(lease.key, None)
        self.releasing = {lease.key: lease for lease in moved}
        await self._converge()  # stop the moved units before anyone else may take them
        await store.release(moved)
        self.releasing = {}
        for lease in await store.acquire():
            self.leases[lease.key] = lease
        await self._load_runtimes()
        await self._converge()
        for runner in self.copiers.values():
            try:
                await runner.flush_offset_map()
            except (SQLAlchemyError, OSError) as exc:
                # Kept in memory for the next flush; the copy and the reports go on meanwhile.
                log.warning("offset map of %s not stored: %s", runner.runtime.name, exc)
        await self._require(self._reporter).publish(self.copiers, self.metadata, self.leases)

    async def _load_runtimes(self) -> None:
        ids = sorted({key.replicator_id for key in self.leases})
        if not ids:
            self.runtimes = {}
            return
        async with self._require(self._db).connect() as conn:
            rows = await fleet_store.replicators_to_run(conn, ids)
        runtimes = {}
        for row in rows:
            try:
                runtimes[str(row.id)] = runtime_of(
                    replicator_id=str(row.id),
                    name=row.name,
                    generation=row.generation,
                    state=row.state,
                    kafka_clusters=row.kafka_clusters,
                    replication_info=row.replication_info,
                    created_at=row.created_at,
                    service_execution_role_arn=row.service_execution_role_arn,
                )
            except (KeyError, ValueError) as exc:
                log.error("replicator %s cannot run: %s", row.name, exc)
        self.runtimes = runtimes

    async def _converge(self) -> None:
        held_metadata = {k.replicator_id for k in self.leases if k.is_metadata}
        for replicator_id in list(self.metadata):
            if replicator_id not in held_metadata or replicator_id not in self.runtimes:
                await self._stop_metadata(replicator_id)
        for replicator_id in held_metadata:
            runtime = self.runtimes.get(replicator_id)
            if runtime is None:
                continue
            if replicator_id in self.metadata:
                runner, task = self.metadata[replicator_id]
                if task.done():
                    await self._stop_metadata(replicator_id)
                else:
                    runner.update(runtime)
                    continue
            metadata_unit = MetadataUnit(
                runtime,
                self._require(self._db),
                self._require(self._redis),
                probe_timeout_s=min(5.0, self.lease_seconds / 2),
                group_sync_interval_s=self.settings.group_sync_interval_seconds,
                offset_map_max_runs=self.settings.offset_map_max_runs,
                vetting=self.vetting,
                resolver=self.resolver,
            )
            self.metadata[replicator_id] = (
                metadata_unit,
                asyncio.create_task(metadata_unit.run(), name=f"metadata-{runtime.name}"),
            )

        wanted: dict[str, set[TopicPartition]] = {}
        for key in self.leases:
            if not key.is_metadata and key.replicator_id in self.runtimes:
                wanted.setdefault(key.replicator_id, set()).add(TopicPartition(key.topic, key.partition))
        for replicator_id in list(self.copiers):
            if replicator_id not in wanted:
                await self.copiers.pop(replicator_id).stop()
        for replicator_id, partitions in wanted.items():
            copy_unit = self.copiers.get(replicator_id)
            if copy_unit is None:
                copy_unit = CopyUnit(
                    self.runtimes[replicator_id], self.holds, self._db, vetting=self.vetting, resolver=self.resolver
                )
                self.copiers[replicator_id] = copy_unit
            try:
                await asyncio.wait_for(copy_unit.converge(partitions), self.converge_timeout_s)
            except (TimeoutError, CopierError, KafkaError, OSError, SQLAlchemyError) as exc:
                # One replicator's trouble (an unreachable target, a slow progress read) must not hold up the
                # others or this worker's heartbeat: stop its copier and retry on a later tick.
                copy_unit.last_failure = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("replicator %s: %s; retrying", copy_unit.runtime.name, copy_unit.last_failure)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(copy_unit.stop(), self.converge_timeout_s)

    def holds(self, replicator_id: str, partitions: frozenset[TopicPartition]) -> bool:
        """Whether every one of these partitions is under a lease this worker holds and still trusts."""
        for tp in partitions:
            key = UnitKey(replicator_id, tp.topic, tp.partition)
            lease = self.leases.get(key) or self.releasing.get(key)
            if lease is None or not lease.is_valid():
                return False
        return True

    async def _stop_metadata(self, replicator_id: str) -> None:
        _, task = self.metadata.pop(replicator_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not task.cancelled() and task.exception() is not None:
            log.error("metadata unit of %s ended: %r", replicator_id, task.exception())

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise RuntimeError("FleetAgent.run() has not started")
        return value


class AgentThread(threading.Thread):
    """Runs a FleetAgent on its own event loop, so Celery's worker threads never block it."""

    def __init__(self, settings: FerrySettings, worker_id: str | None = None) -> None:
        super().__init__(name="ferry-fleet-agent", daemon=True)
        self.agent = FleetAgent(settings, worker_id)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._ready.set()
        await self.agent.run(self._stop_event)

    def stop(self, timeout: float = 30.0) -> None:
        self._ready.wait(timeout)
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self.join(timeout)
