"""The fleet's shared state in PostgreSQL: live workers, units of work with their fenced leases, and what each
replicator's metadata unit last observed.

Lease times are always PostgreSQL's ``now()``, never a worker's clock, so clock skew between hosts cannot make
two workers believe they hold the same unit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# Redis keys through which workers report to the API: the contract between workers/ and api/.
METRICS_KEY = "ferry:metrics:{replicator_id}"  # hash: "<topic>:<partition>" -> partition measurements (JSON)
STATUS_KEY = "ferry:status:{replicator_id}"  # hash: cluster pings, topic errors, group sync (JSON values)
WORKER_KEY = "ferry:worker:{worker_id}"  # what one worker runs right now (JSON)


class FleetWorker(Base):
    __tablename__ = "fleet_workers"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class FleetUnit(Base):
    """One unit of work: a replicator's metadata unit (partition -1) or one source topic-partition.

    ``assigned_worker`` is the reconcile loop's decision; ``owner_worker`` holds the lease until
    ``lease_expires_at``. ``epoch`` increases on every acquisition: the fencing token of the current owner.
    """

    __tablename__ = "fleet_units"
    __table_args__ = (
        Index("ix_fleet_units_assigned_worker", "assigned_worker"),
        Index("ix_fleet_units_owner_worker", "owner_worker"),
    )

    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    assigned_worker: Mapped[str | None] = mapped_column(String(200))
    owner_worker: Mapped[str | None] = mapped_column(String(200))
    epoch: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReplicatorMetadata(Base):
    """What a replicator's metadata unit last reported: the partitions in scope and any failure."""

    __tablename__ = "replicator_metadata"

    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), primary_key=True
    )
    applied_generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # [[topic, partition], ...] of source partitions in scope whose target topic exists.
    partitions: Mapped[list[list[Any]]] = mapped_column(JSONB, nullable=False, default=list)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Not a failure but worth telling the user (e.g. no source topic matches the include list).
    notice_code: Mapped[str | None] = mapped_column(String(64))
    notice_message: Mapped[str | None] = mapped_column(Text)
    # With detectAndCopyNewTopics off: {"generation": g, "topics": [...]}, the topic set fixed for generation g.
    known_topics: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )
