"""usage for chargeback: per replicator per hour, records and bytes copied, replicator and partition seconds
(no foreign key: usage outlives its replicator); per worker process, its last stored batch of increments

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_hours",
        sa.Column("replicator_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("replicator_arn", sa.Text(), nullable=False),
        sa.Column("replicator_name", sa.String(length=128), nullable=False),
        sa.Column("records", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("replicator_seconds", sa.Double(), server_default="0", nullable=False),
        sa.Column("partition_seconds", sa.Double(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("replicator_id", "hour", name=op.f("pk_usage_hours")),
    )
    op.create_index("ix_usage_hours_account_id_hour", "usage_hours", ["account_id", "hour"], unique=False)
    op.create_table(
        "usage_writers",
        sa.Column("writer_id", sa.String(length=200), nullable=False),
        sa.Column("last_batch", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("writer_id", name=op.f("pk_usage_writers")),
    )


def downgrade() -> None:
    op.drop_table("usage_writers")
    op.drop_index("ix_usage_hours_account_id_hour", table_name="usage_hours")
    op.drop_table("usage_hours")
