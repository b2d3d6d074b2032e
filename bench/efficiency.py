"""Efficiency: MB copied per replicator core-second (MB = 10^6 bytes), Ferry against tuned MirrorMaker 2.

Every catch-up round records the replicator's CPU over its measured window from /proc (``cpu_in_window``);
a round's efficiency is its MB/s divided by its cores, and a replicator's figure in a profile, compression cell
or exactly-once run is the median over its successful rounds. The latency step adds one figure per replicator
at its fixed rate (the achieved produce rate over the replicator's cores during the load).
"""

from __future__ import annotations

import statistics
from typing import Any

FERRY_KINDS = ("ferry", "ferry-eos")
MM2_KINDS = ("mm2-tuned", "mm2-eos")


def run_efficiency(run: dict[str, Any]) -> float | None:
    """MB per core-second of one catch-up round, or None when it failed or its CPU is unknown."""
    cores = (run.get("cpu_in_window") or {}).get("replicator_cores")
    if run.get("status") != "ok" or not run.get("mb_per_s") or not cores:
        return None
    return float(run["mb_per_s"]) / float(cores)


def aggregate_efficiency(aggregate: dict[str, Any]) -> float | None:
    values = [e for e in (run_efficiency(r) for r in aggregate.get("runs", [])) if e is not None]
    return statistics.median(values) if values else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _group(runs: dict[str, Any]) -> dict[str, Any]:
    """Efficiency of each replicator of one group of catch-ups (kind -> aggregate), and Ferry / tuned MM2."""
    out: dict[str, Any] = {kind: aggregate_efficiency(agg) for kind, agg in runs.items() if isinstance(agg, dict)}
    ferry = next((out[k] for k in FERRY_KINDS if out.get(k) is not None), None)
    mm2 = next((out[k] for k in MM2_KINDS if out.get(k) is not None), None)
    out["ferry_over_mm2_tuned"] = _ratio(ferry, mm2)
    return out


def efficiency(results: dict[str, Any]) -> dict[str, Any]:
    """Every step's efficiency figures, keyed like the results they come from."""
    out: dict[str, Any] = {"unit": "MB (10^6 bytes) copied per replicator core-second", "target_ferry_over_mm2": 3.0}
    out["throughput"] = {profile: _group(runs) for profile, runs in results.get("throughput", {}).items()}
    cells = results.get("compression", {}).get("cells", {})
    if cells:
        out["compression"] = {cell: _group(entry.get("runs", {})) for cell, entry in cells.items()}
    eos = results.get("exactly_once", {}).get("runs", {})
    if eos:
        out["exactly_once"] = _group(eos)
    latency: dict[str, Any] = {}
    for kind, run in results.get("latency", {}).items():
        if not isinstance(run, dict):
            continue
        cores = (run.get("cpu_during_load") or {}).get("replicator_cores")
        rate = ((run.get("load_generator") or {}).get("achieved") or {}).get("mb_per_s")
        latency[kind] = float(rate) / float(cores) if rate and cores and run.get("status") == "ok" else None
    if latency:
        latency["ferry_over_mm2_tuned"] = _ratio(latency.get("ferry"), latency.get("mm2-tuned"))
        out["latency"] = latency
    return out


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: dict[str, Any]) -> list[str]:
    """The efficiency section of the summary table (empty when no step recorded CPU)."""
    eff = results.get("ratios", {}).get("efficiency") or efficiency(results)
    rows: list[tuple[str, dict[str, Any]]] = [(f"throughput {p}", g) for p, g in eff.get("throughput", {}).items()]
    rows += [(f"compression {c}", g) for c, g in eff.get("compression", {}).items()]
    if "exactly_once" in eff:
        rows.append(("exactly-once", eff["exactly_once"]))
    if "latency" in eff:
        rows.append(("latency (fixed rate)", eff["latency"]))
    if not rows:
        return []
    lines = [
        "### Efficiency (MB copied per replicator core-second; median of the rounds)",
        "",
        "| step | Ferry | tuned MM2 | Ferry / tuned MM2 (target >= 3) | others |",
        "|---|---:|---:|---:|---|",
    ]
    for name, group in rows:
        ferry = next((group[k] for k in FERRY_KINDS if group.get(k) is not None), None)
        mm2 = next((group[k] for k in MM2_KINDS if group.get(k) is not None), None)
        others = ", ".join(
            f"{k} {_f(v)}"
            for k, v in group.items()
            if k not in (*FERRY_KINDS, *MM2_KINDS, "ferry_over_mm2_tuned") and v is not None
        )
        lines.append(f"| {name} | {_f(ferry)} | {_f(mm2)} | {_f(group.get('ferry_over_mm2_tuned'), 2)} | {others} |")
    lines.append("")
    return lines
