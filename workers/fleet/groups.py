"""Consumer group offset sync and planned failover, run by a replicator's metadata unit.

Every ``group_sync_interval_seconds`` (default 5 s) ``GroupSyncer.sync_once``:

1. lists the source groups matching consumerGroupsToReplicate and not consumerGroupsToExclude (internal
   ``__*`` groups never; without detectAndCopyNewConsumerGroups the set is fixed at the first pass);
2. reads each group's committed source offsets for partitions this replicator copies;
3. translates each through the offset map (``models/offsets.translate_position``): exact inside copied data;
   in ENHANCED mode the reverse replicator's map also bounds the answer (records that came from the target);
4. commits the translated offsets to the same group on the target (for the target topic names), but only
   while that group has no active members there (state Empty or Dead), and never moves a target offset back
   unless the source group itself moved back. The commit uses generation -1, so a consumer joining between
   the check and the commit makes the broker refuse it rather than overwrite the live group.

The source's group listing and each group's committed offsets are read through the source's shared
``ClusterView`` (``workers/engine/cluster_metadata.py``) when the metadata unit gives one: replicators of one
worker that sync the same groups from the same source read them once per interval between them. A planned
failover's own passes always read the source afresh.

Decisions are stored per group and partition (``group_sync_state``, through ``models/group_store.py``); counts
and per-group translation lag go to Redis for the API's metrics. Planned failovers (``workers/fleet/failover.py``)
drive the same syncer through its public methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from models import group_store, offset_store
from models.fleet_reports import STATUS_KEY, StatusField
from workers.engine import admin as kafka_admin
from workers.engine.aiokafka_hooks import WritesFenced
from workers.engine.cluster_metadata import ClusterView, SharedReadFailed
from workers.engine.connection import ClusterConnection, admin_client, client_kwargs
from workers.engine.spec import GroupReplication
from workers.fleet.runtime import ReplicatorRuntime

log = logging.getLogger(__name__)

INACTIVE_STATES = frozenset({"Empty", "Dead"})


@dataclass
class PartitionDecision:
    topic: str
    partition: int
    target_topic: str
    source_offset: int
    target_offset: int | None
    max_reread: int | None
    status: str
    committed_before: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "sourceOffset": self.source_offset,
            "targetTopic": self.target_topic,
            "targetOffset": self.target_offset,
            "maxReread": self.max_reread,
            "status": self.status,
        }


@dataclass
class GroupOutcome:
    group: str
    decisions: list[PartitionDecision] = field(default_factory=list)
    target_state: str = ""
    error: str | None = None

    @property
    def lag_records(self) -> int:
        """Records the target group's committed position trails the translated position of the source group."""
        lag = 0
        for d in self.decisions:
            if d.target_offset is None:
                continue
            committed = d.target_offset if d.status == "SYNCED" else d.committed_before
            lag += max(0, d.target_offset - (committed if committed is not None else 0))
        return lag


class GroupSyncer:
    def __init__(self, runtime: ReplicatorRuntime, db: AsyncEngine, redis: Redis | None = None) -> None:
        self.runtime = runtime
        self.db = db
        self.redis = redis
        self.failures = 0
        self._known_groups: set[str] | None = None
        self._source: AIOKafkaAdminClient | None = None
        self._target: AIOKafkaAdminClient | None = None
        self._last_sync_ms: dict[str, int] = {}
        # ENHANCED: the replicator copying this one's target back to its source (None: none found, so records that
        # originated on the target are not accounted for and failback is not translated).
        self.partner: str | None = None
        # The clusters as the metadata unit last resolved them (credentials read on this worker); None until then.
        self.connections: tuple[ClusterConnection, ClusterConnection] | None = None
        # Whether this worker still holds the metadata unit's lease: asked right before every commit.
        self.may_write: Callable[[], bool] = lambda: True
        self.confirm_writes: Callable[[], Awaitable[bool]] | None = None
        # The source as shared with the process's other replicators, and how old its answers may be.
        self.source_view: ClusterView | None = None
        self.shared_max_age_s = 0.0

    async def use(
        self, source: ClusterConnection, target: ClusterConnection, source_view: ClusterView | None = None
    ) -> None:
        """Connect to the clusters this way from now on (e.g. a rotated password): open clients are closed."""
        if self.connections != (source, target):
            await self.close()
            self.connections = (source, target)
        self.source_view = source_view

    def _connections(self) -> tuple[ClusterConnection, ClusterConnection]:
        if self.connections is None:
            raise KafkaConnectionError("the clusters' connections are not resolved yet")
        return self.connections

    @property
    def source(self) -> ClusterConnection:
        return self._connections()[0]

    @property
    def target(self) -> ClusterConnection:
        return self._connections()[1]

    def update(self, runtime: ReplicatorRuntime) -> None:
        if runtime.generation != self.runtime.generation:
            self._known_groups = None
        self.runtime = runtime

    async def admins(self) -> tuple[AIOKafkaAdminClient, AIOKafkaAdminClient]:
        """Admin clients of the source and the target, kept open between passes (closed after a failure)."""
        if self._source is None or self._target is None:
            source = admin_client(self.source, "group-sync")
            target = admin_client(self.target, "group-sync")
            await source.start()
            try:
                await target.start()
            except BaseException:
                await source.close()
                raise
            self._source, self._target = source, target
        return self._source, self._target

    async def close(self) -> None:
        for admin in (self._source, self._target):
            if admin is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await admin.close()
        self._source = self._target = None

    @property
    def policy(self) -> GroupReplication:
        return self.runtime.spec.groups

    async def source_groups(self) -> list[str]:
        if self.source_view is not None:
            return await self.source_view.consumer_groups(self.shared_max_age_s)
        source, _ = await self.admins()
        return [str(g[0]) for g in await kafka_admin.list_consumer_groups(source)]

    async def source_offsets(self, group: str, *, fresh: bool) -> dict[TopicPartition, OffsetAndMetadata]:
        if self.source_view is not None:
            return await self.source_view.group_offsets(group, 0.0 if fresh else self.shared_max_age_s)
        source, _ = await self.admins()
        offsets: dict[TopicPartition, OffsetAndMetadata] = await source.list_consumer_group_offsets(group)
        return offsets

    async def matching_groups(self) -> list[str]:
        policy = self.policy
        found = sorted({group for group in await self.source_groups() if policy.filter.matches(group)})
        if not policy.detect_and_copy_new_groups:
            if self._known_groups is None:
                self._known_groups = set(found)
            found = [g for g in found if g in self._known_groups]
        return found

    async def sync_once(
        self, scope: Iterable[tuple[str, int]], *, only: Sequence[str] | None = None
    ) -> list[GroupOutcome]:
        """One pass over the matching groups (or ``only`` these), for source partitions in ``scope``."""
        in_scope = set(scope)
        try:
            groups = list(only) if only is not None else await self.matching_groups()
        except (KafkaError, OSError) as exc:
            if not isinstance(exc, SharedReadFailed):  # a shared read's failure is not this syncer's clients'
                await self.close()
            self.failures += 1
            log.warning("listing source groups of %s failed: %s", self.runtime.name, exc)
            await self._publish([], error=f"{type(exc).__name__}: {exc}")
            return []
        reverse = None
        if self.policy.enhanced:
            async with self.db.connect() as conn:
                reverse = await offset_store.reverse_replicator(conn, self.runtime.replicator_id)
        self.partner = reverse
        outcomes = []
        for group in groups:
            try:
                outcome = await self._sync_group(group, in_scope, reverse, fresh=only is not None)
            except (KafkaError, OSError) as exc:
                self.failures += 1
                outcome = GroupOutcome(group, error=f"{type(exc).__name__}: {exc}"[:500])
                log.warning("offset sync of group %s (%s) failed: %s", group, self.runtime.name, exc)
                if not isinstance(exc, SharedReadFailed):
                    await self.close()
            outcomes.append(outcome)
        if only is None:
            await self._publish(outcomes)
        return outcomes

    async def group_state(self, admin: AIOKafkaAdminClient, group: str) -> tuple[str, int]:
        """The group's state on that cluster (Empty, Dead, Stable, ...) and its number of members."""
        described = await admin.describe_consumer_groups([group])
        for response in described:
            for entry in response.groups:
                if entry[1] == group:
                    return str(entry[2]), len(entry[5])
        return "Dead", 0

    async def _sync_group(
        self, group: str, scope: set[tuple[str, int]], reverse: str | None, *, fresh: bool
    ) -> GroupOutcome:
        spec = self.runtime.spec
        outcome = GroupOutcome(group)
        committed = await self.source_offsets(group, fresh=fresh)
        relevant = {
            tp: om.offset for tp, om in committed.items() if (tp.topic, tp.partition) in scope and om.offset >= 0
        }
        if not relevant:
            return outcome
        _, target = await self.admins()
        state, _members = await self.group_state(target, group)
        outcome.target_state = state
        target_committed = {
            tp: om.offset for tp, om in (await target.list_consumer_group_offsets(group)).items() if om.offset >= 0
        }
        rid = self.runtime.replicator_id
        async with self.db.connect() as conn:
            previous = await group_store.last_source_offsets(conn, rid, group)
            to_commit: dict[TopicPartition, int] = {}
            for tp, source_offset in sorted(relevant.items()):
                target_tp = TopicPartition(spec.target_topic(tp.topic), tp.partition)
                current = target_committed.get(target_tp)
                translated = await offset_store.translate_position(
                    conn,
                    rid,
                    tp.topic,
                    tp.partition,
                    source_offset,
                    reverse_replicator_id=reverse,
                    target_topic=target_tp.topic,
                )
                decision = PartitionDecision(
                    tp.topic, tp.partition, target_tp.topic, source_offset, None, None, "NOT_MAPPED", current
                )
                outcome.decisions.append(decision)
                if translated is None:
                    continue
                decision.target_offset, decision.max_reread = translated.offset, translated.max_reread
                moved_back = (tp.topic, tp.partition) in previous and source_offset < previous[(tp.topic, tp.partition)]
                if state not in INACTIVE_STATES:
                    decision.status = "ACTIVE_ON_TARGET"
                elif current is not None and translated.offset == current:
                    decision.status = "UNCHANGED"
                elif current is not None and translated.offset < current and not moved_back:
                    decision.status = "TARGET_AHEAD"
                elif not self.policy.synchronise_offsets:
                    decision.status = "SYNC_DISABLED"
                else:
                    to_commit[target_tp] = translated.offset
                    decision.status = "SYNCED" if translated.covered else "AHEAD_OF_REPLICATION"
        if to_commit:
            await self._commit(group, to_commit)
            for d in outcome.decisions:
                if d.status == "AHEAD_OF_REPLICATION":
                    d.status = "SYNCED_AHEAD_OF_REPLICATION"
        async with self.db.begin() as conn:
            await group_store.store_decisions(
                conn,
                rid,
                group,
                [
                    group_store.GroupDecision(
                        d.topic, d.partition, d.source_offset, d.target_offset, d.max_reread, d.status
                    )
                    for d in outcome.decisions
                ],
            )
        if to_commit or all(d.status == "UNCHANGED" for d in outcome.decisions):
            self._last_sync_ms[group] = int(time.time() * 1000)
        return outcome

    async def _commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        """Commit as a member-less client (generation -1): refused by the broker if the group became active."""
        if not self.may_write():
            raise WritesFenced(f"the metadata unit's lease is gone; group {group} is not committed")
        consumer = AIOKafkaConsumer(
            **client_kwargs(self.target, "group-sync-commit"), group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(list(offsets))
            if not self.may_write():  # starting the client took a while
                raise WritesFenced(f"the metadata unit's lease is gone; group {group} is not committed")
            if self.confirm_writes is not None and not await self.confirm_writes():
                raise WritesFenced(f"the metadata unit is no longer this worker's; group {group} is not committed")
            await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
        finally:
            await consumer.stop()
        log.info(
            "group %s on %s committed %s",
            group,
            self.target.describe(),
            {f"{tp.topic}:{tp.partition}": o for tp, o in sorted(offsets.items())},
        )

    async def _publish(self, outcomes: list[GroupOutcome], error: str | None = None) -> None:
        if self.redis is None:
            return
        now_ms = int(time.time() * 1000)
        groups = {
            o.group: {
                "targetState": o.target_state,
                "translationLagRecords": o.lag_records,
                "secondsSinceSync": None
                if o.group not in self._last_sync_ms
                else (now_ms - self._last_sync_ms[o.group]) / 1000,
                "error": o.error,
                "partitions": [d.as_json() for d in o.decisions],
            }
            for o in outcomes
        }
        await self.redis.hset(
            STATUS_KEY.format(replicator_id=self.runtime.replicator_id),
            mapping={
                StatusField.GROUP_SYNC: json.dumps(
                    {
                        "groupCount": len(outcomes),
                        "failures": self.failures,
                        "error": error,
                        "mode": "ENHANCED" if self.policy.enhanced else "LEGACY",
                        "enhancedPartner": self.partner
                        if self.partner or not self.policy.enhanced
                        else "none found: no IDENTICAL replicator copies the target cluster back to the source",
                        "groups": groups,
                        "reportedAtMs": now_ms,
                    }
                )
            },
        )

    async def run(self, interval_s: float, scope: ScopeSource) -> None:
        while True:
            started = time.monotonic()
            partitions = scope()
            if partitions is not None:
                try:
                    await self.sync_once(partitions)
                except Exception:
                    # One bad pass must not end the loop; the next pass re-reads everything.
                    self.failures += 1
                    log.exception("group sync pass of %s failed", self.runtime.name)
            await asyncio.sleep(max(0.1, interval_s - (time.monotonic() - started)))


class ScopeSource:
    """The source partitions the metadata unit last found in scope (None until its first good pass)."""

    def __init__(self) -> None:
        self.partitions: list[tuple[str, int]] | None = None

    def __call__(self) -> list[tuple[str, int]] | None:
        return self.partitions
