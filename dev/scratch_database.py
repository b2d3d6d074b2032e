"""Scratch databases on the dev stack's PostgreSQL: one per test module or benchmark that needs a database no one
else writes to (its own replicators, keys or fleet rows), created beside the one it is given and dropped after.

Tests (tests/conftest.py and the modules that need a database of their own) and benchmarks (bench/) share these,
so the one way a drop can fail here is handled in one place: see ``drop_database``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from models.migrate import upgrade


def admin_dsn(database_url: str) -> str:
    """psycopg's form of a SQLAlchemy URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    return database_url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def scratch_database(database_url: str, prefix: str, *, migrate: bool = True) -> Iterator[str]:
    """A new database named ``<prefix>_<random>`` on the server of ``database_url``, owned by its role, migrated to
    the current schema unless ``migrate`` is false; yields its URL (in ``database_url``'s form) and drops it after,
    also when the block raises."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    dsn = admin_dsn(database_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url.rsplit("/", 1)[0] + f"/{name}"
        if migrate:
            upgrade(url)
        yield url
    finally:
        drop_database(dsn, name)


def drop_database(dsn: str, name: str, deadline_s: float = 60.0) -> None:
    """Drop a scratch database, ending the sessions still in it. FORCE ends sessions of our own role only: an
    autovacuum worker in the database (no role we may signal) makes it fail until that worker is done, which takes
    moments, so it is tried again until ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.errors.InsufficientPrivilege:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # poll interval of a retry with a deadline
