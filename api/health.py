"""Health probes, open to anyone (no credentials):

- ``GET /livez``: the API process serves requests (a supervisor restarts it when this fails);
- ``GET /readyz``: Ferry can do its job: the database and Redis answer, and the fleet works: live workers,
  units without an owner, how long ago the last reconcile pass ran. 503 when the database or Redis is down, or
  when replicators exist but no worker is alive or reconcile passes stopped;
- ``GET /healthz``: the database, Redis and each cluster of ``FERRY_KAFKA_PROBE_CLUSTERS`` (kept for existing
  probes; a Kafka cluster down makes it 503).
"""

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

from models import fleet_store
from models.settings import FerrySettings

router = APIRouter()

# With replicators to run, a fleet whose last reconcile pass is older than this is stuck: every worker runs
# passes every FERRY_RECONCILE_INTERVAL_SECONDS.
RECONCILE_STALE_AFTER_INTERVALS = 10
RECONCILE_STALE_AFTER_MIN_SECONDS = 30.0


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


@router.get("/livez", tags=["health"], operation_id="CheckLiveness", summary="The API process serves requests")
async def livez() -> dict[str, str]:
    """Always 200 `{"status": "up"}` while the process can answer: nothing else is checked. Open to anyone (no
    credentials), as a supervisor's liveness probe."""
    return {"status": "up"}


async def _fleet(engine: AsyncEngine, settings: FerrySettings) -> dict[str, Any]:
    async with engine.connect() as conn:
        found = await fleet_store.overview(conn, settings.worker_dead_after_seconds, settings.fleet_lease_seconds)
    stale_after = max(
        RECONCILE_STALE_AFTER_MIN_SECONDS, RECONCILE_STALE_AFTER_INTERVALS * settings.reconcile_interval_seconds
    )
    problems = []
    if found.replicators and not found.live_workers:
        problems.append("no live worker: nothing is copied")
    age = found.last_reconcile_age_seconds
    if found.replicators and (age is None or age > stale_after):
        problems.append("no reconcile pass has run" if age is None else f"the last reconcile pass ran {age:.0f}s ago")
    body: dict[str, Any] = {
        "status": "down" if problems else "up",
        "liveWorkers": found.live_workers,
        "replicators": found.replicators,
        "units": found.units,
        "unitsWithoutOwner": found.units_without_owner,
        "unitsWithoutOwnerOverLease": found.units_without_owner_too_long,
        "lastReconcileAgeSeconds": None if age is None else round(age, 1),
    }
    if problems:
        body["reason"] = "; ".join(problems)
    return body


@router.get(
    "/readyz",
    tags=["health"],
    operation_id="CheckReadiness",
    summary="Whether Ferry can do its job now",
    responses={503: {"description": "The database or Redis is down, or the fleet cannot copy (same body)."}},
)
async def readyz(request: Request) -> JSONResponse:
    """The database, Redis and the fleet (live workers, units without an owner, the age of the last reconcile
    pass), each `up` or `down` with a `reason`; 200 when all are up, 503 otherwise: when the database or Redis is
    down, or when replicators exist but no worker is alive or reconcile passes stopped. Open to anyone (no
    credentials), as a load balancer's readiness probe."""
    state = request.app.state
    timeout = state.settings.health_timeout_seconds
    database, redis = await asyncio.gather(
        _check(lambda: _database(state.db_engine), timeout), _check(lambda: _redis(state.redis), timeout)
    )
    fleet: dict[str, Any] = {"status": "down", "reason": "the database is down"}
    if database["status"] == "up":
        fleet_probe: dict[str, Any] = {}

        async def probe() -> None:
            fleet_probe.update(await _fleet(state.db_engine, state.settings))

        checked = await _check(probe, timeout)
        fleet = fleet_probe if checked["status"] == "up" else checked
    all_up = all(c["status"] == "up" for c in (database, redis, fleet))
    body = {"status": "up" if all_up else "down", "database": database, "redis": redis, "fleet": fleet}
    return JSONResponse(body, status_code=200 if all_up else 503)


@router.get(
    "/healthz",
    tags=["health"],
    operation_id="CheckHealth",
    summary="Health of Ferry's dependencies",
    responses={503: {"description": "A dependency is down (same body)."}},
)
async def healthz(request: Request) -> JSONResponse:
    """The database, Redis and each Kafka cluster of FERRY_KAFKA_PROBE_CLUSTERS, each `up` or `down` with a
    `reason`; 200 when all are up, 503 otherwise. Open to anyone (no credentials); kept for existing probes
    (/readyz is the readiness probe)."""
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
