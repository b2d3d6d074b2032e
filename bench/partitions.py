"""Many partitions on one small fleet: two fleet workers carry N source partitions at a fixed total rate.

    python -m bench.partitions                                  # 100, then 10,000 partitions (100 topics of 100)
    python -m bench.partitions --counts 100,2000 --seconds 30   # smaller, while developing

Runs on the chaos lab (``chaos/lab.py``: PostgreSQL, Redis, a source and a target cluster, the API, beat and two
fleet workers of its own, production timing), so a 10,000-partition topic set never slows the shared dev brokers;
``close()`` deletes all of it. Per partition count, one replicator copies every topic of the set from its start:

0. the source's limit: the load of step 3 with no replicator yet (``--skip-source-limit`` leaves it out,
   ``--source-limit-only`` runs nothing else), so the run says whether the source broker alone accepts the rate
   spread this thin, and at what CPU; the replicator copies these records before the idle window;
1. warm-up: one record per partition, until every one is on the target (every partition copies);
2. idle: the workers' CPU over ``--idle-seconds`` with nothing produced (what quiet partitions cost);
3. load: ``--rate-mb`` MB/s of ``--record-bytes`` records (1 KiB) spread evenly over all partitions for
   ``--seconds``, written by Kafka's Java producer (``bench/java/SpreadLoad.java``; ``--load-producer python``:
   aiokafka, which could not deliver 5 MB/s over 10,000 partitions here); every second the source's and the
   target's end offsets of every partition are read (the first reading, every partition's baseline, before the
   load starts), and a partition's lag at that moment is how long ago the source last held no more than the
   target holds now (an upper bound, one sample's resolution); half way through, the workers' own reports of the
   partitions then over 5 s behind are read from Redis against the rest's (health, owner, copy latency); the
   machine's, both brokers' and this harness's CPU over the load are recorded (on a small box they share the
   workers' cores);
4. verified: every target partition's end offset equals its source partition's (nothing lost, nothing doubled).

Reported per count (two fresh workers each, so no count inherits the memory high-water mark of the one before):
the workers' CPU (each process tree) idle and under load, each worker's RSS when idle with no replicator and after
the load (KiB per partition it holds), lag p50/p99/max over every partition and sample, how many partitions were
ever over 5 s behind and the worst 20. An ok run keeps the workers' logs in ``.run/bench-partitions/<stamp>/logs``.
Writes ``bench/results/<UTC time>-partitions.json`` with the machine and versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from bench.common import MB, ROOT, BenchError, machine_info, memory_kib, say, versions
from bench.kafka import run_tool
from bench.measure import percentile
from chaos.lab import Lab, LabError, exit_on_termination, wait_for
from models.fleet_reports import METRICS_KEY, PartitionReport

PARTITIONS_PER_TOPIC = 100
# Above this the brokers' index faults thrash the page cache at 10,000 partitions (bench.common.read_ahead_kib).
LARGE_READ_AHEAD_KIB = 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(process: Path) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the name (state, ppid, pgrp, session, ...), or None once it is gone."""
    try:
        return (process / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime + stime


def _tree_cpu_seconds(session: int) -> float:
    """User + system CPU seconds of every live process in a session (a Celery worker and its pool children)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry)) is not None and int(fields[3]) == session:
            total += _cpu_ticks(fields)
    return total / CLOCK_TICKS


class Workers:
    """The lab's fleet workers as processes: CPU over a window, RSS now."""

    def __init__(self, lab: Lab) -> None:
        self.pids = {name: lab.processes[name].pid for name in lab.workers()}

    def cpu(self) -> dict[str, float]:
        return {name: _tree_cpu_seconds(pid) for name, pid in self.pids.items()}

    def rss_kib(self) -> dict[str, int]:
        return {name: memory_kib(pid).get("VmRSS", 0) for name, pid in self.pids.items()}

    async def cores_over(self, seconds: float, during: Any = None) -> tuple[dict[str, float], Any]:
        began, start = time.monotonic(), self.cpu()
        outcome = None
        if during is None:
            await asyncio.sleep(seconds)
        else:
            outcome = await during
        elapsed, end = time.monotonic() - began, self.cpu()
        return {name: round((end[name] - start[name]) / elapsed, 3) for name in start}, outcome


async def _create_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=300_000)
    await admin.start()
    try:
        for start in range(0, len(topics), 10):
            await admin.create_topics(
                [NewTopic(t, partitions, replication_factor=1) for t in topics[start : start + 10]]
            )
    finally:
        await admin.close()


class Offsets:
    """End offsets of every partition of a topic set on one cluster (one ListOffsets round per read)."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: int) -> None:
        self.bootstrap = bootstrap
        self.tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        self.consumer: Any = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.consumer.start()

    async def ends(self) -> list[int]:
        """End offsets in ``tps`` order; a topic not created yet reads as 0."""
        try:
            found = await self.consumer.end_offsets(self.tps)
        except Exception:  # noqa: BLE001 - a target topic still being created
            await self.consumer._client.force_metadata_update()
            return [0] * len(self.tps)
        return [found[tp] for tp in self.tps]

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


async def _produce(bootstrap: str, topics: list[str], partitions: int, per_partition: int, size: int) -> int:
    """``per_partition`` records into every partition, as fast as the producer goes (the warm-up)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    value = os.urandom(size)
    todo = [(topic, p) for _ in range(per_partition) for topic in topics for p in range(partitions)]
    try:
        for attempt in range(10):
            # Topics created moments ago may be unknown to the producer yet (send itself refuses them) and their
            # leaders may still be moving (the send's outcome fails): both are sent again.
            refused, sent = [], []
            for topic, p in todo:
                try:
                    sent.append(((topic, p), await producer.send(topic, value=value, partition=p)))
                except KafkaError:
                    refused.append((topic, p))
            outcomes = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
            todo = refused + [
                where for (where, _), out in zip(sent, outcomes, strict=True) if isinstance(out, BaseException)
            ]
            if not todo:
                break
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))  # a back-off, while the brokers settle the new topics
            await producer.client.force_metadata_update()
        else:
            raise BenchError(f"warm-up: {len(todo)} records not accepted after 10 attempts")
    finally:
        await producer.stop()
    return per_partition * partitions * len(topics)


async def _produce_at_rate(
    bootstrap: str, topics: list[str], partitions: int, *, rate_bytes_per_s: float, seconds: float, size: int
) -> dict[str, Any]:
    """Records of ``size`` bytes at a fixed total rate, round-robin over every partition of the set."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=64 * 1024)
    await producer.start()
    value = os.urandom(size)
    targets = [(t, p) for p in range(partitions) for t in topics]
    per_second = rate_bytes_per_s / size
    sent = 0
    acks: list[asyncio.Future[Any]] = []
    began = time.monotonic()
    try:
        while (elapsed := time.monotonic() - began) < seconds:
            due = min(int(elapsed * per_second), int(seconds * per_second))
            while sent < due:
                topic, partition = targets[sent % len(targets)]
                acks.append(await producer.send(topic, value=value, partition=partition))
                sent += 1
            await asyncio.sleep(0.02)
        outcomes = await asyncio.gather(*acks, return_exceptions=True)
    finally:
        await producer.stop()
    took = time.monotonic() - began
    # A refused record is simply not in the source: verification compares the two clusters, not this count.
    failures = Counter(type(outcome).__name__ for outcome in outcomes if isinstance(outcome, BaseException))
    refused = sum(failures.values())
    return {
        "records": sent,
        "refused": refused,
        # Why: a load the harness's own producer could not deliver says nothing about the replicator.
        "refused_by": dict(failures.most_common()),
        "seconds": round(took, 1),
        "achieved_mb_per_s": round((sent - refused) * size / took / MB, 2),
    }


JAVA_LOAD = ROOT / "bench" / "java" / "SpreadLoad.java"
# After its last send the Java load waits this long for acknowledgements, then reports what the broker took.
DRAIN_SECONDS = 60.0


async def _produce_at_rate_java(
    lab: Lab,
    topics: list[str],
    partitions: int,
    *,
    rate_bytes_per_s: float,
    seconds: float,
    size: int,
    name: str = "load",
    producers: int = 1,
) -> dict[str, Any]:
    """The same load as ``_produce_at_rate`` from Kafka's Java producer (``bench/java/SpreadLoad.java``): a
    5 MB/s load over 10,000 partitions is 5,000 one-record batches a second, more than the Python producer
    delivered on this box."""
    args = [lab.source.bootstrap, ",".join(topics), str(partitions), str(size), f"{rate_bytes_per_s:.0f}"]
    run = await run_tool(
        lab.kafka_lib,
        str(JAVA_LOAD),
        [*args, f"{seconds:g}", f"{DRAIN_SECONDS:g}", str(producers)],
        log=lab.folder / "logs" / f"{name}.log",
        what=name,
        limit_s=seconds + DRAIN_SECONDS + 120,
    )
    found = re.findall(r"^RESULT (\{.*\})$", run.output, re.MULTILINE)
    if not found:
        raise BenchError(f"load: the Java producer printed no result; see {run.log}")
    return dict(json.loads(found[-1]))


def _load(lab: Lab, topics: list[str], per_topic: int, args: argparse.Namespace, name: str = "load") -> Any:
    rate = args.rate_mb * MB
    if args.load_producer == "java":
        return _produce_at_rate_java(
            lab,
            topics,
            per_topic,
            rate_bytes_per_s=rate,
            seconds=args.seconds,
            size=args.record_bytes,
            name=name,
            producers=args.load_producers,
        )
    return _produce_at_rate(
        lab.source.bootstrap, topics, per_topic, rate_bytes_per_s=rate, seconds=args.seconds, size=args.record_bytes
    )


class BrokerCpu:
    """CPU of one cluster's JVMs (broker and controller); the source's unless told."""

    def __init__(self, lab: Lab, cluster: Any = None) -> None:
        self.pids = list((cluster or lab.source).pids().values())

    def cpu_seconds(self) -> tuple[float, float]:
        ticks = (_stat_fields(Path(f"/proc/{pid}")) for pid in self.pids)
        return time.monotonic(), sum(_cpu_ticks(fields) for fields in ticks if fields is not None) / CLOCK_TICKS

    def cores_since(self, began: tuple[float, float]) -> float:
        now, cpu = self.cpu_seconds()
        return round((cpu - began[1]) / (now - began[0]), 3)


class MachineCpu:
    """The whole machine's CPU from /proc/stat: busy (user, nice, system, irq, softirq), iowait and steal."""

    @staticmethod
    def read() -> tuple[float, list[int]]:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
        return time.monotonic(), fields

    @staticmethod
    def cores_since(began: tuple[float, list[int]]) -> dict[str, float]:
        now, fields = MachineCpu.read()
        seconds = now - began[0]
        delta = [after - before for after, before in zip(fields, began[1], strict=True)]
        user, nice, system, _idle, iowait, irq, softirq, steal = delta

        def cores(ticks: int) -> float:
            return round(ticks / CLOCK_TICKS / seconds, 2)

        return {"busy": cores(user + nice + system + irq + softirq), "iowait": cores(iowait), "steal": cores(steal),
                "of": os.cpu_count() or 0}  # fmt: skip


class CpuByProcess:
    """Every process's CPU over a window, grouped: the lab's Ferry processes (by session), each cluster's JVMs, the
    load producer, PostgreSQL, Redis, this harness and the rest. On a 2-core box they all share the cores, so
    a lag figure needs to say who had them."""

    def __init__(self, lab: Lab) -> None:
        self.sessions = {proc.pid: name for name, proc in lab.processes.items()}
        self.brokers = {pid: "source_brokers" for pid in lab.source.pids().values()}
        self.brokers |= {pid: "target_brokers" for pid in lab.target.pids().values()}
        self.harness = os.getpid()

    def _label(self, pid: int, comm: str, fields: list[str]) -> str:
        if pid in self.brokers:
            return self.brokers[pid]
        session = int(fields[3])
        if session in self.sessions:
            return self.sessions[session]
        if pid == self.harness:
            return "harness"
        if comm == "java":
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return "other"
            # Still running (it is counted once it exits, with the harness's reaped children).
            return "load_producer_running" if b"SpreadLoad" in cmdline else "other_java"
        if comm.startswith("postgres"):
            return "postgresql"
        if comm.startswith("redis"):
            return "redis"
        return "other"

    def read(self) -> tuple[float, dict[int, tuple[str, int]]]:
        ticks: dict[int, tuple[str, int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                comm, rest = (entry / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            except (OSError, ValueError):
                continue
            fields = rest.split()
            ticks[int(entry.name)] = (self._label(int(entry.name), comm, fields), _cpu_ticks(fields))
            if int(entry.name) == self.harness:
                # The load producer has exited by the window's end: its CPU is in the harness's reaped children's
                # (the only child process the harness runs and waits for meanwhile). Keyed apart from every pid.
                ticks[-1] = ("load_producer", int(fields[13]) + int(fields[14]))
        return time.monotonic(), ticks

    @staticmethod
    def cores_since(
        began: tuple[float, dict[int, tuple[str, int]]], now: tuple[float, dict[int, tuple[str, int]]]
    ) -> dict[str, float]:
        """Cores per group; a process that ended in the window is not counted after its last reading."""
        seconds = now[0] - began[0]
        totals: Counter[str] = Counter()
        for pid, (label, ticks) in now[1].items():
            totals[label] += ticks - began[1].get(pid, (label, 0))[1]
        return {label: round(ticks / CLOCK_TICKS / seconds, 3) for label, ticks in totals.most_common()}


class LagSampler:
    """Every second: each partition's lag, from the source's and the target's end offsets."""

    def __init__(self, source: Offsets, target: Offsets) -> None:
        self.source, self.target = source, target
        # Per partition, [last sample time, source end] for each source end seen; entries the target passed go.
        self.seen: list[deque[list[Any]]] = []
        self.lags: list[float] = []
        self.worst_by_sample: list[float] = []
        # Per partition: its lag at the latest sample, its largest lag, and how many samples found it over 5 s.
        self.current: list[float] = []
        self.largest: list[float] = []
        self.samples_over_5s: list[int] = []
        # Seconds each sample took to read both sides' end offsets (a slow read delays the next sample).
        self.read_seconds: list[float] = []
        self.sampled = asyncio.Event()

    def lagging_partitions(self) -> dict[str, Any]:
        """Which partitions lagged over 5 s: how many, by topic and partition number, and the worst 20."""
        over = [i for i, largest in enumerate(self.largest) if largest > 5.0]
        tps = self.source.tps
        worst = sorted(over, key=lambda i: -self.largest[i])[:20]
        return {
            "partitions_over_5s": len(over),
            "over_5s_by_topic": dict(Counter(tps[i].topic.rsplit("-", 1)[-1] for i in over).most_common(10)),
            "over_5s_by_partition_number": dict(Counter(tps[i].partition for i in over).most_common(10)),
            "worst_partitions": [
                {"partition": f"{tps[i].topic}:{tps[i].partition}", "max_s": round(self.largest[i], 1),
                 "samples_over_5s": self.samples_over_5s[i]}
                for i in worst
            ],
        }  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            source_ends = await self.source.ends()
            now = time.monotonic()
            if not self.seen:
                self.seen = [deque([[now, end]]) for end in source_ends]
            for i, end in enumerate(source_ends):
                last = self.seen[i][-1]
                if end == last[1]:
                    last[0] = now
                else:
                    self.seen[i].append([now, end])
            target_ends = await self.target.ends()
            worst = 0.0
            if not self.current:
                self.current = [0.0] * len(target_ends)
                self.largest = [0.0] * len(target_ends)
                self.samples_over_5s = [0] * len(target_ends)
            for i, held in enumerate(target_ends):
                seen = self.seen[i]
                while len(seen) > 1 and seen[1][1] <= held:
                    seen.popleft()
                # seen[0][0]: the last moment the source was seen holding no more than the target holds now.
                lag = 0.0 if held >= seen[-1][1] else now - seen[0][0]
                self.lags.append(lag)
                worst = max(worst, lag)
                self.current[i] = lag
                self.largest[i] = max(self.largest[i], lag)
                if lag > 5.0:
                    self.samples_over_5s[i] += 1
            self.worst_by_sample.append(round(worst, 2))
            self.read_seconds.append(round(time.monotonic() - began, 2))
            self.sampled.set()
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.lags)
        if not ordered:
            return {"samples": 0}
        return {
            "samples": len(self.worst_by_sample),
            "partition_samples": len(ordered),
            "p50_s": round(percentile(ordered, 0.5), 2),
            "p99_s": round(percentile(ordered, 0.99), 2),
            "max_s": round(ordered[-1], 2),
            "worst_partition_by_sample_s": self.worst_by_sample,
            "read_seconds_by_sample": self.read_seconds,
            **self.lagging_partitions(),
            "method": "per partition and second: now minus the newest sample time at which the source's end offset "
            "was at most the target's end offset now (upper bound, 1 s resolution)",
        }


async def _reports_of_lagging(lab: Lab, arn: str, sampler: LagSampler, after_s: float) -> dict[str, Any]:
    """``after_s`` into the load: what the workers report for the partitions then over 5 s behind, against the
    rest (health, owner, the copy's own latency and how old the report is), to say where their records wait."""
    await asyncio.sleep(after_s)  # a point in the load, not a synchronisation: the sampler runs on its own
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(sampler.sampled.wait(), timeout=60)
    rows = lab.query("SELECT id FROM replicators WHERE arn = %s", arn)
    client = aioredis.Redis.from_url(lab.services.redis_url)
    try:
        raw = await client.hgetall(METRICS_KEY.format(replicator_id=rows[0][0]))
    finally:
        await client.aclose()
    reports = {}
    for value in raw.values():
        report = PartitionReport.from_json(value)
        if report is not None:
            reports[(report.source_topic, report.partition)] = report
    now_ms = time.time() * 1000
    summary: dict[str, Any] = {"after_s": after_s, "reports": len(reports), "lag_samples": len(sampler.read_seconds)}
    lagging = {i for i, lag in enumerate(sampler.current) if lag > 5.0}
    for name, chosen in (("lagging", lagging), ("others", set(range(len(sampler.current))) - lagging)):
        found = [reports.get((tp.topic, tp.partition)) for i, tp in enumerate(sampler.source.tps) if i in chosen]
        known = [r for r in found if r is not None]
        latencies = sorted(r.latency_ms_last for r in known if r.latency_ms_last is not None)
        ages = sorted(now_ms - r.reported_at_ms for r in known)
        summary[name] = {
            "partitions": len(chosen),
            "without_report": len(found) - len(known),
            "health": dict(Counter(r.health for r in known)),
            "owner": dict(Counter(r.owner.split("-", 1)[0] for r in known)),
            "latency_ms_last_p50_p99": [round(percentile(latencies, q)) for q in (0.5, 0.99)] if latencies else None,
            "report_age_ms_p50_p99": [round(percentile(ages, q)) for q in (0.5, 0.99)] if ages else None,
            "lag_records_sum": sum(r.lag_records or 0 for r in known),
            "examples": [
                {k: getattr(r, k) for k in ("source_topic", "partition", "health", "health_detail", "owner",
                                             "next_source_offset", "source_end_offset", "latency_ms_last",
                                             "reported_at_ms")}
                for r in known[:5]
            ],
        }  # fmt: skip
    return summary


async def _until(what: str, probe: Any, limit_s: float, result: dict[str, Any] | None = None) -> float:
    """Seconds until ``probe`` says done; its progress is shown every 15 s and kept in ``result["waiting"]``."""
    began = time.monotonic()
    line = ""
    shown = began
    while time.monotonic() - began < limit_s:
        done, line = await probe()
        if done:
            if result is not None:
                result.pop("waiting", None)
            return time.monotonic() - began
        if time.monotonic() - shown >= 15:
            say(f"  waiting for {what}: {line} ({time.monotonic() - began:.0f}s)")
            shown = time.monotonic()
            if result is not None:
                result["waiting"] = f"{what}: {line} after {time.monotonic() - began:.0f}s"
        await asyncio.sleep(1.0)  # poll interval of a condition wait with a deadline
    raise BenchError(f"{what}: not reached within {limit_s:.0f}s; last: {line}")


def _request(lab: Lab, name: str, pattern: str) -> dict[str, Any]:
    return {
        "ReplicatorName": name,
        "ServiceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry-bench",
        "KafkaClusters": [
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "scale-src",
                                    "BootstrapBrokerString": lab.source.bootstrap}},
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "scale-tgt",
                                    "BootstrapBrokerString": lab.target.bootstrap}},
        ],
        "ReplicationInfoList": [
            {
                "SourceKafkaClusterId": "scale-src",
                "TargetKafkaClusterId": "scale-tgt",
                "TargetCompressionType": "NONE",
                "TopicReplication": {
                    "TopicsToReplicate": [pattern],
                    "StartingPosition": {"Type": "EARLIEST"},
                    "CopyTopicConfigurations": False,
                    "CopyAccessControlListsForTopics": False,
                },
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": []},
            }
        ],
    }  # fmt: skip


async def one_count(
    lab: Lab, workers: Workers, count: int, args: argparse.Namespace, token: str, *, result: dict[str, Any]
) -> dict[str, Any]:
    """Measures ``count`` partitions into ``result`` as it goes: a run stopped half way keeps what it measured."""
    per_topic = min(count, PARTITIONS_PER_TOPIC)
    topics = [f"scale-{token}-{count}-{i:03d}" for i in range(count // per_topic)]
    result.update(partitions=count, topics=len(topics), partitions_per_topic=per_topic)
    say(f"-- {count} partitions: {len(topics)} topics of {per_topic}")
    began = time.monotonic()
    await _create_topics(lab.source.bootstrap, topics, per_topic)
    result["topic_creation_s"] = round(time.monotonic() - began, 1)
    # One record per partition first: CreateTopics answers before the broker has made every partition's log, and
    # a load that starts earlier measures how fast the broker makes them. Acknowledged records say each is ready.
    result["warm_up_records"] = await _produce(lab.source.bootstrap, topics, per_topic, 1, args.record_bytes)
    result["warm_up_produced_after_s"] = round(time.monotonic() - began, 1)
    source_broker = BrokerCpu(lab)
    if not args.skip_source_limit:
        # The same load with no replicator: what the source broker itself accepts when writes are spread this thin.
        broker_began = source_broker.cpu_seconds()
        by_process = CpuByProcess(lab)
        by_process_began = by_process.read()
        result["source_limit"] = await _load(lab, topics, per_topic, args, name="source-limit")
        result["source_limit"]["source_broker_cores"] = source_broker.cores_since(broker_began)
        result["source_limit"]["cores_by_process"] = CpuByProcess.cores_since(by_process_began, by_process.read())
        say(
            f"  the source alone took {result['source_limit']['achieved_mb_per_s']} MB/s of {args.rate_mb:g} "
            f"(broker {result['source_limit']['source_broker_cores']} cores)"
        )
        if args.source_limit_only:
            result["status"] = "ok"
            return result
    client = lab.kafka_client(attempts=3)
    arn = client.create_replicator(**_request(lab, f"scale-{token}-{count}", f"scale-{token}-{count}-.*"))[
        "ReplicatorArn"
    ]
    alias = client.describe_replicator(ReplicatorArn=arn)["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    source = Offsets(lab.source.bootstrap, topics, per_topic)
    target = Offsets(lab.target.bootstrap, [f"{alias}.{t}" for t in topics], per_topic)
    await source.start()
    await target.start()
    try:

        async def caught_up() -> tuple[bool, str]:
            behind = sum(1 for s, t in zip(await source.ends(), await target.ends(), strict=True) if t < s)
            return behind == 0, f"{behind} partitions behind"

        async def copied() -> tuple[bool, str]:
            ends = await target.ends()
            done = sum(1 for e in ends if e >= 1)
            return done == count, f"{done}/{count} partitions copied"

        result["warm_up_copied_after_s"] = round(
            await _until("every partition copying", copied, args.startup_limit, result), 1
        )
        say(f"  every partition copies, {time.monotonic() - began:.0f}s after the topics were created")
        if "source_limit" in result:
            # The records of the limit's load are copied before the idle window, which must be idle.
            result["limit_records_copied_after_s"] = round(await _until("the target caught up", caught_up, 300), 1)
        owners = lab.query(
            "SELECT u.owner_worker, count(*) FROM fleet_units u JOIN replicators r ON r.id = u.replicator_id "
            "WHERE r.arn = %s AND u.partition >= 0 AND u.lease_expires_at > now() GROUP BY u.owner_worker",
            arn,
        )
        result["partitions_per_worker"] = {str(w).split("-", 1)[0]: int(n) for w, n in owners}

        def acquisitions() -> int:
            """Leases taken on the replicator's copy units so far: every hand-over from worker to worker is one."""
            rows = lab.query(
                "SELECT coalesce(sum(u.epoch), 0) FROM fleet_units u JOIN replicators r ON r.id = u.replicator_id "
                "WHERE r.arn = %s AND u.partition >= 0",
                arn,
            )
            return int(rows[0][0])

        acquired_before_idle = acquisitions()
        result["idle_cores"], _ = await workers.cores_over(args.idle_seconds)
        result["rss_kib_idle_partitions"] = workers.rss_kib()
        say(f"  idle: {result['idle_cores']} cores, RSS {result['rss_kib_idle_partitions']} KiB")

        sampler = LagSampler(source, target)
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop))
        # The first sample is every partition's baseline: it must be taken before the load starts (reading the
        # end offsets of 10,000 partitions on both sides once took 33 s, a third of the load unmeasured).
        await asyncio.wait_for(sampler.sampled.wait(), timeout=120)
        broker_began = source_broker.cpu_seconds()
        target_broker = BrokerCpu(lab, lab.target)
        target_began = target_broker.cpu_seconds()
        machine_began = MachineCpu.read()
        by_process = CpuByProcess(lab)
        by_process_began = by_process.read()
        harness_began = time.monotonic(), time.process_time()
        lagging_reports = asyncio.create_task(_reports_of_lagging(lab, arn, sampler, args.seconds / 2))
        result["load_cores"], result["load"] = await workers.cores_over(
            args.seconds, _load(lab, topics, per_topic, args)
        )
        result["load"]["source_broker_cores"] = source_broker.cores_since(broker_began)
        result["load"]["target_broker_cores"] = target_broker.cores_since(target_began)
        result["load"]["machine_cores"] = MachineCpu.cores_since(machine_began)
        result["load"]["cores_by_process"] = CpuByProcess.cores_since(by_process_began, by_process.read())
        # This process: the lag sampler reads 20,000 end offsets a second, on the same cores as the workers.
        result["load"]["harness_cores"] = round(
            (time.process_time() - harness_began[1]) / (time.monotonic() - harness_began[0]), 3
        )
        result["rss_kib_loaded"] = workers.rss_kib()
        # Units moved between workers while idle and under load (the balance's hand-overs; none expected).
        result["hand_overs_idle_and_load"] = acquisitions() - acquired_before_idle
        try:
            result["reports_mid_load"] = await lagging_reports
        except Exception as error:  # noqa: BLE001 - a diagnostic: the run's figures stand without it
            result["reports_mid_load"] = {"error": f"{type(error).__name__}: {error}"}

        result["caught_up_after_load_s"] = round(await _until("the target caught up", caught_up, 300), 1)
        stop.set()
        await sampling
        result["lag"] = sampler.summary()
        source_ends, target_ends = await source.ends(), await target.ends()
        mismatched = sum(1 for s, t in zip(source_ends, target_ends, strict=True) if s != t)
        result["verified"] = {
            "source_records": sum(source_ends),
            "target_records": sum(target_ends),
            "partitions_differing": mismatched,
            "ok": mismatched == 0,
        }
        say(
            f"  load {result['load']['achieved_mb_per_s']} MB/s: {result['load_cores']} cores, lag p99 "
            f"{result['lag']['p99_s']} s max {result['lag']['max_s']} s, verified {result['verified']['ok']}"
        )
        result["status"] = "ok" if result["verified"]["ok"] else "failed"
    except Exception as error:  # noqa: BLE001 - what was measured before the failure is kept with the reason
        result.update(status="failed", reason=f"{type(error).__name__}: {error}")
        say(f"  {count} partitions FAILED: {result['reason']}")
    finally:
        await source.close()
        await target.close()
    client.delete_replicator(ReplicatorArn=arn)

    async def units_gone() -> tuple[bool, str]:
        rows = lab.query("SELECT count(*) FROM fleet_units u JOIN replicators r ON r.id = u.replicator_id "
                         "WHERE r.arn = %s", arn)  # fmt: skip
        return int(rows[0][0]) == 0, f"{rows[0][0]} units left"

    await _until("the replicator's units gone", units_gone, 300)
    return result


def _per_partition(result: dict[str, Any], idle_rss: dict[str, int]) -> None:
    held = result.get("partitions_per_worker", {})
    loaded = result.get("rss_kib_loaded", {})
    result["rss_kib_per_partition_above_idle_worker"] = {
        name: round((loaded[name] - idle_rss[name]) / held[name], 1)
        for name in loaded
        if name in idle_rss and held.get(name)
    }


def _write(result: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results" / f"{result['started']}-partitions.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = ROOT / ".run" / "bench-partitions" / stamp
    result: dict[str, Any] = {
        "kind": "partitions",
        "started": stamp,
        "machine": machine_info(),
        "command": "python -m bench.partitions " + " ".join(args.argv),
        "settings": {
            "counts": args.counts,
            "rate_mb_per_s": args.rate_mb,
            "seconds": args.seconds,
            "idle_seconds": args.idle_seconds,
            "record_bytes": args.record_bytes,
            "load_producer": args.load_producer,
            "load_producers": args.load_producers,
            "source_limit": "skipped" if args.skip_source_limit else "only" if args.source_limit_only else "first",
            "workers": 2,
            "kafka_heap": args.kafka_heap,
            "fleet": "production defaults (FERRY_FLEET_TICK_SECONDS=1, FERRY_FLEET_LEASE_SECONDS=10)"
            if args.lease_seconds is None
            else f"production defaults but FERRY_FLEET_LEASE_SECONDS={args.lease_seconds:g}",
            "reconcile_interval_seconds": args.reconcile_seconds,
        },
        "runs": {},
    }
    read_ahead = result["machine"].get("disk_read_ahead_kib")
    if read_ahead and read_ahead > LARGE_READ_AHEAD_KIB:
        say(
            f"WARNING: the disk's read-ahead is {read_ahead} KiB. Each partition's index files fault in that much "
            "on their first write: at 10,000 partitions the brokers stall in page reclaim and take a fraction of "
            "the load. The kernel's default is 128 (as root: echo 128 > /sys/block/<disk>/queue/read_ahead_kb)."
        )
    lab = Lab(folder, fast_failover=False, kafka_heap=args.kafka_heap)
    if args.lease_seconds is not None:
        lab.settings = lab.settings.model_copy(update={"fleet_lease_seconds": args.lease_seconds})
        lab.env["FERRY_FLEET_LEASE_SECONDS"] = f"{args.lease_seconds:g}"
    if args.reconcile_seconds is not None:
        lab.settings = lab.settings.model_copy(update={"reconcile_interval_seconds": args.reconcile_seconds})
        lab.env["FERRY_RECONCILE_INTERVAL_SECONDS"] = f"{args.reconcile_seconds:g}"
    try:
        lab.start(workers=2)
        result["versions"] = versions(lab.kafka_lib)
        token = stamp.lower()[-7:]
        for index, count in enumerate(args.counts):
            if index:
                # Fresh workers for every count: a worker's RSS keeps the high-water mark of the count before.
                for name in lab.workers():
                    lab.kill(name, signal.SIGTERM)
                fresh = [lab.start_worker(), lab.start_worker()]
                wait_for(
                    "two fresh workers to report",
                    lambda: {w.split("-", 1)[0] for w in lab.live_workers()} >= set(fresh),  # noqa: B023
                    120,
                )
            workers = Workers(lab)
            time.sleep(5)  # let the fresh workers settle before their idle memory is read
            idle_rss = workers.rss_kib()
            one: dict[str, Any] = {"partitions": count}
            try:
                asyncio.run(one_count(lab, workers, count, args, token, result=one))
            except Exception as error:  # noqa: BLE001 - recorded with the run, and the next count still runs
                one.update(status="failed", reason=f"{type(error).__name__}: {error}")
                say(f"  {count} partitions FAILED: {one['reason']}")
            except (SystemExit, KeyboardInterrupt):
                # Stopped by hand (SIGTERM, SIGINT) half way through a long count: what it measured is kept.
                one.update(status="stopped", reason="stopped by a signal before this count finished")
                result["runs"][str(count)] = one
                result["status"] = "stopped"
                raise
            one["rss_kib_idle_worker"] = idle_rss
            _per_partition(one, idle_rss)
            result["runs"][str(count)] = one
            _write(result)  # each count as it ends: a long run stopped later keeps what it measured
        result["status"] = "ok" if all(r.get("status") == "ok" for r in result["runs"].values()) else "failed"
    except (BenchError, LabError) as error:
        result.update(status="failed", reason=f"{type(error).__name__}: {error}")
    finally:
        if result.get("status") != "ok":
            result["logs"] = str(folder / "logs")
            for name in ("w1", "w2"):
                tail = lab.log_tail(name, 40)
                if tail:
                    result.setdefault("log_tails", {})[name] = tail
            if result.get("status") == "stopped":
                _write(result)
        lab.close()
    if result.get("status") == "ok":
        # A run that failed or was stopped keeps its folder: "logs" above names it, and the tails are not enough
        # to say why (a failed verification of 2026-12-02 lost its workers' logs this way). An ok run keeps only
        # its logs: the brokers' data of 10,000 partitions is gigabytes, and a lag figure needs the workers' story.
        for child in folder.iterdir() if folder.exists() else ():
            if child.name != "logs":
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        result["logs"] = str(folder / "logs")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partitions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="100,10000", help="partition counts, comma-separated (default %(default)s)")
    parser.add_argument("--rate-mb", type=float, default=5.0, help="total produce rate in MB/s (default %(default)s)")
    parser.add_argument("--record-bytes", type=int, default=1024, help="record size (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load (default %(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle CPU window (default %(default)s)")
    parser.add_argument("--startup-limit", type=float, default=900.0, help="seconds until every partition copies")
    parser.add_argument(
        "--lease-seconds",
        type=float,
        help="FERRY_FLEET_LEASE_SECONDS of the lab's fleet (default: the production default, 10)",
    )
    parser.add_argument(
        "--reconcile-seconds",
        type=float,
        help="FERRY_RECONCILE_INTERVAL_SECONDS of the lab's fleet (default: the production default, 2)",
    )
    source_limit = parser.add_mutually_exclusive_group()
    source_limit.add_argument(
        "--skip-source-limit",
        action="store_true",
        help="do not first run the load with no replicator (what the source broker alone accepts)",
    )
    source_limit.add_argument(
        "--source-limit-only",
        action="store_true",
        help="only the load with no replicator, per count: the source broker's limit for writes this spread",
    )
    parser.add_argument("--kafka-heap", default="1g", help="heap of each lab broker (default %(default)s)")
    parser.add_argument(
        "--load-producer",
        choices=("java", "python"),
        default="java",
        help="what writes the load: Kafka's Java producer (bench/java/SpreadLoad.java) or aiokafka "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--load-producers",
        type=int,
        default=4,
        help="Java producers in the load process, each writing a share of the topics: one took 0.77 cores for "
        "5 MB/s over 10,000 partitions, four 0.46 (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.load_producers < 1:
        parser.error(f"--load-producers must be at least 1, not {args.load_producers}")
    exit_on_termination()
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    args.counts = [int(c) for c in re.split(r"[,\s]+", args.counts.strip()) if c]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    result = run(args)
    out = _write(result)
    say(f"{result['status']}: {out.relative_to(ROOT)}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
