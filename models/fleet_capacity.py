"""How many workers the fleet needs: a pure function of the live workers' measured load.

The signal every autoscaler follows (``ferry_fleet_desired_workers`` on /metrics for KEDA or an HPA,
``GET /replication/v1/fleet``, ``ferry fleet autoscale`` on VMs). It asks for the largest of:

- throughput: the bytes per second the fleet copies, plus what clears the current lag within
  ``FERRY_FLEET_LAG_CLEAR_SECONDS``, over what one worker carries at ``FERRY_FLEET_TARGET_UTILISATION`` of
  ``FERRY_FLEET_WORKER_CAPACITY_BYTES_PER_SECOND``;
- CPU: the cores the workers use over the same share of one core (a worker's copy loop runs on one thread, so one
  core is what a worker has whatever the machine), which catches small records and many partitions, where a
  worker runs out of CPU long before it reaches its byte capacity;
- one worker while there is any unit to run;

and never more workers than units, since a unit runs on one worker at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from models.fleet import WorkerLoad

# Measured values a hair above a whole number of workers (float noise) do not ask for one more.
_EPSILON = 1e-6


@dataclass(frozen=True)
class FleetDemand:
    desired_workers: int
    by_throughput: int
    by_cpu: int
    bytes_per_second: float
    lag_bytes: int
    cpu_cores: float
    units: int
    reason: str


def _workers_for(amount: float, per_worker: float) -> int:
    if amount <= 0:
        return 0
    return max(1, math.ceil(amount / per_worker - _EPSILON))


def fleet_demand(
    workers: Sequence[WorkerLoad],
    units: int,
    *,
    copied_bytes_per_second: float | None = None,
    worker_capacity_bytes_per_second: float,
    target_utilisation: float,
    lag_clear_seconds: float,
) -> FleetDemand:
    """``copied_bytes_per_second``: the fleet's rate from its units' loads when known (steady while units move);
    otherwise the sum of the workers' rates."""
    copied = sum(w.bytes_per_second for w in workers) if copied_bytes_per_second is None else copied_bytes_per_second
    lag = sum(w.lag_bytes for w in workers)
    cores = sum(w.cpu_cores for w in workers)
    usable = worker_capacity_bytes_per_second * target_utilisation
    by_throughput = _workers_for(copied + lag / lag_clear_seconds, usable)
    by_cpu = _workers_for(cores, target_utilisation)
    desired = min(max(1 if units else 0, by_throughput, by_cpu), units)
    reason = (
        f"{units} units; copying {copied / 1e6:.2f} MB/s with {lag / 1e6:.2f} MB of lag to clear in "
        f"{lag_clear_seconds:g} s: {by_throughput} workers at {usable / 1e6:.1f} MB/s each; "
        f"{cores:.2f} CPU cores in use: {by_cpu} workers at {target_utilisation:.0%} of a core each"
    )
    return FleetDemand(
        desired_workers=desired,
        by_throughput=by_throughput,
        by_cpu=by_cpu,
        bytes_per_second=copied,
        lag_bytes=lag,
        cpu_cores=cores,
        units=units,
        reason=reason,
    )
