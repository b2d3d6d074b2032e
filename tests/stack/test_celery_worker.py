"""A task sent through Redis runs in a real Celery worker process and its result is read back."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def celery_worker(test_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    queue = f"test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "--pool",
                "solo",
                "--queues",
                queue,
                "--hostname",
                f"{queue}@%h",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
            # Only the task path is under test here: no fleet agent joins the test database's fleet.
            cwd=ROOT,
            env={**test_env, "FERRY_FLEET_AGENT_ENABLED": "false"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield queue, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode not in (0, -15):
            print(log.read_text())


def test_task_runs_in_a_real_worker_process(
    celery_worker: tuple[str, subprocess.Popen[bytes]], test_env: dict[str, str]
) -> None:
    queue, proc = celery_worker
    client = Celery("ferry-test", broker=test_env["FERRY_REDIS_URL"], backend=test_env["FERRY_REDIS_URL"])
    try:
        result = client.send_task("ferry.ping", queue=queue)
        reply = result.get(timeout=60)
    finally:
        client.close()
    assert reply["pong"] is True
    assert reply["pid"] == proc.pid
    assert reply["pid"] != os.getpid()
