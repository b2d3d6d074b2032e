"""The multi-broker step (``--only multibroker``): profile A between two clusters of three brokers each.

The stack's clusters have one broker each, so every fetch and every produce goes to one leader. Production
clusters have several brokers, topics with replication factor 3 and ``min.insync.replicas=2``, so a replicator
fetches from several leaders and an ``acks=all`` produce waits for the followers. This step starts its own
source and target clusters (``dev.cluster.LocalCluster``: one KRaft controller and three brokers each, small
heaps, free ports, data under ``.run/bench/<run>/multibroker/``), measures the brokers' limit on them, runs tuned
MirrorMaker 2 and Ferry on profile A in interleaved rounds (each copy verified as the throughput step does), and
stops the clusters and deletes their data at the end, also when a step fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import BenchError, Stack, say, spawn, stop_process, wait_until
from bench.kafka import Cluster, consumer_perf, producer_perf
from bench.measure import catch_up
from bench.replicators import MirrorMaker2, make_replicator
from dev.cluster import LocalCluster

if TYPE_CHECKING:
    from bench.run import Bench

BROKERS = 3
# Production's choice (replication factor 3, acks=all, min.insync.replicas=2): every record the replicator
# writes is fetched by two followers before it is acknowledged, on the source as on the target.
REPLICATION_FACTOR = 3
HEAP = "384m"
BROKER_PROPERTIES = {
    "min.insync.replicas": "2",
    "default.replication.factor": str(REPLICATION_FACTOR),
    # LocalCluster's defaults are for fault tests (brokers leave and return within seconds); a bench broker
    # paused by a busy machine must not drop out of the ISR.
    "replica.lag.time.max.ms": "30000",
    "broker.session.timeout.ms": "18000",
    "broker.heartbeat.interval.ms": "2000",
}
REPLICATORS = ("mm2-tuned", "ferry")
# MM2's first record took up to 158 s on a busy 2-core machine running these 8 JVMs (the stack's: 6 s)
STARTUP_LIMIT_S = 300.0


class PrivateClusters:
    """The step's own source and target clusters; ``close`` stops every JVM and deletes the data."""

    def __init__(self, lib: Path, folder: Path) -> None:
        self.folder = folder
        self.source = LocalCluster(
            lib, folder / "source", brokers=BROKERS, heap=HEAP, broker_properties=BROKER_PROPERTIES
        )
        self.target = LocalCluster(
            lib, folder / "target", brokers=BROKERS, heap=HEAP, broker_properties=BROKER_PROPERTIES
        )
        self._starting: asyncio.Future[tuple[None, None]] | None = None

    async def start(self) -> None:
        say(f"starting two private clusters of {BROKERS} brokers (one controller each, -Xmx{HEAP}) in {self.folder}")
        starting = asyncio.gather(asyncio.to_thread(self.source.start), asyncio.to_thread(self.target.start))
        self._starting = starting
        # shielded: an interrupted run waits in close() for the threads, which could still be starting nodes
        await asyncio.shield(starting)

    def pids(self) -> dict[str, int]:
        return {f"{name}-{node}": pid for name, c in self.clusters() for node, pid in c.pids().items()}

    def clusters(self) -> tuple[tuple[str, LocalCluster], ...]:
        return (("source", self.source), ("target", self.target))

    async def close(self) -> None:
        """Stop every node and delete the data (each node's server.log stays in the run's log folder)."""
        if self._starting is not None:
            await asyncio.wait([self._starting])
        for _, cluster in self.clusters():
            await asyncio.to_thread(cluster.close)
        for data in self.folder.glob("*/*/data"):
            shutil.rmtree(data, ignore_errors=True)
        say(f"stopped the private clusters and deleted their data under {self.folder}")


async def _all_brokers(cluster: Cluster) -> bool:
    return await cluster.broker_count() >= BROKERS


def brokers_cores(cpu: dict[str, Any]) -> float | None:
    """The summed CPU of the private clusters' JVMs (controllers included) in a CPU window."""
    values = [v for k, v in cpu.items() if k.startswith(("source-", "target-")) and k.endswith("_cores")]
    return round(sum(values), 2) if values else None


async def limit(
    bench: Bench, clusters: PrivateClusters, *, topic: str, spec: dict[str, int], source: Cluster, target: Cluster
) -> dict[str, Any]:
    """The brokers' limit on these clusters: ProducerPerformance into fresh RF 3 target topics (each config of the
    throughput step, and two processes of the throughput config at once) and ConsumerPerformance from the source."""
    from bench.run import limit_producer_configs  # noqa: PLC0415 (bench.run imports this module)

    records, size, parts = spec["records"], spec["record_size"], spec["partitions"]
    lib = bench.stack.kafka_lib
    log_dir = bench.log_dir / "multibroker"
    out: dict[str, Any] = {"producers": {}}
    configs = limit_producer_configs(bench.tuned)

    async def produce(config: str, props: dict[str, str], count: int, writers: int) -> dict[str, Any]:
        limit_topic = f"bench-mb-limit-{bench.token}-{secrets.token_hex(3)}"
        await target.create_topic(limit_topic, parts, REPLICATION_FACTOR)
        try:
            runs = await asyncio.gather(
                *(
                    producer_perf(
                        lib,
                        bootstrap=clusters.target.bootstrap,
                        topic=limit_topic,
                        records=count,
                        record_size=size,
                        props=props,
                        log=log_dir / f"limit-producer-{config}-{i}.log",
                    )
                    for i in range(writers)
                )
            )
        finally:
            await target.delete_topics([limit_topic])
        if writers == 1:
            return runs[0]
        return {
            "writers": [dict(r) for r in runs],
            "records": sum(r["records"] for r in runs),
            "records_per_s": sum(r["records_per_s"] for r in runs),
            "mb_per_s": sum(r["mb_per_s"] for r in runs),
            "measure": f"sum of {writers} ProducerPerformance processes started together, each writing "
            f"{count:,} records into the same topic",
        }

    for config, props in configs.items():
        out["producers"][config] = await produce(config, props, records, 1)
        say(f"  multibroker limit: producer {config} {out['producers'][config]['mb_per_s']:.1f} MB/s")
    parallel = "throughput-x2"
    out["producers"][parallel] = await produce(parallel, configs["throughput"], max(1000, records // 2), 2)
    say(f"  multibroker limit: producer {parallel} {out['producers'][parallel]['mb_per_s']:.1f} MB/s")
    best = max(out["producers"], key=lambda c: out["producers"][c]["mb_per_s"])
    out["producer"] = dict(out["producers"][best], config=best)
    out["consumer"] = await consumer_perf(
        lib,
        bootstrap=clusters.source.bootstrap,
        topic=topic,
        records=records,
        record_size=size,
        group=f"bench-mb-limit-{bench.token}-{secrets.token_hex(3)}",
        log=log_dir / "limit-consumer.log",
    )
    out["limit_mb_per_s"] = min(out["producer"]["mb_per_s"], out["consumer"]["mb_per_s"])
    out["limit_is"] = (
        "min(fastest writer into the target: each ProducerPerformance config, and two processes at once; "
        "ConsumerPerformance from the source)"
    )
    say(f"  multibroker limit: producer {out['producer']['mb_per_s']:.1f}, consumer {out['consumer']['mb_per_s']:.1f}")
    return out


async def step(bench: Bench) -> None:
    """Profile A on two private three-broker clusters: the limit, then tuned MM2 and Ferry in rounds."""
    from bench.run import BASE_PROFILES, aggregate, preload_props  # noqa: PLC0415 (bench.run imports this module)

    base = BASE_PROFILES["A"]
    spec = {**base, "records": max(1000, round(base["records"] * bench.args.scale))}
    kinds = [k for k in REPLICATORS if k in bench.args.replicators]
    out: dict[str, Any] = {
        "what": "profile A between two private clusters of 3 brokers each (KRaft, one controller each); "
        "topics with replication factor 3 and min.insync.replicas=2, so fetches and acks=all produces fan "
        "out over three leaders and wait for two followers",
        "brokers_per_cluster": BROKERS,
        "replication_factor": REPLICATION_FACTOR,
        "replication_factor_why": "production's setting (RF 3, acks=all, min.insync.replicas=2); this machine "
        "holds it (8 JVMs of -Xmx384m)",
        "broker_heap": HEAP,
        "broker_properties": BROKER_PROPERTIES,
        "profile": spec,
        "rounds": bench.args.repeat,
        "replicators": kinds,
    }
    bench.results["multibroker"] = out
    clusters = PrivateClusters(bench.stack.kafka_lib, bench.log_dir / "multibroker")
    # SIGTERM (timeout, kill <pid>) cancels the step like Ctrl-C does, so the finally below stops the clusters
    loop = asyncio.get_running_loop()
    this_step = asyncio.current_task()
    if this_step is not None:
        loop.add_signal_handler(signal.SIGTERM, this_step.cancel)
    try:
        await clusters.start()
        out["clusters"] = {name: c.bootstrap for name, c in clusters.clusters()}
        bench.save()
        private = dataclasses.replace(bench.stack, source=clusters.source.bootstrap, target=clusters.target.bootstrap)
        async with Cluster("source", private.source) as source, Cluster("target", private.target) as target:
            for cluster in (source, target):
                # a broker listens before it has registered: RF 3 needs all three in the metadata
                await wait_until(
                    f"{BROKERS} brokers registered in the private {cluster.name} cluster",
                    functools.partial(_all_brokers, cluster),
                    120.0,
                    interval=0.5,
                )
            topic = f"bench-mb-a-{bench.token}-{secrets.token_hex(3)}"
            await source.create_topic(topic, spec["partitions"], REPLICATION_FACTOR)
            out["source_partitions"] = await source.leaders(topic)
            say(f"preloading {spec['records']:,} x {spec['record_size']} B into {topic} (RF {REPLICATION_FACTOR})")
            out["preload"] = await producer_perf(
                bench.stack.kafka_lib,
                bootstrap=private.source,
                topic=topic,
                records=spec["records"],
                record_size=spec["record_size"],
                props=preload_props(spec),
                log=bench.log_dir / "multibroker" / "preload.log",
            )
            on_source = await source.total(topic, spec["partitions"])
            if on_source != spec["records"]:
                raise BenchError(f"source topic {topic} holds {on_source} records, expected {spec['records']}")
            bench.save()
            out["limit"] = await limit(bench, clusters, topic=topic, spec=spec, source=source, target=target)
            bench.save()
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            for round_index in range(bench.args.repeat):
                for kind in kinds:
                    say(f"-- multibroker round {round_index + 1}/{bench.args.repeat}: {kind}")
                    runs[kind].append(
                        await one_round(
                            bench,
                            private,
                            kind=kind,
                            topic=topic,
                            spec=spec,
                            clusters=clusters,
                            source=source,
                            target=target,
                        )
                    )
                    out["throughput"] = {k: aggregate(v) for k, v in runs.items() if v}
                    bench.save()
            out["ratios"] = ratios(out)
            say(f"  multibroker ratios: {out['ratios']}")
            if "ferry" in kinds:
                out["ferry_profile"] = await profiled_round(
                    bench, private, topic=topic, spec=spec, clusters=clusters, source=source, target=target
                )
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await clusters.close()
        out["clusters_stopped"] = True
        bench.save()


async def one_round(
    bench: Bench,
    private: Stack,
    *,
    kind: str,
    topic: str,
    spec: dict[str, int],
    clusters: PrivateClusters,
    source: Cluster,
    target: Cluster,
) -> dict[str, Any]:
    rep = make_replicator(kind, private, bench.log_dir / "multibroker", bench.tuned)
    if isinstance(rep, MirrorMaker2):
        rep.replication_factor = REPLICATION_FACTOR
    reason = rep.unavailable()
    if reason is not None:
        return {"replicator": kind, "status": "skipped", "reason": reason}
    try:
        result = await catch_up(
            rep,
            source_topic=topic,
            records=spec["records"],
            record_size=spec["record_size"],
            source=source,
            target=target,
            startup_limit_s=STARTUP_LIMIT_S,
            catchup_limit_s=bench.args.catchup_limit,
            brokers=clusters.pids(),
        )
        if result.get("cpu_in_window"):
            result["cpu_in_window"]["brokers_cores"] = brokers_cores(result["cpu_in_window"])
        if await target.partitions(rep.target_topic(topic)):
            result["target_partitions"] = await target.leaders(rep.target_topic(topic))
        return result
    finally:
        await bench.cleanup(rep, source, target)


async def profiled_round(
    bench: Bench,
    private: Stack,
    *,
    topic: str,
    spec: dict[str, int],
    clusters: PrivateClusters,
    source: Cluster,
    target: Cluster,
) -> dict[str, Any]:
    """An extra Ferry round with py-spy attached from the first record to the last (``--idle``: waiting shows
    too, so a replicator held up by the brokers shows where it waits); its throughput is not used."""
    from bench.run import profile_summary  # noqa: PLC0415 (bench.run imports this module)

    tool = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if tool is None:
        return {"status": "skipped", "reason": "py-spy is not installed"}
    log_dir = bench.log_dir / "multibroker"
    rep = make_replicator("ferry", private, log_dir, bench.tuned)
    raw = log_dir / f"py-spy-{rep.token}.txt"
    profiler: list[subprocess.Popen[bytes]] = []

    def attach(proc: subprocess.Popen[bytes]) -> None:
        argv = [tool, "record", "--pid", str(proc.pid), "--rate", "100", "--idle", "--format", "raw", "-o", str(raw)]
        profiler.append(spawn(argv, log_dir / "py-spy.log"))

    async def detach() -> None:
        for proc in profiler:
            await stop_process(proc, "py-spy", grace=20, sig=signal.SIGINT)

    say("-- multibroker: an extra Ferry round under py-spy (its throughput is not used)")
    try:
        run = await catch_up(
            rep,
            source_topic=topic,
            records=spec["records"],
            record_size=spec["record_size"],
            source=source,
            target=target,
            startup_limit_s=STARTUP_LIMIT_S,
            catchup_limit_s=bench.args.catchup_limit,
            on_first_record=attach,
            on_caught_up=detach,
            brokers=clusters.pids(),
        )
    finally:
        await detach()
        await bench.cleanup(rep, source, target)
    out: dict[str, Any] = {"note": "separate round with py-spy --idle; throughput not used", "raw_profile": str(raw)}
    out["run"] = {k: run.get(k) for k in ("status", "mb_per_s", "reason", "cpu_in_window")}
    out.update(profile_summary(raw))
    return out


def ratios(out: dict[str, Any]) -> dict[str, Any]:
    throughput = out.get("throughput", {})
    ferry = throughput.get("ferry", {}).get("mb_per_s")
    mm2 = throughput.get("mm2-tuned", {}).get("mb_per_s")
    cap = out.get("limit", {}).get("limit_mb_per_s")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    per_round = [
        round(f["mb_per_s"] / m["mb_per_s"], 2)
        for f, m in zip(
            throughput.get("ferry", {}).get("runs", []), throughput.get("mm2-tuned", {}).get("runs", []), strict=False
        )
        if f.get("status") == "ok" and m.get("status") == "ok"
    ]
    return {
        "ferry_over_mm2_tuned": ratio(ferry, mm2),
        "ferry_over_mm2_tuned_per_round": per_round,
        "ferry_over_mm2_tuned_median_of_rounds": statistics.median(per_round) if per_round else None,
        "ferry_over_limit": ratio(ferry, cap),
        "mm2_tuned_over_limit": ratio(mm2, cap),
    }
