"""The two replication measurements: catch-up throughput on a preloaded topic, and end-to-end latency."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bench.common import MB, BenchError, CpuWindow, Stack, loadavg, memory_kib, say, spawn, stop_process, wait_until
from bench.kafka import Cluster, producer_perf
from bench.replicators import BenchedReplicator, MirrorMaker2


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class TargetWatch:
    """Polls the target topic's summed end offsets (the replicator under test creates the topic)."""

    def __init__(self, target: Cluster, topic: str) -> None:
        self.target = target
        self.topic = topic
        self.partitions: int | None = None
        self.count = 0
        self.consumer = target.offsets_consumer()
        self._started = False

    async def poll(self) -> int:
        if self.partitions is None:
            self.partitions = await self.target.partitions(self.topic)
            if self.partitions is None:
                return 0
        if not self._started:
            await self.consumer.start()
            self._started = True
        self.count = await self.target.total(self.topic, self.partitions, self.consumer)
        return self.count

    async def close(self) -> None:
        if self._started:
            await self.consumer.stop()


async def verify_copy(source: Cluster, target: Cluster, source_topic: str, target_topic: str) -> dict[str, Any]:
    """Check the copy: per-partition record counts equal, and sampled records (first, middle, last offset of
    every partition) identical in key, value, timestamp and headers on both sides."""
    parts = await source.wait_partitions(source_topic, 30.0)
    target_parts = await target.partitions(target_topic)
    if target_parts != parts:
        return {"ok": False, "reason": f"target has {target_parts} partitions, source {parts}"}
    src_end = await source.end_offsets(source_topic, parts)
    tgt_end = await target.end_offsets(target_topic, parts)
    mismatched = {p: (src_end[p], tgt_end[p]) for p in range(parts) if src_end[p] != tgt_end[p]}
    samples = [(p, off) for p in range(parts) if src_end[p] > 0 for off in sorted({0, src_end[p] // 2, src_end[p] - 1})]
    src_records = await _read_at(source.bootstrap, source_topic, samples)
    tgt_records = await _read_at(target.bootstrap, target_topic, samples)
    differing = [f"{p}@{off}" for p, off in samples if src_records.get((p, off)) != tgt_records.get((p, off))]
    missing = [f"{p}@{off}" for p, off in samples if (p, off) not in tgt_records]
    ok = not mismatched and not differing
    return {
        "ok": ok,
        "partition_counts_equal": not mismatched,
        "partition_count_mismatches": {str(p): v for p, v in mismatched.items()},
        "sampled_records": len(samples),
        "sampled_records_differing": differing[:20],
        "sampled_records_missing": missing[:20],
        "method": "per-partition end offsets; records at the first, middle and last offset of each partition "
        "compared (key, value, timestamp, headers); target offsets equal source offsets on a fresh topic",
    }


async def _read_at(bootstrap: str, topic: str, samples: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=65536)
    await consumer.start()
    out: dict[tuple[int, int], Any] = {}
    try:
        for partition, offset in samples:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
            for message in batch.get(tp, []):
                out[(partition, message.offset)] = (
                    message.key,
                    message.value,
                    message.timestamp,
                    tuple(message.headers or ()),
                )
    finally:
        await consumer.stop()
    return out


async def catch_up(
    rep: BenchedReplicator,
    *,
    source_topic: str,
    records: int,
    record_size: int,
    source: Cluster,
    target: Cluster,
    startup_limit_s: float,
    catchup_limit_s: float,
    on_first_record: Callable[[subprocess.Popen[bytes]], None] | None = None,
    on_caught_up: Callable[[], Awaitable[None]] | None = None,
    brokers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Start the replicator on a preloaded topic and time it until the target holds every record.

    ``brokers``: the pids whose CPU counts as the brokers' (default: the stack's two brokers).

    Throughput counts from the first replicated record seen on the target (JVM start and connector start
    excluded), over the records copied after that moment; time-to-first-record is reported on its own.
    """
    result: dict[str, Any] = {"replicator": rep.kind, "label": rep.label, "source_topic": source_topic}
    target_topic = rep.target_topic(source_topic)
    result["target_topic"] = target_topic
    watch = TargetWatch(target, target_topic)
    started_wall = time.time()
    t_start = time.monotonic()
    proc = rep.start([source_topic])
    result["settings"] = rep.describe()
    result["started_at"] = _utc(started_wall)
    result["loadavg_before"] = loadavg()

    async def any_record() -> bool:
        return await watch.poll() > 0

    async def all_records() -> bool:
        return await watch.poll() >= records

    def progress() -> str:
        elapsed = time.monotonic() - t_start
        return f"| {watch.count:,}/{records:,} records on {target_topic} ({elapsed:.0f}s since start)"

    try:
        t_first = await wait_until(
            f"{rep.label}: first record on the target",
            any_record,
            startup_limit_s,
            interval=0.1,
            progress=progress,
            proc=proc,
            log=rep.log,
        )
        first_count = watch.count
        cpu_window = CpuWindow(proc.pid, extra_replicator_pids=rep.extra_pids(), brokers=brokers)
        result["time_to_first_record_s"] = round(t_first - t_start, 3)
        result["records_at_first_observation"] = first_count
        say(f"  {rep.label}: first records after {t_first - t_start:.1f}s ({first_count:,} already there)")
        if on_first_record is not None:
            on_first_record(proc)
        t_done = await wait_until(
            f"{rep.label}: all {records:,} records on the target",
            all_records,
            catchup_limit_s,
            interval=0.1,
            progress=progress,
            proc=proc,
            log=rep.log,
        )
        result["cpu_in_window"] = cpu_window.finish()
        if on_caught_up is not None:
            await on_caught_up()
        window = t_done - t_first
        copied = records - first_count
        result.update(
            status="ok",
            catch_up_s=round(window, 3),
            records_per_s=copied / window if window > 0 else None,
            mb_per_s=copied * record_size / MB / window if window > 0 else None,
            total_s_incl_startup=round(t_done - t_start, 3),
            records_on_target=watch.count,
            duplicates=watch.count - records,
        )
        result["replicator_memory_kib"] = memory_kib(proc.pid)
        say(
            f"  {rep.label}: caught up in {window:.1f}s: {result['mb_per_s']:.1f} MB/s, "
            f"{result['records_per_s']:,.0f} records/s"
        )
    except BenchError as exc:
        result.update(status="failed", reason=str(exc), records_on_target=watch.count)
        elapsed = time.monotonic() - t_start
        say(f"  {rep.label}: FAILED after {elapsed:.0f}s: {str(exc).splitlines()[0]}")
    finally:
        await watch.close()
        result["loadavg_after"] = loadavg()
        result["exit_code_after_stop"] = await rep.stop()
        if isinstance(rep, MirrorMaker2):
            result["mm2_effective_producer_config"] = rep.effective_producer_config()
            result["mm2_effective_consumer_config"] = rep.effective_consumer_config()
        if result.get("status") == "ok":
            try:
                result["verification"] = await verify_copy(source, target, source_topic, target_topic)
            except (BenchError, OSError, KafkaError) as exc:
                result["verification"] = {"ok": False, "reason": f"verification failed: {exc}"}
            if not result["verification"]["ok"]:
                result["status"] = "wrong-copy"
                result["reason"] = f"copy differs from the source: {result['verification']}"
            say(f"  {rep.label}: copy verified: {result['verification']['ok']}")
    return result


# ---------------------------------------------------------------------------------------------- latency


async def profiled_catch_up(
    rep: BenchedReplicator,
    *,
    py_spy: str,
    raw: Path,
    profiler_log: Path,
    source_topic: str,
    records: int,
    record_size: int,
    source: Cluster,
    target: Cluster,
    startup_limit_s: float,
    catchup_limit_s: float,
) -> dict[str, Any]:
    """``catch_up`` with py-spy recording the replicator into ``raw`` from the first replicated record to the last
    (start-up and imports are not full throughput)."""
    profiler: list[subprocess.Popen[bytes]] = []

    def attach(proc: subprocess.Popen[bytes]) -> None:
        argv = [py_spy, "record", "--pid", str(proc.pid), "--rate", "100", "--format", "raw", "-o", str(raw)]
        profiler.append(spawn(argv, profiler_log))

    async def detach() -> None:
        for proc in profiler:
            # SIGINT (Ctrl-C): py-spy writes its output and exits
            await stop_process(proc, "py-spy", grace=20, sig=signal.SIGINT)

    try:
        return await catch_up(
            rep,
            source_topic=source_topic,
            records=records,
            record_size=record_size,
            source=source,
            target=target,
            startup_limit_s=startup_limit_s,
            catchup_limit_s=catchup_limit_s,
            on_first_record=attach,
            on_caught_up=detach,
        )
    finally:
        await detach()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        raise ValueError("no values")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class LatencyConsumer:
    """Consumes the target topic from given offsets; latency = receive wall clock - record timestamp."""

    def __init__(self, bootstrap: str, topic: str, start_offsets: dict[int, int]) -> None:
        self.topic = topic
        self.start_offsets = start_offsets
        self.latencies_ms: list[float] = []
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=1048576,
        )
        self._stop = asyncio.Event()

    async def run(self) -> None:
        await self._consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in self.start_offsets]
            self._consumer.assign(tps)
            for tp in tps:
                self._consumer.seek(tp, self.start_offsets[tp.partition])
            while not self._stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=200)
                now_ms = time.time() * 1000.0
                for messages in batches.values():
                    self.latencies_ms.extend(now_ms - m.timestamp for m in messages)
        finally:
            await self._consumer.stop()

    def stop(self) -> None:
        self._stop.set()


async def latency(
    rep: BenchedReplicator,
    *,
    stack: Stack,
    source: Cluster,
    target: Cluster,
    source_topic: str,
    partitions: int,
    record_size: int,
    rate_bytes_per_s: float,
    seconds: float,
    log_dir: Path,
    startup_limit_s: float,
) -> dict[str, Any]:
    """End-to-end latency at a fixed produce rate with the replicator already running and caught up."""
    records_per_s = max(1, round(rate_bytes_per_s / record_size))
    total = records_per_s * round(seconds)
    load_props = {"acks": "all", "linger.ms": "0", "batch.size": "16384", "compression.type": "none"}
    result: dict[str, Any] = {
        "replicator": rep.kind,
        "label": rep.label,
        "source_topic": source_topic,
        "partitions": partitions,
        "record_size": record_size,
        "rate_mb_per_s": rate_bytes_per_s / MB,
        "rate_records_per_s": records_per_s,
        "seconds": seconds,
        "records": total,
        "load_generator": {"tool": "ProducerPerformance --throughput", "producer_props": load_props},
        "measured_by": "aiokafka consumer on the target: receive wall clock minus record timestamp (CreateTime "
        "set by the source producer at send)",
    }
    await source.create_topic(source_topic, partitions)
    warm = partitions * 4
    producer = AIOKafkaProducer(bootstrap_servers=stack.source, acks="all")
    await producer.start()
    try:
        for i in range(warm):
            await producer.send_and_wait(source_topic, b"w" * record_size, partition=i % partitions)
    finally:
        await producer.stop()
    target_topic = rep.target_topic(source_topic)
    watch = TargetWatch(target, target_topic)
    t_start = time.monotonic()
    proc = rep.start([source_topic])
    result["settings"] = rep.describe()
    result["started_at"] = _utc(time.time())
    consumer: LatencyConsumer | None = None
    task: asyncio.Task[None] | None = None

    async def warmed() -> bool:
        return await watch.poll() >= warm

    try:
        t_ready = await wait_until(
            f"{rep.label}: warm-up records on the target",
            warmed,
            startup_limit_s,
            interval=0.1,
            progress=lambda: f"| {watch.count}/{warm} warm-up records",
            proc=proc,
            log=rep.log,
        )
        result["time_to_first_records_s"] = round(t_ready - t_start, 3)
        assert watch.partitions is not None
        start_offsets = await target.end_offsets(target_topic, watch.partitions, watch.consumer)
        consumer = LatencyConsumer(stack.target, target_topic, start_offsets)
        task = asyncio.create_task(consumer.run())
        cpu_window = CpuWindow(proc.pid)
        load = await producer_perf(
            stack.kafka_lib,
            bootstrap=stack.source,
            topic=source_topic,
            records=total,
            record_size=record_size,
            props=load_props,
            log=log_dir / f"latency-load-{rep.label}-{rep.token}.log",
            throughput=records_per_s,
            limit_s=seconds + 120,
        )
        result["load_generator"]["achieved"] = {k: load[k] for k in ("records_per_s", "mb_per_s", "latency_ms")}
        c = consumer

        async def all_seen() -> bool:
            if task is not None and task.done():
                task.result()
            return len(c.latencies_ms) >= total

        try:
            await wait_until(
                f"{rep.label}: all {total:,} latency records on the target",
                all_seen,
                60.0,
                interval=0.2,
                progress=lambda: f"| {len(c.latencies_ms):,}/{total:,} seen",
                proc=proc,
                log=rep.log,
            )
        except BenchError as exc:
            result["incomplete"] = str(exc).splitlines()[0]
        result["cpu_during_load"] = cpu_window.finish()
        values = sorted(c.latencies_ms)
        result["records_seen"] = len(values)
        if values:
            result.update(
                status="ok" if len(values) >= total else "partial",
                p50_ms=round(percentile(values, 0.50), 1),
                p99_ms=round(percentile(values, 0.99), 1),
                max_ms=round(values[-1], 1),
                mean_ms=round(sum(values) / len(values), 1),
            )
            say(
                f"  {rep.label}: latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                f"max {result['max_ms']} ms over {len(values):,} records"
            )
        else:
            result.update(status="failed", reason="no record reached the target during the measurement")
    except BenchError as exc:
        result.update(status="failed", reason=str(exc))
        say(f"  {rep.label}: latency FAILED: {str(exc).splitlines()[0]}")
    finally:
        await watch.close()
        if consumer is not None:
            consumer.stop()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        result["replicator_memory_kib"] = memory_kib(proc.pid)
        result["exit_code_after_stop"] = await rep.stop()
    return result


# ---------------------------------------------------------------------------------------------- scale


def fixed_rate_load(partitions: int, record_size: int, rate_bytes_per_s: float, seconds: float) -> dict[str, Any]:
    """The description of a fixed-rate load, as each scale result records it."""
    records_per_s = max(1, round(rate_bytes_per_s / record_size))
    return {
        "partitions": partitions,
        "record_size": record_size,
        "rate_mb_per_s": rate_bytes_per_s / MB,
        "seconds": seconds,
        "records": records_per_s * round(seconds),
    }


async def copy_under_load(
    load: dict[str, Any],
    *,
    stack: Stack,
    source_topic: str,
    watch: TargetWatch,
    proc: subprocess.Popen[bytes],
    pid: int,
    what: str,
    log: Path,
    load_log: Path,
) -> dict[str, Any]:
    """ProducerPerformance writes ``load`` into the source topic at its fixed rate; waits until the target holds
    every record the source holds. Returns the CPU of ``pid`` (and the brokers, the machine) over that time and its
    memory after, and how many records the source took when the load producer gave some up (its batches expire
    after 120 s: a source broker stalled by many new partitions)."""
    asked: int = load["records"]
    window = CpuWindow(pid)
    await producer_perf(
        stack.kafka_lib,
        bootstrap=stack.source,
        topic=source_topic,
        records=asked,
        record_size=load["record_size"],
        props={"acks": "all", "linger.ms": "5", "compression.type": "none"},
        log=load_log,
        throughput=max(1, round(load["rate_mb_per_s"] * MB / load["record_size"])),
        limit_s=load["seconds"] + 120,
    )
    async with Cluster("source", stack.source) as source:
        written = await source.total(source_topic, load["partitions"])
    shortfall: dict[str, Any] = {}
    if written < asked:
        say(f"  the load producer gave up {asked - written:,} of {asked:,} records; the source holds {written:,}")
        shortfall = {"load_records_written": written, "load_records_given_up": asked - written}
    total = written

    async def caught_up() -> bool:
        return await watch.poll() >= total

    await wait_until(
        f"{what}: {total:,} records on {load['partitions']} partitions",
        caught_up,
        120.0,
        interval=0.2,
        progress=lambda: f"| {watch.count:,}/{total:,}",
        proc=proc,
        log=log,
    )
    return {"cpu_during_load": window.finish(), "memory_kib": memory_kib(pid), **shortfall}


async def partitions_scale(
    rep: BenchedReplicator,
    *,
    stack: Stack,
    source: Cluster,
    target: Cluster,
    source_topic: str,
    partitions: int,
    record_size: int,
    rate_bytes_per_s: float,
    seconds: float,
    log_dir: Path,
    startup_limit_s: float,
) -> dict[str, Any]:
    """One replicator process on a topic of ``partitions`` partitions at a fixed produce rate: its CPU and
    memory once every partition is assigned and data flows (the per-partition cost of the engine)."""
    result: dict[str, Any] = {
        "replicator": rep.kind,
        **fixed_rate_load(partitions, record_size, rate_bytes_per_s, seconds),
    }
    await source.create_topic(source_topic, partitions)
    target_topic = rep.target_topic(source_topic)
    watch = TargetWatch(target, target_topic)
    t_start = time.monotonic()
    proc = rep.start([source_topic])
    result["settings"] = rep.describe()

    async def target_ready() -> bool:
        await watch.poll()
        return watch.partitions == partitions

    try:
        await wait_until(
            f"{rep.label}: target topic with {partitions} partitions",
            target_ready,
            startup_limit_s,
            interval=0.2,
            proc=proc,
            log=rep.log,
        )
        result["time_to_target_topic_s"] = round(time.monotonic() - t_start, 3)
        result["memory_kib_idle"] = memory_kib(proc.pid)
        result |= await copy_under_load(
            result,
            stack=stack,
            source_topic=source_topic,
            watch=watch,
            proc=proc,
            pid=proc.pid,
            what=rep.label,
            log=rep.log,
            load_log=log_dir / f"scale-load-{partitions}-{rep.token}.log",
        )
        result["status"] = "ok"
        say(
            f"  {rep.label} on {partitions} partitions: RSS {result['memory_kib'].get('VmRSS', 0) / 1024:.0f} MiB, "
            f"{result['cpu_during_load'].get('replicator_cores')} cores at {rate_bytes_per_s / MB:.2f} MB/s"
        )
    except BenchError as exc:
        result.update(status="failed", reason=str(exc))
        say(f"  {rep.label} on {partitions} partitions: FAILED: {str(exc).splitlines()[0]}")
    finally:
        await watch.close()
        result["exit_code_after_stop"] = await rep.stop()
    return result
