"""The control plane with many replicators present: the API's read latency, the scrapes and the reconcile pass.

    python -m bench.control_scale                          # 1,000 replicators, 100 requests/s for 30 s
    python -m bench.control_scale --replicators 200 --seconds 10
    python -m bench.control_scale --profile                # py-spy the API process meanwhile (flame graphs)

What it measures, with ``--replicators`` replicators present in the database:

- CreateReplicator latency while they are created (through the API, 8 at a time);
- ListReplicators (first page of 100) and DescribeReplicator (a random replicator) latency at ``--rate`` requests a
  second, SigV4-signed httpx clients, open-loop schedule, with the API in each number of processes that
  ``--api-processes`` names (default 1 and 2): the clients' latency, the API's own timing of the same requests (its
  access lines' ``duration_ms``), and the CPU per request of the API and of the clients, which share this box;
- ``GET /metrics`` (the metrics bearer token: every replicator) and the MSK-style metrics endpoint of one
  replicator, with every replicator's reports fresh in Redis (one partition each, as a worker writes them), and
  how many Redis round trips a scrape makes;
- the reconcile pass with every replicator's units (a metadata unit and a copy unit each) on two live workers: the
  first pass (creating every unit) and steady passes, timed here and as the API reports it
  (``ferry_fleet_reconcile_seconds`` on ``/metrics``, ``lastReconcileSeconds`` in ``GET /replication/v1/fleet``).

The API is this checkout's, started as a deployment starts it (``ferry api``, JSON logs, access lines on;
``bench.control_plane.start_private_api``) on a database of its own on the dev stack's PostgreSQL and Redis
database 1 (the tests'); the two workers are rows heartbeating in ``fleet_workers``, and the reports are written
through ``models.fleet_reports`` (the workers' contract with the API). No worker process copies anything here:
create-to-RUNNING with copying replicators is ``bench.load``'s (on the chaos lab). Writes
``bench/results/<UTC time>-control-scale.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import json
import os
import pstats
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import redis
from sqlalchemy import insert, select

from bench.common import RESULTS_DIR, ROOT, BenchError, machine_info, say, tree_cpu_seconds, versions
from bench.control_plane import LIST_PATH, start_private_api, sustained
from bench.measure import percentile
from bench.metrics_scrape import _scratch_database, _SigV4, _stack, _write_reports
from cli.admin import create_access_key
from models import fleet_store
from models.db import make_async_engine, make_sync_engine
from models.fleet import ReplicatorMetadata
from models.fleet_reconcile import reconcile_once
from models.fleet_reports import METRICS_KEY, STATUS_KEY
from models.replicator import ReplicatorRow
from models.settings import FerrySettings

ACCOUNT = "000000000000"
REGION = "us-east-1"
METRICS_TOKEN = "ferry-bench-metrics-token"
TOPIC = "orders"


def _settings(stack: dict[str, Any], database_url: str) -> FerrySettings:
    return FerrySettings(
        database_url=database_url,
        redis_url=str(stack["redis_url"]).rsplit("/", 1)[0] + "/1",
        kafka_probe_clusters=stack["kafka"],
        secret_key="ferry-bench-secret-key-not-for-production",
        metrics_token=METRICS_TOKEN,
        allowed_bootstrap=["127.0.0.0/8", "::1/128", "localhost"],
        aws_region=REGION,
        api_requests_per_second=100_000.0,
        api_request_burst=100_000,
        max_replicators_per_account=100_000,
        # The bench runs the reconcile passes itself, to time them alone.
        api_reconcile=False,
    )


def _create_body(name: str, stack: dict[str, Any]) -> dict[str, Any]:
    """A CreateReplicator body (rest-json, as boto3 sends it) of one topic on the dev stack's clusters."""
    return {
        "replicatorName": name,
        "serviceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry-bench",
        "kafkaClusters": [
            {"apacheKafkaCluster": {"apacheKafkaClusterId": "src", "bootstrapBrokerString": stack["kafka"]["source"]}},
            {"apacheKafkaCluster": {"apacheKafkaClusterId": "tgt", "bootstrapBrokerString": stack["kafka"]["target"]}},
        ],
        "replicationInfoList": [
            {
                "sourceKafkaClusterId": "src",
                "targetKafkaClusterId": "tgt",
                "targetCompressionType": "NONE",
                "topicReplication": {"topicsToReplicate": [TOPIC]},
                "consumerGroupReplication": {"consumerGroupsToReplicate": [".*"]},
            }
        ],
        "tags": {"team": "bench"},
    }  # fmt: skip


def _timed_gets(http: httpx.Client, path: str, count: int, refresh: Any, **kwargs: Any) -> dict[str, Any]:
    """``count`` sequential GETs, each on freshly written reports; latency and body size."""
    for _ in range(2):
        http.get(path, **kwargs).raise_for_status()
    durations = []
    size = 0
    for _ in range(count):
        refresh()
        started = time.perf_counter()
        response = http.get(path, **kwargs)
        durations.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    ms = sorted(durations)
    return {
        "requests": count,
        "p50_ms": round(percentile(ms, 0.5), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(ms[-1], 1),
        "bytes": size,
    }


@contextmanager
def api_cpu(pid: int, requests: int) -> Iterator[dict[str, float | None]]:
    """The API's CPU per request over the block (every process of it), and this process's (the clients'): steadier
    than latency on a machine others load, and it says how much of the box the clients took."""
    out: dict[str, float | None] = {"ms_per_request": None, "client_ms_per_request": None}
    before, client_before = tree_cpu_seconds(pid), time.process_time()
    yield out
    after, client_after = tree_cpu_seconds(pid), time.process_time()
    if requests:
        out["client_ms_per_request"] = round((client_after - client_before) * 1000 / requests, 2)
        if before is not None and after is not None:
            out["ms_per_request"] = round((after - before) * 1000 / requests, 2)


def in_application(log: Path, offset: int, path_matches: Any) -> dict[str, Any]:
    """The API's own timing of the requests it logged after byte ``offset`` of its JSON log whose path matches:
    ``duration_ms`` of its access lines (api/access_log.py), from the outermost middleware's call to the response's
    last byte handed to uvicorn. What a client elsewhere sees, less the network and uvicorn's HTTP parsing, and less
    the wait for the API's event loop before the request is read (``p99_ms`` beside it includes all of those, and
    the clients' own wait for the CPU on this box)."""
    durations: list[float] = []
    with log.open("rb") as lines:
        lines.seek(offset)
        for raw in lines:
            if not raw.startswith(b"{"):
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("logger") == "api.access" and line.get("status") == 200 and path_matches(line.get("path", "")):
                durations.append(float(line["duration_ms"]))
    if not durations:
        return {"app_requests": 0}
    ms = sorted(durations)
    return {
        "app_requests": len(ms),
        "app_p50_ms": round(percentile(ms, 0.5), 2),
        "app_p99_ms": round(percentile(ms, 0.99), 2),
        "app_max_ms": round(ms[-1], 2),
    }


def _redis_commands(client: redis.Redis) -> int:
    """Commands Redis has processed (round trips are counted with one scrape at a time and nothing else of ours)."""
    return int(client.info("stats")["total_commands_processed"])


async def _heartbeat(settings: FerrySettings, workers: list[str]) -> None:
    engine = make_async_engine(settings)
    try:
        async with engine.begin() as conn:
            for worker in workers:
                await fleet_store.heartbeat(conn, worker, "bench", os.getpid())
    finally:
        await engine.dispose()


def _reconcile_passes(settings: FerrySettings, passes: int, profile: Path | None = None) -> dict[str, Any]:
    """The first pass (it creates and assigns every unit) and ``passes`` steady ones, on two heartbeating
    workers."""
    workers = ["bench-w1", "bench-w2"]
    engine = make_sync_engine(settings)
    timings = []
    try:
        for index in range(passes + 1):
            asyncio.run(_heartbeat(settings, workers))
            started = time.perf_counter()
            result = reconcile_once(engine, settings, by="bench")
            timings.append((time.perf_counter() - started) * 1000)
            if result is None:
                raise BenchError("another reconcile pass held the lock (is something else using this database?)")
            if index == 0:
                say(f"  first pass: {timings[0]:.0f} ms, {len(result.create_units)} units created")
        with engine.connect() as conn:
            units = len(fleet_store.observed_units(conn))
        if profile is not None:  # one more pass under cProfile, its top functions by cumulative time
            profiler = cProfile.Profile()
            profiler.runcall(reconcile_once, engine, settings, "bench")
            with profile.open("w") as out:
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
    finally:
        engine.dispose()
    steady = sorted(timings[1:])
    return {
        "workers": len(workers),
        "units": units,
        "first_pass_ms": round(timings[0], 1),
        "steady_passes": passes,
        "steady_p50_ms": round(percentile(steady, 0.5), 1),
        "steady_max_ms": round(steady[-1], 1),
    }


def run(
    replicators: int, *, rate: float, seconds: float, scrapes: int, profile: Path | None, api_processes: list[int]
) -> dict[str, Any]:
    stack = _stack()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result: dict[str, Any] = {
        "kind": "control-plane-scale",
        "started": stamp,
        "machine": machine_info(),
        "versions": versions(Path(stack["kafka_lib"])),
        "replicators": replicators,
        "api": "ferry api (uvicorn, Ferry's JSON logs and access lines, as a deployment runs it)",
    }
    folder = ROOT / ".run" / "bench-control-scale" / stamp
    with _scratch_database(stack) as database_url:
        settings = _settings(stack, database_url)
        key = asyncio.run(create_access_key(settings, ACCOUNT, "bench"))
        env = {**os.environ, **settings.as_environment(), "PYTHONPATH": str(ROOT), "FERRY_LOG_FORMAT": "json"}
        processes = api_processes[0]
        log = folder / f"api-{processes}.log"
        url, api = start_private_api(log, env=env, processes=processes)
        client = redis.Redis.from_url(settings.redis_url)
        ids: list[str] = []
        try:
            auth = _SigV4(key)
            prefix = f"scale-{uuid.uuid4().hex[:6]}"
            create_ms: list[float] = []

            def create(index: int, http: httpx.Client) -> str:
                began = time.perf_counter()
                response = http.post(LIST_PATH, json=_create_body(f"{prefix}-{index:05d}", stack))
                create_ms.append((time.perf_counter() - began) * 1000)
                response.raise_for_status()
                return str(response.json()["replicatorArn"])

            say(f"creating {replicators} replicators (8 at a time)")
            began = time.monotonic()
            clients = [httpx.Client(base_url=url, timeout=60, auth=auth) for _ in range(8)]
            with ThreadPoolExecutor(8) as pool:
                arns = list(pool.map(lambda i: create(i, clients[i % 8]), range(replicators)))
            for http in clients:
                http.close()
            created_s = time.monotonic() - began
            ms = sorted(create_ms)
            result["create"] = {
                "api_processes": processes,
                "seconds_for_all": round(created_s, 1),
                "p50_ms": round(percentile(ms, 0.5), 1),
                "p99_ms": round(percentile(ms, 0.99), 1),
            }
            say(f"  created in {created_s:.0f}s: {result['create']}")
            engine = make_sync_engine(settings)
            with engine.begin() as conn:
                ids = [str(i) for i in conn.scalars(select(ReplicatorRow.id))]
                conn.execute(
                    insert(ReplicatorMetadata),
                    [{"replicator_id": uuid.UUID(i), "applied_generation": 1, "partitions": [[TOPIC, 0]]} for i in ids],
                )
            engine.dispose()
            refresh = functools.partial(_write_reports, client, ids, 1)
            refresh()

            say("reconcile passes")
            reconcile_profile = None if profile is None else profile.with_suffix(".reconcile.txt")
            result["reconcile"] = _reconcile_passes(settings, passes=10, profile=reconcile_profile)
            say(f"  {result['reconcile']}")

            say(f"scrapes (API in {processes} process{'es' if processes > 1 else ''})")
            token = {"headers": {"Authorization": f"Bearer {METRICS_TOKEN}"}}
            with httpx.Client(base_url=url, timeout=60) as http:
                before = _redis_commands(client)
                http.get("/metrics", headers=token["headers"]).raise_for_status()
                result["metrics_redis_commands_per_scrape"] = _redis_commands(client) - before - 1
                scrape_profile = None if profile is None else profile.with_suffix(".metrics" + profile.suffix)
                spy = _start_profile(api.pid, scrape_profile) if scrape_profile is not None else None
                with api_cpu(api.pid, scrapes + 2) as cpu:
                    result["metrics_all_replicators"] = _timed_gets(http, "/metrics", scrapes, refresh, **token)
                if spy is not None:
                    _stop_profile(spy)
                result["metrics_all_replicators"]["api_cpu_ms_per_request"] = cpu["ms_per_request"]
            say(f"  /metrics: {result['metrics_all_replicators']}")
            with httpx.Client(base_url=url, timeout=30, auth=auth) as http:
                one = f"{LIST_PATH}/{quote(arns[0], safe='')}/metrics"
                result["metrics_one_replicator"] = _timed_gets(http, one, scrapes, refresh)
                fleet = http.get("/replication/v1/fleet").raise_for_status().json()
                result["fleet_status_last_reconcile_seconds"] = fleet.get("lastReconcileSeconds")
            say(f"  metrics endpoint: {result['metrics_one_replicator']}")

            result["reads"] = []
            for index, count in enumerate(api_processes):
                if count != processes:
                    api.send_signal(signal.SIGTERM)
                    api.wait(60)
                    processes, log = count, folder / f"api-{count}.log"
                    url, api = start_private_api(log, env=env, processes=count)
                spy = _start_profile(api.pid, profile) if profile is not None and index == 0 else None
                reads = _reads(url, api.pid, processes=count, log=log, auth=auth, arns=arns, rate=rate, seconds=seconds)
                result["reads"].append({"api_processes": count, **reads})
                if spy is not None:
                    _stop_profile(spy)
            result["status"] = "ok"
        finally:
            if ids:
                client.delete(*[k.format(replicator_id=i) for i in ids for k in (METRICS_KEY, STATUS_KEY)])
            api.send_signal(signal.SIGTERM)
            api.wait(60)
    shutil.rmtree(folder, ignore_errors=True)
    return result


def _reads(
    url: str, api_pid: int, *, processes: int, log: Path, auth: httpx.Auth, arns: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    """ListReplicators and DescribeReplicator at ``rate`` for ``seconds`` each: the clients' latency, the API's own
    timing of the same requests, and both sides' CPU per request."""

    def signed() -> httpx.Client:
        return httpx.Client(base_url=url, timeout=30, auth=auth)

    def get(path: Any) -> Any:
        return lambda http: http.get(path()).raise_for_status().json()

    def described(path: str) -> bool:
        return path.startswith(LIST_PATH + "/") and path.count("/") == LIST_PATH.count("/") + 1

    operations = [
        ("list_replicators", "ListReplicators", lambda: LIST_PATH, lambda path: path == LIST_PATH),
        ("describe_replicator", "DescribeReplicator", lambda: f"{LIST_PATH}/{quote(random.choice(arns), safe='')}",
         described),
    ]  # fmt: skip
    say(f"ListReplicators and DescribeReplicator at {rate:.0f}/s, API in {processes} process(es)")
    out: dict[str, Any] = {}
    for key, name, path, matches in operations:
        offset = log.stat().st_size
        with api_cpu(api_pid, round(rate * seconds)) as cpu:
            out[key] = sustained(
                url, name, get(path), rate=rate, seconds=seconds, client_factory=signed,
                failures=(httpx.HTTPError, ValueError),
                client_note="httpx, SigV4-signed, JSON body parsed; one client per thread",
            )  # fmt: skip
        out[key]["api_cpu_ms_per_request"] = cpu["ms_per_request"]
        out[key]["client_cpu_ms_per_request"] = cpu["client_ms_per_request"]
        out[key].update(in_application(log, offset, matches))
        say(f"    in the API: {({k: v for k, v in out[key].items() if k.startswith('app_')})}, CPU per request: API "
            f"{cpu['ms_per_request']} ms, clients {cpu['client_ms_per_request']} ms")  # fmt: skip
    return out


def _start_profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"  py-spy recording the API (pid {pid}) to {out}")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "200", "--format", "raw", "--output",
         str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stop_profile(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    spy.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.control_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicators", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="API requests per second during the measurement")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each operation's measurement")
    parser.add_argument("--scrapes", type=int, default=20, help="timed requests of each metrics endpoint")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the API into this file during the reads (raw, collapsed stacks), and into <name>.metrics<suffix> "
        "during the /metrics scrapes",
    )
    parser.add_argument(
        "--api-processes",
        default="1,2",
        help="comma list: the reads are measured with the API in each number of processes (the first serves the "
        "creates and scrapes); 2 is the Helm chart's default (two replicas of one process)",
    )
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.api_processes.split(",") if n.strip()]
    if not counts or min(counts) < 1:
        parser.error("--api-processes: a comma list of positive counts")
    result = run(
        args.replicators, rate=args.rate, seconds=args.seconds, scrapes=args.scrapes, profile=args.profile,
        api_processes=counts,
    )  # fmt: skip
    out = RESULTS_DIR / f"{result['started']}-control-scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"{result['status']}: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
