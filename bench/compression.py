"""The compression matrix (``--only compression``): Ferry against tuned MirrorMaker 2 for every target codec.

For each target compression (NONE, GZIP, SNAPPY, LZ4, ZSTD) Ferry runs with ``targetCompressionType`` and tuned
MM2 with the same producer ``compression.type``, on two sources: one written uncompressed, and one written with
that codec (ProducerPerformance with ``compression.type=<codec>``), where Ferry may write the source batches as
they are instead of decompressing and compressing them again. Records of 1 KiB written in batches of up to
512 KiB (a producer tuned for throughput; Ferry forwards batches of 64 KiB or more), 8 partitions. Rounds
interleave the two replicators within each cell; every copy is verified as in the throughput step.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import BenchError, load_stack, say
from bench.kafka import Cluster, producer_perf
from bench.measure import catch_up, profiled_catch_up
from bench.replicators import make_replicator

if TYPE_CHECKING:
    from bench.run import Bench

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
# ferry-decode (forwarding off: every record decoded and encoded again) shows what forwarding saves where the
# codecs match (where they differ, Ferry takes that path anyway).
KINDS = ("mm2-tuned", "ferry", "ferry-decode")
BASE_SPEC: dict[str, int] = {"records": 400_000, "record_size": 1024, "partitions": 8, "source_batch_bytes": 512 * 1024}
TARGET_RATIO = 1.5


def codec_support() -> dict[str, str | None]:
    """For each codec, why Ferry (aiokafka) cannot produce it here, or None when a round trip through aiokafka's
    codec functions works (python-snappy / cramjam, lz4, zstandard are what they need)."""
    from aiokafka import codec  # noqa: PLC0415 (only this step needs it)

    sample = b"ferry bench " * 1000
    checks = {
        "gzip": (codec.has_gzip, codec.gzip_encode, codec.gzip_decode),
        "snappy": (codec.has_snappy, codec.snappy_encode, codec.snappy_decode),
        "lz4": (codec.has_lz4, codec.lz4_encode, codec.lz4_decode),
        "zstd": (codec.has_zstd, codec.zstd_encode, codec.zstd_decode),
    }
    out: dict[str, str | None] = {"none": None}
    for name, (has, encode, decode) in checks.items():
        try:
            if not has():
                out[name] = f"aiokafka reports no {name} library"
            elif decode(encode(sample)) != sample:
                out[name] = f"{name} round trip through aiokafka.codec changed the data"
            else:
                out[name] = None
        except Exception as exc:  # noqa: BLE001 (any import or codec failure means the codec cannot be used)
            out[name] = f"{name} unusable: {type(exc).__name__}: {exc}"
    return out


def source_props(spec: dict[str, int], codec: str) -> dict[str, str]:
    return {"acks": "all", "batch.size": str(spec["source_batch_bytes"]), "linger.ms": "20", "compression.type": codec}


def cells(codecs: list[str]) -> list[tuple[str, str]]:
    """(source codec, target codec) pairs: every target codec from an uncompressed source and from its own."""
    out: list[tuple[str, str]] = []
    for codec in codecs:
        out.append(("none", codec))
        if codec != "none":
            out.append((codec, codec))
    return out


async def compression_matrix(bench: Bench, source: Cluster, target: Cluster) -> None:
    from bench.run import aggregate  # noqa: PLC0415 (bench.run imports this module)

    spec = {**BASE_SPEC, "records": max(1000, round(BASE_SPEC["records"] * bench.args.scale))}
    support = codec_support()
    codecs = [c for c in CODECS if support[c] is None]
    out: dict[str, Any] = {
        "settings": {
            "profile": spec,
            "source_producer_props": {c: source_props(spec, c) for c in codecs},
            "replicators": list(KINDS),
            "rounds": bench.args.repeat,
            "what": "catch-up of a preloaded topic as in the throughput step, per (source codec, target codec) "
            "cell; MB/s counts uncompressed record bytes (records x record size)",
        },
        "codec_support": support,
        "codecs_not_measured": {c: r for c, r in support.items() if r is not None},
        "preload": {},
        "cells": {},
    }
    bench.results["compression"] = out
    for codec, reason in out["codecs_not_measured"].items():
        bench.skip(f"compression {codec}", str(reason))
    topics: dict[str, str] = {}
    try:
        for codec in codecs:
            topic = f"bench-cmp-{codec}-{bench.token}-{secrets.token_hex(3)}"
            await source.create_topic(topic, spec["partitions"])
            topics[codec] = topic
            say(f"preloading {spec['records']:,} x {spec['record_size']} B records written with {codec} into {topic}")
            preload = await producer_perf(
                bench.stack.kafka_lib,
                bootstrap=bench.stack.source,
                topic=topic,
                records=spec["records"],
                record_size=spec["record_size"],
                props=source_props(spec, codec),
                log=bench.log_dir / f"preload-compression-{codec}.log",
            )
            on_source = await source.total(topic, spec["partitions"])
            if on_source != spec["records"]:
                raise BenchError(f"source topic {topic} holds {on_source} records, expected {spec['records']}")
            out["preload"][codec] = preload
            bench.save()
        for round_no in range(1, bench.args.repeat + 1):
            for source_codec, target_codec in cells(codecs):
                name = f"{source_codec}->{target_codec}"
                cell = out["cells"].setdefault(
                    name, {"source_compression": source_codec, "target_compression": target_codec, "runs": {}}
                )
                say(f"-- compression {name}, round {round_no}/{bench.args.repeat}")
                for kind in KINDS:
                    run = await _catch_up(
                        bench,
                        kind=kind,
                        target_codec=target_codec,
                        topic=topics[source_codec],
                        spec=spec,
                        source=source,
                        target=target,
                    )
                    cell["runs"][kind] = aggregate([*cell["runs"].get(kind, {}).get("runs", []), run])
                    bench.save()
    finally:
        await source.delete_topics(list(topics.values()))


async def _catch_up(
    bench: Bench, *, kind: str, target_codec: str, topic: str, spec: dict[str, int], source: Cluster, target: Cluster
) -> dict[str, Any]:
    rep = make_replicator(kind, bench.stack, bench.log_dir, dict(bench.tuned, compression=target_codec))
    reason = rep.unavailable()
    if reason is not None:
        return {"replicator": kind, "status": "skipped", "reason": reason}
    say(f"-- {kind} ({target_codec}): catch-up of {spec['records']:,} records from {topic}")
    try:
        return await catch_up(
            rep,
            source_topic=topic,
            records=spec["records"],
            record_size=spec["record_size"],
            source=source,
            target=target,
            # start-up is not measured; MM2 took over 180 s to start on the shared box at load 30
            startup_limit_s=420.0,
            catchup_limit_s=bench.args.catchup_limit,
        )
    finally:
        await bench.cleanup(rep, source, target)


def _mbps(entry: dict[str, Any]) -> float | None:
    return entry.get("mb_per_s") if entry.get("status") in ("ok", "partial") else None


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    cells_ = results.get("compression", {}).get("cells", {})
    if not cells_:
        return {}
    per_cell: dict[str, float | None] = {}
    for name, cell in cells_.items():
        ferry, mm2 = _mbps(cell["runs"].get("ferry", {})), _mbps(cell["runs"].get("mm2-tuned", {}))
        per_cell[name] = ferry / mm2 if ferry is not None and mm2 else None
    measured = [r for r in per_cell.values() if r is not None]
    return {
        "compression_ferry_over_mm2_tuned": per_cell,
        "compression_lowest_ratio": min(measured) if measured else None,
        "compression_target_met": bool(measured) and len(measured) == len(per_cell) and min(measured) >= TARGET_RATIO,
    }


def table(results: dict[str, Any]) -> list[str]:
    comp = results.get("compression", {})
    if not comp.get("cells"):
        return []
    spec = comp["settings"]["profile"]
    per_cell = results.get("ratios", {}).get("compression_ferry_over_mm2_tuned", {})
    lines = [
        f"### Compression: {spec['records']:,} x {spec['record_size']} B records, {spec['partitions']} partitions, "
        f"source batches up to {spec['source_batch_bytes'] // 1024} KiB (MB/s of uncompressed record bytes)",
        "",
        "| source -> target codec | Ferry MB/s | tuned MM2 MB/s | Ferry / tuned MM2 (target >= 1.5) | Ferry cores "
        "| MM2 cores | Ferry decoding MB/s | status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, cell in comp["cells"].items():
        ferry, mm2 = cell["runs"].get("ferry", {}), cell["runs"].get("mm2-tuned", {})
        ratio = per_cell.get(name)
        status = ", ".join(f"{k} {v.get('status')}" for k, v in cell["runs"].items())
        lines.append(
            f"| {name} | {_fmt(_mbps(ferry))} | {_fmt(_mbps(mm2))} | {_fmt(ratio, 2)} "
            f"| {_fmt(ferry.get('replicator_cores_median'), 2)} | {_fmt(mm2.get('replicator_cores_median'), 2)} "
            f"| {_fmt(_mbps(cell['runs'].get('ferry-decode', {})))} | {status} |"
        )
    for codec, reason in comp.get("codecs_not_measured", {}).items():
        lines.append(f"| {codec} | - | - | - | - | - | - | not measured: {reason} |")
    lines.append("")
    return lines


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


async def profile_cell(bench: Bench, source_codec: str, target_codec: str, source: Cluster, target: Cluster) -> None:
    """py-spy on Ferry during one extra catch-up of a compression cell (its throughput is not used)."""
    from bench.run import profile_summary  # noqa: PLC0415 (bench.run imports this module)

    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise BenchError("py-spy is not installed")
    spec = {**BASE_SPEC, "records": max(1000, round(BASE_SPEC["records"] * bench.args.scale))}
    topic = f"bench-cmp-prof-{source_codec}-{bench.token}-{secrets.token_hex(3)}"
    out: dict[str, Any] = {"cell": f"{source_codec}->{target_codec}", "profile": spec, "tool": py_spy}
    bench.results.setdefault("compression_profiles", {})[out["cell"]] = out
    await source.create_topic(topic, spec["partitions"])
    rep = make_replicator("ferry", bench.stack, bench.log_dir, dict(bench.tuned, compression=target_codec))
    raw = bench.log_dir / f"py-spy-{source_codec}-{target_codec}-{rep.token}.txt"
    try:
        await producer_perf(
            bench.stack.kafka_lib,
            bootstrap=bench.stack.source,
            topic=topic,
            records=spec["records"],
            record_size=spec["record_size"],
            props=source_props(spec, source_codec),
            log=bench.log_dir / f"preload-compression-profile-{source_codec}.log",
        )
        run = await profiled_catch_up(
            rep,
            py_spy=py_spy,
            raw=raw,
            profiler_log=bench.log_dir / f"py-spy-{source_codec}-{target_codec}.log",
            source_topic=topic,
            records=spec["records"],
            record_size=spec["record_size"],
            source=source,
            target=target,
            startup_limit_s=180.0,
            catchup_limit_s=bench.args.catchup_limit,
        )
        out["run"] = {k: run.get(k) for k in ("status", "mb_per_s", "records_per_s", "reason")}
        out["raw_profile"] = str(raw)
        out.update(profile_summary(raw))
        bench.save()
    finally:
        await source.delete_topics([topic])
        await bench.cleanup(rep, source, target)


async def _profile_main(cells_: list[str], scale: float) -> None:
    from bench.run import Bench, parse_args  # noqa: PLC0415 (bench.run imports this module)

    bench = Bench(parse_args(["--only", "compression", "--scale", str(scale), "--no-docs"]), load_stack())
    bench.results["mode"] = "compression-profile"
    try:
        async with Cluster("source", bench.stack.source) as source, Cluster("target", bench.stack.target) as target:
            for cell in cells_:
                source_codec, _, target_codec = cell.partition(":")
                await bench.timed(f"profile {cell}", profile_cell(bench, source_codec, target_codec, source, target))
    finally:
        bench.save()
        say(f"results: {bench.path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description="py-spy of Ferry per cell")
    parser.add_argument("cells", nargs="+", help="source:target codec pairs, e.g. none:gzip lz4:lz4")
    parser.add_argument("--scale", type=float, default=0.05)
    parsed = parser.parse_args()
    asyncio.run(_profile_main(parsed.cells, parsed.scale))
