"""offset_map_heads: next target offset and the origin (where copying of a partition began)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # IF NOT EXISTS: databases migrated with a pre-release draft of 0004 lack next_target_offset; 0004 as committed
    # has it.
    for column in ("next_target_offset", "origin_source_offset", "origin_target_offset"):
        op.execute(f"ALTER TABLE offset_map_heads ADD COLUMN IF NOT EXISTS {column} BIGINT")


def downgrade() -> None:
    op.drop_column("offset_map_heads", "origin_target_offset")
    op.drop_column("offset_map_heads", "origin_source_offset")
    op.drop_column("offset_map_heads", "next_target_offset")
