"""fleet_reconciles: when a reconcile pass last ran (for /readyz)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fleet_reconciles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ran_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ran_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # Units without an owner record since when they have had none (it was NULL).
    op.execute("UPDATE fleet_units SET lease_expires_at = now() WHERE lease_expires_at IS NULL")


def downgrade() -> None:
    op.drop_table("fleet_reconciles")
