"""Database engines and sessions, built on demand from settings (nothing connects at import time).

The API uses the async engine, Celery workers the sync one; both use psycopg 3 with the same URL.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from models.settings import FerrySettings

# A database that stops answering must make calls fail, not hang: a bounded connect, and TCP keepalives plus a
# user timeout so a connection whose packets vanish (a dead host, a blackholed route) errors within seconds.
CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def make_async_engine(settings: FerrySettings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=CONNECT_ARGS
    )


def make_sync_engine(settings: FerrySettings) -> Engine:
    return create_engine(
        settings.database_url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=CONNECT_ARGS
    )


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def sync_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
