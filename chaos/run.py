"""``make chaos``: every fault scenario, in at-least-once then exactly-once mode, on a lab of its own.

    python -m chaos.run                                # the whole suite; results and docs/reliability.md's table
    python -m chaos.run --only worker-sigterm,redis-restart-empty --modes at-least-once --no-doc
    python -m chaos.run --list

Writes ``chaos/results/<UTC time>.json`` (every scenario's counts, the auditor's totals, the machine) and, for a
whole run, the table in docs/reliability.md. Exit status 0 when every scenario passed.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import machine_info, versions
from chaos.lab import ROOT, Lab, exit_on_termination, say
from chaos.scenarios import AT_LEAST_ONCE, EXACTLY_ONCE, SCENARIOS, Outcome, run_scenario

RESULTS = ROOT / "chaos" / "results"
DOC = ROOT / "docs" / "reliability.md"
TABLE_START = "<!-- chaos-table:start -->"
TABLE_END = "<!-- chaos-table:end -->"


def table(outcomes: list[Outcome], result_file: str) -> str:
    lines = [
        f"From `{result_file}`:",
        "",
        "| Scenario | Mode | Produced | Acknowledged | Found on target | Lost | Duplicated | Resumed after "
        "| Worst latency | Auditor | Result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for o in outcomes:
        resumed = "-" if o.resumed_s is None else f"{o.resumed_s:.1f} s"
        worst = "-" if o.worst_latency_s is None else f"{o.worst_latency_s:.1f} s"
        if o.audit:
            audit = f"{o.audit['matched']:,} matched, {o.audit['missing']} missing, {o.audit['duplicated']} dup."
        else:
            audit = "did not run"
        lost = f"{o.lost}"
        if "deletedBeforeCopy" in o.details:
            reported = (o.details.get("reported") or {}).get("truncatedOffsets", "none")
            lost += f" (+{o.details['deletedBeforeCopy']:,} deleted by retention, reported {reported})"
        verdict = "pass" if o.passed else "**FAIL**"
        lines.append(
            f"| `{o.scenario}` | {o.mode} | {o.produced:,} | {o.acknowledged:,} | {o.found:,} | {lost} "
            f"| {o.duplicated:,} | {resumed} | {worst} | {audit} | {verdict} |"
        )
    return "\n".join(lines)


def write_doc(outcomes: list[Outcome], result_file: str) -> None:
    text = DOC.read_text()
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no {TABLE_START} ... {TABLE_END} block for the table")
    DOC.write_text(pattern.sub(lambda _: f"{TABLE_START}\n{table(outcomes, result_file)}\n{TABLE_END}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    parser.add_argument("--modes", default=f"{AT_LEAST_ONCE},{EXACTLY_ONCE}", help="comma-separated delivery modes")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/reliability.md's table")
    parser.add_argument("--keep", action="store_true", help="keep the lab's folder and failed scenarios' topics")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    exit_on_termination()
    # The producer and the tail ride through the outages on purpose: aiokafka's reconnect chatter is not news.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.list:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:24} {scenario.fault}")
        return 0
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    modes = args.modes.split(",")
    bad_modes = [m for m in modes if m not in (AT_LEAST_ONCE, EXACTLY_ONCE)]
    if unknown or bad_modes:
        parser.error(f"unknown scenarios {unknown} or modes {bad_modes}; see --list")
    whole = not args.only and set(modes) == {AT_LEAST_ONCE, EXACTLY_ONCE}

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = ROOT / ".run" / "chaos" / stamp
    started = time.monotonic()
    machine = machine_info()
    lab = Lab(folder)
    lab.keep_evidence = args.keep
    outcomes: list[Outcome] = []
    try:
        lab.start()
        for mode in modes:
            for name in names:
                outcomes.append(run_scenario(lab, SCENARIOS[name], mode))
    finally:
        lab.close()
        if not args.keep and all(o.passed for o in outcomes):
            shutil.rmtree(folder, ignore_errors=True)
    seconds = round(time.monotonic() - started, 1)
    passed = all(o.passed for o in outcomes)
    result: dict[str, Any] = {
        "kind": "chaos",
        "started": stamp,
        "seconds": seconds,
        "passed": passed,
        "scenarios": [o.to_json() for o in outcomes],
        "machine": machine,
        "versions": versions(lab.kafka_lib),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    relative = str(path.relative_to(ROOT))
    if whole and not args.no_doc:
        write_doc(outcomes, relative)
    print()
    print(table(outcomes, relative))
    say(f"{'PASSED' if passed else 'FAILED'}: {len(outcomes)} scenarios in {seconds / 60:.1f} min; {relative}")
    if not passed:
        say(f"logs kept in {folder}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
