"""The fleet's decision: a pure function from (desired, observed) to the changes that make them agree.

Everything here is data in, data out: no database, Redis, Kafka or clock. The reconcile task gathers the
inputs, calls ``plan`` and applies the result in one transaction, so the decision can be tested exhaustively
without I/O and re-running it on unchanged inputs changes nothing (level-triggered).

Units of work:
- one *metadata unit* per replicator (``partition == METADATA_PARTITION``): discovers matching source topics,
  creates target topics, syncs configurations, and reports the partition inventory the copy units come from;
- one *copy unit* per source topic-partition in that inventory.

Assignment is sticky, incremental and by load (``balance``): a unit stays on its worker while that worker is alive,
not draining and not busier than the others by more than a tolerance, so a joining worker takes only the surplus
of the others, a dead worker's units are spread over the survivors, and a hot partition does not share a worker
with many others while another has room. Moving a unit only changes ``assigned_worker``; the current owner
releases its lease and the new one acquires it afterwards, so a partition never has two owners (see
``workers/fleet/leases.py``).

Its inputs are the values the fleet's tables hold (``models/fleet.py``), read by ``models/fleet_store.py``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from models.fleet import DesiredReplicator, MetadataObservation, UnitKey, UnitObservation
from models.replicator import ReplicatorState


@dataclass(frozen=True)
class Observed:
    live_workers: frozenset[str]
    units: Mapping[UnitKey, UnitObservation]
    metadata: Mapping[str, MetadataObservation]
    draining_workers: frozenset[str] = frozenset()
    # A unit without a live owner for longer than this (a lease) makes its replicator FAILED: copying stopped.
    unowned_after_seconds: float = 10.0


@dataclass(frozen=True)
class StateChange:
    state: ReplicatorState
    state_info: Mapping[str, str] | None
    observed_generation: int | None = None


@dataclass
class Plan:
    create_units: set[UnitKey] = field(default_factory=set)
    delete_units: set[UnitKey] = field(default_factory=set)
    assign: dict[UnitKey, str | None] = field(default_factory=dict)
    state_changes: dict[str, StateChange] = field(default_factory=dict)
    delete_replicators: set[str] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return not (
            self.create_units or self.delete_units or self.assign or self.state_changes or self.delete_replicators
        )


def wanted_units(replicator: DesiredReplicator, metadata: MetadataObservation | None) -> set[UnitKey]:
    if replicator.state == ReplicatorState.DELETING:
        return set()
    units = {UnitKey.metadata(replicator.id)}
    if metadata is not None:
        units |= {UnitKey(replicator.id, topic, partition) for topic, partition in metadata.partitions}
    return units


# What a unit costs a worker beyond the bytes it copies, as bytes per second: fetch, poll and progress work per
# partition (make bench's scale step: about 0.4 cores more for 900 more partitions at the same 2 MB/s, where a
# core copies about 100 MB/s). It also makes idle units spread by count.
UNIT_COST_BYTES_PER_SECOND = 50_000.0
# A move must shrink the imbalance by more than this share of a worker's average load: measured loads are
# noisy, and every move costs a hand-off.
LOAD_TOLERANCE = 0.1
# Units move for balance only once the busiest and the least busy worker differ by more than this share of a
# worker's average cost (its units' fixed costs and measured bytes); then they move until LOAD_TOLERANCE holds.
# Without it, 10,000 partitions at 5 MB/s (500 B/s each, mostly measured idle in one 5 s window, a few KiB/s in
# the next) made the two workers' measured totals differ by more than the tolerance of their small measured load
# on most passes: units moved on most passes, each hand-over left its partition seconds behind, and the units
# moved were always the same ones (the largest keys among equal costs), whose lag then rose for 20 s at a time.
REBALANCE_THRESHOLD = 0.1


def unit_cost(load: float) -> float:
    return UNIT_COST_BYTES_PER_SECOND + max(0.0, load)


def balance(
    units: Iterable[UnitKey],
    current: Mapping[UnitKey, str | None],
    workers: Iterable[str],
    loads: Mapping[UnitKey, float] | None = None,
) -> dict[UnitKey, str | None]:
    """Sticky assignment of units to workers by load; returns the full assignment.

    A unit costs its measured bytes per second plus a fixed cost per unit (``unit_cost``). Units stay where they
    are; those of dead or departed workers go, largest first, to the least-loaded worker; then units move from
    the busiest workers to the least busy while a move makes the busier of the two lighter by more than the
    tolerance, but only once the busiest and the least busy differ by more than ``REBALANCE_THRESHOLD`` of a
    worker's average cost, so the noise of measured loads moves nothing. So a hot partition ends up with few
    others beside it while another worker has room, idle units spread by count (floor(n/w) or ceil(n/w) each
    when nothing is measured, once units move at all: a fresh placement, a worker gone or joining), a joining
    worker takes only surplus, and the result is deterministic.
    """
    ordered_units = sorted(units)
    live = sorted(set(workers))
    if not live:
        return dict.fromkeys(ordered_units)
    loads = loads or {}
    cost = {unit: unit_cost(loads.get(unit, 0.0)) for unit in ordered_units}
    measured = sum(max(0.0, loads.get(unit, 0.0)) for unit in ordered_units)
    tolerance = LOAD_TOLERANCE * measured / len(live)
    # Each worker's units as (cost, unit), kept sorted so the best unit to move is found by bisection.
    held: dict[str, list[tuple[float, UnitKey]]] = {w: [] for w in live}
    total = dict.fromkeys(live, 0.0)
    homeless: list[UnitKey] = []
    for unit in ordered_units:
        worker = current.get(unit)
        if worker in held:
            held[worker].append((cost[unit], unit))
            total[worker] += cost[unit]
        else:
            homeless.append(unit)
    for entries in held.values():
        entries.sort()
    # Among equally busy workers, the one that held more receives first and gives last, so those that held the
    # most keep the most (as count-fair shares did: the holder of a metadata unit takes the odd unit).
    held_before = {w: len(held[w]) for w in live}

    def least_busy() -> str:
        return min(live, key=lambda w: (total[w], -held_before[w], w))

    for unit in sorted(homeless, key=lambda u: (-cost[u], u)):
        worker = least_busy()
        insort(held[worker], (cost[unit], unit))
        total[worker] += cost[unit]
    # Moves start only past the threshold (measured loads are noisy); then they go on until the tolerance holds.
    if max(total.values()) - min(total.values()) > REBALANCE_THRESHOLD * sum(total.values()) / len(live):
        # Every move lowers the sum of squared worker totals, so this ends; the bound only guards against float noise.
        for _ in range(4 * len(ordered_units) + 1):
            receiver = least_busy()
            move = None
            for donor in sorted(live, key=lambda w: (-total[w], held_before[w], w)):
                if donor == receiver:
                    break
                move = _best_move(held[donor], total[donor] - total[receiver], tolerance)
                if move is not None:
                    break
            if move is None:
                break
            entry = held[donor].pop(move)
            insort(held[receiver], entry)
            total[donor] -= entry[0]
            total[receiver] += entry[0]
    return {unit: worker for worker, entries in held.items() for _, unit in entries}


def _best_move(entries: list[tuple[float, UnitKey]], gap: float, tolerance: float) -> int | None:
    """The index of the unit whose move from a worker ``gap`` busier than the receiver evens the two out best,
    or None when no move makes the busier of the two lighter by more than ``tolerance``."""
    limit = gap - tolerance  # a unit costing less than this leaves both below the donor's old total
    if not entries or entries[0][0] >= limit:
        return None
    below = bisect_left(entries, (limit,))  # entries[:below] cost less than the limit (at least the first does)
    at = bisect_left(entries, (gap / 2,))
    # The units on either side of half the gap, if under the limit; else the largest unit under it, which is then
    # the one closest to half the gap (a limit below half the gap: a tolerance over half the gap).
    candidates = [i for i in (at - 1, at) if 0 <= i < below] or [below - 1]
    cost = entries[min(candidates, key=lambda i: abs(entries[i][0] - gap / 2))][0]
    # Of the units costing that, the last (largest key) moves: the same ones on every pass, and a replicator's
    # metadata unit (the smallest key of its replicator) stays where it runs.
    return bisect_right(entries, cost, key=lambda entry: entry[0]) - 1


def _all_running(units: set[UnitKey], observed: Observed) -> bool:
    return all((obs := observed.units.get(u)) is not None and obs.owner is not None for u in units)


def _stranded(wanted: set[UnitKey], observed: Observed) -> dict[str, str] | None:
    """StateInfo for units nobody has run for longer than a lease, or None."""
    units = observed.units
    limit = observed.unowned_after_seconds
    stranded = [
        unit
        for unit in wanted
        if (obs := units.get(unit)) is not None and obs.owner is None and obs.unowned_seconds > limit
    ]
    if not stranded:
        return None
    stranded.sort()
    names = ", ".join("metadata unit" if u.is_metadata else f"{u.topic}-{u.partition}" for u in stranded[:10])
    more = f" and {len(stranded) - 10} more" if len(stranded) > 10 else ""
    if not observed.live_workers:
        return {
            "code": "NO_LIVE_WORKER",
            "message": f"no Ferry worker is alive, so nothing is copied: {len(stranded)} of {len(wanted)} units "
            f"have had no owner for over {observed.unowned_after_seconds:g}s ({names}{more}); start a worker",
        }
    return {
        "code": "PARTITIONS_UNASSIGNED",
        "message": f"{len(stranded)} of {len(wanted)} units have had no live worker for over "
        f"{observed.unowned_after_seconds:g}s and are not copied: {names}{more}",
    }


def _next_state(replicator: DesiredReplicator, wanted: set[UnitKey], observed: Observed) -> StateChange | None:
    metadata = observed.metadata.get(replicator.id)
    if replicator.state == ReplicatorState.DELETING:
        return None
    stranded = _stranded(wanted, observed)
    if stranded is not None:
        if replicator.state != ReplicatorState.FAILED or dict(replicator.state_info or {}) != stranded:
            return StateChange(ReplicatorState.FAILED, stranded)
        return None
    if metadata is not None and metadata.failed:
        info = {"code": metadata.error_code or "UNKNOWN", "message": metadata.error_message or ""}
        if replicator.state != ReplicatorState.FAILED or dict(replicator.state_info or {}) != info:
            return StateChange(ReplicatorState.FAILED, info)
        return None
    applied = metadata is not None and metadata.applied_generation >= replicator.generation
    if metadata is not None and applied and _all_running(wanted, observed):
        notice = (
            {"code": metadata.notice_code, "message": metadata.notice_message or ""} if metadata.notice_code else None
        )
        if (
            replicator.state != ReplicatorState.RUNNING
            or (dict(replicator.state_info) if replicator.state_info else None) != notice
        ):
            return StateChange(ReplicatorState.RUNNING, notice, observed_generation=replicator.generation)
        return None
    # A FAILED replicator stays FAILED, with its last reason, until the cause cleared and every unit runs again.
    return None


def plan(desired: Sequence[DesiredReplicator], observed: Observed) -> Plan:
    result = Plan()
    wanted_by_replicator: dict[str, set[UnitKey]] = {}
    for replicator in desired:
        wanted_by_replicator[replicator.id] = wanted_units(replicator, observed.metadata.get(replicator.id))
    wanted = set().union(*wanted_by_replicator.values()) if wanted_by_replicator else set()

    # Units no replicator wants any more: stop them (unassign) and delete the row once nobody owns it.
    for unit, obs in observed.units.items():
        if unit in wanted:
            continue
        if obs.owner is None:
            result.delete_units.add(unit)
        elif obs.assigned_worker is not None:
            result.assign[unit] = None

    result.create_units = wanted - set(observed.units)
    current = {u: (observed.units[u].assigned_worker if u in observed.units else None) for u in wanted}
    loads = {u: obs.load for u, obs in observed.units.items() if obs.load > 0}
    # Draining workers (being stopped) get nothing and give their units away; unless every worker drains.
    assignable = (observed.live_workers - observed.draining_workers) or observed.live_workers
    for unit, worker in balance(wanted, current, assignable, loads).items():
        if current.get(unit) != worker or unit in result.create_units:
            result.assign[unit] = worker

    # Replicators some unit of which is still run by a worker (one pass over the units, not one per replicator).
    still_running = {u.replicator_id for u, obs in observed.units.items() if obs.owner is not None}
    for replicator in desired:
        if replicator.state == ReplicatorState.DELETING:
            if replicator.id not in still_running:
                result.delete_replicators.add(replicator.id)
            continue
        change = _next_state(replicator, wanted_by_replicator[replicator.id], observed)
        if change is not None:
            result.state_changes[replicator.id] = change
    return result
