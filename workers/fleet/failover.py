"""Planned failover of consumer groups, run by a replicator's metadata unit one step per pass.

``POST .../failover`` (api/offsets.py) records an operation; ``FailoverDriver.step`` moves each open one on:
producers stopped (no new source record for the grace period), zero lag (every partition's durable copy position
reached the source end), the groups' consumers stopped on the source, then one last offset sync of those groups
through the replicator's ``GroupSyncer``. Every step writes a readable progress line; a timeout leaves the reason
it was waiting for. See docs/failover-runbook.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import group_store, offset_store
from models.group_store import OpenFailover
from models.offsets import FailoverState
from workers.engine.connection import ClusterConnection, client_kwargs
from workers.fleet.groups import INACTIVE_STATES, GroupSyncer
from workers.fleet.watches import ReplicatorsWatch

log = logging.getLogger(__name__)


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


class FailoverDriver:
    """Moves the replicator's open failover operations forward, one step per call; every step writes a
    readable progress line, and a timeout leaves the reason it was waiting for."""

    def __init__(self, syncer: GroupSyncer, watch: ReplicatorsWatch | None = None) -> None:
        self.syncer = syncer
        # The worker's shared answer to "has this replicator a failover under way?" (None: ask the database).
        self.watch = watch
        self._quiet: dict[uuid.UUID, tuple[dict[tuple[str, int], int], float]] = {}

    @property
    def db(self) -> AsyncEngine:
        return self.syncer.db

    async def step(self, scope: list[tuple[str, int]] | None) -> None:
        if self.watch is not None and not await self.watch.has(self.syncer.runtime.replicator_id):
            return
        async with self.db.connect() as conn:
            operations = await group_store.open_failovers(conn, self.syncer.runtime.replicator_id)
        for op in operations:
            try:
                await self._advance(op, scope)
            except (KafkaError, OSError) as exc:
                await self._set(op.id, None, f"retrying after {type(exc).__name__}: {exc}"[:500])

    async def _set(
        self,
        op_id: uuid.UUID,
        state: FailoverState | None,
        progress: str | None,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        async with self.db.begin() as conn:
            await group_store.update_failover(conn, op_id, state=state, progress=progress, error=error, result=result)

    async def _advance(self, op: OpenFailover, scope: list[tuple[str, int]] | None) -> None:
        runtime = self.syncer.runtime
        op_id, groups, grace, timeout = op.id, op.groups, op.grace_s, op.timeout_s
        age = op.age_s
        if scope is None:
            await self._set(op_id, FailoverState.PENDING, "waiting for the replicator's first topic sync")
            return
        last = op.progress
        if age > timeout:
            self._quiet.pop(op_id, None)
            await self._set(
                op_id, FailoverState.FAILED, last, error=f"timed out after {timeout:g}s while {last or 'starting'}"
            )
            return
        # 1. Producers stopped: no new source record for the grace period.
        ends = await end_offsets(self.syncer.source, scope)
        seen = self._quiet.get(op_id)
        now = time.monotonic()
        if seen is None or seen[0] != ends:
            arrived = 0 if seen is None else sum(max(0, ends.get(k, 0) - seen[0].get(k, 0)) for k in ends)
            self._quiet[op_id] = (ends, now)
            note = f"; {arrived} new source records since the last check" if arrived else ""
            await self._set(
                op_id,
                FailoverState.WAITING_FOR_PRODUCERS,
                f"waiting for producers to stop: source quiet for 0.0s of {grace:g}s{note}",
            )
            return
        quiet_for = now - seen[1]
        if quiet_for < grace:
            await self._set(
                op_id,
                FailoverState.WAITING_FOR_PRODUCERS,
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
                FailoverState.WAITING_FOR_LAG,
                f"waiting for replication to catch up: {sum(behind.values())} records behind on "
                f"{len(behind)} partitions (e.g. {_sample(behind)})",
            )
            return
        # 2b. ENHANCED: the partner copying the target back has examined the target up to its end too. A position
        # is translated exactly only past what the partner examined; before that, the answer stops at the partner's
        # head so that no record that originated on the target is skipped, and the group re-reads the difference.
        partner_behind = await self._partner_behind(scope)
        if partner_behind:
            await self._set(
                op_id,
                FailoverState.WAITING_FOR_LAG,
                f"waiting for the reverse replicator to examine the target: {sum(partner_behind.values())} records "
                f"behind on {len(partner_behind)} partitions (e.g. {_sample(partner_behind)})",
            )
            return
        # 3. Groups inactive on the source (their consumers stopped), then the last sync.
        source_admin, _ = await self.syncer.admins()
        active = []
        for group in groups:
            state, members = await self.syncer.group_state(source_admin, group)
            if state not in INACTIVE_STATES:
                active.append(f"{group} ({state}, {members} members)")
        if active:
            await self._set(
                op_id,
                FailoverState.WAITING_FOR_GROUPS,
                f"waiting for consumers to stop on the source: {', '.join(active)}",
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
            await self._set(
                op_id, FailoverState.FAILED, "final offset sync", error="; ".join(problems)[:2000], result=result
            )
            return
        await self._set(
            op_id, FailoverState.SUCCEEDED, "groups synced; consumers can start on the target", result=result
        )

    async def _partner_behind(self, scope: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """ENHANCED only: target partitions (of the topics in scope) the reverse replicator has started on but not
        examined to their end. Partitions it has no head on are outside its scope and never delay the failover."""
        if not self.syncer.policy.enhanced:
            return {}
        runtime = self.syncer.runtime
        async with self.db.connect() as conn:
            partner = await offset_store.reverse_replicator(conn, runtime.replicator_id)
            if partner is None:
                return {}
            partner_heads = await offset_store.heads(conn, partner)
        target_partitions = {(runtime.spec.target_topic(t), p) for t, p in scope}
        watched = [k for k in target_partitions if k in partner_heads]
        target_ends = await end_offsets(self.syncer.target, watched)
        return {k: end - partner_heads[k] for k, end in target_ends.items() if partner_heads[k] < end}


def _sample(behind: dict[tuple[str, int], int]) -> str:
    return ", ".join(f"{t}:{p} {n}" for (t, p), n in sorted(behind.items())[:3])
