"""The offset map: where each copied source record landed on the target, kept as compact runs. Pure, no I/O.

Shared by the copy units that fold acknowledged batches into runs (workers/fleet/offset_map_sink.py) and the
stores that keep and translate them (models/offset_store.py); it imports nothing of Ferry's.

A run ``(s0, s1, t0, t1)`` says: the records the copier wrote from source offsets ``[s0, s1)`` are the target
records ``[t0, t1)``, in order. A run is **exact** when ``s1 - s0 == t1 - t0``: every source offset in it was
copied, so source offset ``s`` is target offset ``t0 + s - s0``. Batches extend the last run while source and
target offsets advance together; a gap in the source offsets (transaction markers, aborted records, compaction,
records IDENTICAL mode filtered) or in the target offsets (other writers into the target partition) starts a
new run. Thinning merges target-contiguous neighbours into one inexact run (fewer target than source offsets);
translating inside it gives a position that is never past the true one, with an explicit bound on the records
re-read.

Translation of a committed offset ``S`` (the next record the group would read) answers the target offset of
the first copied source record at or after ``S``: a consumer resuming there skips nothing and, inside exact
runs or across gaps of exact neighbours, re-reads nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    source_start: int
    source_end: int  # exclusive
    target_start: int
    target_end: int  # exclusive

    def __post_init__(self) -> None:
        if self.source_end <= self.source_start or self.target_end <= self.target_start:
            raise ValueError(f"empty run {self}")
        if self.target_end - self.target_start > self.source_end - self.source_start:
            raise ValueError(f"a run cannot hold more target than source offsets: {self}")

    @property
    def exact(self) -> bool:
        return self.source_end - self.source_start == self.target_end - self.target_start

    @property
    def records(self) -> int:
        return self.target_end - self.target_start


@dataclass(frozen=True)
class Translation:
    """``offset``: where to resume on the other side. ``max_reread``: how many records before the true position
    it may lie (0 = exact). ``covered``: whether the offset lies within copied data (False: the offset is past
    everything copied so far, or the map is empty; ``offset`` is then where the next copied record will go,
    when known)."""

    offset: int
    max_reread: int
    covered: bool


def runs_of_batch(source_offsets: Sequence[int], target_base: int) -> list[Run]:
    """Split one copied batch (target offsets contiguous from ``target_base``) at its source gaps."""
    runs: list[Run] = []
    if not source_offsets:
        return runs
    if isinstance(source_offsets, range) and source_offsets.step == 1:
        # A forwarded batch: consecutive offsets, one run.
        return [Run(source_offsets.start, source_offsets.stop, target_base, target_base + len(source_offsets))]
    start = previous = source_offsets[0]
    t_start = target_base
    for i in range(1, len(source_offsets)):
        offset = source_offsets[i]
        if offset <= previous:
            raise ValueError(f"source offsets must increase: {previous} then {offset}")
        if offset != previous + 1:
            runs.append(Run(start, previous + 1, t_start, target_base + i))
            start, t_start = offset, target_base + i
        previous = offset
    runs.append(Run(start, previous + 1, t_start, target_base + len(source_offsets)))
    return runs


class RangeMap:
    """The runs of one source partition, sorted by source offset, non-overlapping.

    A re-copy of source offsets already mapped (at-least-once after a crash) replaces the older mapping: the
    newest copy is where the record sits last on the target, and a consumer resuming there skips only older
    duplicates of records it will read anyway.
    """

    def __init__(self, runs: Iterable[Run] = ()) -> None:
        self._runs: list[Run] = []
        for run in sorted(runs, key=lambda r: r.source_start):
            self.add(run)

    @property
    def runs(self) -> list[Run]:
        return list(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def add_batch(self, source_offsets: Sequence[int], target_base: int) -> None:
        for run in runs_of_batch(source_offsets, target_base):
            self.add(run)

    def add(self, run: Run) -> None:
        runs = self._runs
        if runs and run.source_start >= runs[-1].source_end:
            last = runs[-1]
            if run.source_start == last.source_end and run.target_start == last.target_end and last.exact:
                runs[-1] = Run(last.source_start, run.source_end, last.target_start, run.target_end)
            else:
                runs.append(run)
            return
        # Overlap with older mappings (a re-copy): the new run wins over the source range it covers.
        kept: list[Run] = []
        for old in runs:
            if old.source_end <= run.source_start or old.source_start >= run.source_end:
                kept.append(old)
                continue
            if old.source_start < run.source_start:
                kept.extend(_cut(old, old.source_start, run.source_start))
            if old.source_end > run.source_end:
                kept.extend(_cut(old, run.source_end, old.source_end))
        kept.append(run)
        kept.sort(key=lambda r: r.source_start)
        self._runs = kept

    def thin(self, max_runs: int) -> None:
        """Merge target-contiguous neighbours, smallest source gap first, until at most ``max_runs`` remain
        (or nothing more can be merged). Merging exact neighbours without a gap loses nothing."""
        while len(self._runs) > max_runs:
            best: tuple[int, int] | None = None
            for i in range(len(self._runs) - 1):
                a, b = self._runs[i], self._runs[i + 1]
                if a.target_end != b.target_start:
                    continue
                gap = b.source_start - a.source_end
                if best is None or gap < best[0]:
                    best = (gap, i)
            if best is None:
                return
            i = best[1]
            a, b = self._runs[i], self._runs[i + 1]
            self._runs[i : i + 2] = [Run(a.source_start, b.source_end, a.target_start, b.target_end)]

    def max_error(self) -> int:
        """The largest re-read any translation inside the map can have (0 while every run is exact)."""
        # Inside a run of n records over L source offsets the error peaks at min(n, L - n) (see _inside).
        return max((min(r.records, r.source_end - r.source_start - r.records) for r in self._runs), default=0)

    # ------------------------------------------------------------------ translation

    def translate(
        self, source_offset: int, *, next_target: int | None = None, origin: tuple[int, int] | None = None
    ) -> Translation | None:
        """Target position for a consumer whose next source record is ``source_offset``.

        ``next_target``: where the next copied record will land (e.g. the copier's progress), used when the
        offset is past everything mapped. None when nothing is known (empty map and no ``next_target``).
        ``origin``: (source, target) position where copying began, if known: target records between it and the
        first mapped run are copies the map lost (a crash before they were stored), so an offset in between
        resumes at the origin with that many records as the bound.
        """
        runs = self._runs
        if not runs:
            return None if next_target is None else Translation(next_target, 0, False)
        i = bisect.bisect_right([r.source_start for r in runs], source_offset) - 1
        if i < 0:
            first = runs[0]
            if origin is not None and source_offset >= origin[0] and origin[1] < first.target_start:
                return Translation(origin[1], first.target_start - origin[1], True)
            # Before the first mapped record, and nothing copied before it: resume at it.
            return Translation(first.target_start, 0, True)
        run = runs[i]
        if source_offset < run.source_end:
            offset, reread = _inside(run, source_offset)
            return Translation(offset, reread, True)
        if i + 1 < len(runs):
            following = runs[i + 1]
            # In a gap: the first copied record at or after it is the next run's first. Target records between
            # the two runs were not written by this copy of the map (another writer, or copies the map missed):
            # resuming after the previous run reads them, which is at most that many re-reads.
            return Translation(run.target_end, following.target_start - run.target_end, True)
        end = run.target_end if next_target is None else max(run.target_end, next_target)
        return Translation(run.target_end, end - run.target_end, False)

    def translate_back(self, target_offset: int, *, next_source: int | None = None) -> int | None:
        """The source offset of the first copied record at target offset ``target_offset`` or later; past the
        last mapped record, ``next_source`` (where the copier will look next) or the end of the last run."""
        for run in self._runs:
            if run.target_end <= target_offset:
                continue
            if target_offset <= run.target_start:
                return run.source_start
            # Exact: the record's own source offset. Inexact: the earliest source offset that record can have
            # been copied from, so a consumer moved back never skips one.
            return run.source_start + (target_offset - run.target_start)
        if self._runs:
            last = self._runs[-1].source_end
            return last if next_source is None else max(last, next_source)
        return next_source


def _cut(run: Run, source_start: int, source_end: int) -> list[Run]:
    """The part of an exact run for source offsets ``[source_start, source_end)``; inexact runs are dropped
    from the overlapped range entirely (their part cannot be located), keeping what cannot overlap."""
    if not run.exact:
        return []
    delta = run.target_start - run.source_start
    return [Run(source_start, source_end, source_start + delta, source_end + delta)]


def _inside(run: Run, source_offset: int) -> tuple[int, int]:
    """(target offset, max re-read) for an offset inside a run.

    Of the run's ``n`` target records, those copied from source offsets below ``source_offset`` number at most
    ``source_offset - s0`` and at least ``n - (s1 - source_offset)``: resume at the lower bound.
    """
    n = run.target_end - run.target_start
    before_max = min(source_offset - run.source_start, n)
    before_min = max(0, n - (run.source_end - source_offset))
    return run.target_start + before_min, before_max - before_min
