"""A worker's Redis client under hundreds of concurrent writers, on the real Redis: its metadata units publish at
once (1,000 replicators on two workers), and redis-py's default pool refused every call beyond its 100th
connection with MaxConnectionsError. Ferry's pool is bounded and a call waits for a free connection."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.conftest import stack_settings
from workers.fleet.work import REDIS_CONNECTIONS, redis_client


async def test_hundreds_of_concurrent_writes_share_a_bounded_pool(stack: dict[str, Any]) -> None:
    client = redis_client(stack_settings(stack))
    key = f"ferry-test-pool-{uuid.uuid4().hex[:8]}"
    pool: Any = client.connection_pool
    opened: list[int] = []
    try:

        async def write(field: int) -> None:
            await client.hset(key, str(field), "x")
            opened.append(len(pool._available_connections) + len(pool._in_use_connections))

        writers = 5 * REDIS_CONNECTIONS
        assert writers > 100  # more than redis-py's default pool would allow at once
        await asyncio.gather(*(write(i) for i in range(writers)))
        assert await client.hlen(key) == writers
        assert max(opened) <= REDIS_CONNECTIONS
    finally:
        await client.delete(key)
        await client.aclose()
