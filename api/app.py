"""The FastAPI application factory: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import BlockingConnectionPool, Redis

from api import audits, console, fleet, health, offsets, replication_metrics, replicators, tags, usage
from api.access_log import AccessLog
from api.errors import install_error_handling
from api.fleet_trigger import FleetTrigger, ReconcileWatch
from api.identity import Authentication, secret_box_of
from api.openapi_document import document_security, operation_id_of_handler
from models.access_key_cache import AccessKeyCache
from models.bootstrap import AddressPolicy
from models.db import async_session_factory, make_async_engine
from models.replicator_service import RenderedShapes
from models.settings import FerrySettings, get_settings

log = logging.getLogger(__name__)

# Redis connections of one API process (requests share them; /metrics reads every report in one pipeline).
REDIS_CONNECTIONS = 64

API_DESCRIPTION = """Self-hosted Kafka replication with an Amazon MSK Replicator compatible API.

The MSK operations (CreateReplicator, DescribeReplicator, ListReplicators, UpdateReplicationInfo,
DeleteReplicator, TagResource, UntagResource, ListTagsForResource) are MSK's `kafka` service, API version
2018-11-14, on the wire: boto3, the AWS CLI and Terraform's aws provider work unchanged with an endpoint URL
(`boto3.client("kafka", endpoint_url=...)`, `aws kafka ... --endpoint-url ...`, `AWS_ENDPOINT_URL_KAFKA`).
Replicator ARNs in paths are percent-encoded (`:` as `%3A`, `/` as `%2F`), as botocore sends them.

Operations marked "Ferry extension" are Ferry's own: replication metrics, offset translation, planned failover,
audits of a copy, the worker fleet, and Prometheus metrics.

Every call but the health probes is signed with AWS Signature Version 4 (service `kafka`) with an access key Ferry
issued; /metrics also takes the metrics bearer token. Errors are AWS-style: the error code in the
`x-amzn-ErrorType` header, a JSON body `{"message": ..., "invalidParameter": ...}`."""


def create_app(settings: FerrySettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    secret_box_of(settings)  # a missing or short secret key stops the process now, not at the first request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auth == "disabled":
            log.warning(
                "API authentication is DISABLED (FERRY_AUTH=disabled): anyone who reaches this API acts for "
                "account %s. Never run like this outside development.",
                settings.aws_account_id,
            )
        engine = make_async_engine(settings)
        # Bounded, and a request waits for a free connection rather than failing: redis-py's default pool refuses
        # every call beyond its 100th connection at once (MaxConnectionsError), which a burst of requests reaches.
        redis = Redis.from_pool(
            BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=REDIS_CONNECTIONS,
                timeout=settings.health_timeout_seconds,
                socket_timeout=settings.health_timeout_seconds,
            )
        )
        app.state.db_engine = engine
        app.state.db_sessions = async_session_factory(engine)
        app.state.db_reads = async_session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))
        app.state.redis = redis
        app.state.fleet = FleetTrigger(settings)
        caching = settings.access_key_cache and settings.auth != "disabled"
        key_cache = AccessKeyCache(settings.database_url) if caching else None
        app.state.access_key_cache = key_cache
        listener = asyncio.create_task(key_cache.run(), name="access-key-listener") if key_cache else None
        stop_watch = asyncio.Event()
        watch = (
            asyncio.create_task(ReconcileWatch(settings).run(stop_watch), name="reconcile-watch")
            if settings.api_reconcile
            else None
        )
        try:
            yield
        finally:
            stop_watch.set()
            if watch is not None:
                await watch
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            app.state.fleet.close()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Ferry",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id_of_handler,
    )
    app.state.settings = settings
    app.state.address_policy = AddressPolicy(settings.allowed_bootstrap)
    app.state.rendered = RenderedShapes()
    app.include_router(health.router)
    # Before the replicators router: its {replicatorArn:path} routes would otherwise swallow ".../metrics".
    app.include_router(replication_metrics.router)
    app.include_router(fleet.router)
    app.include_router(offsets.router)
    app.include_router(audits.router)
    app.include_router(usage.router)
    app.include_router(replicators.router)
    app.include_router(tags.router)
    console.install(app, settings)  # the web console at /console (docs/console.md)
    # Inside the body limit and request ids (added by install_error_handling, so outermost): a request is
    # authenticated with a bounded body, before routing, parsing or validation look at it.
    app.add_middleware(Authentication, settings=settings)
    install_error_handling(app)
    app.add_middleware(AccessLog)  # outermost: it logs every response, the request id's refusals included
    document_security(app)
    return app
