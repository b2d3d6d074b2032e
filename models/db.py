"""Database engines and sessions, built on demand from settings (nothing connects at import time).

The API uses the async engine, Celery workers the sync one; both use psycopg 3 with the same URL.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from models.settings import FerrySettings


def make_async_engine(settings: FerrySettings) -> AsyncEngine:
    return create_async_engine(settings.database_url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sync_engine(settings: FerrySettings) -> Engine:
    return create_engine(settings.database_url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def sync_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
