"""Data access for the fleet's tables: live workers, units of work with their fenced leases, what each
replicator's metadata unit observed, and the reconcile loop's reading and writing of replicators.

Every statement the fleet runs lives here, written with the ORM classes of ``models/fleet.py`` and
``models/replicator.py`` as SQLAlchemy Core expressions; the fleet (``workers/fleet``) decides, this module only
reads and writes. Lease times are always PostgreSQL's ``now()``, never a worker's clock, so clock skew between
hosts cannot make two workers believe they hold the same unit.

The reconcile pass runs in a Celery task on a synchronous ``Connection``; the agent's lease and metadata work runs
on the event loop with an ``AsyncConnection``. Each function takes the connection of the transaction its caller
owns.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Integer,
    Row,
    Select,
    Text,
    Update,
    and_,
    bindparam,
    cast,
    delete,
    func,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from models.fleet import (
    AssignedUnit,
    DesiredReplicator,
    FleetOverview,
    FleetReconcile,
    FleetUnit,
    FleetWorker,
    MetadataObservation,
    ReplicatorMetadata,
    UnitKey,
    UnitObservation,
    WorkerLoad,
)
from models.replicator import ReplicatorRow, ReplicatorState

# Any constant shared by every reconcile pass: the transaction-scoped advisory lock that serialises them.
RECONCILE_LOCK_ID = 0x46455252  # "FERR"
# Workers that stopped heartbeating this long ago are forgotten; live ones heartbeat every tick.
FORGET_WORKERS_AFTER = timedelta(hours=1)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def json_or_null(value: Any) -> Any:
    """A JSONB value, with None stored as SQL NULL rather than as the JSON value ``null``."""
    return null() if value is None else value


@functools.lru_cache(maxsize=4096)
def _uuid(text: str) -> uuid.UUID:
    """A replicator id as a UUID, remembered: a worker names the same few replicators in thousands of leases every
    tick, and parsing each id again was a visible share of its control loop."""
    return uuid.UUID(text)


def _key(row: Any) -> UnitKey:
    return UnitKey(str(row.replicator_id), str(row.topic), int(row.partition))


def _is(key: UnitKey) -> Any:
    """The WHERE clause of one unit."""
    return and_(
        FleetUnit.replicator_id == uuid.UUID(key.replicator_id),
        FleetUnit.topic == key.topic,
        FleetUnit.partition == key.partition,
    )


# ---------------------------------------------------------------------- the reconcile pass (sync)


def try_reconcile_lock(conn: Connection) -> bool:
    """Take the reconcile lock for this transaction; False when another pass holds it."""
    return bool(conn.execute(select(func.pg_try_advisory_xact_lock(RECONCILE_LOCK_ID))).scalar_one())


def _as_text(column: Any) -> Any:
    """A uuid column read as its text: the pass keys everything by the text, and making a UUID object of each of
    thousands of rows only to format it again was a noticeable share of the pass's reads."""
    return cast(column, Text).label(column.key)


def desired_replicators(conn: Connection) -> list[DesiredReplicator]:
    rows = conn.execute(
        select(
            _as_text(ReplicatorRow.id), ReplicatorRow.state, ReplicatorRow.generation, ReplicatorRow.state_info
        ).order_by(ReplicatorRow.seq)
    )
    return [DesiredReplicator(str(r.id), ReplicatorState(r.state), int(r.generation), r.state_info) for r in rows]


def live_workers(conn: Connection, dead_after_seconds: float) -> frozenset[str]:
    rows = conn.execute(
        select(FleetWorker.worker_id).where(FleetWorker.heartbeat_at > func.now() - _seconds(dead_after_seconds))
    )
    return frozenset(str(r.worker_id) for r in rows)


def draining_workers(conn: Connection, dead_after_seconds: float) -> frozenset[str]:
    rows = conn.execute(
        select(FleetWorker.worker_id).where(
            FleetWorker.heartbeat_at > func.now() - _seconds(dead_after_seconds), FleetWorker.draining
        )
    )
    return frozenset(str(r.worker_id) for r in rows)


def _unowned_seconds() -> Any:
    """Seconds since a unit last had a live lease (0 while it has one): lease_expires_at holds when it ended."""
    return func.greatest(0.0, func.extract("epoch", func.now() - func.coalesce(FleetUnit.lease_expires_at, func.now())))


def observed_units(conn: Connection) -> dict[UnitKey, UnitObservation]:
    """Every unit with its assignment, the owner of its lease while that lease is live, and how long it has had
    no live owner."""
    rows = conn.execute(
        select(
            _as_text(FleetUnit.replicator_id),
            FleetUnit.topic,
            FleetUnit.partition,
            FleetUnit.assigned_worker,
            FleetUnit.owner_worker,
            (FleetUnit.lease_expires_at > func.now()).label("lease_live"),
            _unowned_seconds().label("unowned_seconds"),
            FleetUnit.load_bytes_per_second,
        )
    )
    # Unpacked by position: thousands of rows per pass, and a named attribute of a row costs a lookup each.
    return {
        UnitKey(replicator_id, topic, partition): UnitObservation(
            assigned,
            owner if live else None,
            0.0 if live else float(unowned),
            # The load of a unit nobody runs is unknown, not zero; it still counts until measured again.
            float(load),
        )
        for replicator_id, topic, partition, assigned, owner, live, unowned, load in rows
    }


def metadata_observations(conn: Connection, fail_after_seconds: float) -> dict[str, MetadataObservation]:
    failed = func.coalesce(ReplicatorMetadata.error_since < func.now() - _seconds(fail_after_seconds), False)
    rows = conn.execute(
        select(
            _as_text(ReplicatorMetadata.replicator_id),
            ReplicatorMetadata.applied_generation,
            ReplicatorMetadata.partitions,
            ReplicatorMetadata.error_code,
            ReplicatorMetadata.error_message,
            ReplicatorMetadata.notice_code,
            ReplicatorMetadata.notice_message,
            failed.label("failed"),
        )
    )
    return {
        str(r.replicator_id): MetadataObservation(
            applied_generation=int(r.applied_generation),
            partitions=frozenset((str(t), int(p)) for t, p in r.partitions),
            error_code=r.error_code,
            error_message=r.error_message,
            failed=bool(r.failed),
            notice_code=r.notice_code,
            notice_message=r.notice_message,
        )
        for r in rows
    }


def _unit_params(key: UnitKey) -> dict[str, Any]:
    return {"unit_replicator": uuid.UUID(key.replicator_id), "unit_topic": key.topic, "unit_partition": key.partition}


_THIS_UNIT = and_(
    FleetUnit.replicator_id == bindparam("unit_replicator"),
    FleetUnit.topic == bindparam("unit_topic"),
    FleetUnit.partition == bindparam("unit_partition"),
)


def delete_unowned_units(conn: Connection, keys: Iterable[UnitKey]) -> None:
    """Delete these units unless someone holds a live lease on them (that owner stops first)."""
    params = [_unit_params(k) for k in sorted(keys)]
    if params:
        conn.execute(
            delete(FleetUnit).where(
                _THIS_UNIT, or_(FleetUnit.owner_worker.is_(None), FleetUnit.lease_expires_at < func.now())
            ),
            params,
        )


def create_units(conn: Connection, keys: Iterable[UnitKey]) -> None:
    values = [
        {"replicator_id": uuid.UUID(k.replicator_id), "topic": k.topic, "partition": k.partition, "epoch": 0}
        for k in sorted(keys)
    ]
    if values:
        # A unit without an owner keeps in lease_expires_at when it last had one (here: since when it exists).
        conn.execute(insert(FleetUnit).values(lease_expires_at=func.now()).on_conflict_do_nothing(), values)


def assign_units(conn: Connection, assignment: Mapping[UnitKey, str | None]) -> None:
    params = [{**_unit_params(k), "worker": w} for k, w in sorted(assignment.items())]
    if params:
        conn.execute(update(FleetUnit).where(_THIS_UNIT).values(assigned_worker=bindparam("worker")), params)


@dataclass(frozen=True)
class StateWrite:
    """Move a replicator to ``state`` unless the API changed it since the pass read ``seen`` (the API wins)."""

    replicator_id: str
    state: ReplicatorState
    state_info: Mapping[str, str] | None
    observed_generation: int | None
    seen: DesiredReplicator


def _state_update(with_generation: bool) -> Any:
    values: dict[str, Any] = {
        "state": bindparam("new_state"),
        # SQL NULL for no StateInfo, not the JSON value null.
        "state_info": bindparam("new_state_info", type_=JSONB(none_as_null=True)),
        "updated_at": func.now(),
    }
    if with_generation:
        values["observed_generation"] = bindparam("new_observed_generation")
    return (
        update(ReplicatorRow)
        .where(
            ReplicatorRow.id == bindparam("replicator"),
            ReplicatorRow.state == bindparam("seen_state"),
            ReplicatorRow.generation == bindparam("seen_generation"),
        )
        .values(values)
    )


_STATE_UPDATES = {True: _state_update(True), False: _state_update(False)}


def set_replicator_states(conn: Connection, writes: Iterable[StateWrite]) -> None:
    """Every state change of a pass, in replicator id order, in at most two batched statements (a pass after a
    fleet restart moves hundreds of replicators at once; one statement each made the pass take seconds)."""
    batches: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for write in sorted(writes, key=lambda w: w.replicator_id):
        row = {
            "replicator": uuid.UUID(write.replicator_id),
            "seen_state": write.seen.state.value,
            "seen_generation": write.seen.generation,
            "new_state": write.state.value,
            "new_state_info": None if write.state_info is None else dict(write.state_info),
        }
        if write.observed_generation is not None:
            row["new_observed_generation"] = write.observed_generation
        batches[write.observed_generation is not None].append(row)
    for with_generation, params in batches.items():
        if params:
            conn.execute(_STATE_UPDATES[with_generation], params)


def delete_deleted_replicator(conn: Connection, replicator_id: str) -> None:
    """Remove a DELETING replicator's row (its units, metadata and offset map go with it: ON DELETE CASCADE)."""
    conn.execute(
        delete(ReplicatorRow).where(
            ReplicatorRow.id == uuid.UUID(replicator_id), ReplicatorRow.state == ReplicatorState.DELETING.value
        )
    )


@dataclass(frozen=True)
class LastReconcile:
    age_seconds: float  # since the pass's transaction began
    took_seconds: float


def last_reconcile(conn: Connection) -> LastReconcile | None:
    """When the last recorded pass began (by the database's clock) and how long it took; None before any did."""
    row = conn.execute(_LAST_RECONCILE).one_or_none()
    if row is None or row[1] is None:
        return None
    return LastReconcile(max(0.0, float(row[0])), float(row[1]))


def record_reconcile(conn: Connection, by: str, took_seconds: float | None = None) -> None:
    """Note that a reconcile pass ran now (read by /readyz: a fleet whose passes stopped is not ready) and how long
    it took."""
    statement = insert(FleetReconcile).values(id=1, ran_at=func.now(), ran_by=by[:200], took_seconds=took_seconds)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[FleetReconcile.id],
            set_={
                "ran_at": func.now(),
                "ran_by": statement.excluded.ran_by,
                "took_seconds": statement.excluded.took_seconds,
            },
        )
    )


async def inventories(
    db: AsyncConnection | AsyncSession, replicator_ids: Iterable[str]
) -> dict[str, list[tuple[str, int]]]:
    """The source partitions each replicator's metadata unit last reported in scope (those that should be copied)."""
    ids = [uuid.UUID(i) for i in replicator_ids]
    if not ids:
        return {}
    # One array parameter, not one placeholder per id: a scrape of 1,000 replicators otherwise spent more time in
    # psycopg parsing the statement than in PostgreSQL.
    wanted = bindparam("inventory_replicators", ids, type_=ARRAY(PgUUID))
    rows = await db.execute(
        select(ReplicatorMetadata.replicator_id, ReplicatorMetadata.partitions).where(
            ReplicatorMetadata.replicator_id == func.any(wanted)
        )
    )
    return {str(r.replicator_id): [(str(t), int(p)) for t, p in r.partitions] for r in rows}


async def overview(conn: AsyncConnection, dead_after_seconds: float, unowned_after_seconds: float) -> FleetOverview:
    """The fleet at a glance, for /readyz."""
    workers = (
        await conn.execute(
            select(func.count()).where(FleetWorker.heartbeat_at > func.now() - _seconds(dead_after_seconds))
        )
    ).scalar_one()
    live = FleetUnit.lease_expires_at > func.now()
    units = (
        await conn.execute(
            select(
                func.count(),
                func.count().filter(~func.coalesce(live, False)),
                func.count().filter(_unowned_seconds() > unowned_after_seconds, ~func.coalesce(live, False)),
            )
        )
    ).one()
    reconciled = (
        await conn.execute(
            select(func.extract("epoch", func.now() - FleetReconcile.ran_at)).where(FleetReconcile.id == 1)
        )
    ).scalar_one_or_none()
    replicators = (await conn.execute(select(func.count()).select_from(ReplicatorRow))).scalar_one()
    return FleetOverview(
        live_workers=int(workers),
        replicators=int(replicators),
        units=int(units[0]),
        units_without_owner=int(units[1]),
        units_without_owner_too_long=int(units[2]),
        last_reconcile_age_seconds=None if reconciled is None else float(reconciled),
    )


def forget_departed_workers(conn: Connection) -> None:
    conn.execute(delete(FleetWorker).where(FleetWorker.heartbeat_at < func.now() - FORGET_WORKERS_AFTER))


# ---------------------------------------------------------------------- the fleet's load (API, CLI, autoscaler)


def _worker_loads(dead_after_seconds: float) -> Select[Any]:
    held = (
        select(func.count())
        .where(FleetUnit.owner_worker == FleetWorker.worker_id, FleetUnit.lease_expires_at > func.now())
        .correlate(FleetWorker)
        .scalar_subquery()
    )
    return (
        select(
            FleetWorker.worker_id,
            FleetWorker.hostname,
            FleetWorker.pid,
            FleetWorker.started_at,
            func.extract("epoch", func.now() - FleetWorker.heartbeat_at).label("heartbeat_age"),
            held.label("units"),
            FleetWorker.cpu_cores,
            FleetWorker.bytes_per_second,
            FleetWorker.lag_bytes,
            FleetWorker.draining,
        )
        .where(FleetWorker.heartbeat_at > func.now() - _seconds(dead_after_seconds))
        .order_by(FleetWorker.started_at, FleetWorker.worker_id)
    )


def _worker_load(row: Any) -> WorkerLoad:
    return WorkerLoad(
        worker_id=str(row.worker_id),
        hostname=str(row.hostname),
        pid=int(row.pid),
        heartbeat_age_seconds=max(0.0, float(row.heartbeat_age)),
        started_at=row.started_at,
        units=int(row.units),
        cpu_cores=float(row.cpu_cores),
        bytes_per_second=float(row.bytes_per_second),
        lag_bytes=int(row.lag_bytes),
        draining=bool(row.draining),
    )


_UNIT_COUNTS = select(
    func.count(),
    func.count().filter(FleetUnit.assigned_worker.is_(None)),
    func.count().filter(~func.coalesce(FleetUnit.lease_expires_at > func.now(), False)),
    func.coalesce(func.sum(FleetUnit.load_bytes_per_second), 0.0),
)


@dataclass(frozen=True)
class FleetLoad:
    workers: list[WorkerLoad]
    units: int
    unassigned_units: int
    units_without_owner: int
    last_reconcile_age_seconds: float | None
    # The sum of every unit's last measured rate: unlike the workers' own rates, it does not dip while units move
    # (a unit keeps its last load until its new owner measured it).
    copied_bytes_per_second: float = 0.0
    # How long the last reconcile pass took (None: no pass recorded it).
    last_reconcile_seconds: float | None = None


_LAST_RECONCILE = select(func.extract("epoch", func.now() - FleetReconcile.ran_at), FleetReconcile.took_seconds).where(
    FleetReconcile.id == 1
)


def _fleet_load(workers: list[WorkerLoad], units: Any, last: Any) -> FleetLoad:
    return FleetLoad(
        workers,
        int(units[0]),
        int(units[1]),
        int(units[2]),
        None if last is None else float(last[0]),
        float(units[3]),
        None if last is None or last[1] is None else float(last[1]),
    )


def fleet_load(conn: Connection, dead_after_seconds: float) -> FleetLoad:
    workers = [_worker_load(r) for r in conn.execute(_worker_loads(dead_after_seconds))]
    return _fleet_load(workers, conn.execute(_UNIT_COUNTS).one(), conn.execute(_LAST_RECONCILE).one_or_none())


async def fleet_load_async(conn: AsyncConnection, dead_after_seconds: float) -> FleetLoad:
    workers = [_worker_load(r) for r in await conn.execute(_worker_loads(dead_after_seconds))]
    units = (await conn.execute(_UNIT_COUNTS)).one()
    return _fleet_load(workers, units, (await conn.execute(_LAST_RECONCILE)).one_or_none())


def set_draining(conn: Connection, worker_id: str, draining: bool = True) -> bool:
    """Mark a worker as draining (scale-in): the next reconcile pass moves its units away. False if unknown."""
    result = conn.execute(update(FleetWorker).where(FleetWorker.worker_id == worker_id).values(draining=draining))
    return bool(result.rowcount)


def workers_on(conn: Connection, hostname: str, dead_after_seconds: float) -> dict[int, str]:
    """Live workers on one host by process id (the autoscaler finds the workers it started)."""
    rows = conn.execute(
        select(FleetWorker.worker_id, FleetWorker.pid).where(
            FleetWorker.hostname == hostname, FleetWorker.heartbeat_at > func.now() - _seconds(dead_after_seconds)
        )
    )
    return {int(r.pid): str(r.worker_id) for r in rows}


# ---------------------------------------------------------------------- one worker's leases (async)


@dataclass(frozen=True)
class LoadSample:
    """A worker's load as it measured it: CPU cores of its process, bytes per second copied, bytes of lag."""

    cpu_cores: float = 0.0
    bytes_per_second: float = 0.0
    lag_bytes: int = 0


async def heartbeat(
    conn: AsyncConnection, worker_id: str, hostname: str, pid: int, load: LoadSample | None = None
) -> None:
    measured = (
        {}
        if load is None
        else {
            "cpu_cores": load.cpu_cores,
            "bytes_per_second": load.bytes_per_second,
            "lag_bytes": load.lag_bytes,
        }
    )
    statement = insert(FleetWorker).values(worker_id=worker_id, hostname=hostname, pid=pid, **measured)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[FleetWorker.worker_id], set_={"heartbeat_at": func.now(), **measured}
        )
    )


async def record_unit_loads(conn: AsyncConnection, worker_id: str, loads: Mapping[UnitKey, float]) -> None:
    """Store the bytes per second of units this worker owns (rows a reconcile pass is changing are skipped: the
    next write catches up)."""
    pairs = sorted(loads.items())
    if not pairs:
        return
    listed = (
        func.unnest(
            bindparam("load_replicators", [uuid.UUID(key.replicator_id) for key, _ in pairs], type_=ARRAY(PgUUID)),
            bindparam("load_topics", [key.topic for key, _ in pairs], type_=ARRAY(Text)),
            bindparam("load_partitions", [key.partition for key, _ in pairs], type_=ARRAY(Integer)),
            bindparam("load_values", [load for _, load in pairs], type_=ARRAY(Float)),
        )
        .table_valued("replicator_id", "topic", "partition", "load")
        .render_derived(name="measured")
    )
    locked = _listed_units(
        listed, FleetUnit.owner_worker == worker_id, extra=(listed.c.load,), lock=True, skip_locked=True
    ).subquery("locked")
    await conn.execute(_update_units_in(locked).values(load_bytes_per_second=locked.c.load))


async def _assigned_units(conn: AsyncConnection, *where: Any) -> list[AssignedUnit]:
    rows = await conn.execute(
        select(
            FleetUnit.replicator_id,
            FleetUnit.topic,
            FleetUnit.partition,
            FleetUnit.assigned_worker,
            FleetUnit.owner_worker,
            FleetUnit.epoch,
        ).where(*where)
    )
    return [AssignedUnit(_key(r), r.assigned_worker, r.owner_worker, int(r.epoch)) for r in rows]


def _of_worker(worker_id: str) -> Any:
    return or_(FleetUnit.assigned_worker == worker_id, FleetUnit.owner_worker == worker_id)


async def units_of(conn: AsyncConnection, worker_id: str) -> list[AssignedUnit]:
    """Units assigned to this worker or owned by it (a unit being moved away is both for a moment)."""
    return await _assigned_units(conn, _of_worker(worker_id))


async def units_in_motion(conn: AsyncConnection, worker_id: str) -> list[AssignedUnit]:
    """The units of this worker whose assignment and lease disagree: owned here but moved away or unassigned, or
    assigned here and owned by no one or someone else. Every other unit of the worker is assigned to it and owned
    by it, which needs nothing done: a tick acts on this short list instead of reading thousands of rows."""
    return await _assigned_units(
        conn, _of_worker(worker_id), FleetUnit.assigned_worker.is_distinct_from(FleetUnit.owner_worker)
    )


def _held_units(name: str, pairs: Sequence[tuple[UnitKey, int]]) -> Any:
    """(unit, epoch) pairs as a table of four columns, bound as four arrays (four parameters, however many pairs):
    thousands of bound tuples cost the driver more CPU per tick than the statement costs the database."""
    return (
        func.unnest(
            bindparam(f"{name}_replicators", [_uuid(key.replicator_id) for key, _ in pairs], type_=ARRAY(PgUUID)),
            bindparam(f"{name}_topics", [key.topic for key, _ in pairs], type_=ARRAY(Text)),
            bindparam(f"{name}_partitions", [key.partition for key, _ in pairs], type_=ARRAY(Integer)),
            bindparam(f"{name}_epochs", [epoch for _, epoch in pairs], type_=ARRAY(BigInteger)),
        )
        .table_valued("replicator_id", "topic", "partition", "epoch")
        .render_derived(name=name)
    )


_UNIT_KEY = (FleetUnit.replicator_id, FleetUnit.topic, FleetUnit.partition)


def _listed_units(
    listed: Any, *where: Any, extra: Sequence[Any] = (), lock: bool = False, skip_locked: bool = False
) -> Select[Any]:
    """The key and epoch of each listed unit (a table with replicator_id, topic and partition columns) whose row
    matches ``where``, with the ``extra`` columns of the list: one primary-key probe per listed unit, in the list's
    order, whatever the table's statistics.

    A plain join of the list with ``fleet_units`` is the planner's to order. Moments after an ANALYZE every
    ``lease_expires_at`` it sampled is in the past, so it estimated one row for a worker's live leases and ran a
    nested loop that rescanned the whole list for every row: 25 million comparisons, 1 to 50 s, to renew 5,000
    leases, so every lease of the worker lapsed (a filter on ``owner_worker`` alone does the same for a worker id
    newer than the statistics). A LATERAL subquery can only run once per listed unit, through the key.

    ``lock`` locks each row as it is found (``skip_locked``: skips rows locked elsewhere rather than waiting); the
    list's order is then the lock order, so callers that wait pass it sorted by unit key, as every writer of many
    units locks (``_locked_in_key_order``)."""
    # LIMIT 1: a key matches one row at most, and a subquery with a limit is never merged into the outer join
    # (a plain one would be, and planned as freely as the join it replaced).
    probe = (
        select(*_UNIT_KEY, FleetUnit.epoch)
        .where(
            FleetUnit.replicator_id == listed.c.replicator_id,
            FleetUnit.topic == listed.c.topic,
            FleetUnit.partition == listed.c.partition,
            *where,
        )
        .limit(1)
    )
    if lock:
        probe = probe.with_for_update(of=FleetUnit, skip_locked=skip_locked)
    unit = probe.lateral("unit")
    return select(unit.c.replicator_id, unit.c.topic, unit.c.partition, unit.c.epoch, *extra).select_from(
        listed.join(unit, true())
    )


def _update_units_in(rows: Any) -> Update:
    """An UPDATE of the units whose keys a subquery holds (its rows, however many, joined through the key)."""
    return update(FleetUnit).where(
        FleetUnit.replicator_id == rows.c.replicator_id,
        FleetUnit.topic == rows.c.topic,
        FleetUnit.partition == rows.c.partition,
    )


def _locked_in_key_order(*where: Any) -> Select[uuid.UUID, str, int]:
    """The keys of the units matching ``where`` that no other transaction is changing, locked in key order.

    Every writer that changes many units locks them in this order (sorted unit keys: ``assign_units``,
    ``release``; COLLATE "C" is code-point order, Python's string order), so two of them never deadlock; rows
    locked elsewhere are skipped rather than waited for."""
    return (
        select(*_UNIT_KEY)
        .where(*where)
        .order_by(FleetUnit.replicator_id, FleetUnit.topic.collate("C"), FleetUnit.partition)
        .with_for_update(skip_locked=True)
    )


async def acquire(conn: AsyncConnection, worker_id: str, lease_seconds: float) -> list[tuple[UnitKey, int, str | None]]:
    """Take every unit assigned to this worker whose lease is free or expired, bumping each one's epoch: the
    fencing token of the new owner. Returns (unit, epoch, previous owner) of each unit taken."""
    free = (
        FleetUnit.assigned_worker == worker_id,
        or_(FleetUnit.owner_worker.is_(None), FleetUnit.lease_expires_at < func.now()),
        # A deleted replicator's units are never taken again, even before a reconcile pass unassigns them.
        FleetUnit.replicator_id.not_in(
            select(ReplicatorRow.id).where(ReplicatorRow.state == ReplicatorState.DELETING.value)
        ),
    )
    # Units a reconcile pass is changing right now are left for the next tick instead of waited for; the rest are
    # locked in key order (see ``renew``), then updated through the primary key from the list of those locked. One
    # statement with the locking subquery inside was planned, on the statistics of a table just filled by a pass
    # (thousands of units created and assigned at once, not yet analysed), as a nested loop that re-ran the
    # subquery for every row: 11 s to take 5,000 units, leases that had lapsed locally before the answer came.
    taken = [tuple(r) for r in await conn.execute(_locked_in_key_order(*free))]
    if not taken:
        return []
    listed = (
        func.unnest(
            bindparam("taken_replicators", [r[0] for r in taken], type_=ARRAY(PgUUID)),
            bindparam("taken_topics", [r[1] for r in taken], type_=ARRAY(Text)),
            bindparam("taken_partitions", [r[2] for r in taken], type_=ARRAY(Integer)),
        )
        .table_valued("replicator_id", "topic", "partition")
        .render_derived(name="taken")
    )
    rows = await conn.execute(
        update(FleetUnit)
        .where(
            FleetUnit.replicator_id == listed.c.replicator_id,
            FleetUnit.topic == listed.c.topic,
            FleetUnit.partition == listed.c.partition,
        )
        .values(
            owner_worker=worker_id,
            epoch=FleetUnit.epoch + 1,
            lease_expires_at=func.now() + _seconds(lease_seconds),
            # The right-hand side reads the row before this update: the owner whose lease expired, if any.
            previous_owner=func.coalesce(FleetUnit.owner_worker, FleetUnit.previous_owner),
        )
        .returning(
            FleetUnit.replicator_id, FleetUnit.topic, FleetUnit.partition, FleetUnit.epoch, FleetUnit.previous_owner
        )
    )
    return [(_key(r), int(r.epoch), r.previous_owner) for r in rows]


@dataclass(frozen=True)
class Renewal:
    """What a renewal found: ``renewed`` (unit -> epoch) were extended; ``busy`` are still held at their epoch but
    were being changed by a reconcile pass at that moment, so they keep their old deadline until the next try."""

    renewed: dict[UnitKey, int]
    busy: set[UnitKey]


async def renew(
    conn: AsyncConnection, worker_id: str, held: Iterable[tuple[UnitKey, int]], lease_seconds: float
) -> Renewal:
    """Extend the live leases this worker holds, each only at the epoch it holds it at.

    Never "every lease I own": a lease the worker lost track of (a release that failed, an acquire whose answer
    was lost) must expire, or its unit would be held by nobody, forever.

    Never waits on a reconcile pass either: its transaction keeps the rows it reassigns locked until it commits
    (a burst of deletes: seconds), and a renewal queued behind it would let every other lease of this worker
    lapse. Rows locked right now are skipped (locking the rest in key order, ``pairs`` sorted, as ``assign_units``
    and ``release`` do, so the two never deadlock; COLLATE "C" is code-point order, Python's string order) and
    reported busy when a plain read shows them still held: they are the units being moved or deleted. Every
    statement probes the listed units through the primary key (``_listed_units``)."""
    pairs = sorted(held)
    if not pairs:
        return Renewal({}, set())
    listed = _held_units("held", pairs)
    held_here = (
        FleetUnit.epoch == listed.c.epoch,
        FleetUnit.owner_worker == worker_id,
        FleetUnit.lease_expires_at >= func.now(),
    )

    def units_held_here(*where: Any, lock: bool = False) -> Select[Any]:
        return _listed_units(listed, *held_here, *where, lock=lock, skip_locked=True)

    locked = units_held_here(lock=True).subquery("locked")
    extended = await conn.execute(
        _update_units_in(locked).values(lease_expires_at=func.now() + _seconds(lease_seconds))
    )
    if extended.rowcount == len(pairs):
        # Every lease extended (the usual tick): nothing to read back, row by row, of thousands.
        return Renewal(dict(pairs), set())
    # Which ones: now() is the transaction's start, so the rows extended here, and only those, hold exactly this.
    rows = await conn.execute(units_held_here(FleetUnit.lease_expires_at == func.now() + _seconds(lease_seconds)))
    renewed = {_key(r): int(r.epoch) for r in rows}
    busy: set[UnitKey] = set()
    if len(renewed) < len(pairs):
        # A plain read never waits on a row lock: it sees the row as last committed.
        rows = await conn.execute(units_held_here())
        busy = {key for r in rows if (key := _key(r)) not in renewed}
    return Renewal(renewed, busy)


async def release(conn: AsyncConnection, worker_id: str, held: Iterable[tuple[UnitKey, int]]) -> None:
    """Give leases back (only where this worker still owns them at that epoch). One statement, the rows locked in
    key order as every writer of many units does (``_locked_in_key_order``), waiting for none it must not skip."""
    pairs = sorted(held)
    if not pairs:
        return
    listed = _held_units("released", pairs)
    locked = _listed_units(
        listed, FleetUnit.epoch == listed.c.epoch, FleetUnit.owner_worker == worker_id, lock=True
    ).subquery("locked")  # locked in the order of ``pairs``: sorted by unit key
    # Only a lease still this worker's at that epoch is given back: the lock waits for a pass changing the row,
    # then checks the probe's conditions again on the row as committed. They are not repeated here: a filter on
    # the updated table's owner, which the statistics may say matches nothing, is what made the planner rescan
    # the locked list once per row of the table.
    await conn.execute(
        _update_units_in(locked)
        .where(FleetUnit.epoch == locked.c.epoch)
        .values(owner_worker=None, lease_expires_at=func.now(), previous_owner=FleetUnit.owner_worker)
    )


async def leave(conn: AsyncConnection, worker_id: str) -> None:
    """Free every lease the worker still holds and drop it from the fleet."""
    await conn.execute(
        update(FleetUnit)
        .where(FleetUnit.owner_worker == worker_id)
        .values(owner_worker=None, lease_expires_at=func.now(), previous_owner=FleetUnit.owner_worker)
    )
    await conn.execute(delete(FleetWorker).where(FleetWorker.worker_id == worker_id))


async def may_write(conn: AsyncConnection, worker_id: str, key: UnitKey, epoch: int) -> bool:
    """Whether this worker still owns the unit at this epoch, under a lease that has not expired, and its
    replicator is not being deleted: the committed truth behind the in-memory lease check, asked by a unit right
    before it acts on what it just read from a cluster."""
    owned = await conn.execute(
        select(FleetUnit.epoch)
        .join(ReplicatorRow, ReplicatorRow.id == FleetUnit.replicator_id)
        .where(
            _is(key),
            FleetUnit.owner_worker == worker_id,
            FleetUnit.epoch == epoch,
            FleetUnit.lease_expires_at > func.now(),
            ReplicatorRow.state != ReplicatorState.DELETING.value,
        )
    )
    return owned.first() is not None


# ---------------------------------------------------------------------- what a worker runs (async)


async def replicator_heads(conn: AsyncConnection, replicator_ids: Iterable[str]) -> Sequence[Row[uuid.UUID, int, str]]:
    """Id, generation and state of these replicators: whether a worker's engine objects of them are current (their
    desired state changes only with the generation) without reading and decoding the desired state itself."""
    ids = [uuid.UUID(i) for i in replicator_ids]
    if not ids:
        return []
    rows = await conn.execute(
        select(ReplicatorRow.id, ReplicatorRow.generation, ReplicatorRow.state).where(ReplicatorRow.id.in_(ids))
    )
    return rows.all()


async def replicators_to_run(conn: AsyncConnection, replicator_ids: Iterable[str]) -> Sequence[Row[Any]]:
    """The stored desired state of these replicators, as the fleet turns it into engine objects."""
    ids = [uuid.UUID(i) for i in replicator_ids]
    if not ids:
        return []
    rows = await conn.execute(
        select(
            ReplicatorRow.id,
            ReplicatorRow.name,
            ReplicatorRow.generation,
            ReplicatorRow.state,
            ReplicatorRow.kafka_clusters,
            ReplicatorRow.replication_info,
            ReplicatorRow.created_at,
            ReplicatorRow.service_execution_role_arn,
            ReplicatorRow.delivery,
            ReplicatorRow.arn,
        ).where(ReplicatorRow.id.in_(ids))
    )
    return rows.all()


# ---------------------------------------------------------------------- a metadata unit's observations (async)


async def record_metadata_failure(conn: AsyncConnection, replicator_id: str, code: str, message: str) -> None:
    """A failed pass keeps the last good inventory and generation; only the error fields change, and the error's
    start time stays that of the first failure in a row."""
    statement = insert(ReplicatorMetadata).values(
        replicator_id=uuid.UUID(replicator_id),
        applied_generation=0,
        partitions=[],
        error_code=code,
        error_message=message,
        error_since=func.now(),
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[ReplicatorMetadata.replicator_id],
            set_={
                "error_code": code,
                "error_message": message,
                "error_since": func.coalesce(ReplicatorMetadata.error_since, func.now()),
                "updated_at": func.now(),
            },
        )
    )


async def record_inventory(
    conn: AsyncConnection,
    replicator_id: str,
    *,
    generation: int,
    partitions: Sequence[tuple[str, int]],
    error: tuple[str, str] | None,
    notice: tuple[str, str] | None,
    known_topics: dict[str, Any] | None,
) -> None:
    """A good pass: the partitions in scope for ``generation``, with a partial error or a notice if any."""
    code, message = error if error is not None else (None, None)
    notice_code, notice_message = notice if notice is not None else (None, None)
    fields: dict[str, Any] = {
        "applied_generation": generation,
        "partitions": [list(p) for p in partitions],
        "error_code": code,
        "error_message": message,
        "notice_code": notice_code,
        "notice_message": notice_message,
        "known_topics": json_or_null(known_topics),
    }
    scope: dict[str, int] = {}
    for topic, partition in partitions:
        scope[topic] = max(scope.get(topic, 0), partition + 1)
    statement = insert(ReplicatorMetadata).values(
        replicator_id=uuid.UUID(replicator_id),
        error_since=None if code is None else func.now(),
        initial_scope=scope,
        **fields,
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[ReplicatorMetadata.replicator_id],
            set_={
                **fields,
                "error_since": None if code is None else func.coalesce(ReplicatorMetadata.error_since, func.now()),
                # The first good pass fixes it (a failed pass records no inventory and leaves it unset).
                "initial_scope": func.coalesce(ReplicatorMetadata.initial_scope, statement.excluded.initial_scope),
                "updated_at": func.now(),
            },
        )
    )


async def initial_scope(conn: AsyncConnection, replicator_id: str) -> dict[str, int] | None:
    """{topic: partition count} in scope at the replicator's first good metadata pass; None before it."""
    stored = await conn.execute(
        select(ReplicatorMetadata.initial_scope).where(ReplicatorMetadata.replicator_id == uuid.UUID(replicator_id))
    )
    value = stored.scalar_one_or_none()
    return None if value is None else {str(topic): int(count) for topic, count in value.items()}


async def known_topics(conn: AsyncConnection, replicator_id: str) -> dict[str, Any] | None:
    """The topic set stored with detectAndCopyNewTopics off: ``{"generation": g, "topics": [...]}``."""
    stored = await conn.execute(
        select(ReplicatorMetadata.known_topics).where(ReplicatorMetadata.replicator_id == uuid.UUID(replicator_id))
    )
    value = stored.scalar_one_or_none()
    return None if value is None else dict(value)
