"""replicator_metadata.initial_scope: the source partitions in scope at a replicator's first inventory

startingPosition applies to them only; partitions that appear later are copied from their beginning.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "replicator_metadata",
        sa.Column("initial_scope", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("replicator_metadata", "initial_scope")
