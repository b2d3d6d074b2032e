"""The fleet's shared state in PostgreSQL: live workers, units of work with their fenced leases, and what each
replicator's metadata unit last observed; with the values those tables hold, as the reconcile loop's pure
``plan`` and the agent read them (statements: ``models/fleet_store.py``; Redis reports: ``models/fleet_reports.py``).

Lease times are always PostgreSQL's ``now()``, never a worker's clock, so clock skew between hosts cannot make
two workers believe they hold the same unit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, false, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.replicator import ReplicatorState

# The partition number of a replicator's metadata unit (topic sync, group sync, failovers).
METADATA_PARTITION = -1


class FleetWorker(Base):
    __tablename__ = "fleet_workers"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    # The worker's load at its last heartbeat: CPU cores its process used, bytes per second it copied, and the
    # bytes its partitions lag behind their sources (estimated from records and their mean size).
    cpu_cores: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")
    bytes_per_second: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")
    lag_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # Being stopped (scale-in): the reconcile loop assigns it nothing and moves its units away.
    draining: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())


class FleetReconcile(Base):
    """One row: when a reconcile pass last ran, and where (every agent runs passes; beat only adds some)."""

    __tablename__ = "fleet_reconciles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ran_by: Mapped[str] = mapped_column(String(200), nullable=False)
    # How long that pass took (its reads, plan and writes, under the lock); passes are serialised, so a slow one
    # delays every change behind it. Null before the first pass that recorded it.
    took_seconds: Mapped[float | None] = mapped_column(Float)


class FleetUnit(Base):
    """One unit of work: a replicator's metadata unit (partition -1) or one source topic-partition.

    ``assigned_worker`` is the reconcile loop's decision; ``owner_worker`` holds the lease until
    ``lease_expires_at``; without an owner, ``lease_expires_at`` says since when the unit has had none.
    ``epoch`` increases on every acquisition: the fencing token of the current owner.
    """

    __tablename__ = "fleet_units"
    __table_args__ = (
        Index("ix_fleet_units_assigned_worker", "assigned_worker"),
        Index("ix_fleet_units_owner_worker", "owner_worker"),
        # Half-full pages: a lease renewal (no indexed column changes) is updated in place (migration 0016).
        {"postgresql_with": {"fillfactor": 50}},
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
    # The worker that held the lease before (set when a lease ends or is taken): an exactly-once copy fences its
    # transactional producer before copying.
    previous_owner: Mapped[str | None] = mapped_column(String(200))
    # Bytes per second its owner copied lately (rounded, written when it changed): assignment balances this.
    load_bytes_per_second: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")


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
    # {topic: partition count} in scope at the first good pass: startingPosition applies to these partitions only,
    # any partition that appears later (new topic, added partition, a topic list update) is copied from its
    # beginning. Set once.
    initial_scope: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )


# ---------------------------------------------------------------------- the values the fleet's tables hold


class UnitKey(NamedTuple):
    """A unit of work: a replicator's metadata unit (``topic == ""``, ``partition == METADATA_PARTITION``) or one
    source topic-partition. A named tuple, hashed and ordered in C: a reconcile pass over thousands of units
    hashes and sorts them tens of thousands of times (a frozen dataclass's hash and order built a tuple each time)."""

    replicator_id: str
    topic: str
    partition: int

    @classmethod
    def metadata(cls, replicator_id: str) -> UnitKey:
        return cls(replicator_id, "", METADATA_PARTITION)

    @property
    def is_metadata(self) -> bool:
        return self.partition == METADATA_PARTITION


@dataclass(frozen=True)
class DesiredReplicator:
    """What the API asked for: the part of a ``replicators`` row the reconcile loop decides on."""

    id: str
    state: ReplicatorState
    generation: int
    state_info: Mapping[str, str] | None = None


@dataclass(frozen=True)
class UnitObservation:
    assigned_worker: str | None
    owner: str | None  # holder of a live lease, None when free or expired
    unowned_seconds: float = 0.0  # how long it has had no live lease (0 while it has one)
    load: float = 0.0  # bytes per second its owner last reported copying


@dataclass(frozen=True)
class WorkerLoad:
    """One live worker as the fleet sees it: what it holds and how busy it is (``GET /replication/v1/fleet``)."""

    worker_id: str
    hostname: str
    pid: int
    heartbeat_age_seconds: float
    started_at: datetime
    units: int
    cpu_cores: float
    bytes_per_second: float
    lag_bytes: int
    draining: bool


@dataclass(frozen=True)
class FleetOverview:
    """The fleet at a glance (``/readyz``)."""

    live_workers: int
    replicators: int
    units: int
    units_without_owner: int
    units_without_owner_too_long: int
    last_reconcile_age_seconds: float | None


@dataclass(frozen=True)
class AssignedUnit:
    """A unit as one worker sees it: assigned to it, owned by it, or both (for a moment while it moves)."""

    key: UnitKey
    assigned_worker: str | None
    owner_worker: str | None
    epoch: int


@dataclass(frozen=True)
class MetadataObservation:
    """What a replicator's metadata unit last reported."""

    applied_generation: int
    partitions: frozenset[tuple[str, int]]  # source topic-partitions in scope, target topics created
    error_code: str | None = None
    error_message: str | None = None
    failed: bool = False  # the error lasted long enough to count as a failure of the replicator
    notice_code: str | None = None  # not a failure, but shown in stateInfo (e.g. no topic matches)
    notice_message: str | None = None
