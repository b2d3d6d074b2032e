"""A shared metadata value asked for "fetched after this moment" is never an older fetch, even one still in flight.

A replicator's first inventory fixes which topics existed when it started (startingPosition applies to those, the
others are copied from their beginning); a listing another replicator asked for a moment earlier may predate a
topic created since, and the fleet suite caught it copying a LATEST replicator's existing topic whole.
"""

from __future__ import annotations

import asyncio
import time

from workers.engine.cluster_metadata import _Cached


def test_a_value_fetched_before_not_before_is_fetched_again() -> None:
    async def scenario() -> None:
        cached: _Cached[int] = _Cached()
        fetches = 0

        async def fetch() -> int:
            nonlocal fetches
            fetches += 1
            return fetches

        assert await cached.get(60.0, fetch) == 1
        assert await cached.get(60.0, fetch) == 1  # fresh enough: shared
        after = time.monotonic()
        assert await cached.get(60.0, fetch, not_before=after) == 2
        assert await cached.get(60.0, fetch, not_before=after) == 2  # fetched after: shared again

    asyncio.run(scenario())


def test_a_fetch_in_flight_since_before_not_before_is_not_joined() -> None:
    async def scenario() -> None:
        cached: _Cached[str] = _Cached()
        release_first = asyncio.Event()
        calls: list[str] = []

        async def fetch() -> str:
            calls.append("fetch")
            if len(calls) == 1:
                await release_first.wait()
                return "listed before the topic existed"
            return "listed after"

        early = asyncio.create_task(cached.get(0.0, fetch))
        await asyncio.sleep(0)  # the first fetch is under way
        late = asyncio.create_task(cached.get(0.0, fetch, not_before=time.monotonic()))
        await asyncio.sleep(0)
        release_first.set()
        assert await early == "listed before the topic existed"
        assert await late == "listed after"
        assert calls == ["fetch", "fetch"]

    asyncio.run(scenario())
