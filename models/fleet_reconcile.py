"""One pass of the level-triggered reconcile loop: read desired and observed state, ``plan``, apply.

Every worker's agent runs a pass every ``FERRY_RECONCILE_INTERVAL_SECONDS`` (``workers/fleet/control.py``), so
no single process is needed for it; beat and the API's Celery task (on every change) only make passes come
sooner. Passes are serialised by a PostgreSQL advisory lock, so concurrent triggers never interleave their
writes; a trigger that finds a pass under way simply returns, because the running pass or the next covers it.
Writes are guarded by the state and generation the pass read, so an API change that lands in between wins.
Every statement is in ``models/fleet_store.py``; this module only sequences them around the pure ``plan``.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Connection, Engine

from models import fleet_store
from models.fleet import DesiredReplicator
from models.fleet_plan import Observed, Plan, plan
from models.settings import FerrySettings

log = logging.getLogger(__name__)

# A pass slower than this is logged with where its time went: passes are serialised, so a slow one delays
# every change behind it.
SLOW_PASS_SECONDS = 0.5

# A pass that took at least this long is followed by a pause as long as itself: with tens of thousands of units a
# pass takes seconds, and the triggers of every worker, API process and beat otherwise ran them back to back, a
# core of the fleet's CPU spent re-reading the same units. Shorter passes (every fleet of a few thousand units on a
# quiet machine) run whenever triggered.
PACED_PASS_SECONDS = 0.25


def gather(
    conn: Connection, worker_dead_after: float, fail_after: float, unowned_after: float
) -> tuple[list[DesiredReplicator], Observed]:
    desired = fleet_store.desired_replicators(conn)
    observed = Observed(
        live_workers=fleet_store.live_workers(conn, worker_dead_after),
        draining_workers=fleet_store.draining_workers(conn, worker_dead_after),
        units=fleet_store.observed_units(conn),
        metadata=fleet_store.metadata_observations(conn, fail_after),
        unowned_after_seconds=unowned_after,
    )
    return desired, observed


def apply(conn: Connection, desired: list[DesiredReplicator], result: Plan) -> None:
    seen = {r.id: r for r in desired}
    fleet_store.delete_unowned_units(conn, result.delete_units)
    fleet_store.create_units(conn, result.create_units)
    fleet_store.assign_units(conn, result.assign)
    fleet_store.set_replicator_states(
        conn,
        (
            fleet_store.StateWrite(
                replicator_id, change.state, change.state_info, change.observed_generation, seen[replicator_id]
            )
            for replicator_id, change in result.state_changes.items()
        ),
    )
    for replicator_id in sorted(result.delete_replicators):
        fleet_store.delete_deleted_replicator(conn, replicator_id)
    fleet_store.forget_departed_workers(conn)


def reconcile_once(engine: Engine, settings: FerrySettings, by: str) -> Plan | None:
    """One pass; returns the applied plan, or None when another pass held the lock or a slow pass ended moments
    ago (``PACED_PASS_SECONDS``). ``by`` names who ran it."""
    started = time.monotonic()
    with engine.begin() as conn:
        if not fleet_store.try_reconcile_lock(conn):
            return None
        locked = time.monotonic()
        last = fleet_store.last_reconcile(conn)
        if last is not None and last.took_seconds >= PACED_PASS_SECONDS and last.age_seconds < 2 * last.took_seconds:
            return None  # the pass that just ended covers this trigger; the next one after the pause runs
        desired, observed = gather(
            conn,
            settings.worker_dead_after_seconds,
            settings.replicator_fail_after_seconds,
            # A dead worker's units are reassigned after worker_dead_after and taken once its leases expired:
            # only units unowned for a lease past that are stranded.
            settings.fleet_lease_seconds,
        )
        gathered = time.monotonic()
        result = plan(desired, observed)
        planned = time.monotonic()
        if not result.is_empty:
            apply(conn, desired, result)
        fleet_store.record_reconcile(conn, by, took_seconds=time.monotonic() - started)
    took = time.monotonic() - started
    if took > SLOW_PASS_SECONDS:
        log.warning(
            "reconcile pass by %s took %.1fs (lock %.2fs, read %.2fs over %d units, plan %.2fs, write %.2fs)",
            by,
            took,
            locked - started,
            gathered - locked,
            len(observed.units),
            planned - gathered,
            time.monotonic() - planned,
        )
    return result
