"""replicators.delivery (at-least-once or exactly-once) and fleet_units.previous_owner (whose transactional
producer a new owner fences)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "replicators",
        sa.Column("delivery", sa.String(length=16), server_default="at-least-once", nullable=False),
    )
    op.add_column("fleet_units", sa.Column("previous_owner", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("fleet_units", "previous_owner")
    op.drop_column("replicators", "delivery")
