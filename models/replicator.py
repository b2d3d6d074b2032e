"""The replicator record: the desired state users write through the API, and the status the fleet reports.

Stored JSON uses the MSK wire names (``models.replicator_shapes``):

- ``kafka_clusters``: the two request ``kafkaClusters`` entries as accepted, each with ``kafkaClusterAlias`` added
  and a ``ferry`` object: ``{"kind": "amazonMskCluster"|"apacheKafkaCluster", "reference": <mskClusterArn or
  apacheKafkaClusterId>, "bootstrapServers": <what workers connect to>}`` (MSK clusters also keep every string
  GetBootstrapBrokers returned under ``mskBootstrapBrokerStrings``).
- ``replication_info``: one ``ReplicationInfoDescription`` with every default filled in; its
  ``sourceKafkaClusterAlias``/``targetKafkaClusterAlias`` point into ``kafka_clusters``.
- ``log_delivery``: the ``logDelivery`` object, or null.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Index, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class ReplicatorState(enum.StrEnum):
    """The states of docs/replicator-states.md: the API writes CREATING, UPDATING and DELETING; the fleet moves
    replicators to RUNNING and FAILED."""

    CREATING = "CREATING"
    RUNNING = "RUNNING"
    UPDATING = "UPDATING"
    DELETING = "DELETING"
    FAILED = "FAILED"


class ReplicatorRow(Base):
    """One replicator: its desired state (written by the API) and the status the fleet reports."""

    __tablename__ = "replicators"
    __table_args__ = (
        UniqueConstraint("account_id", "name"),
        # ListReplicators pages through one account's rows in seq order.
        Index("ix_replicators_account_id_seq", "account_id", "seq"),
    )
    # Read server-generated seq and timestamps back in the INSERT/UPDATE itself (RETURNING): async sessions
    # cannot lazy-load them afterwards.
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    # Monotonic insertion order: the stable sort key for ListReplicators pagination.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True, nullable=False)
    account_id: Mapped[str] = mapped_column(String(12), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    arn: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    service_execution_role_arn: Mapped[str | None] = mapped_column(Text)
    # The request's kafkaClusters, each annotated by Ferry with its arn, alias and resolved bootstrap servers.
    kafka_clusters: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False)
    # The single replicationInfo entry as accepted (the API validates and normalises it).
    replication_info: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    log_delivery: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    tags: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False, default=dict)
    # "at-least-once" or "exactly-once": chosen at creation (the reserved tag ferry:delivery, or the default).
    delivery: Mapped[str] = mapped_column(String(16), nullable=False, server_default="at-least-once")
    current_version: Mapped[str] = mapped_column(String(64), nullable=False)
    # generation counts desired-state changes; the fleet copies it to observed_generation once applied.
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=ReplicatorState.CREATING.value)
    state_info: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )
