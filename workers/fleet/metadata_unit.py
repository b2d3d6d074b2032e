"""A replicator's metadata unit: keeps the target's topics in step with the source and reports what is in scope.

One per replicator, on whichever worker holds its lease (``workers/fleet/agent.py`` starts and stops it). Every
pass (2 s) it probes both clusters, runs the engine's ``TopicSynchronizer`` (topics, partitions; configurations
and ACLs every ``FERRY_TOPIC_CONFIG_SYNC_SECONDS``) and writes the inventory of source partitions in scope, or
the failure, to ``replicator_metadata`` (``models/fleet_store.py``): the reconcile loop makes copy units of that
inventory. It also runs the replicator's consumer group sync (its own loop), planned failovers (a step per
pass), the audit jobs users ask for (``workers/fleet/audits.py``, its own loop) and offset map thinning.

What it reads of a cluster (the probe, the source's topic listing, configurations, ACLs, consumer groups and
their offsets) comes from the worker's ``ClusterMetadataHub`` (``workers/engine/cluster_metadata.py``): every
metadata unit of the worker reaching a cluster as the same principal shares one read per interval. Config sync
runs in rounds aligned for the whole worker, so the units of one source share each round's one description.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import fleet_store, offset_store
from models.bootstrap import AddressPolicy
from models.fleet_reports import METRICS_KEY, REPORT_TTL_SECONDS, STATUS_KEY, PartitionReport, StatusField
from models.logs import in_log_context
from workers.engine.admin import AdminError
from workers.engine.aiokafka_hooks import WritesFenced
from workers.engine.cluster_metadata import ClusterMetadataHub, ClusterView, SharedReadFailed
from workers.engine.connection import AUTHENTICATION_FAILED, TLS_HANDSHAKE_FAILED, ClusterConnection
from workers.engine.metrics import Health
from workers.engine.topics import TopicSynchronizer
from workers.fleet.address_vetting import AddressVetting
from workers.fleet.audits import AuditRunner
from workers.fleet.failover import FailoverDriver
from workers.fleet.groups import GroupSyncer, ScopeSource
from workers.fleet.runtime import ConnectionResolver, ReplicatorRuntime
from workers.fleet.secrets import SecretStore, SecretUnavailable
from workers.fleet.watches import ReplicatorsWatch

log = logging.getLogger(__name__)

# A pass slower than this says where its time went: the copy units wait for its inventory.
SLOW_PASS_SECONDS = 3.0

# Partition healths that no retry cures, with the replicator's StateInfo code for them and what to do.
BLOCKING_HEALTHS = {
    Health.AUTH_DENIED.value: (
        "PARTITIONS_NOT_AUTHORIZED",
        "a cluster refused the replicator's principal (it needs READ on the source topics and WRITE on the "
        "target topics)",
    ),
    Health.RECORD_TOO_LARGE.value: (
        "RECORD_TOO_LARGE",
        "a record is larger than the target accepts (raise max.message.bytes on the target topic)",
    ),
}
BLOCKING_MARKERS = PartitionReport.health_markers(BLOCKING_HEALTHS)
# An unchanged observation is written again after this long all the same, so the row cannot stay wrong for long
# if something other than this unit changed it.
REWRITE_UNCHANGED_AFTER_S = 60.0
# Reports older than this are ignored (their worker stopped reporting: the fleet's own checks say so).
BLOCKED_REPORT_FRESH_MS = 30_000

# How long StateInfo tells of a topic deleted and created again (an event, not a lasting state).
RECREATION_NOTICE_SECONDS = 600.0


def _classify_topic_errors(errors: dict[str, str]) -> str:
    joined = " ".join(errors.values()).lower()
    if "authoriz" in joined or "denied" in joined:
        return "TARGET_TOPIC_CREATION_DENIED"
    return "TOPIC_SYNC_FAILED"


def _creation_denied(alias: str, denied: dict[str, str], copied: int) -> tuple[str, str]:
    """StateInfo for target topics the target cluster refuses to create for lack of a permission: the cluster,
    the permission, then the topics (first, so the message's 500 characters never cut the permission off)."""
    names = sorted(denied)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    others = f"; {copied} other topic{' is' if copied == 1 else 's are'} copied" if copied else ""
    message = (
        f"target cluster {alias} refused to create {len(names)} topic{'' if len(names) == 1 else 's'} "
        f"({', '.join(sorted(set(denied.values())))}): the replicator's principal needs CREATE on the target "
        f"cluster, or on each topic it creates{others}; not created: {shown}"
    )
    return "TARGET_TOPIC_CREATION_DENIED", message[:500]


class MetadataUnit:
    """A replicator's metadata unit: keep target topics in step with the source and report the inventory."""

    def __init__(
        self,
        runtime: ReplicatorRuntime,
        db: AsyncEngine,
        redis: Redis,
        *,
        interval_s: float = 2.0,
        config_interval_s: float = 30.0,
        probe_timeout_s: float = 5.0,
        group_sync_interval_s: float = 5.0,
        offset_map_max_runs: int = 10_000,
        vetting: AddressVetting | None = None,
        resolver: ConnectionResolver | None = None,
        may_write: Callable[[], bool] = lambda: True,
        confirm_writes: Callable[[], Awaitable[bool]] | None = None,
        on_inventory: Callable[[], None] = lambda: None,
        worker_id: str = "",
        hub: ClusterMetadataHub | None = None,
        failover_watch: ReplicatorsWatch | None = None,
        audit_watch: ReplicatorsWatch | None = None,
        starting: asyncio.Semaphore | None = None,
    ) -> None:
        self.runtime = runtime
        # Shared with the worker's other units: how many may run their first pass at once (None: no bound).
        self.starting = starting
        # Shared with the worker's other metadata units (a unit on its own gets a hub of its own).
        self.hub = hub or ClusterMetadataHub()
        # Whether this worker still holds the unit's lease: asked before anything is written to a cluster or to
        # the database, so a unit that moved or whose replicator is being deleted writes nothing more.
        self.may_write = may_write
        # The same question asked of the database (slower, authoritative): once per pass before acting on it.
        self.confirm_writes = confirm_writes
        # Told when the inventory written changed (first pass, a new topic or partition, an update applied): the
        # reconcile loop makes or drops copy units of it, sooner than its next interval.
        self.on_inventory = on_inventory
        self._last_inventory: tuple[int, list[tuple[str, int]]] | None = None
        # What this unit last wrote to replicator_metadata, and when: a pass that observes the same writes nothing
        # (hundreds of units per worker rewrote the same row every 2 s, and waited for the pool's connections).
        self._last_written: tuple[Any, ...] | None = None
        self._last_written_at = 0.0
        self.db = db
        self.redis = redis
        self.interval_s = interval_s
        self.config_interval_s = config_interval_s
        self.probe_timeout_s = probe_timeout_s
        self._wake = asyncio.Event()
        self.vetting = vetting or AddressVetting(AddressPolicy())
        self.resolver = resolver or ConnectionResolver(SecretStore())
        self._sync: TopicSynchronizer | None = None
        # The clusters as last resolved (credentials read on this worker), and the shared views of them.
        self.connections: tuple[ClusterConnection, ClusterConnection] | None = None
        self._views: tuple[ClusterView, ClusterView] | None = None
        # Passes that a cluster refused the credentials or the TLS handshake of (the AuthError metric).
        self.auth_failures = 0
        # (when, (code, message)) of the last topic re-creation seen, shown in StateInfo for a while.
        self._recreation: tuple[float, tuple[str, str]] | None = None
        self._last_config_round: int | None = None
        # Consumer group offset sync (its own loop) and planned failovers (a step per pass), issue 6.
        self.group_sync_interval_s = group_sync_interval_s
        self.offset_map_max_runs = offset_map_max_runs
        self.groups = GroupSyncer(runtime, db, redis)
        self.groups.may_write = may_write
        self.groups.confirm_writes = confirm_writes
        self.groups.shared_max_age_s = group_sync_interval_s
        self.failovers = FailoverDriver(self.groups, failover_watch)
        self.scope = ScopeSource()
        self.target_cluster_id: str | None = None  # as the last probe found it (loop prevention in audits)
        self.audits = AuditRunner(
            db,
            worker_id,
            runtime=lambda: self.runtime,
            connections=lambda: self.connections,
            target_cluster_id=lambda: self.target_cluster_id,
            partitions=self.scope,
            may_write=self.may_write,
            watch=audit_watch,
        )
        self._last_thin = time.monotonic()

    def update(self, runtime: ReplicatorRuntime) -> None:
        if runtime.generation != self.runtime.generation:
            self.runtime = runtime
            if self._sync is not None:
                self._sync.update_spec(runtime.spec)
            self.groups.update(runtime)
            self._wake.set()

    @in_log_context(lambda unit: {"replicator_arn": unit.runtime.arn})  # its tasks' lines too
    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            # The first pass opens the unit's clients and writes its first inventory: a worker offered hundreds of
            # units at once runs a few of those at a time (``starting``), as hundreds of simultaneous bootstraps
            # timed out on a busy event loop and every failure asked for more metadata.
            async with self.starting or contextlib.nullcontext():
                await self.pass_once()
            tasks.append(
                asyncio.create_task(
                    self.groups.run(self.group_sync_interval_s, self.scope), name=f"groups-{self.runtime.name}"
                )
            )
            tasks.append(asyncio.create_task(self.audits.run(), name=f"audits-{self.runtime.name}"))
            while True:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
                await self.pass_once()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._release_views()  # first: nothing to await, so a second cancellation cannot skip it
            await self.groups.close()
            await self._close_sync()

    def _release_views(self) -> None:
        """Never waits: a view this unit was the last user of closes in the background."""
        views, self._views = self._views, None
        for view in views or ():
            self.hub.release(view)

    async def _connect(self, runtime: ReplicatorRuntime) -> tuple[ClusterConnection, ClusterConnection] | None:
        """Both clusters' connections, secrets read anew when they changed; None (error written) when a secret
        cannot be read. New connections replace the shared views, the topic sync and the group sync's clients."""
        resolved: list[ClusterConnection] = []
        for role, access in (("source", runtime.source), ("target", runtime.target)):
            try:
                resolved.append(await self.resolver.resolve(access))
            except SecretUnavailable as exc:
                code = "SECRET_NOT_FOUND" if exc.missing else "SECRET_UNAVAILABLE"
                await self._stop_connections()
                await self._write(runtime, None, (code, f"{role} cluster {access.alias}: {exc}"))
                return None
        connections = (resolved[0], resolved[1])
        if connections != self.connections:
            await self._stop_connections()
            self.connections = connections
            self._views = (self.hub.acquire(connections[0]), self.hub.acquire(connections[1]))
            await self.groups.use(*connections, source_view=self._views[0])
        return connections

    async def _stop_connections(self) -> None:
        self.scope.partitions = None
        await self._close_sync()
        self._release_views()
        await self.groups.close()
        self.connections = None

    async def _close_sync(self) -> None:
        if self._sync is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._sync.close()
            self._sync = None

    async def pass_once(self) -> None:
        runtime = self.runtime
        if not self.may_write():
            return  # the lease is gone or going: this unit is about to be stopped
        for role, access in (("SOURCE", runtime.source), ("TARGET", runtime.target)):
            refused = await self.vetting.refusal(access)
            if refused is not None:
                # Nothing connects to a refused address: no probe, no sync, no group sync, no failover step.
                await self._stop_connections()
                await self._write(runtime, None, ("BOOTSTRAP_ADDRESS_REFUSED", f"{role.lower()} cluster: {refused}"))
                return
        started = time.monotonic()
        connections = await self._connect(runtime)
        if connections is None or self._views is None:
            return
        source, target = connections
        source_view, target_view = self._views
        (source_error, source_id), (target_error, target_id) = await asyncio.gather(
            source_view.probe(self.probe_timeout_s, self.interval_s),
            target_view.probe(self.probe_timeout_s, self.interval_s),
        )
        probed = time.monotonic()
        pings = {"source": source_error, "target": target_error}
        await self._publish_status(runtime, pings)
        if source_error or target_error:
            await self._close_sync()
            failed = source_error or target_error
            assert failed is not None
            role, access = ("source", runtime.source) if source_error else ("target", runtime.target)
            kind, reason = failed
            if kind in (AUTHENTICATION_FAILED, TLS_HANDSHAKE_FAILED):
                # The secrets may have been rotated since they were read: read them again next pass.
                self.auth_failures += 1
                self.resolver.forget(access)
                await self._write(runtime, None, (kind, f"{role} cluster {access.alias}: {reason}"))
            else:
                await self._write(runtime, None, (f"{role.upper()}_CLUSTER_UNREACHABLE", reason))
            return
        self.target_cluster_id = target_id
        if source_id is not None and source_id == target_id:
            self.scope.partitions = None
            await self._close_sync()
            await self._write(
                runtime,
                None,
                (
                    "SOURCE_AND_TARGET_SAME_CLUSTER",
                    f"the source and target bootstrap servers reach the same Kafka cluster (id {source_id}): "
                    "copying would write every record back into the cluster it came from",
                ),
            )
            return
        try:
            if self._sync is None:
                sync = TopicSynchronizer(
                    runtime.spec,
                    source,
                    target,
                    known_topics=await self._stored_known_topics(runtime),
                    write_gate=self.may_write,
                    confirm_writes=self.confirm_writes,
                    source_view=source_view,
                    topics_max_age_s=self.interval_s,
                )
                await sync.start()
                self._sync = sync
            # Rounds of the monotonic clock, the same for every unit of this worker: the first unit of a round
            # describes the source's configurations, the others of that round reuse what it read.
            now = time.monotonic()
            config_round = int(now // self.config_interval_s)
            due = config_round != self._last_config_round
            since_round = now - config_round * self.config_interval_s
            report = await self._sync.sync_once(
                sync_configs=due, configs_max_age_s=since_round if due else self.config_interval_s
            )
            if due:
                self._last_config_round = config_round
        except WritesFenced as exc:
            # The lease is gone or the replicator is being deleted: the control loop stops this unit next.
            log.info("metadata pass of %s wrote nothing: %s", runtime.name, exc)
            return
        except (KafkaError, AdminError, OSError) as exc:
            if isinstance(exc, SharedReadFailed):
                # The shared read of the source failed for every replicator reading it: this unit's own target
                # client is fine, and dropping it would have every one of them reconnect to the target at once.
                message = str(exc)
            else:
                await self._close_sync()
                message = f"{type(exc).__name__}: {exc}"
            await self._write(runtime, None, ("TOPIC_SYNC_FAILED", message[:500]))
            return
        synced = time.monotonic()
        if synced - started > SLOW_PASS_SECONDS:
            log.warning(
                "metadata pass of %s took %.1fs (clusters probed in %.1fs, topics synced in %.1fs)",
                runtime.name,
                synced - started,
                probed - started,
                synced - probed,
            )
        self._note_recreations(report.recreated_sources, report.recreated_targets)
        partitions = sorted((t.source_topic, p) for t in report.topics.values() for p in range(t.partitions))
        error = None
        if report.creation_denied:
            # Even one topic: it is never copied until an ACL changes (the other topics' partitions copy on).
            error = _creation_denied(runtime.target.alias, report.creation_denied, len(report.topics))
        elif report.errors and not report.topics:
            sample = "; ".join(f"{topic}: {reason}" for topic, reason in sorted(report.errors.items())[:3])
            error = (_classify_topic_errors(report.errors), sample[:500])
        if error is None:
            error = await self._blocked_copies(runtime)
        await self._write(runtime, partitions, error)
        if self._last_inventory is None:
            log.info(
                "metadata unit of %s: first inventory written after %.1fs", runtime.name, time.monotonic() - started
            )
        if self._last_inventory != (runtime.generation, partitions):
            self._last_inventory = (runtime.generation, partitions)
            self.on_inventory()
        self.scope.partitions = partitions
        try:
            if not self.may_write():
                return
            await self.failovers.step(partitions)
            if time.monotonic() - self._last_thin >= 60.0:
                self._last_thin = time.monotonic()
                async with self.db.begin() as conn:
                    await offset_store.thin(conn, runtime.replicator_id, self.offset_map_max_runs)
        except Exception:
            # Failovers and thinning retry at the next pass; they must never stop the topic sync.
            log.exception("failover/offset map upkeep of %s failed", runtime.name)
        try:
            await self.redis.hset(
                STATUS_KEY.format(replicator_id=runtime.replicator_id),
                mapping={
                    StatusField.TOPIC_ERRORS: json.dumps(report.errors),
                    StatusField.TOPICS: json.dumps({t.source_topic: t.target_topic for t in report.topics.values()}),
                },
            )
        except (RedisError, OSError) as exc:
            # Reports are best effort: a Redis outage must not restart the unit (its clients, its group sync).
            log.warning("status of %s not reported: %s", runtime.name, exc)

    async def _blocked_copies(self, runtime: ReplicatorRuntime) -> tuple[str, str] | None:
        """(code, message) when partitions report a health no retry cures (the copy units retry, but only a
        change to the clusters' ACLs or configuration helps): the replicator's StateInfo says so, and it turns
        FAILED if it lasts FERRY_REPLICATOR_FAIL_AFTER_SECONDS, instead of RUNNING with nothing copied."""
        try:
            raw = await self.redis.hgetall(METRICS_KEY.format(replicator_id=runtime.replicator_id))
        except (RedisError, OSError):
            return None  # without reports nothing is known either way; the next pass asks again
        now_ms = time.time() * 1000
        blocked: dict[str, list[PartitionReport]] = {}
        for value in raw.values():
            if not PartitionReport.may_have_health(value, BLOCKING_MARKERS):
                continue  # parsing every report of 10,000 partitions each pass was 5% of a worker's CPU
            report = PartitionReport.from_json(value)
            if report is None or now_ms - report.reported_at_ms > BLOCKED_REPORT_FRESH_MS:
                continue
            if report.health in BLOCKING_HEALTHS:
                blocked.setdefault(report.health, []).append(report)
        if not blocked:
            return None
        health = min(blocked, key=list(BLOCKING_HEALTHS).index)
        code, what = BLOCKING_HEALTHS[health]
        reports = sorted(blocked[health], key=lambda r: (r.source_topic, r.partition))
        sample = "; ".join(f"{r.source_topic}-{r.partition}: {r.health_detail}" for r in reports[:3])
        return code, f"{len(reports)} partitions cannot be copied: {what} ({sample})"[:500]

    def _note_recreations(self, sources: list[str], targets: list[str]) -> None:
        if not sources and not targets:
            return
        parts = []
        if sources:
            parts.append(
                f"source topic {', '.join(sources[:5])} was deleted and created again: "
                "its copy restarted from the new topic's beginning"
            )
        if targets:
            parts.append(
                f"target topic {', '.join(targets[:5])} was deleted and created again: "
                "the source is copied into it again from the beginning of what the source still holds"
            )
        code = "SOURCE_TOPIC_RECREATED" if sources else "TARGET_TOPIC_RECREATED"
        self._recreation = (time.monotonic(), (code, "; ".join(parts)[:500]))
        log.warning("%s: %s", self.runtime.name, "; ".join(parts))

    async def _publish_status(self, runtime: ReplicatorRuntime, pings: dict[str, tuple[str, str] | None]) -> None:
        try:
            await self._write_status(runtime, pings)
        except (RedisError, OSError) as exc:
            log.warning("cluster status of %s not reported: %s", runtime.name, exc)

    async def _write_status(self, runtime: ReplicatorRuntime, pings: dict[str, tuple[str, str] | None]) -> None:
        key = STATUS_KEY.format(replicator_id=runtime.replicator_id)
        await self.redis.hset(
            key,
            mapping={
                StatusField.CLUSTER_PING: json.dumps(
                    {
                        runtime.source.alias: 0 if pings["source"] else 1,
                        runtime.target.alias: 0 if pings["target"] else 1,
                    }
                ),
                StatusField.AUTH_FAILURES: str(self.auth_failures),
                StatusField.REPORTED_AT_MS: str(int(time.time() * 1000)),
            },
        )
        await self.redis.expire(key, REPORT_TTL_SECONDS)

    async def _stored_known_topics(self, runtime: ReplicatorRuntime) -> list[str] | None:
        """The topic set an earlier pass fixed for this generation (detectAndCopyNewTopics off), if any."""
        if runtime.spec.detect_and_copy_new_topics:
            return None
        async with self.db.connect() as conn:
            stored = await fleet_store.known_topics(conn, runtime.replicator_id)
        if not stored or stored.get("generation") != runtime.generation:
            return None  # an update changed the topic lists: the next pass fixes the set anew
        return [str(topic) for topic in stored.get("topics", [])]

    async def _write(
        self, runtime: ReplicatorRuntime, partitions: list[tuple[str, int]] | None, error: tuple[str, str] | None
    ) -> None:
        notice = None
        if self._recreation is not None and time.monotonic() - self._recreation[0] < RECREATION_NOTICE_SECONDS:
            notice = self._recreation[1]
        if partitions is not None and not partitions and error is None:
            notice = (
                "NO_MATCHING_TOPICS",
                "no source topic matches topicsToReplicate "
                f"{list(runtime.spec.topics_to_replicate)} (excluding {list(runtime.spec.topics_to_exclude)})",
            )
        known = self._sync.known_topics if self._sync is not None else None
        if not self.may_write():
            self._last_written = None  # another worker's unit may write before this one holds the lease again
            return  # the lease is gone: another worker's metadata unit reports now
        observation = (
            runtime.generation,
            None if partitions is None else tuple(partitions),
            error,
            notice,
            None if known is None else tuple(sorted(known)),
        )
        now = time.monotonic()
        if observation == self._last_written and now - self._last_written_at < REWRITE_UNCHANGED_AFTER_S:
            return
        self._last_written = None  # until this write is known to have happened
        # A failed pass keeps the last good inventory and generation; only the error fields change.
        async with self.db.begin() as conn:
            if partitions is None:
                code, message = error if error is not None else ("UNKNOWN", "")
                await fleet_store.record_metadata_failure(conn, runtime.replicator_id, code, message)
            else:
                await fleet_store.record_inventory(
                    conn,
                    runtime.replicator_id,
                    generation=runtime.generation,
                    partitions=partitions,
                    error=error,
                    notice=notice,
                    known_topics=None if known is None else {"generation": runtime.generation, "topics": sorted(known)},
                )
        self._last_written, self._last_written_at = observation, now
