"""fleet load: each worker's CPU, copied bytes per second, lag and draining flag; each unit's copied bytes per
second, so assignment balances load and the fleet can say how many workers it needs

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fleet_workers", sa.Column("cpu_cores", sa.Float(), server_default="0", nullable=False))
    op.add_column("fleet_workers", sa.Column("bytes_per_second", sa.Float(), server_default="0", nullable=False))
    op.add_column("fleet_workers", sa.Column("lag_bytes", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("fleet_workers", sa.Column("draining", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("fleet_units", sa.Column("load_bytes_per_second", sa.Float(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("fleet_units", "load_bytes_per_second")
    op.drop_column("fleet_workers", "draining")
    op.drop_column("fleet_workers", "lag_bytes")
    op.drop_column("fleet_workers", "bytes_per_second")
    op.drop_column("fleet_workers", "cpu_cores")
