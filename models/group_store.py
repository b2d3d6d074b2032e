"""Data access for consumer group sync decisions (``group_sync_state``) and planned failovers
(``failover_operations``), both run by a replicator's metadata unit and read by the API."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from models.fleet_store import json_or_null
from models.offsets import FAILOVER_ACTIVE_STATES, FailoverOperation, FailoverState, GroupSyncState


@dataclass(frozen=True)
class GroupDecision:
    """The last sync decision for one group and source partition."""

    topic: str
    partition: int
    source_offset: int
    target_offset: int | None
    max_reread: int | None
    status: str


async def last_source_offsets(conn: AsyncConnection, replicator_id: str, group: str) -> dict[tuple[str, int], int]:
    """The source offset each partition of the group had at its last sync decision."""
    rows = await conn.execute(
        select(GroupSyncState.topic, GroupSyncState.partition, GroupSyncState.source_offset).where(
            GroupSyncState.replicator_id == uuid.UUID(replicator_id), GroupSyncState.group_id == group
        )
    )
    return {(str(r.topic), int(r.partition)): int(r.source_offset) for r in rows}


async def store_decisions(
    conn: AsyncConnection, replicator_id: str, group: str, decisions: Sequence[GroupDecision]
) -> None:
    if not decisions:
        return
    statement = insert(GroupSyncState)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[
                GroupSyncState.replicator_id,
                GroupSyncState.group_id,
                GroupSyncState.topic,
                GroupSyncState.partition,
            ],
            set_={
                "source_offset": statement.excluded.source_offset,
                "target_offset": statement.excluded.target_offset,
                "max_reread": statement.excluded.max_reread,
                "status": statement.excluded.status,
                "updated_at": func.now(),
            },
        ),
        [
            {
                "replicator_id": uuid.UUID(replicator_id),
                "group_id": group,
                "topic": d.topic,
                "partition": d.partition,
                "source_offset": d.source_offset,
                "target_offset": d.target_offset,
                "max_reread": d.max_reread,
                "status": d.status,
            }
            for d in decisions
        ],
    )


# ---------------------------------------------------------------------- planned failovers


@dataclass(frozen=True)
class OpenFailover:
    id: uuid.UUID
    groups: list[str]
    grace_s: float
    timeout_s: float
    age_s: float
    progress: str | None


async def replicators_with_open_failovers(conn: AsyncConnection) -> set[str]:
    """Every replicator with a failover that has not ended (few at any time: one query serves a whole worker)."""
    rows = await conn.execute(
        select(FailoverOperation.replicator_id)
        .where(FailoverOperation.state.in_([s.value for s in FAILOVER_ACTIVE_STATES]))
        .distinct()
    )
    return {str(replicator_id) for replicator_id in rows.scalars()}


async def open_failovers(conn: AsyncConnection, replicator_id: str) -> list[OpenFailover]:
    """The replicator's failovers that have not ended, oldest first, with their age by the database's clock."""
    rows = await conn.execute(
        select(
            FailoverOperation.id,
            FailoverOperation.groups,
            FailoverOperation.grace_seconds,
            FailoverOperation.timeout_seconds,
            FailoverOperation.progress,
            func.extract("epoch", func.now() - FailoverOperation.created_at).label("age"),
        )
        .where(
            FailoverOperation.replicator_id == uuid.UUID(replicator_id),
            FailoverOperation.state.in_([s.value for s in FAILOVER_ACTIVE_STATES]),
        )
        .order_by(FailoverOperation.created_at)
    )
    return [
        OpenFailover(r.id, list(r.groups), float(r.grace_seconds), float(r.timeout_seconds), float(r.age), r.progress)
        for r in rows
    ]


async def update_failover(
    conn: AsyncConnection,
    operation_id: uuid.UUID,
    *,
    state: FailoverState | None,
    progress: str | None,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """Record a step: the new state (None keeps it), the progress line and error as given, the result if any."""
    values: dict[str, Any] = {"progress": progress, "error": error, "updated_at": func.now()}
    if state is not None:
        values["state"] = state.value
    if result is not None:
        values["result"] = json_or_null(result)
    await conn.execute(update(FailoverOperation).where(FailoverOperation.id == operation_id).values(values))


async def start_failover(
    session: AsyncSession, replicator_id: uuid.UUID, *, groups: list[str], grace_seconds: float, timeout_seconds: float
) -> FailoverOperation:
    """Record a new planned failover (PENDING); the replicator's metadata unit picks it up."""
    operation = FailoverOperation(
        id=uuid.uuid4(),
        replicator_id=replicator_id,
        groups=groups,
        grace_seconds=grace_seconds,
        timeout_seconds=timeout_seconds,
        state=FailoverState.PENDING.value,
        progress="waiting for the replicator's metadata unit to pick it up",
    )
    session.add(operation)
    await session.flush()
    await session.refresh(operation)
    return operation


async def failover_of(
    session: AsyncSession, replicator_id: uuid.UUID, operation_id: uuid.UUID
) -> FailoverOperation | None:
    found = await session.execute(
        select(FailoverOperation).where(
            FailoverOperation.id == operation_id, FailoverOperation.replicator_id == replicator_id
        )
    )
    return found.scalar_one_or_none()
