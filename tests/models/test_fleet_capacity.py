"""How many workers the fleet asks for (models/fleet_capacity.py): a pure function of the measured load."""

from __future__ import annotations

from datetime import UTC, datetime

from models.fleet import WorkerLoad
from models.fleet_capacity import fleet_demand

MB = 1_000_000


def worker(name: str, *, cpu: float = 0.05, rate: float = 0.0, lag: int = 0) -> WorkerLoad:
    return WorkerLoad(name, "host", 1, 0.5, datetime.now(UTC), 10, cpu, rate, lag, False)


def demand(workers: list[WorkerLoad], units: int = 100, **overrides: float) -> int:
    settings = {"worker_capacity_bytes_per_second": 10 * MB, "target_utilisation": 0.5, "lag_clear_seconds": 100.0}
    settings.update(overrides)
    return fleet_demand(workers, units, **settings).desired_workers


def test_an_idle_fleet_with_work_needs_one_worker_and_one_without_work_none() -> None:
    assert demand([worker("a"), worker("b")]) == 1
    assert demand([worker("a")], units=0) == 0


def test_throughput_with_headroom_decides() -> None:
    # 5 MB/s usable per worker (10 MB/s at 50%).
    assert demand([worker("a", rate=4.9 * MB)]) == 1
    assert demand([worker("a", rate=5.1 * MB)]) == 2
    assert demand([worker("a", rate=12 * MB), worker("b", rate=12 * MB)]) == 5


def test_lag_asks_for_workers_that_clear_it_in_time() -> None:
    # 1 MB/s copied plus 600 MB of lag to clear in 100 s: 7 MB/s, two workers of 5.
    assert demand([worker("a", rate=1 * MB, lag=600 * MB)]) == 2
    assert demand([worker("a", rate=1 * MB, lag=600 * MB)], lag_clear_seconds=1000.0) == 1


def test_cpu_decides_when_bytes_do_not_show_the_work() -> None:
    # Small records or many partitions: a saturated core at a low byte rate.
    assert demand([worker("a", cpu=0.98, rate=0.5 * MB)]) == 2
    assert demand([worker("a", cpu=0.45), worker("b", cpu=0.45)]) == 2
    assert demand([worker("a", cpu=0.2), worker("b", cpu=0.2)]) == 1


def test_never_more_workers_than_units() -> None:
    assert demand([worker("a", rate=100 * MB)], units=3) == 3


def test_the_reason_names_the_figures() -> None:
    result = fleet_demand(
        [worker("a", cpu=0.9, rate=2 * MB, lag=50 * MB)],
        8,
        worker_capacity_bytes_per_second=10 * MB,
        target_utilisation=0.7,
        lag_clear_seconds=300,
    )
    assert (result.by_throughput, result.by_cpu, result.desired_workers) == (1, 2, 2)
    assert "2.00 MB/s" in result.reason and "50.00 MB of lag" in result.reason and "0.90 CPU cores" in result.reason
