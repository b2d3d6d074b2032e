"""The API under test: the real app in a real uvicorn server on a free port, on the ferry_test database.

The listening socket is bound before the server thread starts, so clients can connect at once: the kernel
queues their connections until uvicorn has run the app's startup and begins accepting. Nothing polls.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
import uvicorn
from botocore.config import Config as BotoConfig
from fastapi import FastAPI
from sqlalchemy import Engine, delete

from api.app import create_app
from models.access_keys import IssuedKey
from models.db import make_sync_engine
from models.replicator import ReplicatorRow
from models.settings import FerrySettings
from tests.conftest import REGION, SigV4HttpxAuth


class RunningServer:
    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        host, port = self.sock.getsockname()
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", backlog=256)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def kafka_client(endpoint_url: str, key: IssuedKey, **config: Any) -> Any:
    """A boto3 ``kafka`` client signing with ``key`` (retries off, so each call is one request)."""
    return boto3.client(
        "kafka",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret_access_key,
        config=BotoConfig(retries={"total_max_attempts": 1}, max_pool_connections=64, **config),
    )


@pytest.fixture(scope="session")
def api_url(test_settings: FerrySettings, migrated_test_database: str) -> Iterator[str]:
    with RunningServer(create_app(test_settings)) as server:
        yield server.url


@pytest.fixture(scope="session")
def kafka(api_url: str, test_key: IssuedKey) -> Any:
    """A boto3 ``kafka`` client for the API under test, signing with the test account's key."""
    return kafka_client(api_url, test_key)


@pytest.fixture
def http(api_url: str, test_key: IssuedKey) -> Iterator[httpx.Client]:
    """Raw HTTP to the API, signed with the test account's key as boto3 would sign it."""
    with httpx.Client(base_url=api_url, timeout=30, auth=SigV4HttpxAuth(test_key)) as client:
        yield client


@pytest.fixture(scope="session")
def db_engine(test_settings: FerrySettings, migrated_test_database: str) -> Iterator[Engine]:
    engine = make_sync_engine(test_settings)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _remove_this_tests_replicators(unique: str, db_engine: Engine) -> Iterator[None]:
    """Delete the rows a test created (every name it uses contains its ``unique`` value) once it is done."""
    yield
    with db_engine.begin() as connection:
        connection.execute(delete(ReplicatorRow).where(ReplicatorRow.name.contains(unique, autoescape=True)))


@pytest.fixture
def clusters(source_bootstrap: str, target_bootstrap: str, unique: str) -> dict[str, Any]:
    """Two self-managed clusters (the local stack's), with ids unique to the test."""
    return {
        "source_id": f"{unique}-src",
        "target_id": f"{unique}-tgt",
        "source_bootstrap": source_bootstrap,
        "target_bootstrap": target_bootstrap,
    }


def create_request(name: str, clusters: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A valid CreateReplicator request in boto3's parameter names; ``overrides`` replace top-level members."""
    request: dict[str, Any] = {
        "ReplicatorName": name,
        "Description": "made by a test",
        "ServiceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry-replicator",
        "KafkaClusters": [
            {
                "ApacheKafkaCluster": {
                    "ApacheKafkaClusterId": clusters["source_id"],
                    "BootstrapBrokerString": clusters["source_bootstrap"],
                }
            },
            {
                "ApacheKafkaCluster": {
                    "ApacheKafkaClusterId": clusters["target_id"],
                    "BootstrapBrokerString": clusters["target_bootstrap"],
                }
            },
        ],
        "ReplicationInfoList": [
            {
                "SourceKafkaClusterId": clusters["source_id"],
                "TargetKafkaClusterId": clusters["target_id"],
                "TargetCompressionType": "LZ4",
                "TopicReplication": {"TopicsToReplicate": ["orders.*", "payments"]},
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": [".*"]},
            }
        ],
        "Tags": {"team": "platform"},
    }
    request.update(overrides)
    return request
