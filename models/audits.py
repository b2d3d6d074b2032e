"""Audit jobs: a user's request to compare a replicator's target with its source (``workers/engine/audit.py``).

The API records a job (PENDING); the replicator's metadata unit, on whichever worker holds its lease, claims it
(RUNNING), writes its progress every few seconds and its result (SUCCEEDED) or the reason it could not run
(FAILED). A job whose worker died is claimed again by the next owner once its progress is older than
``AUDIT_STALE_SECONDS``. Results are kept with the job and deleted with the replicator.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, DateTime, ForeignKey, Integer, String, Text, func, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# A RUNNING job whose progress is older than this has lost its worker: the next metadata unit claims it again.
AUDIT_STALE_SECONDS = 30.0


class AuditState(enum.StrEnum):
    """An audit job's states: PENDING until a worker claims it, RUNNING, then SUCCEEDED or FAILED."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class AuditJob(Base):
    __tablename__ = "audit_jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), nullable=False, index=True
    )
    topic: Mapped[str] = mapped_column(Text, nullable=False)
    partition: Mapped[int | None] = mapped_column(Integer)  # None: every partition of the topic
    from_offset: Mapped[int | None] = mapped_column(BigInteger)
    to_offset: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=AuditState.PENDING.value)
    progress: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


@dataclass(frozen=True)
class ClaimedAudit:
    id: uuid.UUID
    topic: str
    partition: int | None
    from_offset: int | None
    to_offset: int | None


async def start_audit(
    session: AsyncSession,
    replicator_id: uuid.UUID,
    *,
    topic: str,
    partition: int | None,
    from_offset: int | None,
    to_offset: int | None,
) -> AuditJob:
    job = AuditJob(
        id=uuid.uuid4(),
        replicator_id=replicator_id,
        topic=topic,
        partition=partition,
        from_offset=from_offset,
        to_offset=to_offset,
        state=AuditState.PENDING.value,
        progress="waiting for the replicator's metadata unit to pick it up",
    )
    session.add(job)
    await session.flush()
    await session.refresh(job)
    return job


async def audit_of(session: AsyncSession, replicator_id: uuid.UUID, audit_id: uuid.UUID) -> AuditJob | None:
    found = await session.execute(
        select(AuditJob).where(AuditJob.id == audit_id, AuditJob.replicator_id == replicator_id)
    )
    return found.scalar_one_or_none()


def _claimable() -> ColumnElement[bool]:
    """PENDING, or RUNNING with no progress for AUDIT_STALE_SECONDS (its worker died)."""
    return or_(
        AuditJob.state == AuditState.PENDING.value,
        (AuditJob.state == AuditState.RUNNING.value)
        & (AuditJob.updated_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, AUDIT_STALE_SECONDS)),
    )


async def replicators_with_claimable_audits(conn: AsyncConnection) -> set[str]:
    """Every replicator with a job ``claim_audit`` would claim now (few at any time: one query serves a worker)."""
    rows = await conn.execute(select(AuditJob.replicator_id).where(_claimable()).distinct())
    return {str(replicator_id) for replicator_id in rows.scalars()}


async def claim_audit(conn: AsyncConnection, replicator_id: str, worker: str) -> ClaimedAudit | None:
    """Claim the replicator's oldest job that is PENDING, or RUNNING with no progress for AUDIT_STALE_SECONDS."""
    claimable = _claimable()
    candidate = (
        select(AuditJob.id)
        .where(AuditJob.replicator_id == uuid.UUID(replicator_id), claimable)
        .order_by(AuditJob.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claimed = await conn.execute(
        update(AuditJob)
        .where(AuditJob.id == candidate)
        .values(state=AuditState.RUNNING.value, claimed_by=worker, progress="starting", updated_at=func.now())
        .returning(AuditJob.id, AuditJob.topic, AuditJob.partition, AuditJob.from_offset, AuditJob.to_offset)
    )
    row = claimed.one_or_none()
    return None if row is None else ClaimedAudit(row.id, row.topic, row.partition, row.from_offset, row.to_offset)


async def record_audit(
    conn: AsyncConnection,
    audit_id: uuid.UUID,
    worker: str,
    *,
    state: AuditState,
    progress: str | None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Write progress or the outcome, only while this worker's claim stands; False when it was taken over."""
    written = await conn.execute(
        update(AuditJob)
        .where(AuditJob.id == audit_id, AuditJob.claimed_by == worker, AuditJob.state == AuditState.RUNNING.value)
        .values(state=state.value, progress=progress, result=result, error=error, updated_at=func.now())
    )
    return bool(written.rowcount)
