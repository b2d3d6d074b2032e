"""The control plane under load: 200 replicators on one fleet of two workers, each copying a small topic of its
own, all RUNNING and copying; then ListReplicators and DescribeReplicator latency at 100 requests a second.

    python -m bench.load                               # 200 replicators, 100 requests/s for 30 s per operation
    python -m bench.load --replicators 50 --seconds 10

Runs on the chaos lab (``chaos/lab.py``: PostgreSQL, Redis, two clusters, the API, beat and two fleet workers of its
own), so it neither needs nor disturbs the dev stack. Every long wait prints its progress. Writes
``bench/results/<UTC time>-load.json`` with the machine and versions. There is no peer here: MirrorMaker 2 has no
control-plane API, and MSK's is a cloud service; the figures are absolute, on a shared 2-CPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from botocore.exceptions import BotoCoreError, ClientError

from bench.common import ROOT, BenchError, machine_info, say, versions
from bench.control_plane import LIST_PATH, sustained
from bench.measure import percentile
from chaos.lab import Lab, LabError, exit_on_termination

RECORDS_PER_TOPIC = 20


def _request(lab: Lab, name: str, topic: str) -> dict[str, Any]:
    return {
        "ReplicatorName": name,
        "ServiceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry-bench",
        "KafkaClusters": [
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "load-src", "BootstrapBrokerString": lab.source.bootstrap}},
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "load-tgt", "BootstrapBrokerString": lab.target.bootstrap}},
        ],
        "ReplicationInfoList": [
            {
                "SourceKafkaClusterId": "load-src",
                "TargetKafkaClusterId": "load-tgt",
                "TargetCompressionType": "NONE",
                "TopicReplication": {"TopicsToReplicate": [topic], "StartingPosition": {"Type": "EARLIEST"}},
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": []},
            }
        ],
    }  # fmt: skip


async def _create_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await admin.start()
    try:
        for start in range(0, len(topics), 50):
            await admin.create_topics([NewTopic(t, 1, replication_factor=1) for t in topics[start : start + 50]])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topics: list[str], tag: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=f"{tag}-{i}".encode())
            for topic in topics
            for i in range(RECORDS_PER_TOPIC)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _target_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Records on each target topic (its end offset; 0 while it does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        existing = [t for t in topics if consumer.partitions_for_topic(t)]
        ends = await consumer.end_offsets([TopicPartition(t, 0) for t in existing]) if existing else {}
        counts = {t: 0 for t in topics}
        counts.update({tp.topic: end for tp, end in ends.items()})
        return counts
    finally:
        await consumer.stop()


def signed_http_load(lab: Lab, name: str, path: Any, *, rate: float, seconds: float) -> dict[str, Any]:
    """GET ``path()`` on ``sustained``'s open-loop schedule, SigV4-signed, the JSON body read: the API's latency as
    a client measures it, without boto3's parsing (on this 2-CPU machine the load generator shares the cores with
    the fleet and the API, and boto3's parsing capped the achievable rate)."""

    def get(http: httpx.Client) -> None:
        http.get(path()).raise_for_status().json()

    return sustained(
        lab.api_url,
        name,
        get,
        rate=rate,
        seconds=seconds,
        client_factory=lab.http,
        failures=(httpx.HTTPError, ValueError),
        client_note="httpx, SigV4-signed, JSON body parsed; one client per thread",
    )


def _wait(what: str, probe: Any, timeout: float, every: float = 10.0) -> float:
    """Poll ``probe() -> (done, progress line)`` until done; print the progress line every ``every`` seconds."""
    started = time.monotonic()
    shown = started
    line = ""
    while time.monotonic() - started < timeout:
        done, line = probe()
        if done:
            return time.monotonic() - started
        if time.monotonic() - shown >= every:
            say(f"  waiting for {what}: {line} ({time.monotonic() - started:.0f}s)")
            shown = time.monotonic()
        time.sleep(1.0)  # poll interval of a condition wait with a deadline
    raise BenchError(f"{what}: not reached within {timeout:.0f}s; last: {line}")


def run(replicators: int, rate: float, seconds: float) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = ROOT / ".run" / "bench-load" / stamp
    result: dict[str, Any] = {
        "kind": "control-plane-load",
        "started": stamp,
        "machine": machine_info(),
        "settings": "production defaults (FERRY_RECONCILE_INTERVAL_SECONDS=2, FERRY_FLEET_LEASE_SECONDS=10)",
    }
    lab = Lab(folder, fast_failover=False)  # the production defaults: reconcile every 2 s, 10 s leases
    try:
        lab.start(workers=2)
        result["versions"] = versions(lab.kafka_lib)
        client = lab.kafka_client(attempts=3)
        token = stamp.lower()
        topics = [f"load-{token}-{i:04d}" for i in range(replicators)]
        asyncio.run(_create_topics(lab.source.bootstrap, topics))
        asyncio.run(_produce(lab.source.bootstrap, topics, "first"))

        create_ms: list[float] = []
        arns: dict[str, str] = {}

        def create(index: int) -> None:
            began = time.perf_counter()
            answer = client.create_replicator(**_request(lab, f"load-{token}-{index:04d}", topics[index]))
            create_ms.append((time.perf_counter() - began) * 1000)
            arns[topics[index]] = answer["ReplicatorArn"]

        say(f"creating {replicators} replicators (8 at a time)")
        began = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(replicators)))
        created_s = time.monotonic() - began

        def states() -> tuple[bool, str]:
            counted: Counter[str] = Counter()
            for page in client.get_paginator("list_replicators").paginate(ReplicatorNameFilter=f"load-{token}"):
                counted.update(r["ReplicatorState"] for r in page.get("Replicators", []))
            return counted["RUNNING"] == replicators, dict(sorted(counted.items())).__repr__()

        running_s = _wait(f"{replicators} replicators RUNNING", states, 900)
        say(f"all {replicators} RUNNING {running_s:.0f}s after the last create")
        described = client.describe_replicator(ReplicatorArn=arns[topics[0]])
        alias = described["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
        targets = [f"{alias}.{t}" for t in topics]

        def copied(expected: int) -> Any:
            def probe() -> tuple[bool, str]:
                counts = asyncio.run(_target_counts(lab.target.bootstrap, targets))
                done = sum(1 for c in counts.values() if c >= expected)
                return done == len(targets), f"{done}/{len(targets)} topics hold their {expected} records"

            return probe

        copied_s = _wait("every topic copied", copied(RECORDS_PER_TOPIC), 900)
        say(f"every topic copied {copied_s:.0f}s after all were RUNNING")
        owners = Counter(
            str(r[0]).split("@", 1)[0]
            for r in lab.query("SELECT owner_worker FROM fleet_units WHERE lease_expires_at > now()")
        )

        every_arn = list(arns.values())
        list_result = signed_http_load(lab, "ListReplicators", lambda: LIST_PATH, rate=rate, seconds=seconds)
        describe_result = signed_http_load(
            lab,
            "DescribeReplicator",
            lambda: f"{LIST_PATH}/{quote(random.choice(every_arn), safe='')}",
            rate=rate,
            seconds=seconds,
        )
        # The same through boto3, as a user's script sees it: boto3 parses each page of 100 replicators into
        # Python objects, which costs the client more than the server (so fewer threads' worth of rate).
        credentials = (lab.credentials.access_key, lab.credentials.secret_key) if lab.credentials else None
        boto3_list = sustained(
            lab.api_url, "ListReplicators (boto3)", lambda c: c.list_replicators(), rate=rate / 4, seconds=seconds,
            credentials=credentials,
        )  # fmt: skip

        # Copying goes on after the load: a second batch reaches every target topic.
        asyncio.run(_produce(lab.source.bootstrap, topics, "second"))
        again_s = _wait("the second batch copied", copied(2 * RECORDS_PER_TOPIC), 600)
        result.update(
            status="ok",
            replicators=replicators,
            workers=2,
            units_per_worker=dict(owners),
            create={
                "seconds_for_all": round(created_s, 1),
                "p50_ms": round(percentile(sorted(create_ms), 0.5), 1),
                "p99_ms": round(percentile(sorted(create_ms), 0.99), 1),
            },
            all_running_after_s=round(running_s, 1),
            all_copied_after_s=round(copied_s, 1),
            second_batch_copied_after_s=round(again_s, 1),
            list_replicators=list_result,
            describe_replicator=describe_result,
            list_replicators_boto3=boto3_list,
        )
        say("deleting the replicators")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda arn: client.delete_replicator(ReplicatorArn=arn), every_arn))
    except (BenchError, LabError, ClientError, BotoCoreError) as error:
        result.update(status="failed", reason=f"{type(error).__name__}: {error}", logs=str(folder))
    finally:
        lab.close()
    if result.get("status") == "ok":
        shutil.rmtree(folder, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicators", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="API requests per second during the measurement")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each operation's measurement")
    args = parser.parse_args(argv)
    exit_on_termination()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    result = run(args.replicators, args.rate, args.seconds)
    out = ROOT / "bench" / "results" / f"{result['started']}-load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"{result['status']}: {out.relative_to(ROOT)}")
    if result["status"] == "ok":
        for name in ("list_replicators", "describe_replicator", "list_replicators_boto3"):
            entry = result[name]
            say(f"  {entry['operation']} at {entry['target_rate_per_s']:.0f}/s: p50 {entry.get('p50_ms')} ms, "
                f"p99 {entry.get('p99_ms')} ms, errors {entry['errors']}")  # fmt: skip
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
