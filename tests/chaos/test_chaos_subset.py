"""The part of ``make chaos`` that runs in every ``make test``: a worker SIGKILLed three times (in exactly-once
mode), the source broker SIGKILLed and restarted, and Redis killed and restarted empty, each on the chaos lab (its
own PostgreSQL, Redis, clusters, API, beat and two workers) with the auditor deciding. The whole suite, in both
delivery modes, is ``make chaos`` (docs/reliability.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from chaos.lab import Lab
from chaos.scenarios import AT_LEAST_ONCE, EXACTLY_ONCE, SCENARIOS, run_scenario


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    running = Lab(tmp_path_factory.mktemp("chaos-lab"))
    try:
        running.start()
        yield running
    finally:
        running.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scenario", "mode"),
    [
        # Exactly-once: the strictest judge (no duplicate allowed, the offset map complete after every kill).
        ("worker-sigkill-x3", EXACTLY_ONCE),
        ("source-broker-kill", AT_LEAST_ONCE),
        ("redis-restart-empty", AT_LEAST_ONCE),
    ],
)
def test_nothing_acknowledged_is_lost_through_the_fault(lab: Lab, scenario: str, mode: str) -> None:
    outcome = run_scenario(lab, SCENARIOS[scenario], mode)
    print(outcome.line())
    details = outcome.details
    assert outcome.passed, f"{outcome.line()}\n{details.get('traceback', '')}\n{details.get('logs', '')}"
    assert outcome.acknowledged > 1000, "too little traffic to prove anything"
    assert outcome.lost == 0
    assert outcome.audit["matched"] >= outcome.acknowledged
    assert outcome.resumed_s is not None
