"""The summary table (printed, and written into docs/performance.md between markers) from a results dict."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench import compression, efficiency, exactly_once, limits
from bench.common import ROOT

DOC = ROOT / "docs" / "performance.md"
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


_RATIO_COLUMNS = (
    ("Ferry / MM2 default", "ferry_over_mm2_default"),
    ("Ferry / MM2 tuned", "ferry_over_mm2_tuned"),
    ("Ferry / limit", "ferry_over_limit"),
    ("MM2 default / limit", "mm2_default_over_limit"),
    ("MM2 tuned / limit", "mm2_tuned_over_limit"),
    ("Ferry / Ferry decoding", "ferry_over_ferry_decode"),
    ("Ferry decoding / MM2 tuned", "ferry_decode_over_mm2_tuned"),
)


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Ferry/MM2 and */limit ratios per profile (MB/s based; records/s give the same ratios per profile)."""
    out: dict[str, Any] = {}
    for profile, runs in results.get("throughput", {}).items():
        highest = limits.target_limit(results, profile)
        limit = highest["mb_per_s"] if highest else None
        ceiling = limits.copy_ceiling(results, profile)

        def mbps(kind: str, runs: dict[str, Any] = runs) -> float | None:
            run = runs.get(kind, {})
            return run.get("mb_per_s") if run.get("status") in ("ok", "partial") else None

        ferry, default, tuned = mbps("ferry"), mbps("mm2-default"), mbps("mm2-tuned")
        decode = mbps("ferry-decode")
        out[profile] = {
            "ferry_over_ferry_decode": _ratio(ferry, decode),
            "ferry_decode_over_mm2_tuned": _ratio(decode, tuned),
            "ferry_over_mm2_default": _ratio(ferry, default),
            "ferry_over_mm2_tuned": _ratio(ferry, tuned),
            "ferry_over_limit": _ratio(ferry, limit),
            "mm2_default_over_limit": _ratio(default, limit),
            "mm2_tuned_over_limit": _ratio(tuned, limit),
            "limit_mb_per_s": limit,
            "limit_writer": highest["writer"] if highest else None,
            "copy_ceiling_mb_per_s": ceiling,
            "ferry_over_copy_ceiling": _ratio(ferry, ceiling),
        }
    lat = results.get("latency", {})
    ferry_lat, mm2_lat = lat.get("ferry", {}), lat.get("mm2-tuned", {})
    if ferry_lat.get("p99_ms") is not None and mm2_lat.get("p99_ms") is not None:
        out["latency_p99_ferry_over_mm2_tuned"] = _ratio(ferry_lat["p99_ms"], mm2_lat["p99_ms"])
    out["efficiency"] = efficiency.efficiency(results)
    out.update(compression.ratios(results))
    out.update(exactly_once.ratios(results))
    return out


def _status(entry: dict[str, Any]) -> str:
    status = str(entry.get("status", "-"))
    if status in ("skipped", "failed") and entry.get("reason"):
        return f"{status}: {str(entry['reason']).splitlines()[0]}"
    return status


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    profiles = results.get("settings", {}).get("profiles", {})
    rat = results.get("ratios", {})
    if profiles and (results.get("throughput") or results.get("limit")):
        lines.append(
            "### Throughput (catch-up of a preloaded topic; MB = 10^6 bytes; replicators: median of the rounds)"
        )
        lines.append("")
        lines.append(
            "| profile | run | MB/s | records/s | time to first record (s) | / limit | replicator cores "
            "| rounds: MB/s each | status |"
        )
        lines.append("|---|---|---:|---:|---:|---:|---:|---|---|")
        for profile, spec in profiles.items():
            tag = (
                f"{profile}: {spec['records']:,} x {spec['record_size']} B, {spec['partitions']} partitions, "
                f"source batches {spec.get('source_batch_bytes', 0) // 1024} KiB"
            )
            limit = results.get("limit", {}).get(profile, {})
            cons = limit.get("consumer", {})
            lim = rat.get(profile, {}).get("limit_mb_per_s")
            for config, prod in limit.get("producers", {}).items():
                lines.append(
                    f"| {tag} | limit: ProducerPerformance -> target ({config}) | {_f(prod.get('mb_per_s'))} "
                    f"| {_f(prod.get('records_per_s'), 0)} | | | | | ok |"
                )
            if cons:
                lines.append(
                    f"| {tag} | copy ceiling: ConsumerPerformance <- source | {_f(cons.get('mb_per_s'))} "
                    f"| {_f(cons.get('records_per_s'), 0)} | | | | | {cons.get('warning', 'ok')} |"
                )
            for kind, run in results.get("throughput", {}).get(profile, {}).items():
                mb = run.get("mb_per_s")
                each = ", ".join(f"{v:.1f}" for v in run.get("mb_per_s_all", []))
                lines.append(
                    f"| {tag} | {kind} | {_f(mb)} | {_f(run.get('records_per_s'), 0)} "
                    f"| {_f(run.get('time_to_first_record_s'))} | {_f(_ratio(mb, lim), 2)} "
                    f"| {_f(run.get('replicator_cores_median'), 2)} | {each} | {_status(run)} |"
                )
        lines.append("")
        lines.append("### Ratios")
        lines.append("")
        # A column only when its replicators ran (make bench runs tuned MM2 and Ferry; the others when named).
        columns = [
            (heading, key)
            for heading, key in _RATIO_COLUMNS
            if any(rat.get(profile, {}).get(key) is not None for profile in profiles)
        ]
        lines.append(
            "| profile | limit MB/s (writer) | copy ceiling MB/s | " + " | ".join(h for h, _ in columns) + " |"
        )
        lines.append("|---|---:|---:|" + "---:|" * len(columns))
        for profile in profiles:
            r = rat.get(profile, {})
            lim = r.get("limit_mb_per_s")
            lines.append(
                f"| {profile} | {_f(lim)} ({r.get('limit_writer') or '-'}) | {_f(r.get('copy_ceiling_mb_per_s'))} | "
                + " | ".join(_f(r.get(key), 2) for _, key in columns)
                + " |"
            )
        lines.append("")
        lines.append(
            "The limit is the highest rate the target accepted from any writer of the profile in this run: each "
            "ProducerPerformance configuration (one Java producer with Ferry's settings, one built for throughput, "
            "and several at once) and each replicator's catch-up round; so no replicator exceeds it. The copy ceiling "
            "is ConsumerPerformance reading the preloaded source topic (one Java consumer)."
        )
        lines.append("")
    lat = results.get("latency", {})
    if lat:
        spec = results.get("settings", {}).get("latency", {})
        lines.append(
            f"### End-to-end latency at {_f(spec.get('rate_mb_per_s'), 2)} MB/s "
            f"({spec.get('record_size')} B records, {spec.get('partitions')} partitions, {spec.get('seconds')} s)"
        )
        lines.append("")
        lines.append("| run | p50 ms | p99 ms | max ms | records seen | status |")
        lines.append("|---|---:|---:|---:|---:|---|")
        for kind, run in lat.items():
            if not isinstance(run, dict):
                continue
            lines.append(
                f"| {kind} | {_f(run.get('p50_ms'))} | {_f(run.get('p99_ms'))} | {_f(run.get('max_ms'))} "
                f"| {_f(run.get('records_seen'))} | {_status(run)} |"
            )
        if rat.get("latency_p99_ferry_over_mm2_tuned") is not None:
            lines.append("")
            lines.append(f"Ferry p99 / MM2 tuned p99: {rat['latency_p99_ferry_over_mm2_tuned']:.2f}")
        lines.append("")
    cp = results.get("control_plane", {})
    if cp:
        lines.append("### Control plane")
        lines.append("")
        lines.append("| figure | p50 | p99 | status |")
        lines.append("|---|---:|---:|---|")
        for key, entry in cp.items():
            unit = "s" if key == "create_to_running" else "ms"
            lines.append(
                f"| {key} | {_f(entry.get('p50_' + unit), 2)} {unit} | {_f(entry.get('p99_' + unit), 2)} {unit} "
                f"| {_status(entry)} |"
            )
        lines.append("")
    fleet = results.get("fleet_scale", {})
    if any(isinstance(v, dict) for v in fleet.values()):
        spec = results.get("settings", {}).get("fleet_scale", {})
        lines.append(
            f"### Scale: one fleet worker (Celery) at {_f(spec.get('rate_mb_per_s'), 2)} MB/s over N partitions"
        )
        lines.append("")
        lines.append(
            "| partitions | RSS MiB after the load | RSS MiB idle worker | worker cores | create to all partitions "
            "leased (s) | status |"
        )
        lines.append("|---:|---:|---:|---:|---:|---|")
        for count, entry in fleet.items():
            if not isinstance(entry, dict):
                continue
            rss = entry.get("memory_kib", {}).get("VmRSS")
            idle = entry.get("memory_kib_idle_worker", {}).get("VmRSS")
            lines.append(
                f"| {count} | {_f(rss / 1024 if rss else None)} | {_f(idle / 1024 if idle else None)} "
                f"| {_f(entry.get('worker_cores'), 2)} | {_f(entry.get('create_to_all_partitions_owned_s'))} "
                f"| {_status(entry)} |"
            )
        if fleet.get("memory_kib_per_partition") is not None:
            lines.append("")
            lines.append(
                f"Memory: {fleet['memory_kib_per_partition']:.0f} KiB per replicated partition (RSS difference "
                f"between the two counts); an idle worker holds {fleet['memory_mib_idle_worker']} MiB."
            )
        lines.append("")
    scale = results.get("partitions_scale", {})
    if any(isinstance(v, dict) for v in scale.values()):
        spec = results.get("settings", {}).get("partitions_scale", {})
        lines.append(
            f"### Scale: one Ferry engine process at {_f(spec.get('rate_mb_per_s'), 2)} MB/s over N partitions "
            "(the copier without Celery or the fleet)"
        )
        lines.append("")
        lines.append("| partitions | RSS MiB | engine cores | status |")
        lines.append("|---:|---:|---:|---|")
        for count, entry in scale.items():
            if not isinstance(entry, dict):
                continue
            rss = entry.get("memory_kib", {}).get("VmRSS")
            cores = entry.get("cpu_during_load", {}).get("replicator_cores")
            lines.append(f"| {count} | {_f(rss / 1024 if rss else None)} | {_f(cores, 2)} | {_status(entry)} |")
        if scale.get("memory_kib_per_partition") is not None:
            lines.append("")
            lines.append(
                f"Memory: {scale['memory_kib_per_partition']:.0f} KiB per partition above a base of "
                f"{scale['memory_mib_base']} MiB (RSS difference between the two counts)."
            )
        lines.append("")
    prof = results.get("profile", {})
    if prof.get("status") == "ok":
        run = prof.get("run", {})
        lines.append(
            f"### Profile: py-spy on Ferry during a separate catch-up of profile {prof.get('profile_of', 'B')} "
            f"({prof.get('samples')} samples, "
            f"{_f(run.get('mb_per_s'))} MB/s under the profiler)"
        )
        lines.append("")
        lines.append("| where (self time) | share |")
        lines.append("|---|---:|")
        lines.extend(f"| {a['area']} | {a['share']:.0%} |" for a in prof.get("self_by_area", []))
        lines.append("")
        lines.append("| top functions (self time) | share |")
        lines.append("|---|---:|")
        lines.extend(f"| `{f['function']}` | {f['share']:.0%} |" for f in prof.get("top_functions_self", [])[:8])
        lines.append("")
    lines.extend(_scaleout_table(results))
    lines.extend(_multibroker_table(results))
    lines.extend(compression.table(results))
    lines.extend(exactly_once.table(results))
    lines.extend(efficiency.table(results))
    skipped = results.get("skipped", [])
    if skipped:
        lines.append("### Skipped")
        lines.append("")
        lines.extend(f"- **{s['what']}**: {s['reason']}" for s in skipped)
        lines.append("")
    return "\n".join(lines)


def _scaleout_table(results: dict[str, Any]) -> list[str]:
    out = results.get("scaleout", {})
    runs = out.get("throughput", {})
    if not runs:
        return []
    lines = [
        f"### Scale-out: one replicator in {out.get('processes')} engine processes against one "
        f"(profile A, {out.get('rounds')} interleaved rounds)",
        "",
        "| run | MB/s (median) | replicator cores | status |",
        "|---|---:|---:|---|",
    ]
    lines.extend(
        f"| {kind} | {_f(run.get('mb_per_s'))} | {_f(run.get('replicator_cores_median'), 2)} | {_status(run)} |"
        for kind, run in runs.items()
    )
    ratio = out.get("ratios", {})
    each = ", ".join(f"{v:.2f}" for v in ratio.get("x2_over_one_per_round", []))
    lines += ["", f"Two processes / one: **{_f(ratio.get('x2_over_one'), 2)}** (rounds: {each or '-'}).", ""]
    return lines


def _multibroker_table(results: dict[str, Any]) -> list[str]:
    out = results.get("multibroker", {})
    runs = out.get("throughput", {})
    if not runs:
        return []
    lines = [
        f"### Multi-broker: {out.get('brokers_per_cluster')} brokers per cluster, replication factor "
        f"{out.get('replication_factor')} (profile A, {out.get('rounds')} rounds)",
        "",
        "| run | MB/s (median) | status |",
        "|---|---:|---|",
    ]
    lines.extend(f"| {kind} | {_f(run.get('mb_per_s'))} | {_status(run)} |" for kind, run in runs.items())
    ratio = out.get("ratios", {})
    each = ", ".join(f"{v:.2f}" for v in ratio.get("ferry_over_mm2_tuned_per_round", []))
    lines += [
        "",
        f"Ferry / tuned MM2: **{_f(ratio.get('ferry_over_mm2_tuned'), 2)}** (rounds: {each or '-'}); Ferry / limit "
        f"{_f(ratio.get('ferry_over_limit'), 2)}, tuned MM2 / limit {_f(ratio.get('mm2_tuned_over_limit'), 2)}.",
        "",
    ]
    return lines


def ran_summary(results: dict[str, Any]) -> list[str]:
    """One line per step: what ran, with which outcome."""

    def statuses(entries: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v.get('status')}" for k, v in entries.items() if isinstance(v, dict)) or "-"

    steps = results.get("settings", {}).get("steps", [])
    rounds = results.get("settings", {}).get("rounds")
    lines = []
    if "limit" in steps:
        lines.append(f"- limit: profiles {', '.join(results.get('limit', {})) or '-'}")
    if "throughput" in steps:
        for profile, runs in results.get("throughput", {}).items():
            lines.append(f"- throughput {profile} ({rounds} rounds each): {statuses(runs)}")
    if "latency" in steps:
        lines.append(f"- latency: {statuses(results.get('latency', {}))}")
    if "control" in steps:
        cp = results.get("control_plane", {})
        api = next((v.get("api") for v in cp.values() if isinstance(v, dict) and v.get("api")), None)
        lines.append(f"- control plane: {statuses(cp)}" + (f" (against {api})" if api else ""))
    if "scale" in steps:
        lines.append(f"- scale (fleet worker): {statuses(results.get('fleet_scale', {}))}")
        lines.append(f"- scale (one engine process): {statuses(results.get('partitions_scale', {}))}")
    if "profile" in steps:
        lines.append(f"- profile: {results.get('profile', {}).get('status', '-')}")
    if "scaleout" in steps:
        ratio = results.get("scaleout", {}).get("ratios", {}).get("x2_over_one")
        runs = results.get("scaleout", {}).get("throughput", {})
        lines.append(f"- scale-out: {statuses(runs)}" + (f" (two processes / one {ratio})" if ratio else ""))
    if "multibroker" in steps:
        ratio = results.get("multibroker", {}).get("ratios", {}).get("ferry_over_mm2_tuned")
        runs = results.get("multibroker", {}).get("throughput", {})
        lines.append(f"- multi-broker: {statuses(runs)}" + (f" (Ferry / tuned MM2 {ratio})" if ratio else ""))
    if "compression" in steps:
        cells = results.get("compression", {}).get("cells", {})
        lines.append(f"- compression: {', '.join(cells) or '-'}")
    if "eos" in steps:
        lines.append(f"- exactly-once: {statuses(results.get('exactly_once', {}).get('runs', {}))}")
    errors = results.get("errors", [])
    lines.extend(f"- error in {e['what']}: {e['error'].splitlines()[0]}" for e in errors)
    return lines


def doc_section(results: dict[str, Any], results_path: Path) -> str:
    machine = results["machine"]
    versions = results["versions"]
    rel = results_path.relative_to(ROOT) if results_path.is_relative_to(ROOT) else results_path
    head = [
        f"Latest recorded run: **{results['started_at']}** ({results['mode']}, scale {results['scale']}, "
        f"{results.get('duration_s', 0):.0f} s), results in `{rel}`.",
        "",
        f"Machine: {machine['cpu_count']} x {machine['cpu_model']}, {machine['memory_gib']} GiB; "
        f"Python {versions['python']}, {versions['java']}, Kafka {versions['kafka']}, "
        f"aiokafka {versions.get('aiokafka')}; load average at start {machine.get('loadavg_at_start')}.",
        "",
        "> Caveat: this is a shared 2-core box; other engineers run tests against the same brokers during the "
        "run, so absolute figures are noisy. The ratios within one run are what count.",
        "",
        "What ran:",
        "",
        *ran_summary(results),
        "",
    ]
    return "\n".join(head) + "\n" + table(results)


def write_doc(results: dict[str, Any], results_path: Path) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{START}\n{END}\n"
    section = doc_section(results, results_path)
    if START in text and END in text:
        text = re.sub(
            re.escape(START) + r".*?" + re.escape(END), lambda _: f"{START}\n{section}\n{END}", text, flags=re.S
        )
    else:
        text = text.rstrip() + f"\n\n{START}\n{section}\n{END}\n"
    DOC.write_text(text)
