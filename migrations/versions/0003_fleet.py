"""fleet: workers, units of work with fenced leases, replicator metadata observations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fleet_workers",
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_fleet_workers")),
    )
    op.create_table(
        "fleet_units",
        sa.Column("replicator_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("assigned_worker", sa.String(length=200), nullable=True),
        sa.Column("owner_worker", sa.String(length=200), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["replicator_id"], ["replicators.id"], ondelete="CASCADE",
                                name=op.f("fk_fleet_units_replicator_id_replicators")),
        sa.PrimaryKeyConstraint("replicator_id", "topic", "partition", name=op.f("pk_fleet_units")),
    )
    op.create_index("ix_fleet_units_assigned_worker", "fleet_units", ["assigned_worker"])
    op.create_index("ix_fleet_units_owner_worker", "fleet_units", ["owner_worker"])
    op.create_table(
        "replicator_metadata",
        sa.Column("replicator_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("applied_generation", sa.Integer(), nullable=False),
        sa.Column("partitions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notice_code", sa.String(length=64), nullable=True),
        sa.Column("notice_message", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["replicator_id"], ["replicators.id"], ondelete="CASCADE",
                                name=op.f("fk_replicator_metadata_replicator_id_replicators")),
        sa.PrimaryKeyConstraint("replicator_id", name=op.f("pk_replicator_metadata")),
    )


def downgrade() -> None:
    op.drop_table("replicator_metadata")
    op.drop_index("ix_fleet_units_owner_worker", table_name="fleet_units")
    op.drop_index("ix_fleet_units_assigned_worker", table_name="fleet_units")
    op.drop_table("fleet_units")
    op.drop_table("fleet_workers")
