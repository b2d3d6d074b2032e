"""the last reconcile pass's duration, for GET /replication/v1/fleet, ferry fleet status and /metrics

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fleet_reconciles", sa.Column("took_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("fleet_reconciles", "took_seconds")
