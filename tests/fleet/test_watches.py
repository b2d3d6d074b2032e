"""Which replicators have a failover under way, or an audit job to claim: one query answers every metadata unit of
a worker (500 units each asking for their own every pass took the database pool's connections from every other
write)."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from models import audits, group_store
from tests.fleet.conftest import insert_replicator
from workers.fleet.watches import ReplicatorsWatch


def _replicator(fleet_db: Engine) -> uuid.UUID:
    return insert_replicator(fleet_db, f"watch-{uuid.uuid4().hex[:8]}")


def _failover(fleet_db: Engine, replicator_id: uuid.UUID, state: str) -> uuid.UUID:
    op = uuid.uuid4()
    with fleet_db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO failover_operations (id, replicator_id, groups, grace_seconds, timeout_seconds, state) "
                "VALUES (:id, :rid, '[]', 5, 60, :state)"
            ),
            {"id": op, "rid": replicator_id, "state": state},
        )
    return op


async def test_one_query_tells_every_unit_which_replicators_have_a_failover_under_way(
    fleet_db: Engine, adb: AsyncEngine
) -> None:
    under_way, ended, none = _replicator(fleet_db), _replicator(fleet_db), _replicator(fleet_db)
    operation = _failover(fleet_db, under_way, "WAITING_FOR_LAG")
    _failover(fleet_db, ended, "SUCCEEDED")
    watch = ReplicatorsWatch(adb, group_store.replicators_with_open_failovers, max_age_s=60.0)

    answers = await asyncio.gather(*(watch.replicators() for _ in range(500)))
    assert watch.queries == 1
    for answer in answers:
        assert str(under_way) in answer
        assert str(ended) not in answer
        assert str(none) not in answer

    with fleet_db.begin() as conn:
        conn.execute(text("UPDATE failover_operations SET state = 'SUCCEEDED' WHERE id = :id"), {"id": operation})
    assert str(under_way) in await watch.replicators()  # the answer is at most max_age_s old
    watch.max_age_s = 0.0
    assert str(under_way) not in await watch.replicators()
    assert watch.queries == 2


def _audit(fleet_db: Engine, replicator_id: uuid.UUID, state: str, *, idle_seconds: int = 0) -> None:
    with fleet_db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_jobs (id, replicator_id, topic, state, updated_at) "
                "VALUES (:id, :rid, 'orders', :state, now() - make_interval(secs => :idle))"
            ),
            {"id": uuid.uuid4(), "rid": replicator_id, "state": state, "idle": idle_seconds},
        )


async def test_the_audit_watch_names_the_replicators_whose_jobs_a_unit_would_claim(
    fleet_db: Engine, adb: AsyncEngine
) -> None:
    pending, abandoned, running, done = (_replicator(fleet_db) for _ in range(4))
    _audit(fleet_db, pending, "PENDING")
    _audit(fleet_db, abandoned, "RUNNING", idle_seconds=int(audits.AUDIT_STALE_SECONDS) + 60)
    _audit(fleet_db, running, "RUNNING")
    _audit(fleet_db, done, "SUCCEEDED")
    watch = ReplicatorsWatch(adb, audits.replicators_with_claimable_audits)
    assert await watch.has(str(pending))
    assert await watch.has(str(abandoned))  # its worker died: the next owner of the metadata unit claims it
    assert not await watch.has(str(running))
    assert not await watch.has(str(done))
    assert watch.queries == 1
