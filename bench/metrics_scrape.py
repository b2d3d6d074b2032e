"""How long ``GET /metrics`` and the per-replicator metrics endpoint take with many replicators reporting.

    python -m bench.metrics_scrape                       # 200 replicators of 4 partitions, 30 scrapes
    python -m bench.metrics_scrape --replicators 50 --partitions 2 --scrapes 10

Runs the real API (in process, on a free port) on a database of its own on the dev stack's PostgreSQL, and Redis
database 1 (the tests'). Replicators are created through the API; their workers' reports are written to Redis
through ``models.fleet_reports``, the workers' contract with the API, as fresh and valid as a worker's, and the
partitions in scope are stored as a metadata unit stores them. No worker or Kafka traffic is involved: this measures
the scrape alone. Reports are written afresh before each timed request (a stale one makes fewer series). Redis hash
reads per scrape are counted from ``INFO commandstats`` over untimed scrapes, so they include whatever else uses the
shared Redis meanwhile; ``cpu_ms`` is this process's CPU per request (the API server runs in it). Writes
``bench/results/<UTC time>-metrics.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import redis
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from sqlalchemy import insert, select

from api.app import create_app
from bench.common import RESULTS_DIR, ROOT, machine_info, say
from bench.measure import percentile
from cli.admin import create_access_key
from dev.scratch_database import scratch_database
from models.access_keys import IssuedKey
from models.db import make_sync_engine
from models.fleet import ReplicatorMetadata
from models.fleet_reports import METRICS_KEY, STATUS_KEY, PartitionReport, StatusField
from models.replicator import ReplicatorRow
from models.settings import FerrySettings

ACCOUNT = "000000000000"
REGION = "us-east-1"
METRICS_TOKEN = "ferry-bench-metrics-token"


def _stack() -> dict[str, Any]:
    path = Path(os.environ.get("FERRY_DEV_RUN_DIR", ROOT / ".run")) / "stack.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@contextmanager
def _scratch_database(stack: dict[str, Any]) -> Iterator[str]:
    with scratch_database(str(stack["test_database_url"]), "ferry_bench_metrics") as url:
        yield url


@contextmanager
def _api(settings: FerrySettings) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class _SigV4(httpx.Auth):
    requires_request_body = True

    def __init__(self, key: IssuedKey) -> None:
        self.credentials = Credentials(key.access_key_id, key.secret_access_key)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        signed = AWSRequest(method=request.method, url=str(request.url), data=request.content)
        SigV4Auth(self.credentials, "kafka", REGION).add_auth(signed)
        request.headers.update(dict(signed.headers.items()))
        yield request


def _create_request(name: str, stack: dict[str, Any]) -> dict[str, Any]:
    return {
        "ReplicatorName": name,
        "ServiceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry-bench",
        "KafkaClusters": [
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "src", "BootstrapBrokerString": stack["kafka"]["source"]}},
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "tgt", "BootstrapBrokerString": stack["kafka"]["target"]}},
        ],
        "ReplicationInfoList": [
            {
                "SourceKafkaClusterId": "src",
                "TargetKafkaClusterId": "tgt",
                "TargetCompressionType": "NONE",
                "TopicReplication": {"TopicsToReplicate": ["orders"]},
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": [".*"]},
            }
        ],
    }  # fmt: skip


def _write_reports(client: redis.Redis, ids: list[str], partitions: int) -> None:
    """What each replicator's workers would have written in the last second."""
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i, replicator_id in enumerate(ids):
        for partition in range(partitions):
            report = PartitionReport(
                source_topic="orders",
                partition=partition,
                target_topic="src.orders",
                owner=f"bench-worker-{i % 4}",
                epoch=1,
                reported_at_ms=now_ms,
                health="REPLICATING",
                records_copied=1_234_567 + partition,
                bytes_copied=987_654_321,
                next_source_offset=1_234_567,
                source_end_offset=1_234_600,
                lag_records=33,
                latency_ms_last=12.5,
                latency_ms_max_recent=40.0,
                last_copied_timestamp_ms=now_ms - 500,
                records_per_second=1000.0,
                bytes_per_second=1_024_000.0,
                errors={"TIMEOUT": 2},
            )
            pipe.hset(METRICS_KEY.format(replicator_id=replicator_id), report.field_name, report.to_json())
        status = STATUS_KEY.format(replicator_id=replicator_id)
        pipe.hset(
            status,
            mapping={
                StatusField.CLUSTER_PING: json.dumps({"src": 1, "tgt": 1}),
                StatusField.TOPICS: json.dumps({"orders": "src.orders"}),
                StatusField.TOPIC_ERRORS: json.dumps({}),
                StatusField.GROUP_SYNC: json.dumps(
                    {"groupCount": 1, "failures": 0, "groups": {"g": {"translationLagRecords": 0}}}
                ),
                StatusField.AUTH_FAILURES: json.dumps(0),
                StatusField.REPORTED_AT_MS: str(now_ms),
            },
        )
        pipe.expire(METRICS_KEY.format(replicator_id=replicator_id), 120)
        pipe.expire(status, 120)
    pipe.execute()


def _hash_reads(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hgetall", "hget"))


@dataclass
class _Timings:
    durations: list[float]
    # CPU seconds of this process (the API server runs in it) per request: steadier than wall time on a busy machine.
    cpu_seconds: float
    last: httpx.Response

    def summary(self) -> dict[str, float]:
        ms = sorted(d * 1000 for d in self.durations)
        return {
            "p50_ms": round(percentile(ms, 0.5), 1),
            "p95_ms": round(percentile(ms, 0.95), 1),
            "max_ms": round(ms[-1], 1),
            "cpu_ms": round(self.cpu_seconds * 1000, 1),
        }


def _timed(http: httpx.Client, path: str, scrapes: int, refresh: Callable[[], None], **kwargs: Any) -> _Timings:
    """Each request on freshly written reports (a stale report makes fewer series)."""
    for _ in range(3):
        http.get(path, **kwargs).raise_for_status()
    durations = []
    cpu = 0.0
    response = None
    for _ in range(scrapes):
        refresh()
        cpu_before, started = time.process_time(), time.perf_counter()
        response = http.get(path, **kwargs)
        durations.append(time.perf_counter() - started)
        cpu += time.process_time() - cpu_before
        response.raise_for_status()
    assert response is not None
    return _Timings(durations, cpu / scrapes, response)


def run(replicators: int, partitions: int, scrapes: int) -> dict[str, Any]:
    stack = _stack()
    with _scratch_database(stack) as database_url:
        settings = FerrySettings(
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
            api_reconcile=False,
        )
        key = asyncio.run(create_access_key(settings, ACCOUNT, "bench"))
        prefix = f"scrape-{uuid.uuid4().hex[:6]}"
        client = redis.Redis.from_url(settings.redis_url)
        engine = make_sync_engine(settings)
        with _api(settings) as url:
            kafka = boto3.client(
                "kafka",
                endpoint_url=url,
                region_name=REGION,
                aws_access_key_id=key.access_key_id,
                aws_secret_access_key=key.secret_access_key,
                config=BotoConfig(retries={"total_max_attempts": 1}),
            )
            say(f"creating {replicators} replicators")
            arns = [kafka.create_replicator(**_create_request(f"{prefix}-{i}", stack))["ReplicatorArn"] for i in
                    range(replicators)]  # fmt: skip
            with engine.begin() as conn:
                ids = [
                    str(i) for i in conn.scalars(select(ReplicatorRow.id).where(ReplicatorRow.name.startswith(prefix)))
                ]
                scope = [["orders", p] for p in range(partitions)]
                conn.execute(
                    insert(ReplicatorMetadata), [{"replicator_id": uuid.UUID(i), "partitions": scope} for i in ids]
                )
            try:
                refresh = functools.partial(_write_reports, client, ids, partitions)
                refresh()
                with httpx.Client(base_url=url, timeout=60) as http:
                    reads_before = _hash_reads(client)
                    token = {"headers": {"Authorization": f"Bearer {METRICS_TOKEN}"}}
                    _timed(http, "/metrics", 5, lambda: None, **token)
                    reads = (_hash_reads(client) - reads_before) / (5 + 3)
                    scrape = _timed(http, "/metrics", scrapes, refresh, **token)
                    say(f"/metrics: {scrape.summary()}, {len(scrape.last.content)} bytes, {reads:.0f} hash reads")
                with httpx.Client(base_url=url, timeout=60, auth=_SigV4(key)) as http:
                    signed = _timed(http, "/metrics", scrapes, refresh)
                    one = _timed(
                        http, f"/replication/v1/replicators/{quote(arns[0], safe='')}/metrics", scrapes, refresh
                    )
                say(f"/metrics signed: {signed.summary()}; one replicator's metrics: {one.summary()}")
            finally:
                client.delete(*[k.format(replicator_id=i) for i in ids for k in (METRICS_KEY, STATUS_KEY)])
        engine.dispose()
    return {
        "replicators": replicators,
        "partitions_per_replicator": partitions,
        "scrapes": scrapes,
        "metrics_scraper": {
            **scrape.summary(),
            "bytes": len(scrape.last.content),
            "redis_hash_reads_per_scrape": reads,
        },
        "metrics_signed": signed.summary(),
        "one_replicator_metrics": one.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicators", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--label", default="", help="a word for the result file (e.g. before, after)")
    args = parser.parse_args()
    result = run(args.replicators, args.partitions, args.scrapes)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"{stamp}-metrics{'-' + args.label if args.label else ''}.json"
    out.write_text(json.dumps({"machine": machine_info(), **result}, indent=2) + "\n")
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
