"""Request-scoped dependencies shared by the routers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.errors import InvalidRequestError
from models.replicator import ReplicatorRow
from workers.engine.spec import ReplicationSpec


@asynccontextmanager
async def transaction(request: Request) -> AsyncIterator[AsyncSession]:
    """One unit of work: committed when the block succeeds, rolled back when it raises.

    Handlers open it explicitly (rather than through a yield dependency) so the commit happens before the
    response is sent: a failed commit must never follow a 200.
    """
    sessions: async_sessionmaker[AsyncSession] = request.app.state.db_sessions
    async with sessions() as session, session.begin():
        yield session


@asynccontextmanager
async def reading(request: Request) -> AsyncIterator[AsyncSession]:
    """For a handler that only reads: its statements run without BEGIN and COMMIT (two round trips fewer), each
    seeing the database as of its own start, as they would in a READ COMMITTED transaction."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.db_reads
    async with sessions() as session:
        yield session


def id_in_path(value: str, member: str, what: str) -> uuid.UUID:
    """A path member that must be one of the ids this service issues; a clear 400 naming it otherwise."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequestError(f"{member}: {value[:100]!r} is not {what}", member) from None


def spec_of(row: ReplicatorRow) -> ReplicationSpec:
    """The typed reading of a stored replicator's replicationInfo (target topic names, scope)."""
    return ReplicationSpec.from_replication_info(row.replication_info, replicator_id=str(row.id))
