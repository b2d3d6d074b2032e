"""One pass of the level-triggered reconcile loop: read desired and observed state, ``plan``, apply.

Runs as a short Celery task (beat every few seconds, and whenever the API changes a replicator). Passes are
serialised by a PostgreSQL advisory lock, so concurrent triggers never interleave their writes; a trigger
that finds a pass under way simply returns, because the running pass or the next beat covers it.
Writes are guarded by the state and generation the pass read, so an API change that lands in between wins.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, text

from workers.fleet.plan import (
    DesiredReplicator,
    MetadataObservation,
    Observed,
    Plan,
    UnitKey,
    UnitObservation,
    plan,
)

RECONCILE_LOCK_ID = 0x46455252  # "FERR": any constant shared by every reconcile pass


def gather(conn: Connection, worker_dead_after: float, fail_after: float) -> tuple[list[DesiredReplicator], Observed]:
    desired = [
        DesiredReplicator(str(r.id), r.state, int(r.generation), r.state_info)
        for r in conn.execute(text("SELECT id, state, generation, state_info FROM replicators ORDER BY seq"))
    ]
    live = frozenset(
        r[0]
        for r in conn.execute(
            text("SELECT worker_id FROM fleet_workers WHERE heartbeat_at > now() - make_interval(secs => :s)"),
            {"s": worker_dead_after},
        )
    )
    units = {
        UnitKey(str(r.replicator_id), r.topic, int(r.partition)): UnitObservation(r.assigned_worker, r.owner)
        for r in conn.execute(
            text(
                "SELECT replicator_id, topic, partition, assigned_worker, "
                "CASE WHEN lease_expires_at > now() THEN owner_worker END AS owner FROM fleet_units"
            )
        )
    }
    metadata = {
        str(r.replicator_id): MetadataObservation(
            applied_generation=int(r.applied_generation),
            partitions=frozenset((str(t), int(p)) for t, p in r.partitions),
            error_code=r.error_code,
            error_message=r.error_message,
            failed=bool(r.failed),
            notice_code=r.notice_code,
            notice_message=r.notice_message,
        )
        for r in conn.execute(
            text(
                "SELECT replicator_id, applied_generation, partitions, error_code, error_message, "
                "notice_code, notice_message, "
                "coalesce(error_since < now() - make_interval(secs => :f), false) AS failed FROM replicator_metadata"
            ),
            {"f": fail_after},
        )
    }
    return desired, Observed(live, units, metadata)


def _unit_params(key: UnitKey) -> dict[str, Any]:
    return {"r": uuid.UUID(key.replicator_id), "t": key.topic, "p": key.partition}


def apply(conn: Connection, desired: list[DesiredReplicator], result: Plan) -> None:
    seen = {r.id: r for r in desired}
    if result.delete_units:
        conn.execute(
            text(
                "DELETE FROM fleet_units WHERE replicator_id = :r AND topic = :t AND partition = :p "
                "AND (owner_worker IS NULL OR lease_expires_at < now())"
            ),
            [_unit_params(k) for k in sorted(result.delete_units)],
        )
    if result.create_units:
        conn.execute(
            text(
                "INSERT INTO fleet_units (replicator_id, topic, partition, epoch) VALUES (:r, :t, :p, 0) "
                "ON CONFLICT DO NOTHING"
            ),
            [_unit_params(k) for k in sorted(result.create_units)],
        )
    if result.assign:
        conn.execute(
            text(
                "UPDATE fleet_units SET assigned_worker = :w WHERE replicator_id = :r AND topic = :t AND partition = :p"
            ),
            [{**_unit_params(k), "w": w} for k, w in sorted(result.assign.items())],
        )
    for replicator_id, change in sorted(result.state_changes.items()):
        before = seen[replicator_id]
        conn.execute(
            text(
                "UPDATE replicators SET state = :state, state_info = CAST(:info AS jsonb), "
                "observed_generation = coalesce(:observed, observed_generation), updated_at = now() "
                "WHERE id = :id AND state = :seen_state AND generation = :seen_generation"
            ),
            {
                "state": change.state,
                "info": None if change.state_info is None else _json(dict(change.state_info)),
                "observed": change.observed_generation,
                "id": uuid.UUID(replicator_id),
                "seen_state": before.state,
                "seen_generation": before.generation,
            },
        )
    for replicator_id in sorted(result.delete_replicators):
        conn.execute(
            text("DELETE FROM replicators WHERE id = :id AND state = 'DELETING'"), {"id": uuid.UUID(replicator_id)}
        )
    # Forget workers gone for an hour; live ones heartbeat every second or two.
    conn.execute(text("DELETE FROM fleet_workers WHERE heartbeat_at < now() - interval '1 hour'"))


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


def reconcile_once(engine: Engine, worker_dead_after: float = 10.0, fail_after: float = 15.0) -> Plan | None:
    """One pass; returns the applied plan, or None when another pass held the lock."""
    with engine.begin() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": RECONCILE_LOCK_ID}).scalar_one():
            return None
        desired, observed = gather(conn, worker_dead_after, fail_after)
        result = plan(desired, observed)
        if not result.is_empty:
            apply(conn, desired, result)
        return result
