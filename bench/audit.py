"""The auditor's own throughput: ``python -m bench.audit [--records N] [--record-size B] [--runs K]``.

One source partition is preloaded with ProducerPerformance and copied by Ferry's engine (so the target holds
what a replicator writes, provenance header included); the auditor (``workers/engine/audit.py``) then compares
the two partitions K times. The peer in the same run is Kafka's ConsumerPerformance reading the same source
partition: the auditor reads both partitions and digests every record, the peer reads one and digests nothing,
so the ratio says what the comparison costs over a plain read. Writes bench/results/<UTC time>-audit.json.
Needs the local stack: python -m dev.stack up --infra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import MB, RESULTS_DIR, ROOT, BenchError, Stack, load_stack, machine_info, say, wait_until
from bench.kafka import Cluster, consumer_perf, producer_perf
from models.offset_map import Run
from workers.engine.audit import audit_partition
from workers.engine.connection import ClusterConnection
from workers.engine.spec import ReplicationSpec
from workers.engine.standalone import StandaloneReplicator

TARGET_MB_PER_S = 50.0  # issue 14: at least 50 MB/s per partition on this machine


async def _copy(source: Cluster, target: Cluster, topic: str, records: int) -> tuple[str, float]:
    unique = secrets.token_hex(4)
    spec = ReplicationSpec.from_replication_info(
        {
            "topicReplication": {
                "topicsToReplicate": [topic],
                "startingPosition": {"type": "EARLIEST"},
                "copyAccessControlListsForTopics": False,
            },
            "targetCompressionType": "NONE",
        },
        f"src{unique}",
        f"tgt{unique}",
        f"bench-audit-{unique}",
    )
    replicator = StandaloneReplicator(
        spec,
        ClusterConnection(source.bootstrap, alias=spec.source_alias),
        ClusterConnection(target.bootstrap, alias=spec.target_alias),
    )
    started = time.monotonic()
    await replicator.start()
    target_topic = spec.target_topic(topic)
    copied = 0

    async def done() -> bool:
        nonlocal copied
        if not await target.partitions(target_topic):
            return False  # the engine has not created it yet
        copied = await target.total(target_topic, 1)
        return copied >= records

    try:
        await wait_until(f"the copy of {topic}", done, 600, interval=0.5, progress=lambda: f"| {copied}/{records}")
    finally:
        await replicator.stop()
    return target_topic, time.monotonic() - started


async def main(records: int, record_size: int, runs: int) -> dict[str, Any]:
    stack = load_stack()
    logs = ROOT / ".run" / "bench" / "audit"
    logs.mkdir(parents=True, exist_ok=True)
    topic = f"bench-audit-{secrets.token_hex(4)}"
    async with Cluster("source", stack.source) as source_cluster, Cluster("target", stack.target) as target_cluster:
        await source_cluster.create_topic(topic, 1)
        try:
            return await _measure(
                stack,
                source_cluster=source_cluster,
                target_cluster=target_cluster,
                topic=topic,
                records=records,
                record_size=record_size,
                runs=runs,
                logs=logs,
            )
        finally:
            # 200 MB per run: never left behind on the shared clusters.
            await source_cluster.delete_matching(topic)
            await target_cluster.delete_matching(topic)


async def _measure(
    stack: Stack,
    *,
    source_cluster: Cluster,
    target_cluster: Cluster,
    topic: str,
    records: int,
    record_size: int,
    runs: int,
    logs: Path,
) -> dict[str, Any]:
    say(f"preloading {records} records of {record_size} B into {topic}")
    preload = await producer_perf(
        stack.kafka_lib,
        bootstrap=stack.source,
        topic=topic,
        records=records,
        record_size=record_size,
        props={"acks": "1", "linger.ms": "20", "batch.size": "262144"},
        log=logs / f"{topic}-preload.log",
    )
    say("copying it with Ferry's engine")
    target_topic, copy_s = await _copy(source_cluster, target_cluster, topic, records)
    source, target = ClusterConnection(stack.source, alias="src"), ClusterConnection(stack.target, alias="tgt")
    audits = []
    for index in range(runs):
        result = await audit_partition(
            source,
            target,
            source_topic=topic,
            target_topic=target_topic,
            partition=0,
            runs=[Run(0, records, 0, records)],
        )
        if not result.consistent or result.matched != records:
            raise BenchError(f"audit {index + 1} found the copy inconsistent: {json.dumps(result.to_json())[:500]}")
        rate = result.bytes_compared / result.seconds / MB
        size = result.bytes_compared / MB
        say(f"audit {index + 1}: {result.matched} records, {size:.0f} MB in {result.seconds:.2f}s = {rate:.1f} MB/s")
        audits.append(
            {
                "seconds": round(result.seconds, 3),
                "mb_per_s": round(rate, 1),
                "records_per_s": round(result.matched / result.seconds),
            }
        )
    say("peer: ConsumerPerformance over the same source partition")
    peer = await consumer_perf(
        stack.kafka_lib,
        bootstrap=stack.source,
        topic=topic,
        records=records,
        record_size=record_size,
        group=f"bench-audit-peer-{secrets.token_hex(4)}",
        log=logs / f"{topic}-consumer.log",
    )
    median = statistics.median(a["mb_per_s"] for a in audits)
    return {
        "benchmark": "auditor throughput, one partition",
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "records": records,
        "record_size": record_size,
        "preload": {k: preload[k] for k in ("records_per_s", "mb_per_s")},
        "ferry_copy_seconds": round(copy_s, 2),
        "audit_runs": audits,
        "audit_mb_per_s_median": median,
        "audit_bytes": "key + value bytes of the source records compared (each also read and digested on the target)",
        "peer_consumer_performance_mb_per_s": round(peer["mb_per_s"], 1),
        "ratio_audit_to_peer_read": round(median / peer["mb_per_s"], 2) if peer["mb_per_s"] else None,
        "target_mb_per_s": TARGET_MB_PER_S,
        "meets_target": median >= TARGET_MB_PER_S,
    }


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--record-size", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    try:
        result = asyncio.run(main(args.records, args.record_size, args.runs))
    except BenchError as exc:
        print(f"bench.audit: {exc}", file=sys.stderr)
        return 1
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(RESULTS_DIR / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-audit.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    say(
        f"auditor {result['audit_mb_per_s_median']:.1f} MB/s (target {TARGET_MB_PER_S:g}); ConsumerPerformance "
        f"{result['peer_consumer_performance_mb_per_s']:.1f} MB/s; ratio {result['ratio_audit_to_peer_read']}; {path}"
    )
    return 0 if result["meets_target"] else 2


if __name__ == "__main__":
    sys.exit(cli())
