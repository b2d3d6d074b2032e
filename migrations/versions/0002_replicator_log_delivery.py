"""replicators: log_delivery column and the (account_id, seq) index that ListReplicators pages through

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("replicators", sa.Column("log_delivery", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.create_index("ix_replicators_account_id_seq", "replicators", ["account_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_replicators_account_id_seq", table_name="replicators")
    op.drop_column("replicators", "log_delivery")
