"""The FastAPI application factory: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from api import health, offsets, replication_metrics, replicators, tags
from api.errors import install_error_handling
from api.fleet_trigger import FleetTrigger
from models.db import async_session_factory, make_async_engine
from models.settings import FerrySettings, get_settings


def create_app(settings: FerrySettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_async_engine(settings)
        redis = Redis.from_url(settings.redis_url, socket_timeout=settings.health_timeout_seconds)
        app.state.db_engine = engine
        app.state.db_sessions = async_session_factory(engine)
        app.state.redis = redis
        app.state.fleet = FleetTrigger(settings)
        try:
            yield
        finally:
            app.state.fleet.close()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Ferry",
        version="0.1.0",
        description="Self-hosted Kafka replication with an Amazon MSK Replicator compatible API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(health.router)
    # Before the replicators router: its {replicatorArn:path} routes would otherwise swallow ".../metrics".
    app.include_router(replication_metrics.router)
    app.include_router(offsets.router)
    app.include_router(replicators.router)
    app.include_router(tags.router)
    install_error_handling(app)
    return app
