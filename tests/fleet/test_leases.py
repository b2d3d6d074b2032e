"""Ownership can never be doubled: fenced leases on the real PostgreSQL, racing workers, paused workers, and
redelivered reconcile tasks."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from models.fleet import DesiredReplicator, UnitKey
from models.fleet_reconcile import PACED_PASS_SECONDS, reconcile_once
from models.fleet_store import StateWrite, fleet_load, set_replicator_states, units_in_motion
from models.replicator import ReplicatorState
from models.settings import FerrySettings
from tests.fleet.conftest import insert_replicator
from tests.fleet.plans import assert_no_list_rescanned, statements_on
from workers.fleet.control import ControlLoop
from workers.fleet.leases import Lease, LeaseStore


@pytest.fixture
def replicator_id(fleet_db: Engine, unique: str) -> Iterator[str]:
    rid = insert_replicator(fleet_db, unique)
    yield str(rid)
    with fleet_db.begin() as conn:
        conn.execute(text("DELETE FROM replicators WHERE id = :id"), {"id": rid})


def assign(db: Engine, key: UnitKey, worker: str | None) -> None:
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO fleet_units (replicator_id, topic, partition, epoch, assigned_worker) "
                "VALUES (:r, :t, :p, 0, :w) ON CONFLICT (replicator_id, topic, partition) "
                "DO UPDATE SET assigned_worker = :w"
            ),
            {"r": uuid.UUID(key.replicator_id), "t": key.topic, "p": key.partition, "w": worker},
        )


async def test_a_moved_unit_is_taken_only_after_the_old_owner_lets_go(
    adb: AsyncEngine, fleet_db: Engine, replicator_id: str
) -> None:
    key = UnitKey(replicator_id, "orders", 0)
    a = LeaseStore(adb, "worker-a", lease_seconds=30, safety_margin=2)
    b = LeaseStore(adb, "worker-b", lease_seconds=30, safety_margin=2)
    assign(fleet_db, key, "worker-a")
    [lease_a] = await a.acquire()
    assert lease_a.key == key and lease_a.is_valid()

    assign(fleet_db, key, "worker-b")  # the reconcile loop moves the unit
    assert await b.acquire() == [], "B must wait while A still holds the lease"
    assert await a.renew([lease_a]) == set(), "A keeps its lease while it stops the unit"
    assert await b.acquire() == [], "A's lease has not expired and was not released yet"
    await a.release([lease_a])
    [lease_b] = await b.acquire()
    assert lease_b.epoch == lease_a.epoch + 1
    assert await a.renew([lease_a]) == {key}, "after the hand-off A's old lease is gone for good"
    assert not lease_a.is_valid()


async def test_racing_acquirers_never_both_win(adb: AsyncEngine, fleet_db: Engine, replicator_id: str) -> None:
    keys = [UnitKey(replicator_id, "race", p) for p in range(20)]
    stores = [LeaseStore(adb, f"racer-{i}", lease_seconds=30, safety_margin=2) for i in range(4)]
    for round_number in range(5):
        for key in keys:
            assign(fleet_db, key, f"racer-{round_number % 4}")
        # Every racer tries at once; the assigned one may win each unit, and only once.
        results = await asyncio.gather(*(store.acquire() for store in stores for _ in range(3)))
        winners = [lease for result in results for lease in result]
        assert len({lease.key for lease in winners}) == len(winners), "a unit was acquired twice"
        with fleet_db.connect() as conn:
            owners = conn.execute(
                text(
                    "SELECT count(DISTINCT owner_worker) FROM fleet_units WHERE replicator_id = :r AND topic = 'race'"
                ),
                {"r": uuid.UUID(replicator_id)},
            ).scalar_one()
        assert owners <= 1
        for store in stores:
            await store.release([lease for lease in winners if lease.key in keys])
        with fleet_db.begin() as conn:
            conn.execute(
                text("UPDATE fleet_units SET owner_worker = NULL, lease_expires_at = NULL WHERE replicator_id = :r"),
                {"r": uuid.UUID(replicator_id)},
            )


async def test_a_paused_owner_loses_its_lease_before_anyone_else_can_take_it(
    adb: AsyncEngine, fleet_db: Engine, replicator_id: str
) -> None:
    key = UnitKey(replicator_id, "paused", 0)
    a = LeaseStore(adb, "sleepy", lease_seconds=3, safety_margin=1)
    b = LeaseStore(adb, "awake", lease_seconds=3, safety_margin=1)
    assign(fleet_db, key, "sleepy")
    [lease_a] = await a.acquire()
    assign(fleet_db, key, "awake")  # the reconcile loop declared 'sleepy' dead
    deadline = time.monotonic() + 10
    taken: list[Lease] = []
    while not taken and time.monotonic() < deadline:
        # Invariant at every instant: if B holds the unit, A's own view already says its lease is gone.
        taken = await b.acquire()
        if taken:
            assert not lease_a.is_valid(), "two workers considered themselves owner at the same moment"
        await asyncio.sleep(0.05)
    assert taken and taken[0].epoch == lease_a.epoch + 1
    assert await a.renew([lease_a]) == {key}, "the woken worker cannot renew a lease someone else holds"


def test_redelivered_reconcile_tasks_change_nothing(
    fleet_db: Engine, fleet_settings: FerrySettings, replicator_id: str
) -> None:
    """A late or duplicated reconcile message (Redis visibility timeout) re-runs a level-triggered pass."""
    with fleet_db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO fleet_workers (worker_id, hostname, pid) VALUES ('dup-a', 'h', 1), ('dup-b', 'h', 2) "
                "ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()"
            )
        )
        conn.execute(
            text(
                "INSERT INTO replicator_metadata (replicator_id, applied_generation, partitions) "
                "VALUES (:r, 1, CAST(:parts AS jsonb))"
            ),
            {"r": uuid.UUID(replicator_id), "parts": '[["dup", 0], ["dup", 1], ["dup", 2], ["dup", 3]]'},
        )
    reconcile_once(fleet_db, fleet_settings.model_copy(update={"worker_dead_after_seconds": 60}), "test")

    def snapshot() -> list[tuple[object, ...]]:
        with fleet_db.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    text(
                        "SELECT topic, partition, assigned_worker, owner_worker, epoch FROM fleet_units "
                        "WHERE replicator_id = :r ORDER BY topic, partition"
                    ),
                    {"r": uuid.UUID(replicator_id)},
                )
            ]

    first = snapshot()
    assert len(first) == 5  # the metadata unit and four partitions
    for _ in range(10):
        reconcile_once(fleet_db, fleet_settings.model_copy(update={"worker_dead_after_seconds": 60}), "test")
    assert snapshot() == first
    with fleet_db.begin() as conn:
        conn.execute(text("DELETE FROM fleet_workers WHERE worker_id IN ('dup-a', 'dup-b')"))


def test_a_pass_records_how_long_it_took(fleet_db: Engine, fleet_settings: FerrySettings) -> None:
    """The last pass's duration is what GET /replication/v1/fleet, ferry fleet status and /metrics report."""
    deadline = time.monotonic() + 30
    while True:
        began = time.monotonic()
        # None while another pass holds the lock, or right after a slow one (a busy machine): the next one runs.
        if reconcile_once(fleet_db, fleet_settings, "test-duration") is not None:
            break
        assert time.monotonic() < deadline, "no reconcile pass ran within 30 s"
        time.sleep(0.1)
    wall = time.monotonic() - began
    with fleet_db.connect() as conn:
        load = fleet_load(conn, fleet_settings.worker_dead_after_seconds)
    assert load.last_reconcile_seconds is not None
    assert 0 < load.last_reconcile_seconds <= wall


async def test_renewal_extends_only_the_leases_held_so_a_forgotten_one_expires_and_moves_on(
    adb: AsyncEngine, fleet_db: Engine, replicator_id: str
) -> None:
    """A worker that lost track of a lease (its release failed in a database outage, or an acquire's answer was
    lost) must not keep it alive by renewing everything it owns: the unit would have no worker, forever."""
    kept, forgotten = UnitKey(replicator_id, "kept", 0), UnitKey(replicator_id, "forgotten", 0)
    a = LeaseStore(adb, "forgetful", lease_seconds=3, safety_margin=1)
    b = LeaseStore(adb, "successor", lease_seconds=3, safety_margin=1)
    assign(fleet_db, kept, "forgetful")
    assign(fleet_db, forgotten, "forgetful")
    leases = {lease.key: lease for lease in await a.acquire()}
    assign(fleet_db, forgotten, "successor")  # moved; A stopped it, but its release never reached the database
    deadline = time.monotonic() + 10
    taken: list[Lease] = []
    while not taken:
        assert time.monotonic() < deadline, "the forgotten lease was kept alive"
        assert await a.renew([leases[kept]]) == set(), "the lease A holds stays renewed"
        taken = await b.acquire()
        await asyncio.sleep(0.2)
    assert [lease.key for lease in taken] == [forgotten]
    assert taken[0].epoch == leases[forgotten].epoch + 1
    assert leases[kept].is_valid()


async def test_a_renewal_skips_a_unit_a_pass_is_changing_and_keeps_its_old_deadline(
    adb: AsyncEngine, fleet_db: Engine, replicator_id: str
) -> None:
    """A row a reconcile pass holds locked is neither waited for nor lost: the other leases are extended, that one
    keeps the deadline it had, and the next renewal extends it."""
    keys = [UnitKey(replicator_id, "renewed", p) for p in range(3)]
    store = LeaseStore(adb, "renewer", lease_seconds=30, safety_margin=2)
    for key in keys:
        assign(fleet_db, key, "renewer")
    leases = {lease.key: lease for lease in await store.acquire()}
    assert set(leases) == set(keys)
    for lease in leases.values():
        lease.valid_until = time.monotonic() + 5  # as if renewed a while ago
    before = {key: lease.valid_until for key, lease in leases.items()}
    locked = keys[1]
    with fleet_db.begin() as pass_in_progress:
        pass_in_progress.execute(
            text("SELECT 1 FROM fleet_units WHERE replicator_id = :r AND topic = :t AND partition = :p FOR UPDATE"),
            {"r": uuid.UUID(replicator_id), "t": locked.topic, "p": locked.partition},
        )
        assert await store.renew(leases.values()) == set(), "a unit being changed is not lost"
    assert leases[locked].valid_until == before[locked], "the busy unit keeps its old deadline"
    for key in (keys[0], keys[2]):
        assert leases[key].valid_until > before[key] + 10, f"{key} was not extended"
    assert await store.renew(leases.values()) == set()
    assert leases[locked].valid_until > before[locked] + 10, "the next renewal extends it"


async def test_a_release_gives_back_only_leases_still_held_at_their_epoch(
    adb: AsyncEngine, fleet_db: Engine, replicator_id: str
) -> None:
    keys = [UnitKey(replicator_id, "released", p) for p in range(3)]
    a = LeaseStore(adb, "releaser", lease_seconds=30, safety_margin=2)
    for key in keys:
        assign(fleet_db, key, "releaser")
    leases = {lease.key: lease for lease in await a.acquire()}
    stale = Lease(keys[2], leases[keys[2]].epoch - 1, 0.0)  # an older lease on the same unit
    await a.release([leases[keys[0]], leases[keys[1]], stale])
    with fleet_db.connect() as conn:
        owners: dict[int, str | None] = dict(
            conn.execute(
                text("SELECT partition, owner_worker FROM fleet_units WHERE replicator_id = :r AND topic = 'released'"),
                {"r": uuid.UUID(replicator_id)},
            ).all()
        )
    assert owners == {0: None, 1: None, 2: "releaser"}


async def test_statements_on_many_leases_probe_each_unit_through_the_key_whatever_the_statistics(
    adb: AsyncEngine, fleet_db: Engine, replicator_id: str
) -> None:
    """Moments after an ANALYZE, every lease it sampled has expired or been renewed past it, so the statistics
    say that ``lease_expires_at >= now()`` matches nothing. The renewal was then planned as a nested loop that
    scanned the whole list of leases again for every row of the table: 25 million comparisons and 1 to 50 s to
    renew 5,000 leases, so every lease of the worker lapsed, every few seconds (10,000 partitions, two workers).
    Each statement that takes a list of units must probe the table once per unit, through its primary key."""
    units, worker = 2_000, "worker-of-many"
    with fleet_db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO fleet_units (replicator_id, topic, partition, epoch, assigned_worker, owner_worker, "
                "lease_expires_at) SELECT :r, 'planned', g, 1, :w, :w, now() - interval '1 minute' "
                "FROM generate_series(0, :n - 1) g"
            ),
            {"r": uuid.UUID(replicator_id), "w": worker, "n": units},
        )
        conn.execute(text("ANALYZE fleet_units"))
        conn.execute(
            text("UPDATE fleet_units SET lease_expires_at = now() + interval '1 minute' WHERE replicator_id = :r"),
            {"r": uuid.UUID(replicator_id)},
        )
    keys = [UnitKey(replicator_id, "planned", p) for p in range(units)]
    # One lease held at an older epoch: the renewal then runs its two follow-up reads as well.
    leases = [Lease(key, 1 if key.partition else 0, 0.0) for key in keys]
    store = LeaseStore(adb, worker, lease_seconds=60, safety_margin=5)
    with statements_on(adb.sync_engine, "fleet_units") as statements:
        assert await store.renew(leases) == {keys[0]}
        await store.record_unit_loads({key: 1000.0 for key in keys})
        await store.release(leases)
    assert len(statements) == 5, [statement[:60] for statement, _ in statements]
    assert_no_list_rescanned(fleet_db, statements)
    with fleet_db.connect() as conn:
        owners = conn.execute(
            text("SELECT owner_worker, count(*) FROM fleet_units WHERE replicator_id = :r GROUP BY 1"),
            {"r": uuid.UUID(replicator_id)},
        ).all()
    # What the statements did, still right: all released but the lease held at an older epoch, which stays.
    assert dict(owners) == {None: units - 1, worker: 1}


async def test_units_in_motion_are_those_whose_assignment_and_owner_differ(
    adb: AsyncEngine, fleet_db: Engine, replicator_id: str
) -> None:
    """What a control tick reads between full sorts: a worker's settled units (assigned to it and owned by it) are
    not among them, whatever their number."""
    settled, moving, unassigned, to_take, elsewhere = (UnitKey(replicator_id, "motion", p) for p in range(5))
    a = LeaseStore(adb, "mover", lease_seconds=30, safety_margin=2)
    for key in (settled, moving, unassigned):
        assign(fleet_db, key, "mover")
    await a.acquire()
    assign(fleet_db, moving, "another")
    assign(fleet_db, unassigned, None)
    assign(fleet_db, to_take, "mover")
    assign(fleet_db, elsewhere, "another")
    async with adb.connect() as conn:
        found = {
            unit.key: (unit.assigned_worker, unit.owner_worker)
            for unit in await units_in_motion(conn, "mover")
            if unit.key.replicator_id == replicator_id
        }
    assert found == {moving: ("another", "mover"), unassigned: (None, "mover"), to_take: ("mover", None)}


def test_a_slow_pass_is_followed_by_a_pause_as_long_as_itself(fleet_db: Engine, fleet_settings: FerrySettings) -> None:
    """Every worker, API process and beat triggers passes; after one that took seconds (tens of thousands of units)
    the next waits as long as it took instead of starting at once, so passes cannot take a whole core."""

    def last_pass(age_seconds: float, took_seconds: float) -> None:
        with fleet_db.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO fleet_reconciles (id, ran_at, ran_by, took_seconds) "
                    "VALUES (1, now() - make_interval(secs => :age), 'test-slow', :took) "
                    "ON CONFLICT (id) DO UPDATE SET ran_at = EXCLUDED.ran_at, ran_by = EXCLUDED.ran_by, "
                    "took_seconds = EXCLUDED.took_seconds"
                ),
                {"age": age_seconds, "took": took_seconds},
            )

    last_pass(age_seconds=5, took_seconds=4)  # ended a second ago, after 4 s
    assert reconcile_once(fleet_db, fleet_settings, "test-paced") is None
    last_pass(age_seconds=9, took_seconds=4)  # ended 5 s ago
    assert reconcile_once(fleet_db, fleet_settings, "test-paced") is not None
    last_pass(age_seconds=0, took_seconds=PACED_PASS_SECONDS / 2)  # quick passes are never paced
    assert reconcile_once(fleet_db, fleet_settings, "test-paced") is not None


def test_state_changes_are_written_together_and_the_api_still_wins(fleet_db: Engine, replicator_id: str) -> None:
    """A pass's state changes go out in batched statements: a StateInfo or none (SQL NULL, not JSON null), the
    observed generation only where the change carries one, and nothing where the API changed the row since."""
    failed = {"code": "NO_LIVE_WORKER", "message": "no worker"}
    seen = DesiredReplicator(replicator_id, ReplicatorState.RUNNING, 1, None)
    with fleet_db.begin() as conn:
        set_replicator_states(conn, [StateWrite(replicator_id, ReplicatorState.FAILED, failed, None, seen)])
    row = state_of(fleet_db, replicator_id)
    assert row == ("FAILED", failed, 0, False)
    seen = DesiredReplicator(replicator_id, ReplicatorState.FAILED, 1, failed)
    stale = DesiredReplicator(replicator_id, ReplicatorState.UPDATING, 1, None)  # the API moved it meanwhile
    with fleet_db.begin() as conn:
        set_replicator_states(conn, [StateWrite(replicator_id, ReplicatorState.RUNNING, None, 1, seen)])
    assert state_of(fleet_db, replicator_id) == ("RUNNING", None, 1, True)
    with fleet_db.begin() as conn:
        set_replicator_states(conn, [StateWrite(replicator_id, ReplicatorState.FAILED, failed, None, stale)])
    assert state_of(fleet_db, replicator_id) == ("RUNNING", None, 1, True)


def state_of(db: Engine, replicator_id: str) -> tuple[object, ...]:
    with db.connect() as conn:
        row = conn.execute(
            text("SELECT state, state_info, observed_generation, state_info IS NULL FROM replicators WHERE id = :id"),
            {"id": uuid.UUID(replicator_id)},
        ).one()
    return tuple(row)


async def test_a_failed_control_tick_names_the_step_that_failed(
    adb: AsyncEngine, fleet_db: Engine, fleet_settings: FerrySettings, caplog: pytest.LogCaptureFixture
) -> None:
    """A database call past its deadline fails the tick with a bare TimeoutError: the log line says which step."""

    class SlowRenewals(LeaseStore):
        async def renew(self, leases: Iterable[Lease]) -> set[UnitKey]:
            await asyncio.sleep(5)
            return set()

    loop = ControlLoop(
        fleet_settings, "slow-renewer", running=frozenset, offer=lambda _desired: None, work_beat=time.time
    )
    loop._store = SlowRenewals(adb, "slow-renewer", lease_seconds=30, safety_margin=2)
    loop.call_timeout_s = 0.3
    try:
        with caplog.at_level(logging.WARNING, logger="workers.fleet.control"):
            await loop._tick_once()
    finally:
        with fleet_db.begin() as conn:  # its heartbeat made it a live worker: no other test may assign to it
            conn.execute(text("DELETE FROM fleet_workers WHERE worker_id = 'slow-renewer'"))
    [line] = [r.getMessage() for r in caplog.records if "control tick failed" in r.getMessage()]
    assert "in its renew step after 0." in line and "TimeoutError" in line


def lease_expiries(db: Engine, keys: Iterable[UnitKey]) -> dict[UnitKey, object]:
    with db.connect() as conn:
        return {
            key: conn.execute(
                text(
                    "SELECT lease_expires_at FROM fleet_units WHERE replicator_id = :r AND topic = :t "
                    "AND partition = :p"
                ),
                {"r": uuid.UUID(key.replicator_id), "t": key.topic, "p": key.partition},
            ).scalar_one()
            for key in keys
        }


async def test_a_lease_is_renewed_once_half_of_its_validity_is_gone(
    adb: AsyncEngine, fleet_db: Engine, fleet_settings: FerrySettings, replicator_id: str
) -> None:
    """Renewing every lease every tick wrote thousands of rows a second per worker at 10,000 partitions, whatever
    the lease's length: a lease is renewed only when due, so a longer lease writes proportionally fewer renewals."""
    settings = fleet_settings.model_copy(update={"fleet_lease_seconds": 30.0, "fleet_tick_seconds": 1.0})
    validity = 30.0 - settings.fleet_lease_margin_seconds
    worker = f"renews-when-due-{uuid.uuid4().hex[:6]}"
    loop = ControlLoop(settings, worker, running=frozenset, offer=lambda _desired: None, work_beat=time.time)
    assert loop.renew_within_s == validity / 2
    loop._store = LeaseStore(adb, worker, lease_seconds=30, safety_margin=settings.fleet_lease_margin_seconds)
    keys = [UnitKey(replicator_id, "due", p) for p in range(4)]
    for key in keys:
        assign(fleet_db, key, worker)
    loop.leases = {lease.key: lease for lease in await loop._store.acquire()}
    assert set(loop.leases) == set(keys)
    acquired = lease_expiries(fleet_db, keys)

    await loop._renew()
    assert lease_expiries(fleet_db, keys) == acquired, "a lease with most of its validity left was renewed"

    due, fresh = keys[:2], keys[2:]
    for key in due:
        loop.leases[key].valid_until = time.monotonic() + loop.renew_within_s - 1  # as if acquired a while ago
    await loop._renew()
    renewed = lease_expiries(fleet_db, keys)
    assert all(renewed[key] > acquired[key] for key in due), "a lease past half its validity was not renewed"
    assert all(renewed[key] == acquired[key] for key in fresh), "a fresh lease was renewed along with the due ones"
    assert all(loop.leases[key].valid_until > time.monotonic() + validity - 2 for key in due)


def test_the_shortest_leases_are_still_renewed_at_least_three_ticks_before_they_lapse(
    fleet_settings: FerrySettings,
) -> None:
    # The shortest lease the settings allow spans three ticks: renewed every tick, as before.
    shortest = fleet_settings.model_copy(update={"fleet_lease_seconds": 6.5, "fleet_tick_seconds": 1.0})
    loop = ControlLoop(shortest, "w", running=frozenset, offer=lambda _desired: None, work_beat=time.time)
    assert loop.renew_within_s == 3.0
    assert 6.5 - shortest.fleet_lease_margin_seconds == 3.0


async def test_a_moved_unit_stays_renewed_while_its_work_stops_for_up_to_three_leases(
    adb: AsyncEngine, fleet_db: Engine, fleet_settings: FerrySettings, replicator_id: str
) -> None:
    """At 10,000 partitions a revoke waited 8 s on PostgreSQL for its final progress: a hand-over window of one
    lease abandoned the moved partitions and their last records were copied again. The window is three leases."""
    worker = f"mover-{uuid.uuid4().hex[:6]}"
    running: set[UnitKey] = set()
    loop = ControlLoop(
        fleet_settings, worker, running=lambda: frozenset(running), offer=lambda _desired: None, work_beat=time.time
    )
    lease_s = fleet_settings.fleet_lease_seconds
    margin = fleet_settings.fleet_lease_margin_seconds
    loop._store = LeaseStore(adb, worker, lease_seconds=lease_s, safety_margin=margin)
    key = UnitKey(replicator_id, "moving-slowly", 0)
    assign(fleet_db, key, worker)
    loop.leases = {lease.key: lease for lease in await loop._store.acquire()}
    running.add(key)

    assign(fleet_db, key, "another-worker")  # the reconcile moves it for balance
    await loop._sort_leases()
    lease, _since = loop.moving[key]
    assert key not in loop.leases and loop.holds_unit(key)

    loop.moving[key] = (lease, time.monotonic() - 1.5 * lease_s)  # its revoke is still writing after 1.5 leases
    lease.valid_until = time.monotonic() + loop.renew_within_s - 1  # and the lease is due
    await loop._sort_leases()
    await loop._renew()
    assert key in loop.moving and not loop.unreleased, "a moved unit still stopping was let go after one lease"
    assert loop.holds_unit(key) and lease.valid_until > time.monotonic() + loop.renew_within_s

    loop.moving[key] = (lease, time.monotonic() - 3.1 * lease_s)  # stuck: it lets go all the same
    await loop._sort_leases()
    assert key not in loop.moving and key in loop.unreleased and not loop.holds_unit(key)
    await loop._release()
    assert not loop.unreleased
    taker = LeaseStore(adb, "another-worker", lease_seconds=lease_s, safety_margin=2)
    [taken] = await taker.acquire()
    assert taken.key == key and taken.epoch == lease.epoch + 1


async def test_a_moved_units_lease_that_lapses_or_is_lost_is_dropped_and_said(
    adb: AsyncEngine,
    fleet_db: Engine,
    fleet_settings: FerrySettings,
    replicator_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A moved unit's final writes are refused once its lease lapses or the database gives it to someone else:
    the worker says so in its log (at 10,000 partitions a revoked partition's final progress was refused with no
    line saying why), and it stops counting the lease as held."""
    worker = f"mover-{uuid.uuid4().hex[:6]}"
    running: set[UnitKey] = set()
    loop = ControlLoop(
        fleet_settings, worker, running=lambda: frozenset(running), offer=lambda _desired: None, work_beat=time.time
    )
    lease_s = fleet_settings.fleet_lease_seconds
    loop._store = LeaseStore(
        adb, worker, lease_seconds=lease_s, safety_margin=fleet_settings.fleet_lease_margin_seconds
    )
    lapsing, lost = UnitKey(replicator_id, "lapsing", 0), UnitKey(replicator_id, "lost", 0)
    for key in (lapsing, lost):
        assign(fleet_db, key, worker)
    loop.leases = {lease.key: lease for lease in await loop._store.acquire()}
    running.update((lapsing, lost))
    for key in (lapsing, lost):
        assign(fleet_db, key, "another-worker")
    await loop._sort_leases()
    assert set(loop.moving) == {lapsing, lost}

    with caplog.at_level(logging.WARNING, logger="workers.fleet.control"):
        loop.moving[lapsing][0].valid_until = time.monotonic() - 1  # its renewals did not come through in time
        loop._drop_lapsed()
        assert lapsing not in loop.moving and not loop.holds_unit(lapsing)
        assert any("1 leases lapsed" in r.getMessage() and "lapsing:0" in r.getMessage() for r in caplog.records)

        with fleet_db.begin() as conn:  # the database let it go and someone else holds it now
            conn.execute(
                text(
                    "UPDATE fleet_units SET owner_worker = 'another-worker', epoch = epoch + 1 "
                    "WHERE replicator_id = :r AND topic = 'lost'"
                ),
                {"r": uuid.UUID(replicator_id)},
            )
        loop.moving[lost][0].valid_until = time.monotonic() + loop.renew_within_s - 1  # due
        await loop._renew()
        assert lost not in loop.moving and not loop.holds_unit(lost)
        assert any("lost at renewal" in r.getMessage() and "lost:0" in r.getMessage() for r in caplog.records)


class _LeasesAskedWhileChanging(dict[UnitKey, Lease]):
    """The work thread asks ``holds_unit`` between any two steps of the control loop: this asks at the moment a
    lease leaves the dict of held leases, and keeps the answers."""

    def __init__(self, loop: ControlLoop, leases: dict[UnitKey, Lease]) -> None:
        super().__init__(leases)
        self.loop = loop
        self.answers: list[tuple[UnitKey, bool]] = []

    def pop(self, key: UnitKey, *default: Any) -> Any:
        value = super().pop(key, *default)
        self.answers.append((key, self.loop.holds_unit(key)))
        return value


async def test_a_unit_being_moved_is_never_seen_unheld_while_its_lease_changes_hands_inside_the_worker(
    adb: AsyncEngine, fleet_db: Engine, fleet_settings: FerrySettings, replicator_id: str
) -> None:
    """A moved unit goes from the held leases to the moving ones; a copier asking in between (another thread) must
    not find it in neither, or it abandons the partition without its final progress and the new owner copies its
    last records again."""
    worker = f"mover-{uuid.uuid4().hex[:6]}"
    key = UnitKey(replicator_id, "changing-hands", 0)
    loop = ControlLoop(
        fleet_settings, worker, running=lambda: frozenset({key}), offer=lambda _desired: None, work_beat=time.time
    )
    loop._store = LeaseStore(
        adb,
        worker,
        lease_seconds=fleet_settings.fleet_lease_seconds,
        safety_margin=fleet_settings.fleet_lease_margin_seconds,
    )
    assign(fleet_db, key, worker)
    watched = _LeasesAskedWhileChanging(loop, {lease.key: lease for lease in await loop._store.acquire()})
    loop.leases = watched
    assign(fleet_db, key, "another-worker")
    await loop._sort_leases()
    assert watched.answers == [(key, True)], "the unit read as not held while it moved from held to moving"
    assert key in loop.moving
