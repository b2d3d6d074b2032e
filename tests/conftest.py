"""Shared fixtures: every test talks to the real local stack started by ``python -m dev.stack up``.

The stack writes its endpoints to .run/stack.json. Tests use the ``ferry_test`` database and Redis database 1,
so running the suite never disturbs a developer's stack data; each test makes its own uniquely named topics,
groups and replicators, so tests run in any order.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from models.settings import FerrySettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stack() -> dict[str, Any]:
    path = Path(os.environ.get("FERRY_DEV_RUN_DIR", ROOT / ".run")) / "stack.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: start the stack first (make up, or python -m dev.stack up --infra)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="session")
def source_bootstrap(stack: dict[str, Any]) -> str:
    return str(stack["kafka"]["source"])


@pytest.fixture(scope="session")
def target_bootstrap(stack: dict[str, Any]) -> str:
    return str(stack["kafka"]["target"])


@pytest.fixture(scope="session")
def test_settings(stack: dict[str, Any]) -> FerrySettings:
    redis_url = str(stack["redis_url"]).rsplit("/", 1)[0] + "/1"
    return FerrySettings(
        database_url=stack["test_database_url"],
        redis_url=redis_url,
        kafka_probe_clusters=stack["kafka"],
    )


@pytest.fixture(scope="session")
def test_env(test_settings: FerrySettings) -> dict[str, str]:
    """Environment for child processes (workers, API) that must use the test database and Redis."""
    env = dict(os.environ)
    env.update(
        FERRY_DATABASE_URL=test_settings.database_url,
        FERRY_REDIS_URL=test_settings.redis_url,
        FERRY_KAFKA_PROBE_CLUSTERS=json.dumps(test_settings.kafka_probe_clusters),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A name no other test (or earlier run) uses: for topics, groups and replicators."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40].strip("-").lower()
    return f"t-{base}-{uuid.uuid4().hex[:8]}"
