"""The tables of the durable offset map, consumer group sync state and failover operations in PostgreSQL.

``offset_map_runs`` holds the runs of ``models/offset_map.py`` per (replicator, source partition), written by the
copy units and read by the group sync loop and the API's offset-translation endpoint. ``offset_map_heads`` holds
each partition's durable copy position (the next source offset the copier will look at: everything below it is
on the target, or was a gap or a filtered record). Reading and writing them: ``models/offset_store.py`` and
``models/group_store.py``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class FailoverState(enum.StrEnum):
    """A planned failover's states (docs/failover-runbook.md); the first five are open, the last two final."""

    PENDING = "PENDING"
    WAITING_FOR_PRODUCERS = "WAITING_FOR_PRODUCERS"
    WAITING_FOR_LAG = "WAITING_FOR_LAG"
    WAITING_FOR_GROUPS = "WAITING_FOR_GROUPS"
    SYNCING = "SYNCING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


FAILOVER_ACTIVE_STATES = frozenset(
    {
        FailoverState.PENDING,
        FailoverState.WAITING_FOR_PRODUCERS,
        FailoverState.WAITING_FOR_LAG,
        FailoverState.WAITING_FOR_GROUPS,
        FailoverState.SYNCING,
    }
)


class OffsetMapRun(Base):
    __tablename__ = "offset_map_runs"
    # Reverse translation (target offset -> source) finds the run holding a target offset.
    __table_args__ = (Index("ix_offset_map_runs_target", "replicator_id", "topic", "partition", "target_end"),)

    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source_end: Mapped[int] = mapped_column(BigInteger, nullable=False)
    target_start: Mapped[int] = mapped_column(BigInteger, nullable=False)
    target_end: Mapped[int] = mapped_column(BigInteger, nullable=False)


class OffsetMapHead(Base):
    __tablename__ = "offset_map_heads"

    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_topic: Mapped[str] = mapped_column(Text, nullable=False)
    next_source_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Where the copier's next copy lands at the earliest (right after its last acknowledged copy).
    next_target_offset: Mapped[int | None] = mapped_column(BigInteger)
    # Where copying of the partition began (the first head ever stored, right after the first assignment).
    origin_source_offset: Mapped[int | None] = mapped_column(BigInteger)
    origin_target_offset: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class GroupSyncState(Base):
    """The last sync decision per group and source partition (``status``: SYNCED, UNCHANGED, ACTIVE_ON_TARGET,
    AHEAD_OF_REPLICATION, NOT_MAPPED, FAILED)."""

    __tablename__ = "group_sync_state"

    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    target_offset: Mapped[int | None] = mapped_column(BigInteger)
    max_reread: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class FailoverOperation(Base):
    __tablename__ = "failover_operations"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), nullable=False, index=True
    )
    groups: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    grace_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    timeout_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    state: Mapped[str] = mapped_column(String(32), nullable=False, default=FailoverState.PENDING.value)
    progress: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
