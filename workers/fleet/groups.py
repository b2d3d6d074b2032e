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

Decisions are stored per group and partition (``group_sync_state``); counts and per-group translation lag go
to Redis for the API's metrics. ``FailoverDriver`` runs planned-failover operations with the same parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from models import offsets as offset_store
from models.fleet import STATUS_KEY
from workers.engine import ClusterConnection, client_kwargs
from workers.fleet.config import ReplicatorRuntime

log = logging.getLogger(__name__)

INACTIVE_STATES = frozenset({"Empty", "Dead"})


@dataclass(frozen=True)
class GroupPolicy:
    include: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]
    detect_new: bool
    sync_offsets: bool
    enhanced: bool

    @classmethod
    def of(cls, groups: Mapping[str, Any]) -> GroupPolicy:
        return cls(
            include=tuple(re.compile(p) for p in groups.get("consumerGroupsToReplicate") or ()),
            exclude=tuple(re.compile(p) for p in groups.get("consumerGroupsToExclude") or ()),
            detect_new=bool(groups.get("detectAndCopyNewConsumerGroups", True)),
            sync_offsets=bool(groups.get("synchroniseConsumerGroupOffsets", True)),
            enhanced=groups.get("consumerGroupOffsetSyncMode") == "ENHANCED",
        )

    def matches(self, group: str) -> bool:
        if group.startswith("__"):
            return False
        if not any(p.fullmatch(group) for p in self.include):
            return False
        return not any(p.fullmatch(group) for p in self.exclude)


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

    def update(self, runtime: ReplicatorRuntime) -> None:
        if runtime.generation != self.runtime.generation:
            self._known_groups = None
        self.runtime = runtime

    async def _admins(self) -> tuple[AIOKafkaAdminClient, AIOKafkaAdminClient]:
        if self._source is None or self._target is None:
            source = AIOKafkaAdminClient(**client_kwargs(self.runtime.source, "group-sync"))
            target = AIOKafkaAdminClient(**client_kwargs(self.runtime.target, "group-sync"))
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
    def policy(self) -> GroupPolicy:
        return GroupPolicy.of(self.runtime.consumer_groups)

    async def matching_groups(self) -> list[str]:
        source, _ = await self._admins()
        policy = self.policy
        found = sorted({str(g[0]) for g in await source.list_consumer_groups() if policy.matches(str(g[0]))})
        if not policy.detect_new:
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
                outcome = await self._sync_group(group, in_scope, reverse)
            except (KafkaError, OSError) as exc:
                self.failures += 1
                outcome = GroupOutcome(group, error=f"{type(exc).__name__}: {exc}"[:500])
                log.warning("offset sync of group %s (%s) failed: %s", group, self.runtime.name, exc)
                await self.close()
            outcomes.append(outcome)
        if only is None:
            await self._publish(outcomes)
        return outcomes

    async def _group_state(self, admin: AIOKafkaAdminClient, group: str) -> tuple[str, int]:
        described = await admin.describe_consumer_groups([group])
        for response in described:
            for entry in response.groups:
                if entry[1] == group:
                    return str(entry[2]), len(entry[5])
        return "Dead", 0

    async def _sync_group(self, group: str, scope: set[tuple[str, int]], reverse: str | None) -> GroupOutcome:
        source, target = await self._admins()
        spec = self.runtime.spec
        outcome = GroupOutcome(group)
        committed = await source.list_consumer_group_offsets(group)
        relevant = {
            tp: om.offset for tp, om in committed.items() if (tp.topic, tp.partition) in scope and om.offset >= 0
        }
        if not relevant:
            return outcome
        state, _members = await self._group_state(target, group)
        outcome.target_state = state
        target_committed = {
            tp: om.offset for tp, om in (await target.list_consumer_group_offsets(group)).items() if om.offset >= 0
        }
        rid = self.runtime.replicator_id
        async with self.db.connect() as conn:
            previous = {
                (str(r[0]), int(r[1])): int(r[2])
                for r in await conn.execute(
                    text(
                        "SELECT topic, partition, source_offset FROM group_sync_state "
                        "WHERE replicator_id = :rid AND group_id = :g"
                    ),
                    {"rid": uuid.UUID(rid), "g": group},
                )
            }
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
                elif not self.policy.sync_offsets:
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
            for d in outcome.decisions:
                await conn.execute(
                    text(
                        "INSERT INTO group_sync_state (replicator_id, group_id, topic, partition, source_offset, "
                        "target_offset, max_reread, status) VALUES (:rid, :g, :t, :p, :s, :o, :m, :st) "
                        "ON CONFLICT (replicator_id, group_id, topic, partition) DO UPDATE SET source_offset = :s, "
                        "target_offset = :o, max_reread = :m, status = :st, updated_at = now()"
                    ),
                    {
                        "rid": uuid.UUID(rid),
                        "g": group,
                        "t": d.topic,
                        "p": d.partition,
                        "s": d.source_offset,
                        "o": d.target_offset,
                        "m": d.max_reread,
                        "st": d.status,
                    },
                )
        if to_commit or all(d.status == "UNCHANGED" for d in outcome.decisions):
            self._last_sync_ms[group] = int(time.time() * 1000)
        return outcome

    async def _commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        """Commit as a member-less client (generation -1): refused by the broker if the group became active."""
        consumer = AIOKafkaConsumer(
            **client_kwargs(self.runtime.target, "group-sync-commit"), group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(list(offsets))
            await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
        finally:
            await consumer.stop()
        log.info(
            "group %s on %s committed %s",
            group,
            self.runtime.target.describe(),
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
                "groupSync": json.dumps(
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


# ---------------------------------------------------------------------- planned failover


async def end_offsets(
    connection: ClusterConnection, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """High watermarks (every write counts, committed or not)."""
    tps = [TopicPartition(t, p) for t, p in partitions]
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(**client_kwargs(connection, "failover-probe"), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): int(v) for tp, v in ends.items()}


@dataclass(frozen=True)
class _Operation:
    id: uuid.UUID
    groups: list[str]
    grace_s: float
    timeout_s: float
    age_s: float


class FailoverDriver:
    """Moves the replicator's open failover operations forward, one step per call; every step writes a
    readable progress line, and a timeout leaves the reason it was waiting for."""

    def __init__(self, syncer: GroupSyncer) -> None:
        self.syncer = syncer
        self._quiet: dict[uuid.UUID, tuple[dict[tuple[str, int], int], float]] = {}

    @property
    def db(self) -> AsyncEngine:
        return self.syncer.db

    async def step(self, scope: list[tuple[str, int]] | None) -> None:
        runtime = self.syncer.runtime
        async with self.db.connect() as conn:
            ops = (
                await conn.execute(
                    text(
                        "SELECT id, groups, grace_seconds, timeout_seconds, state, "
                        "extract(epoch from now() - created_at) FROM failover_operations "
                        "WHERE replicator_id = :rid AND state = ANY(:active) ORDER BY created_at"
                    ),
                    {"rid": uuid.UUID(runtime.replicator_id), "active": list(offset_store.FAILOVER_ACTIVE_STATES)},
                )
            ).all()
        for op_id, groups, grace, timeout, _state, age in ops:
            op = _Operation(op_id, list(groups), float(grace), float(timeout), float(age))
            try:
                await self._advance(op, scope)
            except (KafkaError, OSError) as exc:
                await self._set(op_id, None, f"retrying after {type(exc).__name__}: {exc}"[:500])

    async def _set(
        self,
        op_id: uuid.UUID,
        state: str | None,
        progress: str | None,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        async with self.db.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE failover_operations SET state = coalesce(:state, state), progress = :progress, "
                    "error = :error, result = coalesce(CAST(:result AS jsonb), result), updated_at = now() "
                    "WHERE id = :id"
                ),
                {
                    "id": op_id,
                    "state": state,
                    "progress": progress,
                    "error": error,
                    "result": None if result is None else json.dumps(result),
                },
            )

    async def _advance(self, op: _Operation, scope: list[tuple[str, int]] | None) -> None:
        runtime = self.syncer.runtime
        op_id, groups, grace, timeout = op.id, op.groups, op.grace_s, op.timeout_s
        age = op.age_s
        if scope is None:
            await self._set(op_id, "PENDING", "waiting for the replicator's first topic sync")
            return
        async with self.db.connect() as conn:
            last = (
                await conn.execute(text("SELECT progress FROM failover_operations WHERE id = :id"), {"id": op_id})
            ).scalar_one_or_none()
        if age > timeout:
            self._quiet.pop(op_id, None)
            await self._set(op_id, "FAILED", last, error=f"timed out after {timeout:g}s while {last or 'starting'}")
            return
        # 1. Producers stopped: no new source record for the grace period.
        ends = await end_offsets(runtime.source, scope)
        seen = self._quiet.get(op_id)
        now = time.monotonic()
        if seen is None or seen[0] != ends:
            arrived = 0 if seen is None else sum(max(0, ends.get(k, 0) - seen[0].get(k, 0)) for k in ends)
            self._quiet[op_id] = (ends, now)
            note = f"; {arrived} new source records since the last check" if arrived else ""
            await self._set(
                op_id,
                "WAITING_FOR_PRODUCERS",
                f"waiting for producers to stop: source quiet for 0.0s of {grace:g}s{note}",
            )
            return
        quiet_for = now - seen[1]
        if quiet_for < grace:
            await self._set(
                op_id,
                "WAITING_FOR_PRODUCERS",
                f"waiting for producers to stop: source quiet for {quiet_for:.1f}s of {grace:g}s",
            )
            return
        # 2. Lag zero: every partition's durable copy position reached the source end.
        async with self.db.connect() as conn:
            heads = await offset_store.heads(conn, runtime.replicator_id)
        behind = {k: ends[k] - heads.get(k, 0) for k in ends if heads.get(k, 0) < ends[k]}
        if behind:
            await self._set(
                op_id,
                "WAITING_FOR_LAG",
                f"waiting for replication to catch up: {sum(behind.values())} records behind on "
                f"{len(behind)} partitions (e.g. {_sample(behind)})",
            )
            return
        # 3. Groups inactive on the source (their consumers stopped), then the last sync.
        source_admin, _ = await self.syncer._admins()
        active = []
        for group in groups:
            state, members = await self.syncer._group_state(source_admin, group)
            if state not in INACTIVE_STATES:
                active.append(f"{group} ({state}, {members} members)")
        if active:
            await self._set(
                op_id, "WAITING_FOR_GROUPS", f"waiting for consumers to stop on the source: {', '.join(active)}"
            )
            return
        outcomes = await self.syncer.sync_once(scope, only=groups)
        result: dict[str, Any] = {"groups": {}}
        problems = []
        for outcome in outcomes:
            if outcome.error:
                problems.append(f"{outcome.group}: {outcome.error}")
            for d in outcome.decisions:
                if d.status in ("ACTIVE_ON_TARGET", "NOT_MAPPED", "SYNC_DISABLED"):
                    problems.append(f"{outcome.group} {d.topic}:{d.partition}: {d.status}")
            result["groups"][outcome.group] = [d.as_json() for d in outcome.decisions]
        self._quiet.pop(op_id, None)
        if problems:
            await self._set(op_id, "FAILED", "final offset sync", error="; ".join(problems)[:2000], result=result)
            return
        await self._set(op_id, "SUCCEEDED", "groups synced; consumers can start on the target", result=result)


def _sample(behind: dict[tuple[str, int], int]) -> str:
    return ", ".join(f"{t}:{p} {n}" for (t, p), n in sorted(behind.items())[:3])
