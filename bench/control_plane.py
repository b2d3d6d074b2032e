"""Control-plane figures through boto3 against Ferry's MSK-compatible API.

- ListReplicators / DescribeReplicator latency at a sustained request rate (open-loop schedule, p50/p99).
- create-to-RUNNING over N replicators (needs the worker fleet; skipped with the reason while replicators
  stay CREATING).

Replicators created here copy nothing (their topic regex matches no topic) and are deleted afterwards.
"""

from __future__ import annotations

import configparser
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bench.common import BenchError, Stack, say, spawn, tail_hint
from bench.measure import percentile

LIST_PATH = "/replication/v1/replicators"


def api_unavailable(api: str) -> str | None:
    """Why the replicator API cannot be benchmarked now, or None."""
    try:
        with urllib.request.urlopen(f"{api}/openapi.json", timeout=10) as response:
            paths = json.loads(response.read()).get("paths", {})
    except (OSError, ValueError) as exc:
        return f"API not reachable at {api} ({exc})"
    if LIST_PATH not in paths:
        return (
            f"the API at {api} has no {LIST_PATH} route yet (the MSK Replicator API of issue 3 is being "
            "written); only health routes are served"
        )
    return None


def dev_credentials() -> tuple[str, str]:
    """The stack's development access key (``make up`` writes it to .run/credentials, profile ferry)."""
    from dev.stack import CREDENTIALS_PROFILE, StackConfig  # noqa: PLC0415 (the stack tool, only here)

    parser = configparser.ConfigParser()
    parser.read(StackConfig().credentials_file)
    try:
        section = parser[CREDENTIALS_PROFILE]
        return section["aws_access_key_id"], section["aws_secret_access_key"]
    except KeyError:
        raise BenchError("no development access key in .run/credentials: run `make up` first") from None


def kafka_client(api: str, credentials: tuple[str, str] | None = None) -> Any:
    """A boto3 kafka client for ``api``, signing with ``credentials`` (default: the stack's development key)."""
    key_id, secret = credentials or dev_credentials()
    return boto3.client(
        "kafka",
        endpoint_url=api,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=16),
    )


def create_replicator(
    client: Any,
    stack: Stack,
    name: str,
    *,
    topic_pattern: str | None = None,
    starting_position: str | None = None,
    tags: dict[str, str] | None = None,
    source_cluster_id: str = "bench-source",
) -> str:
    """CreateReplicator from the stack's source to its target cluster; with no ``topic_pattern`` it replicates
    nothing (a control-plane measurement). Consumer groups are never replicated. Returns the ARN. The source's
    cluster id names its alias, the prefix of the target topics."""
    nothing = f"^ferry-bench-matches-nothing-{secrets.token_hex(4)}$"
    topics: dict[str, Any] = {"TopicsToReplicate": [topic_pattern or nothing]}
    if starting_position is not None:
        topics["StartingPosition"] = {"Type": starting_position}
    response = client.create_replicator(
        ReplicatorName=name,
        ServiceExecutionRoleArn="arn:aws:iam::000000000000:role/ferry-bench",
        KafkaClusters=[
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": source_cluster_id, "BootstrapBrokerString": stack.source}},
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "bench-target", "BootstrapBrokerString": stack.target}},
        ],
        ReplicationInfoList=[
            {
                "SourceKafkaClusterId": source_cluster_id,
                "TargetKafkaClusterId": "bench-target",
                "TargetCompressionType": "NONE",
                "TopicReplication": topics,
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": [nothing]},
            }
        ],
        **({"Tags": tags} if tags else {}),
    )
    return str(response["ReplicatorArn"])


def _delete(client: Any, arn: str) -> None:
    try:
        client.delete_replicator(ReplicatorArn=arn)
    except (ClientError, BotoCoreError) as exc:
        say(f"warning: could not delete bench replicator {arn}: {exc}")


def sustained(
    api: str,
    call_name: str,
    call: Any,
    *,
    rate: float,
    seconds: float,
    threads: int = 8,
    credentials: tuple[str, str] | None = None,
    client_factory: Any = None,
    failures: tuple[type[BaseException], ...] = (ClientError, BotoCoreError),
    client_note: str = "boto3 (SigV4 with dummy credentials), one client per thread, retries off",
) -> dict[str, Any]:
    """Issue ``call(client)`` on an open-loop schedule of ``rate`` per second for ``seconds``; per-call latency.
    Each thread has its own client: ``client_factory()``, by default a boto3 kafka client signing with
    ``credentials`` (default: the stack's development key). ``failures``: what counts as a failed call."""
    total = round(rate * seconds)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    next_index = [0]
    t0 = time.monotonic() + 0.5
    local = threading.local()

    def worker() -> None:
        if not hasattr(local, "client"):
            local.client = client_factory() if client_factory is not None else kafka_client(api, credentials)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= total:
                return
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing of the open-loop schedule, not synchronisation
            start = time.perf_counter()
            try:
                call(local.client)
            except failures as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            elapsed = (time.perf_counter() - start) * 1000.0
            with lock:
                latencies.append(elapsed)

    say(f"  {call_name}: {total} calls at {rate:.0f}/s over {seconds:.0f}s with {threads} threads")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(threads):
            pool.submit(worker)
    wall = time.monotonic() - t0
    values = sorted(latencies)
    out: dict[str, Any] = {
        "operation": call_name,
        "target_rate_per_s": rate,
        "calls": total,
        "ok": len(values),
        "errors": errors,
        "achieved_rate_per_s": round(len(values) / wall, 1) if wall > 0 else None,
        "client": client_note,
    }
    if values:
        out.update(
            status="ok",
            p50_ms=round(percentile(values, 0.5), 2),
            p99_ms=round(percentile(values, 0.99), 2),
            max_ms=round(values[-1], 2),
        )
        say(f"  {call_name}: p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms ({len(values)} ok, errors {errors})")
    else:
        out.update(status="failed", reason=f"no call succeeded; errors: {errors}")
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_private_api(
    log: Path, limit_s: float = 60.0, env: dict[str, str] | None = None, processes: int = 1
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start this checkout's API as a deployment runs it (``ferry api``: Ferry's logging and access lines,
    ``processes`` uvicorn worker processes) on a free port against the stack's PostgreSQL and Redis (or the
    settings in ``env``); returns its URL and process (with several processes, uvicorn's supervisor) once it serves
    the replicator routes."""
    from dev.stack import StackConfig  # noqa: PLC0415 (only needed on this path)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "cli", "api", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(processes)]  # fmt: skip
    proc = spawn(argv, log, env=env or StackConfig().app_env())
    say(f"  started this checkout's API on {url} (pid {proc.pid}, log {log})")
    deadline = time.monotonic() + limit_s
    next_note = time.monotonic() + 5
    while (reason := api_unavailable(url)) is not None:
        if proc.poll() is not None:
            raise BenchError(f"the private API exited with code {proc.returncode}; {tail_hint(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise BenchError(f"the private API did not serve {LIST_PATH} within {limit_s:.0f}s ({reason}); "
                             f"{tail_hint(log)}")  # fmt: skip
        if time.monotonic() > next_note:
            say(f"  waiting for the private API on {url}: {reason}")
            next_note = time.monotonic() + 5
        time.sleep(0.25)  # poll interval of a condition wait with a deadline
    return url, proc


def control_plane(stack: Stack, *, rate: float, seconds: float, log_dir: Path) -> dict[str, Any]:
    """ListReplicators and DescribeReplicator latency against the stack's API or, when it is not running (``make
    bench`` starts the infrastructure only) or lacks the replicator routes, against this checkout's API started
    on a free port for the measurement. Create-to-RUNNING needs a fleet: ``bench.fleet.create_to_running_fleet``."""
    api = stack.api
    note = f"the stack's API at {api}"
    private: subprocess.Popen[bytes] | None = None
    reason = api_unavailable(api)
    if reason is not None:
        say(f"  {reason}; starting this checkout's API instead")
        try:
            api, private = start_private_api(log_dir / "private-api.log")
            note = (
                f"this checkout's API started by the harness at {api} (uvicorn, one process, the stack's "
                f"PostgreSQL and Redis), because {reason}"
            )
        except (BenchError, OSError, ImportError) as exc:
            skipped = {"status": "skipped", "reason": f"{reason}; starting this checkout's API failed: {exc}"}
            say(f"control plane skipped: {skipped['reason']}")
            return {"list_replicators": skipped, "describe_replicator": skipped}
    try:
        out = _measure(api, stack, rate=rate, seconds=seconds)
    finally:
        if private is not None:
            private.terminate()
            try:
                private.wait(30)
            except subprocess.TimeoutExpired:
                private.kill()
                private.wait()
    for entry in out.values():
        entry["api"] = note
    return out


def _measure(api: str, stack: Stack, *, rate: float, seconds: float) -> dict[str, Any]:
    client = kafka_client(api)
    out: dict[str, Any] = {}
    try:
        listed = len(client.list_replicators().get("Replicators", []))
    except (ClientError, BotoCoreError) as exc:
        listed = -1
        say(f"  ListReplicators failed before the measurement: {exc}")
    out["list_replicators"] = sustained(
        api, "ListReplicators", lambda c: c.list_replicators(), rate=rate, seconds=seconds
    )
    arn: str | None = None
    try:
        arn = create_replicator(client, stack, f"ferry-bench-{secrets.token_hex(4)}")
    except (ClientError, BotoCoreError) as exc:
        out["describe_replicator"] = {"status": "skipped", "reason": f"CreateReplicator failed: {exc}"}
    if arn is not None:
        target = arn
        try:
            out["describe_replicator"] = sustained(
                api,
                "DescribeReplicator",
                lambda c: c.describe_replicator(ReplicatorArn=target),
                rate=rate,
                seconds=seconds,
            )
        finally:
            _delete(client, arn)
    out["list_replicators"]["replicators_in_first_page"] = listed
    return out


def create_to_running(client: Any, stack: Stack, count: int, limit_s: float) -> dict[str, Any]:
    """Create ``count`` replicators one after another and time each until DescribeReplicator says RUNNING. Needs
    a fleet (workers and beat) behind the API: ``bench.fleet.PrivateFleet`` gives one."""
    times: list[float] = []
    states: dict[str, int] = {}
    for i in range(count):
        start = time.monotonic()
        try:
            arn = create_replicator(client, stack, f"ferry-bench-c2r-{secrets.token_hex(4)}")
        except (ClientError, BotoCoreError) as exc:
            return {"status": "failed", "reason": f"CreateReplicator failed: {exc}", "measured": len(times)}
        described: dict[str, Any] = {}
        try:
            while time.monotonic() - start < limit_s:
                described = client.describe_replicator(ReplicatorArn=arn)
                if described.get("ReplicatorState") in ("RUNNING", "FAILED"):
                    break
                time.sleep(0.1)  # poll interval of a condition wait with a deadline
        finally:
            _delete(client, arn)
        state = described.get("ReplicatorState", "UNKNOWN")
        states[state] = states.get(state, 0) + 1
        if state != "RUNNING":
            if i == 0:
                why = described.get("StateInfo") or {}
                return {
                    "status": "failed",
                    "reason": f"the first replicator was {state} after {time.monotonic() - start:.0f}s, not RUNNING"
                    + (f" ({why.get('Code')}: {why.get('Message')})" if why else ""),
                }
            continue
        times.append(time.monotonic() - start)
    values = sorted(times)
    if not values:
        return {"status": "failed", "reason": f"no replicator reached RUNNING; final states {states}"}
    return {
        "status": "ok",
        "replicators": count,
        "reached_running": len(values),
        "final_states": states,
        "p50_s": round(percentile(values, 0.5), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(values[-1], 3),
    }
