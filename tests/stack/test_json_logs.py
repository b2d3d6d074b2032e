"""With FERRY_LOG_FORMAT=json every line ``ferry api``, ``ferry worker`` and ``ferry beat`` write is one JSON object,
with the context that applies: the API's access lines carry the request id its response returned, a worker's agent
lines its worker id; and no credential a request or a setting carried is in any of them."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from dev.scratch_database import scratch_database
from dev.secure import SECRETS_CREDENTIALS
from models.access_keys import IssuedKey
from models.settings import FerrySettings
from tests.api.conftest import kafka_client
from tests.conftest import ACCOUNT, REGION, TEST_METRICS_TOKEN, TEST_SECRET_KEY
from tests.stack.roles import Role, accepts_connections, free_port


def json_lines(role: Role) -> list[dict[str, Any]]:
    """Every line the process wrote, on stdout or stderr, parsed: a line that is not a JSON object fails."""
    lines = []
    for path in (role.stdout, role.stderr):
        for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                raise AssertionError(f"{path.name}:{number} is not JSON: {text!r}") from None
            assert isinstance(line, dict), f"{path.name}:{number}: {text!r}"
            assert {"timestamp", "level", "logger", "message", "role", "pid"} <= set(line), text
            lines.append(line)
    return lines


def line_with(role: Role, text: str) -> dict[str, Any] | None:
    return next((line for line in json_lines(role) if text in line["message"]), None)


@pytest.fixture
def scratch_settings(test_settings: FerrySettings) -> Iterator[FerrySettings]:
    """A migrated database of this test's own, so a worker's fleet agent sees no other test's replicators."""
    with scratch_database(test_settings.database_url, "ferry_logs") as url:
        yield test_settings.model_copy(update={"database_url": url, "celery_queue": f"logs-{uuid.uuid4().hex[:8]}"})


def json_env(settings: FerrySettings) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        **settings.as_environment(),
        **SECRETS_CREDENTIALS,
        "PYTHONUNBUFFERED": "1",
        "FERRY_LOG_FORMAT": "json",
    }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in (TEST_SECRET_KEY, TEST_METRICS_TOKEN, SECRETS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], *secrets):
        assert secret not in text, f"{secret[:6]}... is in the log"


def test_the_api_logs_json_with_the_request_id_of_each_response(
    test_settings: FerrySettings, migrated_test_database: str, test_key: IssuedKey, tmp_path: Path
) -> None:
    port = free_port()
    api = Role(["api", "--host", "127.0.0.1", "--port", str(port)], json_env(test_settings), tmp_path, "api")
    authorizations: list[str] = []
    try:
        api.wait_until("the API serving", lambda: line_with(api, "Application startup complete"), 60)
        api.wait_until("the API accepting connections", lambda: accepts_connections(port), 30)
        client = kafka_client(f"http://127.0.0.1:{port}", test_key)
        client.meta.events.register(
            "before-send.kafka", lambda request, **_: authorizations.append(_text(request.headers["Authorization"]))
        )
        missing = f"arn:aws:kafka:{REGION}:{ACCOUNT}:replicator/logs-{uuid.uuid4().hex[:8]}/{uuid.uuid4()}"
        with pytest.raises(ClientError) as refused:
            client.describe_replicator(ReplicatorArn=missing)
        assert refused.value.response["Error"]["Code"] == "NotFoundException"
        failed_id = refused.value.response["ResponseMetadata"]["RequestId"]
        listed_id = client.list_replicators()["ResponseMetadata"]["RequestId"]
        assert failed_id and listed_id and failed_id != listed_id

        def access_lines() -> dict[str, dict[str, Any]] | None:
            lines = {line.get("request_id"): line for line in json_lines(api) if line["logger"] == "api.access"}
            return lines if {failed_id, listed_id} <= set(lines) else None

        access = api.wait_until("the access lines of both requests", access_lines, 30)
    finally:
        exit_status = api.terminate()
    # uvicorn exits by the SIGTERM it finished serving for (as test_packaging.py notes), or 0.
    assert exit_status in (0, -signal.SIGTERM), api.tail()

    failed, listed = access[failed_id], access[listed_id]
    assert (failed["method"], failed["status"]) == ("GET", 404)
    assert failed["path"].startswith("/replication/v1/replicators/") and "arn" in failed["path"]
    assert (listed["method"], listed["path"], listed["status"]) == ("GET", "/replication/v1/replicators", 200)
    for line in (failed, listed):
        assert line["role"] == "api" and line["level"] == "INFO"
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    lines = json_lines(api)
    assert {line["pid"] for line in lines} == {api.proc.pid}
    assert any(line["logger"] == "uvicorn.error" and "Finished server process" in line["message"] for line in lines)
    assert len(authorizations) == 2
    signatures = [header.rsplit("Signature=", 1)[1] for header in authorizations]
    assert_no_secret(api.output(), test_key.secret_access_key, *authorizations, *signatures)


def test_a_worker_logs_json_with_its_worker_id_and_beat_logs_json(
    scratch_settings: FerrySettings, tmp_path: Path
) -> None:
    env = json_env(scratch_settings)
    name = f"logs-{uuid.uuid4().hex[:6]}"
    worker = Role(["worker", "--hostname", f"{name}@%h", "--concurrency", "1"], env, tmp_path, "worker")
    beat = Role(["beat", "--schedule", str(tmp_path / "celerybeat-schedule")], env, tmp_path, "beat")
    try:
        started = worker.wait_until("the fleet agent started", lambda: line_with(worker, "control loop started"), 90)
        worker.wait_until("the worker ready", lambda: line_with(worker, " ready."), 60)
        worker.wait_until("the work loop started", lambda: line_with(worker, "work loop started"), 30)
        beat.wait_until("beat starting", lambda: line_with(beat, "beat: Starting"), 60)
    finally:
        worker_exit = worker.terminate()
        beat_exit = beat.terminate()
    assert worker_exit == 0, worker.tail()
    assert beat_exit == 0, beat.tail()

    worker_id = started["worker_id"]
    assert worker_id.startswith(f"{name}@") and worker_id in started["message"]
    lines = json_lines(worker)
    assert {line["role"] for line in lines} == {"worker"}
    agent = [line for line in lines if line["logger"].startswith("workers.fleet.")]
    assert any("control loop stopped" in line["message"] for line in agent), "the agent's stop is logged"
    assert agent and all(line.get("worker_id") == worker_id for line in agent)
    beat_lines = json_lines(beat)
    assert beat_lines and {line["role"] for line in beat_lines} == {"beat"}
    assert_no_secret(worker.output() + beat.output())
