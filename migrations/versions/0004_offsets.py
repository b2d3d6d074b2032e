"""offsets: offset map runs and heads per source partition, consumer group sync state, failover operations

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _replicator_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["replicator_id"], ["replicators.id"], ondelete="CASCADE", name=op.f(f"fk_{table}_replicator_id_replicators")
    )


def upgrade() -> None:
    op.create_table(
        "offset_map_runs",
        sa.Column("replicator_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("source_start", sa.BigInteger(), nullable=False),
        sa.Column("source_end", sa.BigInteger(), nullable=False),
        sa.Column("target_start", sa.BigInteger(), nullable=False),
        sa.Column("target_end", sa.BigInteger(), nullable=False),
        _replicator_fk("offset_map_runs"),
        sa.PrimaryKeyConstraint("replicator_id", "topic", "partition", "source_start", name=op.f("pk_offset_map_runs")),
    )
    op.create_index(
        "ix_offset_map_runs_target", "offset_map_runs", ["replicator_id", "topic", "partition", "target_end"]
    )
    op.create_table(
        "offset_map_heads",
        sa.Column("replicator_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("target_topic", sa.Text(), nullable=False),
        sa.Column("next_source_offset", sa.BigInteger(), nullable=False),
        sa.Column("next_target_offset", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        _replicator_fk("offset_map_heads"),
        sa.PrimaryKeyConstraint("replicator_id", "topic", "partition", name=op.f("pk_offset_map_heads")),
    )
    op.create_table(
        "group_sync_state",
        sa.Column("replicator_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("group_id", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
        sa.Column("target_offset", sa.BigInteger(), nullable=True),
        sa.Column("max_reread", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        _replicator_fk("group_sync_state"),
        sa.PrimaryKeyConstraint("replicator_id", "group_id", "topic", "partition", name=op.f("pk_group_sync_state")),
    )
    op.create_table(
        "failover_operations",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("replicator_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("groups", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("grace_seconds", sa.Float(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("progress", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        _replicator_fk("failover_operations"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failover_operations")),
    )
    op.create_index("ix_failover_operations_replicator_id", "failover_operations", ["replicator_id"])


def downgrade() -> None:
    op.drop_index("ix_failover_operations_replicator_id", table_name="failover_operations")
    op.drop_table("failover_operations")
    op.drop_table("group_sync_state")
    op.drop_table("offset_map_heads")
    op.drop_index("ix_offset_map_runs_target", table_name="offset_map_runs")
    op.drop_table("offset_map_runs")
