"""The scale-out step (``--only scaleout``): one replicator copied by two engine processes against one.

Both replicators copy the same preloaded profile A topic on the stack's clusters in interleaved rounds, each
into fresh target topics and verified as the throughput step does. The two processes share one replicator id
and split its partitions with the engine's ``--partition-slice 0/2`` and ``1/2`` (each topic's partitions
round-robin over the slices), which is how two fleet workers split a replicator's copy units, without the
fleet's control plane in the measurement.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import BenchError, Stack, say, spawn, stop_process
from bench.kafka import producer_perf
from bench.measure import catch_up
from bench.replicators import FerryEngine

if TYPE_CHECKING:
    from bench.kafka import Cluster
    from bench.run import Bench

PROCESSES = 2


class FerrySlices(FerryEngine):
    """One Ferry replicator run as ``processes`` engine processes, each with its slice of the partitions."""

    def __init__(self, stack: Stack, log_dir: Path, label: str, tuned: dict[str, Any], processes: int) -> None:
        super().__init__(stack, log_dir, label, tuned)
        self.processes = processes
        self.procs: list[subprocess.Popen[bytes]] = []

    def slice_argv(self, source_topics: list[str], index: int) -> list[str]:
        argv = self.argv(source_topics)
        at = argv.index("--metrics-file")
        argv[at + 1] = str(self.metrics_path.with_suffix(f".slice{index}.json"))
        return [*argv, "--partition-slice", f"{index}/{self.processes}"]

    def start(self, source_topics: list[str]) -> subprocess.Popen[bytes]:
        self.source_topics = list(source_topics)
        for index in range(self.processes):
            argv = self.slice_argv(source_topics, index)
            log = self.log.with_suffix(f".slice{index}.log")
            (log.parent / f"{log.stem}.cmd").write_text(" ".join(argv) + "\n")
            say(f"starting {self.label} slice {index}/{self.processes} (log: {log})")
            self.procs.append(spawn(argv, log, env=self.env()))
        self.settings["processes"] = self.processes
        self.settings["slices"] = [f"{i}/{self.processes}" for i in range(self.processes)]
        self.settings["logs"] = [str(self.log.with_suffix(f".slice{i}.log")) for i in range(self.processes)]
        # the harness watches the first process for an early exit; every process's CPU counts (extra_pids)
        self.log = self.log.with_suffix(".slice0.log")
        self.proc = self.procs[0]
        return self.proc

    def extra_pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.procs[1:])

    async def stop(self) -> int | None:
        codes = [await stop_process(p, f"{self.label} slice {i}") for i, p in enumerate(self.procs)]
        say(f"stopped {self.label} ({len(self.procs)} processes, exit codes {codes})")
        return max((c for c in codes if c is not None), default=None)


async def step(bench: Bench, source: Cluster, target: Cluster) -> None:
    """Profile A copied by one engine process and by two (slices of the same replicator), interleaved rounds."""
    from bench.run import BASE_PROFILES, aggregate, preload_props  # noqa: PLC0415 (bench.run imports this module)

    base = BASE_PROFILES["A"]
    spec = {**base, "records": max(1000, round(base["records"] * bench.args.scale))}
    out: dict[str, Any] = {
        "what": f"profile A on the stack's clusters: one Ferry replicator as one engine process ('ferry') and "
        f"as {PROCESSES} engine processes with --partition-slice K/{PROCESSES} ('ferry-x{PROCESSES}'), "
        "interleaved rounds, each copy verified",
        "profile": spec,
        "processes": PROCESSES,
        "rounds": bench.args.repeat,
        "cores_on_machine": bench.results["machine"].get("cpu_count"),
    }
    bench.results["scaleout"] = out
    topic = f"bench-so-a-{bench.token}-{secrets.token_hex(3)}"
    await source.create_topic(topic, spec["partitions"])
    try:
        say(f"preloading {spec['records']:,} x {spec['record_size']} B into {topic}")
        out["preload"] = await producer_perf(
            bench.stack.kafka_lib,
            bootstrap=bench.stack.source,
            topic=topic,
            records=spec["records"],
            record_size=spec["record_size"],
            props=preload_props(spec),
            log=bench.log_dir / "scaleout-preload.log",
        )
        on_source = await source.total(topic, spec["partitions"])
        if on_source != spec["records"]:
            raise BenchError(f"source topic {topic} holds {on_source} records, expected {spec['records']}")
        labels = ("ferry", f"ferry-x{PROCESSES}")
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
        for round_index in range(bench.args.repeat):
            for label in labels:
                say(f"-- scaleout round {round_index + 1}/{bench.args.repeat}: {label}")
                rep = (
                    FerryEngine(bench.stack, bench.log_dir, label, bench.tuned)
                    if label == "ferry"
                    else FerrySlices(bench.stack, bench.log_dir, label, bench.tuned, PROCESSES)
                )
                reason = rep.unavailable()
                if reason is not None:
                    bench.skip("scaleout", reason)
                    out["status"] = "skipped"
                    out["reason"] = reason
                    return
                try:
                    runs[label].append(
                        await catch_up(
                            rep,
                            source_topic=topic,
                            records=spec["records"],
                            record_size=spec["record_size"],
                            source=source,
                            target=target,
                            startup_limit_s=180.0,
                            catchup_limit_s=bench.args.catchup_limit,
                        )
                    )
                finally:
                    await bench.cleanup(rep, source, target)
                out["throughput"] = {k: aggregate(v) for k, v in runs.items() if v}
                bench.save()
        out["ratios"] = ratios(out, labels)
        say(f"  scaleout ratios: {out['ratios']}")
    finally:
        await source.delete_topics([topic])


def ratios(out: dict[str, Any], labels: tuple[str, str]) -> dict[str, Any]:
    one, many = (out.get("throughput", {}).get(label, {}) for label in labels)
    per_round = [
        round(b["mb_per_s"] / a["mb_per_s"], 2)
        for a, b in zip(one.get("runs", []), many.get("runs", []), strict=False)
        if a.get("status") == "ok" and b.get("status") == "ok"
    ]
    cores = [one.get("replicator_cores_median"), many.get("replicator_cores_median")]
    return {
        f"x{PROCESSES}_over_one": round(many["mb_per_s"] / one["mb_per_s"], 2)
        if one.get("mb_per_s") and many.get("mb_per_s")
        else None,
        f"x{PROCESSES}_over_one_per_round": per_round,
        "replicator_cores_one_and_many": cores,
    }
