"""A worker's load, measured over a window: what the fleet balances and scales on (``models/fleet_capacity.py``).

The work loop feeds every reading of its copiers to a ``LoadMeter``; once per window the meter turns the counts
into rates and publishes a ``WorkerLoadSample`` (replaced whole, read by the control loop's thread), which the
control loop writes with its heartbeat (worker totals) and, for units whose rate changed, into ``fleet_units``
(per-unit loads, for ``balance``). Rates over a window rather than per tick keep the noise of one fetch out of
the assignment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from models.fleet import UnitKey
from workers.engine.metrics import CopyCounts

WINDOW_SECONDS = 5.0
# Rates below this count as idle: a unit's fixed cost (models/fleet_plan.py) dwarfs them.
IDLE_BYTES_PER_SECOND = 1_000.0
# When nothing was copied yet, a lag in records is turned into bytes with this record size.
ASSUMED_RECORD_BYTES = 1_024


def rounded_load(bytes_per_second: float) -> float:
    """Two significant digits, idle as 0: a stored load changes only when the rate really did."""
    if bytes_per_second < IDLE_BYTES_PER_SECOND:
        return 0.0
    digits = 1 - math.floor(math.log10(bytes_per_second))
    return round(bytes_per_second, digits)


@dataclass(frozen=True)
class WorkerLoadSample:
    sequence: int = 0
    cpu_cores: float = 0.0
    bytes_per_second: float = 0.0
    lag_bytes: int = 0
    unit_loads: Mapping[UnitKey, float] = field(default_factory=dict)


class LoadMeter:
    def __init__(self, window_seconds: float = WINDOW_SECONDS) -> None:
        self.window_s = window_seconds
        self.sample = WorkerLoadSample()  # read by another thread: replaced whole, never mutated
        self._since = time.monotonic()
        self._cpu_since = time.process_time()
        self._bytes_since: dict[UnitKey, int] = {}

    def due(self) -> bool:
        return time.monotonic() - self._since >= self.window_s

    def observe(self, stats: Mapping[UnitKey, CopyCounts]) -> None:
        """A reading of every partition this worker copies (cumulative counts); publishes a sample per window."""
        now = time.monotonic()
        elapsed = now - self._since
        if elapsed < self.window_s:
            return
        cpu = time.process_time()
        cores = max(0.0, (cpu - self._cpu_since) / elapsed)
        copied = {key: s.bytes_copied for key, s in stats.items()}
        # A unit first seen in this window (or whose counter restarted with a new copier) has no rate yet.
        rates = {
            key: (size - self._bytes_since[key]) / elapsed
            for key, size in copied.items()
            if key in self._bytes_since and size >= self._bytes_since[key]
        }
        records = sum(s.records_copied for s in stats.values())
        mean_record = sum(copied.values()) / records if records else ASSUMED_RECORD_BYTES
        lag_bytes = 0
        for s in stats.values():
            if s.lag_records:
                size = s.bytes_copied / s.records_copied if s.records_copied else mean_record
                lag_bytes += int(s.lag_records * size)
        self.sample = WorkerLoadSample(
            sequence=self.sample.sequence + 1,
            cpu_cores=cores,
            bytes_per_second=sum(rates.values()),
            lag_bytes=lag_bytes,
            unit_loads={key: rounded_load(rate) for key, rate in rates.items()},
        )
        self._since, self._cpu_since, self._bytes_since = now, cpu, copied
