"""The fleet's decision: a pure function from (desired, observed) to the changes that make them agree.

Everything here is data in, data out: no database, Redis, Kafka or clock. The reconcile task gathers the
inputs, calls ``plan`` and applies the result in one transaction, so the decision can be tested exhaustively
without I/O and re-running it on unchanged inputs changes nothing (level-triggered).

Units of work:
- one *metadata unit* per replicator (``partition == METADATA_PARTITION``): discovers matching source topics,
  creates target topics, syncs configurations, and reports the partition inventory the copy units come from;
- one *copy unit* per source topic-partition in that inventory.

Assignment is sticky and incremental: a unit stays on its worker while that worker is alive and not above its
fair share, so a joining worker takes only the surplus of the others, and a dead worker's units are spread over
the survivors. Moving a unit only changes ``assigned_worker``; the current owner releases its lease and the new
one acquires it afterwards, so a partition never has two owners (see ``workers/fleet/leases.py``).

Its inputs are the values the fleet's tables hold (``models/fleet.py``), read by ``models/fleet_store.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from models.fleet import DesiredReplicator, MetadataObservation, UnitKey, UnitObservation
from models.replicator import ReplicatorState


@dataclass(frozen=True)
class Observed:
    live_workers: frozenset[str]
    units: Mapping[UnitKey, UnitObservation]
    metadata: Mapping[str, MetadataObservation]
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


def balance(
    units: Iterable[UnitKey], current: Mapping[UnitKey, str | None], workers: Iterable[str]
) -> dict[UnitKey, str | None]:
    """Sticky fair assignment of units to workers; returns the full assignment.

    Every worker ends with floor(n/w) or ceil(n/w) units. The workers already holding the most keep the larger
    shares, units move only off a dead or over-full worker, and the least-loaded worker (then the smallest id)
    receives them, so the result is deterministic and moves as little as possible.
    """
    ordered_units = sorted(units)
    live = sorted(set(workers))
    if not live:
        return dict.fromkeys(ordered_units)
    base, extra = divmod(len(ordered_units), len(live))
    held: dict[str, list[UnitKey]] = {w: [] for w in live}
    homeless: list[UnitKey] = []
    for unit in ordered_units:
        worker = current.get(unit)
        if worker in held:
            held[worker].append(unit)
        else:
            homeless.append(unit)
    by_load = sorted(live, key=lambda w: (-len(held[w]), w))
    cap = {w: base + (1 if i < extra else 0) for i, w in enumerate(by_load)}
    assignment: dict[UnitKey, str | None] = {}
    for worker in live:
        for unit in held[worker][: cap[worker]]:
            assignment[unit] = worker
        homeless.extend(held[worker][cap[worker] :])
        held[worker] = held[worker][: cap[worker]]
    for unit in sorted(homeless):
        worker = min((w for w in live if len(held[w]) < cap[w]), key=lambda w: (len(held[w]), w))
        held[worker].append(unit)
        assignment[unit] = worker
    return assignment


def _all_running(units: set[UnitKey], observed: Observed) -> bool:
    return all((obs := observed.units.get(u)) is not None and obs.owner is not None for u in units)


def _stranded(wanted: set[UnitKey], observed: Observed) -> dict[str, str] | None:
    """StateInfo for units nobody has run for longer than a lease, or None."""
    stranded = sorted(
        unit
        for unit in wanted
        if (obs := observed.units.get(unit)) is not None
        and obs.owner is None
        and obs.unowned_seconds > observed.unowned_after_seconds
    )
    if not stranded:
        return None
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
    for unit, worker in balance(wanted, current, observed.live_workers).items():
        if current.get(unit) != worker or unit in result.create_units:
            result.assign[unit] = worker

    for replicator in desired:
        if replicator.state == ReplicatorState.DELETING:
            remaining = [
                u for u, obs in observed.units.items() if u.replicator_id == replicator.id and obs.owner is not None
            ]
            if not remaining:
                result.delete_replicators.add(replicator.id)
            continue
        change = _next_state(replicator, wanted_by_replicator[replicator.id], observed)
        if change is not None:
            result.state_changes[replicator.id] = change
    return result
