"""Shared fixtures: every test talks to the real local stack started by ``python -m dev.stack up``.

The stack writes its endpoints to .run/stack.json. Tests use the ``ferry_test`` database and Redis database 1,
so running the suite never disturbs a developer's stack data; each test makes its own uniquely named topics,
groups and replicators, so tests run in any order.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cli.admin import create_access_key
from dev.secure import SECRETS_CREDENTIALS
from models.access_keys import IssuedKey
from models.migrate import upgrade
from models.settings import FerrySettings

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
ACCOUNT = "000000000000"
# The suite's own secrets: never a deployment's.
TEST_SECRET_KEY = "ferry-test-suite-secret-key-not-for-production"
TEST_METRICS_TOKEN = "ferry-test-suite-metrics-token"
# The stack's clusters listen on loopback, which Ferry refuses unless allowed.
LOOPBACK = ["127.0.0.0/8", "::1/128", "localhost"]


def stack_settings(stack: dict[str, Any], **overrides: Any) -> FerrySettings:
    """Settings for the local stack's services and the suite's secrets (``overrides`` win)."""
    values: dict[str, Any] = {
        "database_url": stack["test_database_url"],
        "redis_url": str(stack["redis_url"]).rsplit("/", 1)[0] + "/1",
        "kafka_probe_clusters": stack["kafka"],
        "secret_key": TEST_SECRET_KEY,
        "metrics_token": TEST_METRICS_TOKEN,
        "allowed_bootstrap": LOOPBACK,
        "aws_region": REGION,
        # Tests make hundreds of requests a second with one key; the limit has its own test.
        "api_requests_per_second": 100_000.0,
        "api_request_burst": 100_000,
        "max_replicators_per_account": 100_000,
        # Read the test secrets at once: tests change them and expect the change to be seen.
        "secret_cache_seconds": 0.0,
        # API tests have no fleet: their replicators must stay as the API left them (the fleet tests turn it on).
        "api_reconcile": False,
    }
    secured = stack.get("secure") or {}
    if secured.get("aws_endpoint"):
        values["secrets_manager_endpoint"] = secured["aws_endpoint"]
    values.update(overrides)
    return FerrySettings(**values)


def issue_key(settings: FerrySettings, account_id: str = ACCOUNT, *, read_only: bool = False) -> IssuedKey:
    """A new access key in the database of ``settings`` (which must be migrated)."""
    return asyncio.run(create_access_key(settings, account_id, "test suite", read_only=read_only))


class SigV4HttpxAuth(httpx.Auth):
    """Signs httpx requests as boto3 signs the kafka client's (for tests that send raw HTTP)."""

    requires_request_body = True

    def __init__(self, key: IssuedKey, region: str = REGION) -> None:
        self.credentials = Credentials(key.access_key_id, key.secret_access_key)
        self.region = region

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        signed = {name: value for name, value in request.headers.items() if name.lower() in ("host", "content-type")}
        aws = AWSRequest(method=request.method, url=str(request.url), data=request.content, headers=signed)
        SigV4Auth(self.credentials, "kafka", self.region).add_auth(aws)
        for name in ("Authorization", "X-Amz-Date"):
            request.headers[name] = aws.headers[name]
        yield request


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
    return stack_settings(stack)


@pytest.fixture(scope="session")
def migrated_test_database(test_settings: FerrySettings) -> str:
    """Bring ferry_test to the head revision (idempotent), so the suite also runs right after a new migration."""
    upgrade(test_settings.database_url)
    return test_settings.database_url


@pytest.fixture(scope="session")
def test_key(test_settings: FerrySettings, migrated_test_database: str) -> IssuedKey:
    """An access key of the test account in ferry_test."""
    return issue_key(test_settings)


@pytest.fixture(scope="session")
def test_env(test_settings: FerrySettings) -> dict[str, str]:
    """Environment for child processes (workers, API) that must use the test database and Redis."""
    env = dict(os.environ)
    env.update(test_settings.as_environment())
    env.update(SECRETS_CREDENTIALS)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A name no other test (or earlier run) uses: for topics, groups and replicators."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40].strip("-").lower()
    return f"t-{base}-{uuid.uuid4().hex[:8]}"
