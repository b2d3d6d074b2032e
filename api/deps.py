"""Request-scoped dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@asynccontextmanager
async def transaction(request: Request) -> AsyncIterator[AsyncSession]:
    """One unit of work: committed when the block succeeds, rolled back when it raises.

    Handlers open it explicitly (rather than through a yield dependency) so the commit happens before the
    response is sent: a failed commit must never follow a 200.
    """
    sessions: async_sessionmaker[AsyncSession] = request.app.state.db_sessions
    async with sessions() as session, session.begin():
        yield session
