"""access keys: NOTIFY ferry_access_keys on every change, so API processes forget a cached key at once

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The payload is the key id; "*" (a TRUNCATE) means every key. Sent at commit, to every listening API process
    # (models/access_key_cache.py). A trigger rather than the code that revokes, so no writer can forget it.
    op.execute(
        """
        CREATE FUNCTION ferry_access_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('ferry_access_keys', '*');
            ELSE
                PERFORM pg_notify('ferry_access_keys', OLD.access_key_id);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER access_keys_changed AFTER UPDATE OR DELETE ON access_keys "
        "FOR EACH ROW EXECUTE FUNCTION ferry_access_key_changed()"
    )
    op.execute(
        "CREATE TRIGGER access_keys_truncated AFTER TRUNCATE ON access_keys "
        "FOR EACH STATEMENT EXECUTE FUNCTION ferry_access_key_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER access_keys_truncated ON access_keys")
    op.execute("DROP TRIGGER access_keys_changed ON access_keys")
    op.execute("DROP FUNCTION ferry_access_key_changed()")
