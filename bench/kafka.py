"""Kafka helpers: topics through aiokafka's admin client, end offsets, and Kafka's own perf tools."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import MB, BenchError, java_argv, say, spawn, tail_hint
from dev.stack import LOG4J_TOOLS

UNKNOWN_TOPIC = 3


class Cluster:
    """An admin client on one cluster, plus offsets-only consumers (no group) on demand."""

    def __init__(self, name: str, bootstrap: str) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)

    async def __aenter__(self) -> Cluster:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def create_topic(self, topic: str, partitions: int, replication_factor: int = 1) -> None:
        response = await self._admin.create_topics([NewTopic(topic, partitions, replication_factor)])
        for name, code, message in response.topic_errors:
            if code != 0:
                raise BenchError(f"creating {name} on {self.name} failed: error {code} {message}")
        await self.wait_partitions(topic, 30.0)

    async def partitions(self, topic: str) -> int | None:
        """The topic's partition count, or None while it does not exist (or has no leaders yet)."""
        described = await self._admin.describe_topics([topic])
        for entry in described:
            if entry["topic"] != topic or entry["error_code"] != 0:
                return None
            parts = entry["partitions"]
            if not parts or any(p["error_code"] != 0 or p["leader"] < 0 for p in parts):
                return None
            return len(parts)
        return None

    async def broker_count(self) -> int:
        """How many brokers the cluster's metadata lists (registered with the controller and fenced off no more)."""
        described = await self._admin.describe_cluster()
        return len(described["brokers"])

    async def leaders(self, topic: str) -> dict[int, dict[str, Any]]:
        """Each partition's leader and replicas (broker ids), as the metadata says now."""
        described = await self._admin.describe_topics([topic])
        return {
            p["partition"]: {"leader": p["leader"], "replicas": sorted(p["replicas"]), "isr": sorted(p["isr"])}
            for entry in described
            if entry["topic"] == topic
            for p in entry["partitions"]
        }

    async def wait_partitions(self, topic: str, limit_s: float) -> int:
        deadline = time.monotonic() + limit_s
        while True:
            count = await self.partitions(topic)
            if count:
                return count
            if time.monotonic() > deadline:
                raise BenchError(f"topic {topic} on {self.name} has no leaders after {limit_s:.0f}s")
            await asyncio.sleep(0.2)

    async def end_offsets(
        self, topic: str, partitions: int, consumer: AIOKafkaConsumer | None = None
    ) -> dict[int, int]:
        """End offsets by partition, through ``consumer`` or a short-lived one (topics here get deleted, and a
        long-lived client would keep asking for a deleted topic's metadata)."""
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        if consumer is None:
            own = self.offsets_consumer()
            await own.start()
            try:
                offsets = await own.end_offsets(tps)
            finally:
                await own.stop()
        else:
            offsets = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in offsets.items()}

    async def total(self, topic: str, partitions: int, consumer: AIOKafkaConsumer | None = None) -> int:
        return sum((await self.end_offsets(topic, partitions, consumer)).values())

    def offsets_consumer(self) -> AIOKafkaConsumer:
        """An offsets-only consumer for one topic's measurement; the caller starts and stops it."""
        return AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, request_timeout_ms=30000)

    async def list_topics(self) -> list[str]:
        return sorted(await self._admin.list_topics())

    async def delete_topics(self, topics: list[str]) -> list[str]:
        """Delete the named topics that exist; returns the names deleted."""
        existing = set(await self.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            response = await self._admin.delete_topics(doomed, timeout_ms=30000)
            for name, code in response.topic_error_codes:
                if code not in (0, UNKNOWN_TOPIC):
                    say(f"warning: deleting {name} on {self.name} returned error {code}")
        return doomed

    async def delete_matching(self, token: str) -> list[str]:
        """Delete every topic whose name contains ``token`` (a unique per-run token, never a common word)."""
        if len(token) < 8:
            raise BenchError(f"refusing to delete topics by the short token {token!r}")
        return await self.delete_topics([t for t in await self.list_topics() if token in t])


# ---------------------------------------------------------------------------------------------- perf tools


@dataclass
class ToolRun:
    returncode: int
    seconds: float
    log: Path
    output: str


async def run_tool(lib: Path, main_class: str, args: list[str], *, log: Path, what: str, limit_s: float) -> ToolRun:
    """Run a Kafka tool JVM to completion with a deadline, printing its newest output line every 5 s."""
    argv = java_argv(lib, main_class, args, heap="512m", log4j=LOG4J_TOOLS)
    log.parent.mkdir(parents=True, exist_ok=True)
    (log.parent / f"{log.stem}.cmd").write_text(" ".join(argv) + "\n")
    start = time.monotonic()
    proc = spawn(argv, log)
    next_note = start + 5
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - start > limit_s:
                raise BenchError(f"{what}: still running after {limit_s:.0f}s, killed; {tail_hint(log)}")
            if now >= next_note:
                last = _last_line(log)
                say(f"  {what}: {now - start:.0f}s {('| ' + last) if last else ''}")
                next_note = now + 5
            await asyncio.sleep(0.2)
    finally:
        # also when the run is interrupted: a tool left running would keep writing into brokers being stopped
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = await asyncio.to_thread(log.read_text, errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"{what}: exit code {proc.returncode}; {tail_hint(log)}")
    return ToolRun(proc.returncode, time.monotonic() - start, log, output)


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:160] if lines else ""


PRODUCER_SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<rps>[\d.]+) records/sec \((?P<mibps>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th, (?P<p999>\d+) ms 99.9th"
)


def producer_props(bootstrap: str, settings: dict[str, Any]) -> list[str]:
    return [f"bootstrap.servers={bootstrap}", *(f"{k}={v}" for k, v in settings.items())]


async def producer_perf(
    lib: Path,
    *,
    bootstrap: str,
    topic: str,
    records: int,
    record_size: int,
    props: dict[str, Any],
    log: Path,
    throughput: int = -1,
    limit_s: float = 900.0,
) -> dict[str, Any]:
    """Kafka's ProducerPerformance; returns its final summary line, with MB/s recomputed in 10^6 bytes."""
    args = [
        "--topic", topic,
        "--num-records", str(records),
        "--record-size", str(record_size),
        "--throughput", str(throughput),
        "--producer-props", *producer_props(bootstrap, props),
    ]  # fmt: skip
    run = await run_tool(
        lib,
        "org.apache.kafka.tools.ProducerPerformance",
        args,
        log=log,
        what=f"ProducerPerformance -> {topic}",
        limit_s=limit_s,
    )
    matches = list(PRODUCER_SUMMARY.finditer(run.output))
    if not matches:
        raise BenchError(f"ProducerPerformance printed no summary line; {tail_hint(log)}")
    m = matches[-1]
    rps = float(m["rps"])
    return {
        "tool": "org.apache.kafka.tools.ProducerPerformance",
        "topic": topic,
        "records": int(m["records"]),
        "record_size": record_size,
        "producer_props": props,
        "throughput_limit_records_per_s": throughput,
        "records_per_s": rps,
        "mb_per_s": rps * record_size / MB,
        "latency_ms": {k: float(m[k]) for k in ("avg", "p50", "p95", "p99", "p999", "max")},
        "tool_seconds_incl_jvm_start": round(run.seconds, 2),
        "log": str(log),
    }


async def consumer_perf(
    lib: Path,
    *,
    bootstrap: str,
    topic: str,
    records: int,
    record_size: int,
    group: str,
    log: Path,
    limit_s: float = 900.0,
) -> dict[str, Any]:
    """Kafka's ConsumerPerformance (CSV output); the limit uses fetch.* figures, which exclude the group join."""
    args = [
        "--bootstrap-server", bootstrap,
        "--topic", topic,
        "--messages", str(records),
        "--group", group,
        "--timeout", "30000",
        "--hide-header",
    ]  # fmt: skip
    run = await run_tool(
        lib,
        "org.apache.kafka.tools.ConsumerPerformance",
        args,
        log=log,
        what=f"ConsumerPerformance <- {topic}",
        limit_s=limit_s,
    )
    row: list[str] | None = None
    for line in run.output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 10 and re.match(r"\d{4}-\d{2}-\d{2}", parts[0]):
            row = parts
    if row is None:
        raise BenchError(f"ConsumerPerformance printed no CSV row; {tail_hint(log)}")
    consumed = int(row[4])
    fetch_ms = float(row[7])
    fetch_rps = float(row[9])
    result: dict[str, Any] = {
        "tool": "org.apache.kafka.tools.ConsumerPerformance",
        "topic": topic,
        "records": consumed,
        "record_size": record_size,
        "consumer_settings": "tool defaults: fetch-size 1 MiB, socket buffer 2 MiB, check.crcs=false",
        "start_time": row[0],
        "end_time": row[1],
        "records_per_s_incl_join": float(row[5]),
        "rebalance_ms": float(row[6]),
        "fetch_ms": fetch_ms,
        "records_per_s": fetch_rps,
        "mb_per_s": fetch_rps * record_size / MB,
        "tool_seconds_incl_jvm_start": round(run.seconds, 2),
        "log": str(log),
    }
    if consumed < records:
        result["warning"] = f"consumed {consumed} of {records} records before its 30 s idle timeout"
    return result
