"""GET /healthz: whether the database, Redis and each configured Kafka cluster answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

router = APIRouter()


async def _database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _redis(client: Redis) -> None:
    if not await client.ping():
        raise RuntimeError("PING was not answered with PONG")


def _kafka(bootstrap: str, timeout: float) -> Callable[[], Awaitable[None]]:
    async def probe() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if not cluster.get("brokers"):
                raise RuntimeError("metadata lists no brokers")
        finally:
            await admin.close()

    return probe


async def _check(probe: Callable[[], Awaitable[None]], limit_seconds: float) -> dict[str, Any]:
    try:
        await asyncio.wait_for(probe(), limit_seconds)
    except TimeoutError:
        return {"status": "down", "reason": f"no answer within {limit_seconds:g}s"}
    except Exception as exc:  # noqa: BLE001  (any failure of a dependency means "down", with its reason)
        return {"status": "down", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "up"}


@router.get("/healthz", tags=["health"], summary="Health of Ferry's dependencies")
async def healthz(request: Request) -> JSONResponse:
    """Each dependency up or down with a reason; 200 when all are up, 503 otherwise."""
    state = request.app.state
    timeout = state.settings.health_timeout_seconds
    clusters: dict[str, str] = state.settings.kafka_probe_clusters
    names = ["database", "redis", *(f"kafka:{name}" for name in clusters)]
    probes = [
        lambda: _database(state.db_engine),
        lambda: _redis(state.redis),
        *(_kafka(bootstrap, timeout) for bootstrap in clusters.values()),
    ]
    results = await asyncio.gather(*(_check(probe, timeout) for probe in probes))
    components = dict(zip(names, results, strict=True))
    kafka = {
        name: components.pop(f"kafka:{name}") | {"bootstrapServers": servers} for name, servers in clusters.items()
    }
    body: dict[str, Any] = {"database": components["database"], "redis": components["redis"], "kafka": kafka}
    all_up = all(c["status"] == "up" for c in [*results])
    body = {"status": "up" if all_up else "down", **body}
    return JSONResponse(body, status_code=200 if all_up else 503)
