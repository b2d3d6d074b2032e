"""The brokers' limit as a real limit: several ProducerPerformance processes writing into the target at once,
and the highest rate the target accepted from any writer of the run (the replicators included).

A single Java producer is not the brokers' limit: Ferry measured 110% to 157% of it. The parallel writers
here (large batches, several requests in flight each) push the target harder; the limit of a profile is then
the highest of every producer configuration and every replicator catch-up of that profile in the run, so
Ferry / limit is at most 1 and says how close Ferry comes to the target broker. The source's
ConsumerPerformance stays as the machine's copy ceiling (what one reader gets out of the source).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import MB, BenchError, say
from bench.kafka import Cluster, producer_perf

PARALLEL_PRODUCERS = 3
PARALLEL_PROPS_OVERRIDES = {
    "max.in.flight.requests.per.connection": "5",
    "batch.size": str(1024 * 1024),
    "linger.ms": "10",
}


async def parallel_producers(
    lib: Path,
    *,
    target: Cluster,
    topic: str,
    partitions: int,
    records: int,
    record_size: int,
    base_props: dict[str, str],
    log_dir: Path,
    name: str,
    processes: int = PARALLEL_PRODUCERS,
) -> dict[str, Any]:
    """``processes`` ProducerPerformance JVMs write ``records`` records in all into one fresh target topic at
    once. The aggregate rate is taken from the target's summed end offsets: from the first record seen to the
    last (JVM start-up excluded, as for the replicators), polled every 0.1 s."""
    props = dict(base_props, **PARALLEL_PROPS_OVERRIDES)
    each = max(1, records // processes)
    total = each * processes
    await target.create_topic(topic, partitions)
    consumer = target.offsets_consumer()
    await consumer.start()
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    try:
        tasks = [
            asyncio.create_task(
                producer_perf(
                    lib,
                    bootstrap=target.bootstrap,
                    topic=topic,
                    records=each,
                    record_size=record_size,
                    props=props,
                    log=log_dir / f"limit-producer-{name}-parallel-{i}.log",
                )
            )
            for i in range(processes)
        ]
        first: tuple[float, int] | None = None
        last: tuple[float, int] = (time.monotonic(), 0)
        while not all(t.done() for t in tasks) or last[1] < total:
            count = await target.total(topic, partitions, consumer)
            now = time.monotonic()
            if count > 0 and first is None:
                first = (now, count)
            if count != last[1]:
                last = (now, count)
            if all(t.done() for t in tasks) and count < total:
                # every writer finished: the count is final (a failed writer raises below)
                if any(t.exception() for t in tasks):
                    break
                if now - last[0] > 10:
                    break
            await asyncio.sleep(0.1)
        runs = [t.result() for t in tasks]  # raises the first writer's failure
    finally:
        await consumer.stop()
        for task in tasks:
            if not task.done():
                task.cancel()
    if first is None or last[1] <= first[1] or last[0] <= first[0]:
        raise BenchError(f"parallel producers into {topic}: no progress seen on the target")
    copied = last[1] - first[1]
    window = last[0] - first[0]
    rate = copied / window
    result = {
        "tool": f"{processes} x org.apache.kafka.tools.ProducerPerformance at once",
        "processes": processes,
        "records": last[1],
        "records_expected": total,
        "record_size": record_size,
        "producer_props": props,
        "records_per_s": rate,
        "mb_per_s": rate * record_size / MB,
        "window_s": round(window, 3),
        "measured_by": "summed end offsets of the target topic every 0.1 s, first record to last",
        "sum_of_each_tools_own_mb_per_s": round(sum(r["mb_per_s"] for r in runs), 2),
        "each": [{k: r[k] for k in ("records", "records_per_s", "mb_per_s", "latency_ms", "log")} for r in runs],
    }
    say(f"  limit {name}: {processes} parallel producers {result['mb_per_s']:.1f} MB/s into the target")
    return result


def target_limit(results: dict[str, Any], profile: str) -> dict[str, Any] | None:
    """The highest rate the target accepted from any writer of ``profile`` in this run: each producer
    configuration of the limit step (the parallel one included) and each replicator's catch-up round."""
    writers: list[tuple[float, str]] = []
    for config, prod in results.get("limit", {}).get(profile, {}).get("producers", {}).items():
        if prod.get("mb_per_s"):
            writers.append((float(prod["mb_per_s"]), f"ProducerPerformance ({config})"))
    for kind, agg in results.get("throughput", {}).get(profile, {}).items():
        for run in agg.get("runs", []):
            if run.get("status") == "ok" and run.get("mb_per_s"):
                writers.append((float(run["mb_per_s"]), f"{kind} catch-up"))
    if not writers:
        return None
    rate, writer = max(writers)
    return {"mb_per_s": rate, "writer": writer}


def copy_ceiling(results: dict[str, Any], profile: str) -> float | None:
    """The machine's copy ceiling for a profile: ConsumerPerformance reading the preloaded source topic."""
    value = results.get("limit", {}).get(profile, {}).get("consumer", {}).get("mb_per_s")
    return float(value) if value else None
