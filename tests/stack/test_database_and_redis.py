from __future__ import annotations

import uuid

from redis import Redis
from sqlalchemy import create_engine, inspect, text

from models.migrate import head_revision
from models.settings import FerrySettings


def test_migrations_created_the_tables_at_head(test_settings: FerrySettings) -> None:
    engine = create_engine(test_settings.database_url)
    try:
        inspector = inspect(engine)
        assert "replicators" in inspector.get_table_names()
        columns = {c["name"] for c in inspector.get_columns("replicators")}
        assert {"arn", "name", "account_id", "state", "current_version", "replication_info"} <= columns
        with engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            # Lease renewals update fleet_units in place only with room on its pages (migration 0016).
            options = conn.execute(text("SELECT reloptions FROM pg_class WHERE relname = 'fleet_units'")).scalar_one()
    finally:
        engine.dispose()
    head = head_revision()
    assert current == head
    assert "fillfactor=50" in (options or [])


def test_redis_answers(test_settings: FerrySettings) -> None:
    client = Redis.from_url(test_settings.redis_url, socket_timeout=5)
    try:
        assert client.ping()
        key = f"ferry-test-{uuid.uuid4().hex}"
        client.set(key, b"value", ex=60)
        assert client.get(key) == b"value"
        client.delete(key)
    finally:
        client.close()
