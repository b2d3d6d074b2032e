"""Ferry's benchmark: ``python -m bench.run`` (full) or ``python -m bench.run --quick``.

Steps (each can be chosen with --only):
  limit       ProducerPerformance into the target and ConsumerPerformance from the source (per profile)
  throughput  catch-up of a preloaded source topic by MM2 default, MM2 tuned and Ferry (per profile)
  latency     end-to-end latency at a fixed produce rate, MM2 tuned and Ferry
  control     ListReplicators / DescribeReplicator latency at 100 req/s and create-to-RUNNING (needs the API)
  scale       fleet-worker CPU/memory at 100 and 1,000 partitions (a private control plane and worker), and
              one engine process at the same counts
  profile     py-spy profile of Ferry at full throughput (needs the engine and py-spy)
  scaleout    one replicator copied by two engine processes (partition slices) against one (bench/scaleout.py)
  multibroker profile A between two private 3-broker clusters, RF 3: limit, MM2 tuned and Ferry; not in the
              default run, --only multibroker (bench/multibroker.py)
Steps run only when named in --only (their own budget; see docs/performance.md):
  compression Ferry against tuned MM2 for every target codec, from an uncompressed and a same-codec source
  eos         Ferry exactly-once against MM2 with exactly-once source support (profile A)

Writes bench/results/<UTC time>-<mode>.json (rewritten after every step, so a failed run keeps what it
measured), prints the summary table, and (full runs, or --docs) rewrites the results section of
docs/performance.md. Needs the local stack: python -m dev.stack up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import multibroker, report, scaleout
from bench.common import (
    MB,
    RESULTS_DIR,
    ROOT,
    BenchError,
    Stack,
    load_stack,
    machine_info,
    say,
    versions,
)
from bench.compression import compression_matrix
from bench.control_plane import control_plane
from bench.exactly_once import exactly_once
from bench.fleet import create_to_running_fleet, fleet_worker_scale
from bench.kafka import Cluster, consumer_perf, producer_perf
from bench.limits import parallel_producers
from bench.measure import catch_up, latency, partitions_scale, profiled_catch_up
from bench.replicators import (
    TUNED,
    BenchedReplicator,
    FerryEngine,
    java_consumer_props,
    java_producer_props,
    make_replicator,
    tuned_settings,
)

STEPS = ("limit", "throughput", "latency", "control", "scale", "profile", "scaleout")
# Steps run only when named in --only (heavy private infrastructure, or a budget of their own).
OPTIONAL_STEPS = ("multibroker", "compression", "eos")
REPLICATORS = ("mm2-default", "mm2-tuned", "ferry", "ferry-decode", "ferry-baseline")
# The targets compare Ferry with tuned MM2, so `make bench` runs those two and keeps its 30-minute budget (all four
# took 34 minutes); mm2-default and ferry-decode (forwarding off) when named, ferry-baseline with --baseline.
DEFAULT_REPLICATORS = ("mm2-tuned", "ferry")
# source_batch_bytes: the batch.size the source topic is written with. A and B as an application's producer
# writes with Kafka's defaults (16 KiB batches); C as a producer tuned for throughput (512 KiB). Ferry forwards
# source batches as they are, so its figure depends on them; MirrorMaker 2 re-batches every record.
BASE_PROFILES: dict[str, dict[str, int]] = {
    "A": {"records": 1_000_000, "record_size": 1024, "partitions": 8, "source_batch_bytes": 16384},
    "B": {"records": 5_000_000, "record_size": 100, "partitions": 8, "source_batch_bytes": 16384},
    "C": {"records": 5_000_000, "record_size": 100, "partitions": 8, "source_batch_bytes": 512 * 1024},
}
QUICK_SCALE = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small run for development (scale {QUICK_SCALE})")
    parser.add_argument("--scale", type=float, default=None, help="multiply profile record counts and latency rate")
    parser.add_argument(
        "--only", default=",".join(STEPS), help=f"comma list of steps: {','.join(STEPS + OPTIONAL_STEPS)}"
    )
    parser.add_argument("--profiles", default="A,B,C", help="comma list of throughput profiles (A, B, C)")
    parser.add_argument(
        "--replicators", default=",".join(DEFAULT_REPLICATORS), help="comma list: " + ",".join(REPLICATORS)
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout (e.g. a worktree of main) whose engine runs as ferry-baseline, for a before/after",
    )
    parser.add_argument(
        "--profile-of", default="A", choices=sorted(BASE_PROFILES), help="the throughput profile py-spy watches (A)"
    )
    parser.add_argument("--latency-rate-mb", type=float, default=5.0, help="produce rate in MB/s before --scale")
    parser.add_argument("--latency-seconds", type=float, default=None, help="default 60 (quick: 15)")
    parser.add_argument("--parallelism", type=int, default=TUNED["parallelism"], help="MM2 tasks.max = Ferry procs")
    parser.add_argument("--catchup-limit", type=float, default=None, help="seconds per catch-up (default 420/120)")
    parser.add_argument("--repeat", type=int, default=None, help="catch-up rounds per replicator (3; quick: 1)")
    parser.add_argument("--api-rate", type=float, default=100.0, help="requests/s for the describe/list latency")
    parser.add_argument("--docs", dest="docs", action="store_true", default=None, help="write docs/performance.md")
    parser.add_argument("--no-docs", dest="docs", action="store_false", help="do not touch docs/performance.md")
    args = parser.parse_args(argv)
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else 1.0
    if args.latency_seconds is None:
        args.latency_seconds = 15.0 if args.quick else 60.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.catchup_limit is None:
        args.catchup_limit = 120.0 if args.quick else 420.0
    if args.docs is None:
        args.docs = not args.quick and args.scale == 1.0
    args.only = [s for s in args.only.split(",") if s]
    args.profiles = [p for p in args.profiles.split(",") if p]
    args.replicators = [r for r in args.replicators.split(",") if r]
    if "ferry-baseline" in args.replicators and args.baseline is None:
        parser.error("--replicators ferry-baseline needs --baseline CHECKOUT")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
    for name, values, allowed in (
        ("--only", args.only, STEPS + OPTIONAL_STEPS),
        ("--profiles", args.profiles, BASE_PROFILES),
        ("--replicators", args.replicators, REPLICATORS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad:
            parser.error(f"{name}: unknown {bad}; choose from {list(allowed)}")
    return args


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One replicator's catch-up runs of a profile: the median of the successful runs is its figure."""
    if runs and runs[0].get("status") == "skipped":
        return {"status": "skipped", "reason": runs[0]["reason"], "runs": []}
    ok = [r for r in runs if r.get("status") == "ok"]
    out: dict[str, Any] = {"runs": runs, "rounds": len(runs), "rounds_ok": len(ok)}
    if not ok:
        out.update(status="failed", reason=runs[-1].get("reason", "no successful run"))
        return out
    out["status"] = "ok" if len(ok) == len(runs) else "partial"
    if len(ok) < len(runs):
        out["reason"] = "; ".join(str(r.get("reason", "")).splitlines()[0] for r in runs if r not in ok)
    for key in ("mb_per_s", "records_per_s", "time_to_first_record_s", "catch_up_s"):
        values = [float(r[key]) for r in ok if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_all"] = [round(v, 3) for v in values]
    cores = [r["cpu_in_window"].get("replicator_cores") for r in ok if r.get("cpu_in_window")]
    if all(c is not None for c in cores) and cores:
        out["replicator_cores_median"] = statistics.median(cores)
    out["figure"] = "median of the successful rounds"
    return out


def limit_producer_configs(tuned: dict[str, Any]) -> dict[str, dict[str, str]]:
    """ProducerPerformance configs for the limit: Ferry's own settings, and one built for throughput (same
    acks and idempotence, 5 requests in flight, 1 MiB batches). The faster one is the producer limit."""
    ferry = java_producer_props(tuned)
    return {
        "ferry-settings": ferry,
        "throughput": dict(
            ferry, **{"max.in.flight.requests.per.connection": "5", "batch.size": "1048576", "linger.ms": "10"}
        ),
    }


def rss_kib_per_partition(counts: tuple[int, int], low: dict[str, Any], high: dict[str, Any]) -> float | None:
    """RSS growth per partition between the two counts of a scale step; None unless both measurements are ok."""
    if low.get("status") != "ok" or high.get("status") != "ok":
        return None
    return float(high["memory_kib"]["VmRSS"] - low["memory_kib"]["VmRSS"]) / (counts[1] - counts[0])


def preload_props(profile: dict[str, int]) -> dict[str, str]:
    """How the source topic is written: the Java producer's defaults but for the profile's batch size."""
    return {
        "acks": "all",
        "batch.size": str(profile["source_batch_bytes"]),
        "linger.ms": "5",
        "compression.type": "none",
    }


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ("-quick" if args.quick else "")
        self.token = secrets.token_hex(4)
        self.log_dir = ROOT / ".run" / "bench" / self.run_id
        self.log_dir.mkdir(parents=True, exist_ok=True)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.path = RESULTS_DIR / f"{self.run_id}.json"
        tuned, tuned_source = tuned_settings()
        self.tuned = dict(tuned, parallelism=args.parallelism)
        self.tuned_source = tuned_source
        self.t0 = time.monotonic()
        self.profiles = {
            name: {**spec, "records": max(1000, round(spec["records"] * args.scale))}
            for name, spec in BASE_PROFILES.items()
            if name in args.profiles
        }
        lat_rate = args.latency_rate_mb * MB * args.scale
        self.results: dict[str, Any] = {
            "schema": 1,
            "run_id": self.run_id,
            "mode": "quick" if args.quick else ("full" if args.scale == 1.0 else "scaled"),
            "scale": args.scale,
            "command": [sys.executable, "-m", "bench.run", *sys.argv[1:]],
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(),
            "versions": versions(stack.kafka_lib),
            "stack": {"source": stack.source, "target": stack.target, "api": stack.api},
            "logs": str(self.log_dir),
            "settings": {
                "steps": args.only,
                "replicators": args.replicators,
                "tuned": self.tuned,
                "tuned_from": self.tuned_source,
                "tuned_as_java_producer": java_producer_props(self.tuned),
                "tuned_as_java_consumer": java_consumer_props(self.tuned),
                "profiles": self.profiles,
                "preload_producer_props": {name: preload_props(spec) for name, spec in self.profiles.items()},
                "rounds": args.repeat,
                "catch_up": {
                    "measure": "poll of summed target end offsets every 0.1 s; "
                    "throughput = records copied after the first observation / time from then to all records",
                    "limit_s": args.catchup_limit,
                },
                "latency": {
                    "rate_mb_per_s": lat_rate / MB,
                    "record_size": 1024,
                    "partitions": 8,
                    "seconds": args.latency_seconds,
                },
                "control": {"rate_per_s": args.api_rate, "seconds": 5.0 if args.quick else 20.0},
                "mb": "10^6 bytes",
            },
            "preload": {},
            "limit": {},
            "throughput": {},
            "latency": {},
            "control_plane": {},
            "partitions_scale": {},
            "skipped": [],
            "errors": [],
            "steps_seconds": {},
        }

    # ------------------------------------------------------------------------------------------ bookkeeping

    def save(self) -> None:
        self.results["ratios"] = report.ratios(self.results)
        self.results["duration_s"] = round(time.monotonic() - self.t0, 1)
        self.results["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        tmp.replace(self.path)

    def skip(self, what: str, reason: str) -> None:
        say(f"skipped {what}: {reason}")
        self.results["skipped"].append({"what": what, "reason": reason})

    def error(self, what: str, exc: BaseException) -> None:
        say(f"ERROR in {what}: {exc}")
        self.results["errors"].append({"what": what, "error": f"{type(exc).__name__}: {exc}"})

    # ------------------------------------------------------------------------------------------ steps

    async def run(self) -> None:
        say(f"run {self.run_id}: steps {self.args.only}, profiles {list(self.profiles)}, scale {self.args.scale}")
        say(f"results: {self.path}; logs: {self.log_dir}")
        self.save()
        async with Cluster("source", self.stack.source) as source, Cluster("target", self.stack.target) as target:
            if {"limit", "throughput"} & set(self.args.only):
                for name, spec in self.profiles.items():
                    await self.timed(f"profile {name}", self.profile(name, spec, source, target))
            if "latency" in self.args.only:
                await self.timed("latency", self.latency(source, target))
            if "profile" in self.args.only:
                await self.timed("profile", self.py_spy(source, target))
            if "scaleout" in self.args.only:
                await self.timed("scaleout", scaleout.step(self, source, target))
            if "compression" in self.args.only:
                await self.timed("compression", compression_matrix(self, source, target))
            if "eos" in self.args.only:
                await self.timed("exactly-once", exactly_once(self, source, target))
        if "control" in self.args.only:
            await self.timed("control", self.control())
        if "scale" in self.args.only:
            async with Cluster("source", self.stack.source) as source, Cluster("target", self.stack.target) as target:
                await self.timed("fleet scale", self.fleet_scale(source, target))
                await self.timed("scale", self.scale(source, target))
        if "multibroker" in self.args.only:
            await self.timed("multibroker", multibroker.step(self))
        self.save()

    async def timed(self, name: str, coro: Any) -> None:
        start = time.monotonic()
        say(f"== {name} ({time.monotonic() - self.t0:.0f}s into the run)")
        try:
            await coro
        except (BenchError, OSError, RuntimeError, ValueError) as exc:
            self.error(name, exc)
        self.results["steps_seconds"][name] = round(time.monotonic() - start, 1)
        self.save()

    async def profile(self, name: str, spec: dict[str, int], source: Cluster, target: Cluster) -> None:
        records, size, parts = spec["records"], spec["record_size"], spec["partitions"]
        topic = f"bench-{name.lower()}-{self.token}-{secrets.token_hex(3)}"
        lib = self.stack.kafka_lib
        await source.create_topic(topic, parts)
        try:
            say(f"preloading {records:,} x {size} B records into {topic} ({parts} partitions) on the source")
            preload = await producer_perf(
                lib,
                bootstrap=self.stack.source,
                topic=topic,
                records=records,
                record_size=size,
                props=preload_props(spec),
                log=self.log_dir / f"preload-{name}.log",
            )
            on_source = await source.total(topic, parts)
            preload["records_on_source"] = on_source
            self.results["preload"][name] = preload
            if on_source != records:
                raise BenchError(f"source topic {topic} holds {on_source} records, expected {records}")
            self.save()
            if "limit" in self.args.only:
                await self.limit(name, topic, spec, target)
            if "throughput" in self.args.only:
                runs: dict[str, Any] = {}
                self.results["throughput"][name] = runs
                # rounds interleave the replicators, so a burst of background load hits all of them alike
                for round_no in range(1, self.args.repeat + 1):
                    say(f"-- profile {name}, round {round_no}/{self.args.repeat}")
                    for kind in self.args.replicators:
                        if runs.get(kind, {}).get("status") == "skipped":
                            continue
                        run = await self.one_catch_up(kind, topic, spec, source, target)
                        runs[kind] = aggregate([*runs.get(kind, {}).get("runs", []), run])
                        self.save()
        finally:
            await source.delete_topics([topic])

    async def limit(self, name: str, topic: str, spec: dict[str, int], target: Cluster) -> None:
        records, size, parts = spec["records"], spec["record_size"], spec["partitions"]
        out: dict[str, Any] = {}
        self.results["limit"][name] = out
        producers: dict[str, Any] = {}
        out["producers"] = producers
        for config, props in limit_producer_configs(self.tuned).items():
            limit_topic = f"bench-limit-{name.lower()}-{self.token}-{secrets.token_hex(3)}"
            await target.create_topic(limit_topic, parts)
            try:
                producers[config] = await producer_perf(
                    self.stack.kafka_lib,
                    bootstrap=self.stack.target,
                    topic=limit_topic,
                    records=records,
                    record_size=size,
                    props=props,
                    log=self.log_dir / f"limit-producer-{name}-{config}.log",
                )
            finally:
                await target.delete_topics([limit_topic])
            self.save()
        parallel_topic = f"bench-limit-{name.lower()}-{self.token}-{secrets.token_hex(3)}"
        try:
            producers["parallel"] = await parallel_producers(
                self.stack.kafka_lib,
                target=target,
                topic=parallel_topic,
                partitions=parts,
                records=records,
                record_size=size,
                base_props=java_producer_props(self.tuned),
                log_dir=self.log_dir,
                name=name,
            )
        finally:
            await target.delete_topics([parallel_topic])
        self.save()
        best = max(producers, key=lambda c: producers[c]["mb_per_s"])
        out["producer"] = dict(producers[best], config=best)
        self.save()
        out["consumer"] = await consumer_perf(
            self.stack.kafka_lib,
            bootstrap=self.stack.source,
            topic=topic,
            records=records,
            record_size=size,
            group=f"bench-limit-{self.token}-{secrets.token_hex(3)}",
            log=self.log_dir / f"limit-consumer-{name}.log",
        )
        out["limit_mb_per_s"] = min(out["producer"]["mb_per_s"], out["consumer"]["mb_per_s"])
        out["limit_records_per_s"] = min(out["producer"]["records_per_s"], out["consumer"]["records_per_s"])
        out["limit_is"] = "min(faster ProducerPerformance config into the target, ConsumerPerformance from the source)"
        say(
            f"  limit {name}: producer {out['producer']['mb_per_s']:.1f} MB/s, "
            f"consumer {out['consumer']['mb_per_s']:.1f} MB/s"
        )

    async def one_catch_up(
        self, kind: str, topic: str, spec: dict[str, int], source: Cluster, target: Cluster
    ) -> dict[str, Any]:
        rep = make_replicator(kind, self.stack, self.log_dir, self.tuned, baseline=self.args.baseline)
        reason = rep.unavailable()
        if reason is not None:
            self.skip(f"throughput {kind}", reason)
            return {"replicator": kind, "status": "skipped", "reason": reason, "runs": []}
        say(f"-- {kind}: catch-up of {spec['records']:,} records from {topic}")
        try:
            return await catch_up(
                rep,
                source_topic=topic,
                records=spec["records"],
                record_size=spec["record_size"],
                source=source,
                target=target,
                startup_limit_s=420.0,  # not measured; MM2 took over 180 s to start at load 30
                catchup_limit_s=self.args.catchup_limit,
            )
        finally:
            await self.cleanup(rep, source, target)

    async def cleanup(self, rep: BenchedReplicator, source: Cluster, target: Cluster) -> None:
        try:
            deleted = await rep.cleanup(source, target)
            say(f"  cleaned up {rep.label}: deleted {sum(len(v) for v in deleted.values())} topics")
        except (BenchError, OSError, RuntimeError) as exc:
            self.error(f"cleanup of {rep.label} (token {rep.token})", exc)

    async def latency(self, source: Cluster, target: Cluster) -> None:
        spec = self.results["settings"]["latency"]
        for kind in ("mm2-tuned", "ferry"):
            if kind not in self.args.replicators:
                continue
            rep = make_replicator(kind, self.stack, self.log_dir, self.tuned, baseline=self.args.baseline)
            reason = rep.unavailable()
            if reason is not None:
                self.skip(f"latency {kind}", reason)
                self.results["latency"][kind] = {"status": "skipped", "reason": reason}
                continue
            say(f"-- {kind}: latency at {spec['rate_mb_per_s']:.2f} MB/s for {spec['seconds']:.0f}s")
            topic = f"bench-lat-{rep.token}"  # contains the run token: the cleanup deletes it
            try:
                self.results["latency"][kind] = await latency(
                    rep,
                    stack=self.stack,
                    source=source,
                    target=target,
                    source_topic=topic,
                    partitions=spec["partitions"],
                    record_size=spec["record_size"],
                    rate_bytes_per_s=spec["rate_mb_per_s"] * MB,
                    seconds=spec["seconds"],
                    log_dir=self.log_dir,
                    startup_limit_s=180.0,
                )
            finally:
                await self.cleanup(rep, source, target)
            self.save()

    def scale_load(self, what: str) -> tuple[tuple[int, int], dict[str, Any]]:
        """The two partition counts of a scale step and the fixed-rate load it runs at each (recorded as given)."""
        counts = (10, 100) if self.args.quick else (100, 1000)
        return counts, {
            "partition_counts": list(counts),
            "rate_mb_per_s": 2.0 * self.args.scale if self.args.quick else 2.0,
            "record_size": 1024,
            "seconds": 10.0 if self.args.quick else 20.0,
            "what": what,
        }

    async def fleet_scale(self, source: Cluster, target: Cluster) -> None:
        counts, spec = self.scale_load(
            "a private control plane (own database, Celery queue, Redis database; this checkout's API and "
            "beat) and one fresh fleet worker (Celery) per count, replicating one topic of N partitions created "
            "through the API with boto3 while ProducerPerformance writes at a fixed rate; the worker's CPU over "
            "the load, its RSS idle before the replicator and after the load"
        )
        self.results["settings"]["fleet_scale"] = spec
        out = await fleet_worker_scale(
            stack=self.stack,
            source=source,
            target=target,
            counts=counts,
            record_size=spec["record_size"],
            rate_bytes_per_s=spec["rate_mb_per_s"] * MB,
            seconds=spec["seconds"],
            log_dir=self.log_dir,
        )
        self.results["fleet_scale"] = out
        low, high = (out.get(str(c), {}) for c in counts)
        per_partition = rss_kib_per_partition(counts, low, high)
        if per_partition is not None:
            idle = statistics.mean(e["memory_kib_idle_worker"]["VmRSS"] for e in (low, high))
            out["memory_kib_per_partition"] = round(per_partition, 1)
            out["memory_mib_idle_worker"] = round(idle / 1024, 1)
            say(f"  fleet worker memory: {per_partition:.0f} KiB per partition; idle worker {idle / 1024:.0f} MiB")

    async def scale(self, source: Cluster, target: Cluster) -> None:
        counts, spec = self.scale_load(
            "one engine process (python -m workers.engine) replicating one topic of N partitions while "
            "ProducerPerformance writes at a fixed rate; CPU over the load, RSS after it"
        )
        self.results["settings"]["partitions_scale"] = spec
        out: dict[str, Any] = {}
        self.results["partitions_scale"] = out
        for count in counts:
            rep = make_replicator("ferry", self.stack, self.log_dir, self.tuned)
            reason = rep.unavailable()
            if reason is not None:
                self.skip(f"scale ferry engine {count} partitions", reason)
                out[str(count)] = {"status": "skipped", "reason": reason}
                continue
            say(f"-- ferry engine on {count} partitions")
            try:
                out[str(count)] = await partitions_scale(
                    rep,
                    stack=self.stack,
                    source=source,
                    target=target,
                    source_topic=f"bench-scale-{count}-{rep.token}",
                    partitions=count,
                    record_size=spec["record_size"],
                    rate_bytes_per_s=spec["rate_mb_per_s"] * MB,
                    seconds=spec["seconds"],
                    log_dir=self.log_dir,
                    startup_limit_s=180.0,
                )
            finally:
                await self.cleanup(rep, source, target)
            self.save()
        low, high = (out.get(str(c), {}) for c in counts)
        per_partition = rss_kib_per_partition(counts, low, high)
        if per_partition is not None:
            out["memory_kib_per_partition"] = round(per_partition, 1)
            out["memory_mib_base"] = round((low["memory_kib"]["VmRSS"] - per_partition * counts[0]) / 1024, 1)
            say(f"  engine memory: {per_partition:.0f} KiB per partition above a base of {out['memory_mib_base']} MiB")

    async def control(self) -> None:
        settings = self.results["settings"]["control"]
        self.results["control_plane"] = await asyncio.to_thread(
            control_plane,
            self.stack,
            rate=settings["rate_per_s"],
            seconds=settings["seconds"],
            log_dir=self.log_dir,
        )
        say("-- create to RUNNING, one replicator after another, on a private control plane with one fleet worker")
        self.results["control_plane"]["create_to_running"] = await create_to_running_fleet(
            self.stack, count=2 if self.args.quick else 20, limit_s=60.0, log_dir=self.log_dir
        )
        for key, entry in self.results["control_plane"].items():
            if entry.get("status") == "skipped":
                self.skip(f"control plane {key}", entry["reason"])

    async def py_spy(self, source: Cluster, target: Cluster) -> None:
        """A py-spy profile of the Ferry engine during a catch-up of ``--profile-of`` (a separate, extra run)."""
        rep = make_replicator("ferry", self.stack, self.log_dir, self.tuned)
        assert isinstance(rep, FerryEngine)
        reason = rep.unavailable()
        py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if reason is None and py_spy is None:
            reason = "py-spy is not installed (PyPI serves py-spy 0.4.3; it belongs in the dev extra)"
        if reason is not None:
            self.skip("profile (py-spy of Ferry at full throughput)", reason)
            self.results["profile"] = {"status": "skipped", "reason": reason}
            return
        # A (1 KiB records in default-sized source batches, every record decoded) is the commonest case; B (100 B
        # records) is where per-record costs show most.
        spec = dict(BASE_PROFILES[self.args.profile_of])
        spec["records"] = max(1000, round(spec["records"] * self.args.scale))
        topic = f"bench-prof-{self.token}-{secrets.token_hex(3)}"
        await source.create_topic(topic, spec["partitions"])
        out: dict[str, Any] = {
            "tool": py_spy,
            "profile_of": self.args.profile_of,
            "note": "separate run; its throughput is not used (profiler overhead)",
        }
        self.results["profile"] = out
        try:
            await producer_perf(
                self.stack.kafka_lib,
                bootstrap=self.stack.source,
                topic=topic,
                records=spec["records"],
                record_size=spec["record_size"],
                props=preload_props(spec),
                log=self.log_dir / "preload-profile.log",
            )
            raw = self.log_dir / f"py-spy-{rep.token}.txt"
            run = await profiled_catch_up(
                rep,
                py_spy=py_spy or "py-spy",
                raw=raw,
                profiler_log=self.log_dir / "py-spy.log",
                source_topic=topic,
                records=spec["records"],
                record_size=spec["record_size"],
                source=source,
                target=target,
                startup_limit_s=180.0,
                catchup_limit_s=self.args.catchup_limit,
            )
            out["run"] = {k: run.get(k) for k in ("status", "mb_per_s", "records_per_s", "reason")}
            out["raw_profile"] = str(raw)
            out.update(profile_summary(raw))
            out["status"] = "ok" if out["top_functions_self"] else "failed"
            if not out["top_functions_self"]:
                out["reason"] = f"py-spy wrote no samples; see {self.log_dir / 'py-spy.log'}"
        finally:
            await source.delete_topics([topic])
            await self.cleanup(rep, source, target)


PROFILE_AREAS = (
    ("workers/engine", "Ferry engine code"),
    ("aiokafka/producer", "aiokafka producer (batch building, sending)"),
    ("aiokafka/consumer", "aiokafka consumer (fetching, record objects)"),
    ("aiokafka/record", "aiokafka record encoding/decoding"),
    ("aiokafka/protocol", "aiokafka protocol encoding/decoding"),
    ("aiokafka", "aiokafka other (connections, client)"),
    ("asyncio", "asyncio event loop and sockets"),
    ("selectors", "asyncio event loop and sockets"),
)


def _area(frame: str) -> str:
    for marker, name in PROFILE_AREAS:
        if marker in frame:
            return name
    return "other (stdlib, logging, dataclasses, ...)"


def profile_summary(raw: Path, limit: int = 15) -> dict[str, Any]:
    """From py-spy's collapsed stacks ('raw'): self time by function and by area, and inclusive time of the
    engine's own functions."""
    self_by_function: Counter[str] = Counter()
    self_by_area: Counter[str] = Counter()
    inclusive_engine: Counter[str] = Counter()
    total = 0
    try:
        text = raw.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")]
        leaf = frames[-1]
        self_by_function[leaf] += count
        self_by_area[_area(leaf)] += count
        for frame in set(frames):
            if "workers/engine" in frame and "__main__" not in frame:
                inclusive_engine[frame] += count
        total += count

    def share(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"function": name, "samples": c, "share": round(c / total, 3)} for name, c in counter.most_common(n)]

    return {
        "samples": total,
        "self_by_area": [{"area": a, "samples": c, "share": round(c / total, 3)} for a, c in self_by_area.most_common()]
        if total
        else [],
        "top_functions_self": share(self_by_function, limit) if total else [],
        "engine_functions_inclusive": share(inclusive_engine, 10) if total else [],
    }


async def amain(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = load_stack()
    bench = Bench(args, stack)
    try:
        await bench.run()
    finally:
        bench.save()
        summary = report.table(bench.results)
        print("\n" + summary, flush=True)
        if args.docs:
            report.write_doc(bench.results, bench.path)
            say(f"wrote the summary into {report.DOC}")
        say(f"results: {bench.path} ({bench.results['duration_s']:.0f}s)")
    return 1 if bench.results["errors"] else 0


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        code = asyncio.run(amain())
    except BenchError as exc:
        say(f"failed: {exc}")
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
