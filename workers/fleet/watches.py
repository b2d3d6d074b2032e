"""Worker-wide answers to "which replicators have work of this kind waiting?", read once for every metadata unit.

A metadata unit polls for rare work of its replicator (a planned failover under way, an audit job to claim). Each
unit asking the database for its own every pass made, with 500 units on a worker, hundreds of queries a second that
took the pool's connections from every other write (1,000 replicators on two workers). A ``ReplicatorsWatch`` asks
once for all replicators at most every ``max_age_s``, however many units ask; a unit queries its own only when its
replicator is in the answer. The cost: work is noticed up to ``max_age_s`` later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class ReplicatorsWatch:
    def __init__(
        self, db: AsyncEngine, fetch: Callable[[AsyncConnection], Awaitable[set[str]]], max_age_s: float = 1.0
    ) -> None:
        self.db = db
        self.fetch = fetch
        self.max_age_s = max_age_s
        self.queries = 0
        self._value: frozenset[str] | None = None
        self._fetched_at = 0.0
        self._inflight: asyncio.Future[frozenset[str]] | None = None

    async def replicators(self) -> frozenset[str]:
        """Ids of the replicators with such work, as read at most ``max_age_s`` ago."""
        if self._value is not None and time.monotonic() - self._fetched_at <= self.max_age_s:
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._read())
            # Read by whoever awaits it; a failure with nobody left waiting must not be reported as never retrieved.
            self._inflight.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(self._inflight)

    async def has(self, replicator_id: str) -> bool:
        return replicator_id in await self.replicators()

    async def _read(self) -> frozenset[str]:
        try:
            self.queries += 1
            async with self.db.connect() as conn:
                value = frozenset(await self.fetch(conn))
            self._value, self._fetched_at = value, time.monotonic()
            return value
        finally:
            self._inflight = None
