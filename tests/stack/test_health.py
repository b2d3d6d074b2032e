from __future__ import annotations

import socket
from typing import Any

import httpx

from api.app import create_app
from models.settings import FerrySettings


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def get_health(settings: FerrySettings) -> httpx.Response:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ferry") as client:
            return await client.get("/healthz")


async def test_every_component_up(test_settings: FerrySettings) -> None:
    response = await get_health(test_settings)
    body: dict[str, Any] = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "up"
    assert body["database"]["status"] == "up"
    assert body["redis"]["status"] == "up"
    assert {name: c["status"] for name, c in body["kafka"].items()} == {"source": "up", "target": "up"}


async def test_a_down_component_is_named_with_a_reason(test_settings: FerrySettings) -> None:
    port = closed_port()
    settings = test_settings.model_copy(
        update={
            "kafka_probe_clusters": {**test_settings.kafka_probe_clusters, "gone": f"127.0.0.1:{port}"},
            "health_timeout_seconds": 2.0,
        }
    )
    response = await get_health(settings)
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "down"
    assert body["kafka"]["gone"]["status"] == "down"
    assert body["kafka"]["gone"]["reason"]
    assert body["kafka"]["source"]["status"] == "up"
    assert body["database"]["status"] == "up"


async def test_docs_page_and_openapi_are_served(test_settings: FerrySettings) -> None:
    app = create_app(test_settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ferry") as client:
        docs = await client.get("/docs")
        spec = await client.get("/openapi.json")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert "/healthz" in spec.json()["paths"]


async def _get(settings: FerrySettings, path: str) -> httpx.Response:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ferry") as client:
            return await client.get(path)


async def test_livez_answers_while_the_process_serves_even_without_its_database(test_settings: FerrySettings) -> None:
    gone = test_settings.model_copy(
        update={"database_url": f"postgresql+psycopg://ferry:ferry@127.0.0.1:{closed_port()}/ferry"}
    )
    response = await _get(gone, "/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "up"}


async def test_readyz_reports_the_database_redis_and_the_fleet(test_settings: FerrySettings) -> None:
    response = await _get(test_settings, "/readyz")
    body = response.json()
    assert body["database"]["status"] == "up"
    assert body["redis"]["status"] == "up"
    fleet = body["fleet"]
    for field in ("liveWorkers", "replicators", "units", "unitsWithoutOwner", "lastReconcileAgeSeconds"):
        assert field in fleet
    # The suite's API database has replicators and no fleet: not ready, and it says why.
    if fleet["replicators"] and not fleet["liveWorkers"]:
        assert response.status_code == 503
        assert "no live worker" in fleet["reason"]


async def test_readyz_is_503_with_the_reason_when_the_database_is_down(test_settings: FerrySettings) -> None:
    gone = test_settings.model_copy(
        update={
            "database_url": f"postgresql+psycopg://ferry:ferry@127.0.0.1:{closed_port()}/ferry",
            "health_timeout_seconds": 2.0,
        }
    )
    response = await _get(gone, "/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "down"
    assert body["database"]["status"] == "down" and body["database"]["reason"]
    assert body["fleet"]["status"] == "down"
    assert body["redis"]["status"] == "up"
