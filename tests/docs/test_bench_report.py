"""The benchmark report (docs/performance.md's generated section) shows every step a run recorded, read from real
results files in bench/results."""

from __future__ import annotations

import json
from typing import Any

from bench import report
from bench.common import RESULTS_DIR


def _results(stamp: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS_DIR / f"{stamp}.json").read_text())
    return data


def test_scale_out_is_in_the_summary_and_the_tables() -> None:
    results = _results("20261201T170553Z")  # a full make bench with the scale-out step
    summary = "\n".join(report.ran_summary(results))
    assert "- scale-out: ferry ok, ferry-x2 ok (two processes / one 1.54)" in summary
    table = report.table(results)
    assert "### Scale-out: one replicator in 2 engine processes against one" in table
    assert "Two processes / one: **1.54** (rounds: 1.63, 1.25, 1.41)." in table


def test_multi_broker_is_in_the_summary_and_the_tables() -> None:
    results = _results("20261201T184051Z")  # --only multibroker
    assert "- multi-broker: mm2-tuned ok, ferry ok (Ferry / tuned MM2 1.57)" in report.ran_summary(results)
    table = report.table(results)
    assert "### Multi-broker: 3 brokers per cluster, replication factor 3" in table
    assert "Ferry / tuned MM2: **1.57** (rounds: 1.40, 1.57, 1.69)" in table


def _ratio_header(table: str) -> str:
    return table.split("### Ratios\n\n", 1)[1].splitlines()[0]


def test_the_ratios_have_a_column_only_for_replicators_that_ran() -> None:
    everything = _ratio_header(report.table(_results("20261201T170553Z")))  # all four replicators
    assert "Ferry / MM2 default" in everything
    assert "Ferry / Ferry decoding" in everything
    pair = report.table(_results("20261201T232400Z"))  # make bench's default pair: tuned MM2 and Ferry
    header = _ratio_header(pair)
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns == [
        "profile", "limit MB/s (writer)", "copy ceiling MB/s", "Ferry / MM2 tuned", "Ferry / limit", "MM2 tuned / limit"
    ]  # fmt: skip
    assert "| A | 112.2 (ferry catch-up) | 174.9 | 1.95 | 0.96 | 0.49 |" in pair
