"""The fleet agent: runs inside every Celery worker process and does what the reconcile loop assigned to it.

Celery supervises the process (start, stop, restart); the agent is a plain asyncio loop in a thread of its own
(``AgentThread``), started and stopped by a worker bootstep (``workers/celery_app.py``). Every tick it:

1. heartbeats (``fleet_workers``), so the reconcile loop counts it as live;
2. stops and releases units that were moved to another worker;
3. renews its leases, and stops at once whatever it no longer holds (``workers/fleet/leases.py``);
4. acquires the units newly assigned to it and starts their work: a replicator's metadata unit runs the
   engine's ``TopicSynchronizer`` and writes its observation to ``replicator_metadata``; copy units are
   source partitions handed to one ``PartitionCopier`` per replicator (assign/revoke never pause the others);
5. publishes per-partition measurements to Redis, where the API reads them.

Nothing here depends on Celery messages for ownership: a redelivered or late task cannot start copying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import offsets as offset_store
from models.db import make_async_engine
from models.fleet import METRICS_KEY, STATUS_KEY, WORKER_KEY
from models.settings import FerrySettings
from workers.engine import ClusterConnection, CopierError, PartitionCopier, TopicSynchronizer, client_kwargs
from workers.engine.admin import AdminError
from workers.fleet.config import ReplicatorRuntime, runtime_of
from workers.fleet.groups import FailoverDriver, GroupSyncer, ScopeSource
from workers.fleet.leases import Lease, LeaseStore
from workers.fleet.offsets import OffsetMapBuffer
from workers.fleet.plan import UnitKey

log = logging.getLogger(__name__)

METRICS_TTL_SECONDS = 30
_T = TypeVar("_T")


def new_worker_id(hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ClusterProbe:
    """Whether a cluster answers a metadata request in time, asked over one long-lived admin connection.

    A metadata unit asks every pass (2 s); opening a new connection each time would cost both clusters a
    connect and handshake per replicator per pass. The client is dropped after a failure and made anew.
    """

    def __init__(self, connection: ClusterConnection, timeout_s: float) -> None:
        self.connection = connection
        self.timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None

    async def check(self) -> str | None:
        """None when the cluster answered, else the reason."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._admin is None:
                    self._admin = AIOKafkaAdminClient(
                        **client_kwargs(self.connection, "probe"), request_timeout_ms=int(self.timeout_s * 1000)
                    )
                    await self._admin.start()
                await self._admin.describe_cluster()
        except TimeoutError:
            await self.close()
            return f"no broker of {self.connection.bootstrap_servers} answered within {self.timeout_s:g}s"
        except (KafkaError, OSError) as exc:
            await self.close()
            return f"{self.connection.bootstrap_servers}: {type(exc).__name__}: {exc}"
        return None

    async def close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()


def _classify_topic_errors(errors: dict[str, str]) -> str:
    joined = " ".join(errors.values()).lower()
    if "authoriz" in joined or "denied" in joined:
        return "TARGET_TOPIC_CREATION_DENIED"
    return "TOPIC_SYNC_FAILED"


class MetadataRunner:
    """A replicator's metadata unit: keep target topics in step with the source and report the inventory."""

    def __init__(
        self,
        runtime: ReplicatorRuntime,
        db: AsyncEngine,
        redis: Redis,
        *,
        interval_s: float = 2.0,
        config_interval_s: float = 10.0,
        probe_timeout_s: float = 5.0,
        group_sync_interval_s: float = 5.0,
        offset_map_max_runs: int = 10_000,
    ) -> None:
        self.runtime = runtime
        self.db = db
        self.redis = redis
        self.interval_s = interval_s
        self.config_interval_s = config_interval_s
        self.probe_timeout_s = probe_timeout_s
        self._wake = asyncio.Event()
        self._sync: TopicSynchronizer | None = None
        self._probes = (ClusterProbe(runtime.source, probe_timeout_s), ClusterProbe(runtime.target, probe_timeout_s))
        self._last_config_sync = 0.0
        # Consumer group offset sync (its own loop) and planned failovers (a step per pass), issue 6.
        self.group_sync_interval_s = group_sync_interval_s
        self.offset_map_max_runs = offset_map_max_runs
        self.groups = GroupSyncer(runtime, db, redis)
        self.failovers = FailoverDriver(self.groups)
        self.scope = ScopeSource()
        self._last_thin = time.monotonic()

    def update(self, runtime: ReplicatorRuntime) -> None:
        if runtime.generation != self.runtime.generation:
            self.runtime = runtime
            if self._sync is not None:
                self._sync.update_spec(runtime.spec)
            self.groups.update(runtime)
            self._wake.set()

    async def run(self) -> None:
        groups = asyncio.create_task(
            self.groups.run(self.group_sync_interval_s, self.scope), name=f"groups-{self.runtime.name}"
        )
        try:
            while True:
                await self.pass_once()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
        finally:
            groups.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await groups
            await self.groups.close()
            await self._close_sync()
            await self._close_probes()

    async def _close_probes(self) -> None:
        for probe in self._probes:
            await probe.close()

    async def _close_sync(self) -> None:
        if self._sync is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._sync.close()
            self._sync = None

    async def pass_once(self) -> None:
        runtime = self.runtime
        pings = {"source": await self._probes[0].check(), "target": await self._probes[1].check()}
        await self._publish_status(runtime, pings)
        if pings["source"] or pings["target"]:
            await self._close_sync()
            role = "SOURCE" if pings["source"] else "TARGET"
            await self._write(runtime, None, (f"{role}_CLUSTER_UNREACHABLE", pings["source"] or pings["target"] or ""))
            return
        try:
            if self._sync is None:
                sync = TopicSynchronizer(
                    runtime.spec, runtime.source, runtime.target, known_topics=await self._stored_known_topics(runtime)
                )
                await sync.start()
                self._sync = sync
            due = time.monotonic() - self._last_config_sync >= self.config_interval_s
            report = await self._sync.sync_once(sync_configs=due)
            if due:
                self._last_config_sync = time.monotonic()
        except (KafkaError, AdminError, OSError) as exc:
            await self._close_sync()
            await self._write(runtime, None, ("TOPIC_SYNC_FAILED", f"{type(exc).__name__}: {exc}"[:500]))
            return
        partitions = sorted((t.source_topic, p) for t in report.topics.values() for p in range(t.partitions))
        error = None
        if report.errors and not report.topics:
            sample = "; ".join(f"{topic}: {reason}" for topic, reason in sorted(report.errors.items())[:3])
            error = (_classify_topic_errors(report.errors), sample[:500])
        await self._write(runtime, partitions, error)
        self.scope.partitions = partitions
        try:
            await self.failovers.step(partitions)
            if time.monotonic() - self._last_thin >= 60.0:
                self._last_thin = time.monotonic()
                async with self.db.begin() as conn:
                    await offset_store.thin(conn, runtime.replicator_id, self.offset_map_max_runs)
        except Exception:
            # Failovers and thinning retry at the next pass; they must never stop the topic sync.
            log.exception("failover/offset map upkeep of %s failed", runtime.name)
        await self.redis.hset(
            STATUS_KEY.format(replicator_id=runtime.replicator_id),
            mapping={
                "topicErrors": json.dumps(report.errors),
                "topics": json.dumps({t.source_topic: t.target_topic for t in report.topics.values()}),
            },
        )

    async def _publish_status(self, runtime: ReplicatorRuntime, pings: dict[str, str | None]) -> None:
        key = STATUS_KEY.format(replicator_id=runtime.replicator_id)
        await self.redis.hset(
            key,
            mapping={
                "clusterPing": json.dumps(
                    {
                        runtime.source.alias: 0 if pings["source"] else 1,
                        runtime.target.alias: 0 if pings["target"] else 1,
                    }
                ),
                "reportedAtMs": str(int(time.time() * 1000)),
            },
        )
        await self.redis.expire(key, METRICS_TTL_SECONDS)

    async def _stored_known_topics(self, runtime: ReplicatorRuntime) -> list[str] | None:
        """The topic set an earlier pass fixed for this generation (detectAndCopyNewTopics off), if any."""
        if runtime.spec.detect_and_copy_new_topics:
            return None
        async with self.db.connect() as conn:
            stored = (
                await conn.execute(
                    text("SELECT known_topics FROM replicator_metadata WHERE replicator_id = :id"),
                    {"id": uuid.UUID(runtime.replicator_id)},
                )
            ).scalar_one_or_none()
        if not stored or stored.get("generation") != runtime.generation:
            return None  # an update changed the topic lists: the next pass fixes the set anew
        return [str(topic) for topic in stored.get("topics", [])]

    async def _write(
        self, runtime: ReplicatorRuntime, partitions: list[tuple[str, int]] | None, error: tuple[str, str] | None
    ) -> None:
        notice = None
        if partitions is not None and not partitions and error is None:
            notice = (
                "NO_MATCHING_TOPICS",
                "no source topic matches topicsToReplicate "
                f"{list(runtime.spec.topics_to_replicate)} (excluding {list(runtime.spec.topics_to_exclude)})",
            )
        params: dict[str, Any] = {
            "id": uuid.UUID(runtime.replicator_id),
            "gen": runtime.generation,
            "parts": json.dumps([list(p) for p in partitions or []]),
            "failing": error is not None,
            "code": error[0] if error else None,
            "msg": error[1] if error else None,
            "ncode": notice[0] if notice else None,
            "nmsg": notice[1] if notice else None,
            "known": None,
        }
        known = self._sync.known_topics if self._sync is not None else None
        if known is not None:
            params["known"] = json.dumps({"generation": runtime.generation, "topics": sorted(known)})
        # A failed pass keeps the last good inventory and generation; only the error fields change.
        async with self.db.begin() as conn:
            if partitions is None:
                await conn.execute(
                    text(
                        "INSERT INTO replicator_metadata (replicator_id, applied_generation, partitions, error_code, "
                        "error_message, error_since) VALUES (:id, 0, '[]', :code, :msg, now()) "
                        "ON CONFLICT (replicator_id) DO UPDATE SET error_code = :code, error_message = :msg, "
                        "error_since = coalesce(replicator_metadata.error_since, now()), updated_at = now()"
                    ),
                    params,
                )
            else:
                await conn.execute(
                    text(
                        "INSERT INTO replicator_metadata (replicator_id, applied_generation, partitions, error_code, "
                        "error_message, error_since, notice_code, notice_message, known_topics) "
                        "VALUES (:id, :gen, CAST(:parts AS jsonb), :code, :msg, "
                        "CASE WHEN :failing THEN now() END, :ncode, :nmsg, CAST(:known AS jsonb)) "
                        "ON CONFLICT (replicator_id) DO UPDATE SET applied_generation = :gen, "
                        "partitions = CAST(:parts AS jsonb), error_code = :code, error_message = :msg, "
                        "error_since = CASE WHEN CAST(:code AS text) IS NULL THEN NULL "
                        "ELSE coalesce(replicator_metadata.error_since, now()) END, "
                        "notice_code = :ncode, notice_message = :nmsg, known_topics = CAST(:known AS jsonb), "
                        "updated_at = now()"
                    ),
                    params,
                )


class CopyRunner:
    """The copy units of one replicator held by this worker: one PartitionCopier with a changing assignment."""

    def __init__(
        self,
        runtime: ReplicatorRuntime,
        holds: Callable[[str, frozenset[TopicPartition]], bool],
        db: AsyncEngine | None = None,
    ) -> None:
        self.runtime = runtime
        # holds(replicator_id, partitions): whether this worker holds a valid lease on every one of them.
        self.holds = holds
        self.db = db
        self.offset_map = OffsetMapBuffer(runtime.replicator_id, db)
        self.copier: PartitionCopier | None = None
        self.last_failure: str | None = None
        self._retry_after = 0.0

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        return self.copier.assignment() if self.copier is not None else frozenset()

    def _bound_checks(self) -> tuple[Callable[[], bool], Callable[[], Awaitable[bool]], list[PartitionCopier]]:
        """The write gate and lease check of one copier instance: they judge the partitions *that* copier
        holds, also while it stops (a stopping copier must not write progress for partitions it lost)."""
        box: list[PartitionCopier] = []

        def gate() -> bool:
            return not box or self.holds(self.runtime.replicator_id, box[0].assignment())

        async def check() -> bool:
            return gate()

        return gate, check, box

    async def converge(self, wanted: set[TopicPartition]) -> None:
        copier = self.copier
        failure = copier.failure if copier is not None else None
        if failure is not None:
            self.last_failure = f"{type(failure).__name__}: {failure}"[:500]
            log.warning("copier of replicator %s failed (%s); restarting", self.runtime.name, self.last_failure)
            await self.stop()
            self._retry_after = time.monotonic() + 2.0
            copier = None
        if not wanted:
            await self.stop()
            return
        if copier is None:
            if time.monotonic() < self._retry_after:
                return
            gate, check, box = self._bound_checks()
            copier = PartitionCopier(
                self.runtime.spec,
                self.runtime.source,
                self.runtime.target,
                lease_check=check,
                write_gate=gate,
                offset_map_sink=self.offset_map,
            )
            box.append(copier)
            self.offset_map.positions = copier.positions
            await copier.start()
            self.copier = copier
        current = set(copier.assignment())
        if wanted - current:
            await copier.assign(wanted - current)
            # Store the new partitions' heads at once: the first head ever stored is where the offset map begins.
            await self.flush_offset_map()
        if current - wanted:
            await copier.revoke(current - wanted)

    async def flush_offset_map(self) -> None:
        """Write the offset map runs collected since the last flush, and the heads they reach."""
        await self.offset_map.flush()

    async def stop(self) -> None:
        if self.copier is not None:
            copier, self.copier = self.copier, None
            try:
                await copier.stop()
            except (CopierError, KafkaError, OSError) as exc:
                # Typically LeaseLost on the final progress write: the partition has another owner already,
                # whose progress must win. The copier's clients are closed either way.
                log.warning("copier of %s stopped with %s: %s", self.runtime.name, type(exc).__name__, exc)
                self.offset_map.discard()
                return
            if copier.failure is None:
                await self.offset_map.flush()
            else:
                # A copier that lost its lease or was fenced may have a successor: its late map must not win.
                self.offset_map.discard()


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
        self.metadata: dict[str, tuple[MetadataRunner, asyncio.Task[None]]] = {}
        self.copiers: dict[str, CopyRunner] = {}
        self._last_counts: dict[tuple[str, TopicPartition], tuple[int, int, int]] = {}
        self._db: AsyncEngine | None = None
        self._redis: Redis | None = None
        self._store: LeaseStore | None = None
        self._published: dict[str, set[str]] = {}
        # Bounded so a replicator whose copier blocks (e.g. a target that stopped answering) is given up on
        # and retried well within the time other workers would take over.
        self.converge_timeout_s = max(5.0, lease_seconds * 2)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        self._db = make_async_engine(self.settings)
        self._redis = Redis.from_url(self.settings.redis_url)
        self._store = LeaseStore(self._db, self.worker_id, self.lease_seconds)
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
        if self._redis is not None:
            with contextlib.suppress(OSError, ConnectionError):
                await self._redis.delete(WORKER_KEY.format(worker_id=self.worker_id))
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
        await self._publish_metrics()

    async def _load_runtimes(self) -> None:
        ids = sorted({key.replicator_id for key in self.leases})
        if not ids:
            self.runtimes = {}
            return
        async with self._require(self._db).connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, name, generation, state, kafka_clusters, replication_info, created_at "
                    "FROM replicators WHERE id = ANY(:ids)"
                ),
                {"ids": [uuid.UUID(i) for i in ids]},
            )
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
            metadata_runner = MetadataRunner(
                runtime,
                self._require(self._db),
                self._require(self._redis),
                probe_timeout_s=min(5.0, self.lease_seconds / 2),
                group_sync_interval_s=self.settings.group_sync_interval_seconds,
                offset_map_max_runs=self.settings.offset_map_max_runs,
            )
            self.metadata[replicator_id] = (
                metadata_runner,
                asyncio.create_task(metadata_runner.run(), name=f"metadata-{runtime.name}"),
            )

        wanted: dict[str, set[TopicPartition]] = {}
        for key in self.leases:
            if not key.is_metadata and key.replicator_id in self.runtimes:
                wanted.setdefault(key.replicator_id, set()).add(TopicPartition(key.topic, key.partition))
        for replicator_id in list(self.copiers):
            if replicator_id not in wanted:
                await self.copiers.pop(replicator_id).stop()
        for replicator_id, partitions in wanted.items():
            copy_runner = self.copiers.get(replicator_id)
            if copy_runner is None:
                copy_runner = CopyRunner(self.runtimes[replicator_id], self.holds, self._db)
                self.copiers[replicator_id] = copy_runner
            try:
                await asyncio.wait_for(copy_runner.converge(partitions), self.converge_timeout_s)
            except (TimeoutError, CopierError, KafkaError, OSError, SQLAlchemyError) as exc:
                # One replicator's trouble (an unreachable target, a slow progress read) must not hold up the
                # others or this worker's heartbeat: stop its copier and retry on a later tick.
                copy_runner.last_failure = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("replicator %s: %s; retrying", copy_runner.runtime.name, copy_runner.last_failure)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(copy_runner.stop(), self.converge_timeout_s)

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

    async def _publish_metrics(self) -> None:
        redis = self._require(self._redis)
        now_ms = int(time.time() * 1000)
        # What this worker runs right now, per replicator: lets operators (and tests) see that a stopped
        # replicator left no copier behind.
        running = {
            rid: {"partitions": len(runner.partitions), "metadata": rid in self.metadata}
            for rid, runner in self.copiers.items()
        }
        for rid in self.metadata:
            running.setdefault(rid, {"partitions": 0, "metadata": True})
        await redis.set(
            WORKER_KEY.format(worker_id=self.worker_id),
            json.dumps({"workerId": self.worker_id, "reportedAtMs": now_ms, "replicators": running}),
            ex=METRICS_TTL_SECONDS,
        )
        reported: dict[str, set[str]] = {}
        for replicator_id, runner in self.copiers.items():
            if runner.copier is None:
                continue
            fields = {}
            for tp, stats in runner.copier.snapshot().items():
                lease = self.leases.get(UnitKey(replicator_id, tp.topic, tp.partition))
                if lease is None:
                    continue
                entry: dict[str, Any] = asdict(stats)
                entry["health"] = stats.health.value
                entry.update(owner=self.worker_id, epoch=lease.epoch, reportedAtMs=now_ms)
                entry.update(self._rates(replicator_id, tp, stats.records_copied, stats.bytes_copied, now_ms))
                fields[f"{tp.topic}:{tp.partition}"] = json.dumps(entry)
            if fields:
                key = METRICS_KEY.format(replicator_id=replicator_id)
                await redis.hset(key, mapping=fields)  # type: ignore[arg-type]
                await redis.expire(key, METRICS_TTL_SECONDS)
                reported[replicator_id] = set(fields)
        # Partitions this worker reported before but holds no more (moved away, topic removed, replicator
        # deleted): their readings go, or they would linger as UNKNOWN and keep alerts firing. A partition that
        # moved is reported again by its new owner.
        for replicator_id, previous in self._published.items():
            gone = previous - reported.get(replicator_id, set())
            if gone:
                await redis.hdel(METRICS_KEY.format(replicator_id=replicator_id), *gone)
                for field in gone:
                    topic, _, partition = field.rpartition(":")
                    self._last_counts.pop((replicator_id, TopicPartition(topic, int(partition))), None)
        self._published = reported

    def _rates(self, replicator_id: str, tp: TopicPartition, records: int, size: int, now_ms: int) -> dict[str, float]:
        """Records and bytes per second since this worker's previous report of the partition."""
        key = (replicator_id, tp)
        previous = self._last_counts.get(key)
        self._last_counts[key] = (now_ms, records, size)
        if previous is None or now_ms <= previous[0] or records < previous[1]:
            return {"recordsPerSecond": 0.0, "bytesPerSecond": 0.0}
        seconds = (now_ms - previous[0]) / 1000
        return {"recordsPerSecond": (records - previous[1]) / seconds, "bytesPerSecond": (size - previous[2]) / seconds}

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
