"""The fleet agent's control loop: heartbeat, leases, which units this worker runs, and reconcile.

It runs on a thread and event loop of its own (``workers/fleet/agent.py``), apart from the replication work
(``workers/fleet/work.py``), so no amount of copying, topic syncing or protocol decoding delays a renewal, a
release or an acquire. Every tick (``FERRY_FLEET_TICK_SECONDS``) it:

1. heartbeats (``fleet_workers``) and renews the (unit, epoch) pairs it holds that are due: a lease is renewed
   once half of its validity is gone, or three ticks before it would lapse if that comes first (``renew_within_s``),
   so a worker writes each of its thousands of lease rows once per half lease, not once per tick; a lease it failed
   to renew is dropped at once, which closes the write gate of its unit;
2. reads the units assigned to or owned by this worker and sorts its leases: a unit no longer wanted (its
   replicator is DELETING, its topic left the scope) is dropped at once, so nothing of it is written again; a unit
   moved to another worker stays renewed while its work stops (final progress written under the lease), for
   at most ``MOVE_WINDOW_LEASES`` lease periods; then its lease is released, retried every tick while the
   database is away;
3. acquires the units newly assigned to it;
4. hands the work loop the set of units to run with their replicators' settings (``DesiredWork``);
5. runs a reconcile pass when one is due, under the database's advisory lock: every agent does, so the fleet
   does not depend on one beat process (beat and the API's triggers only make passes come sooner);
6. writes its liveness (``FERRY_WORKER_LIVENESS_FILE``) for a process supervisor.

Every database call has a deadline below the lease margin's reach, so a database that stops answering makes a
tick fail quickly instead of hanging it, and leases whose renewal keeps failing lapse locally before the
database could hand them to anyone else (``workers/fleet/leases.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from aiokafka import TopicPartition
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from models import fleet_store
from models.db import make_async_engine, make_sync_engine
from models.fleet import UnitKey
from models.fleet_reconcile import reconcile_once
from models.replicator import ReplicatorState
from models.settings import FerrySettings
from workers.fleet.leases import Lease, LeaseStore
from workers.fleet.load import WorkerLoadSample
from workers.fleet.runtime import ReplicatorRuntime, runtime_of

log = logging.getLogger(__name__)

# A tick brought forward by an event comes at least this fraction of a tick after the previous one.
KICKED_TICK_MIN_FRACTION = 0.25

# Every unit of the worker is read at most this often; the ticks between read only the units in motion.
FULL_SORT_SECONDS = 10.0

# A unit moved to another worker stays renewed while its work stops, for at most this many lease periods. A
# revoke writes final progress after storing the partitions' offset maps in PostgreSQL: at 10,000 partitions on a
# saturated machine that took 8 s of a 13 s work iteration, so a window of one lease abandoned moved partitions
# without their final progress and the new owner copied their last records again. Bounded, so a work loop that is
# stuck still lets go; the new owner waits for the release, never longer.
MOVE_WINDOW_LEASES = 3

# The steps of a tick, each named after the one before it ends (what a failed tick's log line names).
_NEXT_STEP = {
    "heartbeat": "renew",
    "renew": "sort",
    "sort": "release",
    "release": "acquire",
    "acquire": "runtimes",
    "publish": "loads",
    "loads": "reconcile",
}


@dataclass(frozen=True)
class DesiredWork:
    """What the work loop should run: the units whose leases this worker holds, and their replicators."""

    units: frozenset[UnitKey] = frozenset()
    runtimes: Mapping[str, ReplicatorRuntime] = field(default_factory=dict)
    # The worker that held each unit before this one (exactly-once copies fence its transactional producer).
    previous_owners: Mapping[UnitKey, str] = field(default_factory=dict)

    def signature(self) -> tuple[frozenset[UnitKey], frozenset[tuple[str, int]]]:
        return self.units, frozenset((rid, r.generation) for rid, r in self.runtimes.items())


class ControlLoop:
    def __init__(
        self,
        settings: FerrySettings,
        worker_id: str,
        *,
        running: Callable[[], frozenset[UnitKey]],
        offer: Callable[[DesiredWork], None],
        work_beat: Callable[[], float],
        load: Callable[[], WorkerLoadSample] = WorkerLoadSample,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.tick_s = settings.fleet_tick_seconds
        # Every database call of a tick must end well within the lease's safety margin.
        self.call_timeout_s = max(1.0, min(5.0, settings.fleet_lease_margin_seconds * 2))
        # A lease is renewed once it has this little validity left. Renewing every lease every tick made one
        # UPDATE of 5,000 rows a second per worker at 10,000 partitions, 1-2 s of a busy database's time, whatever
        # the lease's length; now a longer lease costs proportionally fewer renewals. Three ticks at least, so a
        # slow tick or two never lose a lease (every other tick with the default timings).
        self.renew_within_s = max(settings.fleet_lease_validity_seconds / 2, 3 * self.tick_s)
        self._running = running  # units whose work is still going (the work loop's answer)
        self._offer = offer  # hands a DesiredWork to the work loop (thread-safe)
        self._work_beat = work_beat  # wall-clock time of the work loop's last iteration
        self._load = load  # the work loop's latest load sample
        self._loads_written: dict[UnitKey, float] = {}  # unit loads as last stored
        self._load_sequence_written = 0
        self.leases: dict[UnitKey, Lease] = {}
        # Moved to another worker: renewed (so their final writes stay valid) until stopped, at most
        # ``MOVE_WINDOW_LEASES`` leases.
        self.moving: dict[UnitKey, tuple[Lease, float]] = {}
        # Work stopped or no longer wanted, release not yet through: retried until done or expired.
        self.unreleased: dict[UnitKey, Lease] = {}
        self.runtimes: dict[str, ReplicatorRuntime] = {}
        self._offered: DesiredWork | None = None
        self._store: LeaseStore | None = None
        self._db: AsyncEngine | None = None
        self._sync_db: Engine | None = None
        self._last_reconcile = 0.0
        self._reconcile: asyncio.Task[None] | None = None
        # Asked for by an event (units acquired here, a new inventory written): a pass sooner than the interval.
        self._reconcile_wanted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None  # set to tick now instead of at the next period
        self.last_tick_ok_at = 0.0  # wall clock of the last tick that completed without an error
        self._full_sort_at = 0.0  # monotonic time of the next read of every unit of this worker
        self._step, self._step_started = "heartbeat", 0.0  # the step of the tick under way, and since when
        self.last_reconcile_at = 0.0

    # ------------------------------------------------------------------ what other threads ask

    def holds(self, replicator_id: str, partitions: frozenset[TopicPartition]) -> bool:
        """Whether every one of these partitions is under a lease this worker holds and still trusts."""
        return all(self.holds_unit(UnitKey(replicator_id, tp.topic, tp.partition)) for tp in partitions)

    def holds_unit(self, key: UnitKey) -> bool:
        lease = self.leases.get(key)
        if lease is None:
            moving = self.moving.get(key)
            lease = moving[0] if moving is not None else None
        return lease is not None and lease.is_valid()

    def request_reconcile(self) -> None:
        """Ask for a reconcile pass now rather than at the next interval (thread-safe): what changed (a new
        inventory, units taken) moves a replicator on only once a pass has seen it."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._want_reconcile)

    def _want_reconcile(self) -> None:
        self._reconcile_wanted = True
        if self._kick is not None:
            self._kick.set()

    def lease_epochs(self) -> dict[UnitKey, int]:
        epochs = {key: lease.epoch for key, lease in list(self.leases.items())}
        epochs.update({key: lease.epoch for key, (lease, _) in list(self.moving.items())})
        return epochs

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event, work_stopped: asyncio.Event | None = None) -> None:
        """Tick until ``stop``; then keep renewing until ``work_stopped`` (the work's final writes need valid
        leases) and leave the fleet, releasing everything."""
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        self._db = make_async_engine(self.settings)
        self._sync_db = make_sync_engine(self.settings)
        self._store = LeaseStore(
            self._db, self.worker_id, self.settings.fleet_lease_seconds, self.settings.fleet_lease_margin_seconds
        )
        log.info("fleet agent %s: control loop started", self.worker_id)
        try:
            while not stop.is_set():
                if work_stopped is not None and work_stopped.is_set():
                    # Holding leases for work nobody does would stall those partitions silently: leave the fleet
                    # so other workers take them over, and stop answering the liveness probe.
                    log.error("fleet agent %s: the work loop ended unexpectedly; leaving the fleet", self.worker_id)
                    break
                started = time.monotonic()
                await self._tick_once()
                await self._sleep_until_next(stop, started)
            while work_stopped is not None and not work_stopped.is_set():
                started = time.monotonic()
                with contextlib.suppress(TimeoutError, OSError, SQLAlchemyError):
                    await self._renew()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work_stopped.wait(), max(0.0, self.tick_s - (time.monotonic() - started)))
        finally:
            if self._reconcile is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._reconcile), self.call_timeout_s)
            with contextlib.suppress(TimeoutError, OSError, SQLAlchemyError):
                async with asyncio.timeout(self.call_timeout_s):
                    await self._require_store().leave()
            await self._db.dispose()
            self._sync_db.dispose()
            log.info("fleet agent %s: control loop stopped", self.worker_id)

    async def _sleep_until_next(self, stop: asyncio.Event, started: float) -> None:
        """Until the next period, or sooner when kicked (a reconcile pass to run, units it assigned to take)."""
        period = max(0.05, self.tick_s - (time.monotonic() - started) % self.tick_s)
        kick = self._kick
        if kick is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
            return
        # A kicked tick comes no sooner than a fraction of the period after the last: bursts of events must not
        # turn the tick into a busy loop against the database.
        earliest = started + self.tick_s * KICKED_TICK_MIN_FRACTION
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(kick.wait())]
        try:
            await asyncio.wait(waits, timeout=period, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        kick.clear()
        if not stop.is_set() and time.monotonic() < earliest:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), earliest - time.monotonic())

    async def _tick_once(self) -> None:
        try:
            await self.tick()
            self.last_tick_ok_at = time.time()
        except (TimeoutError, OSError, SQLAlchemyError, ConnectionError) as exc:
            # Which step failed, and after how long: a TimeoutError says nothing by itself.
            log.warning(
                "fleet agent %s: control tick failed in its %s step after %.1fs: %s: %s",
                self.worker_id,
                self._step,
                time.monotonic() - self._step_started,
                type(exc).__name__,
                exc,
            )
            self._full_sort_at = 0.0  # an acquire whose answer was lost leaves units owned here and unknown
        except Exception:
            # A bug in one tick must not kill the agent: the next tick re-reads everything.
            log.exception("fleet agent %s: control tick failed", self.worker_id)
            self._full_sort_at = 0.0
        finally:
            # Whatever failed (the database away fails the heartbeat before any renewal is tried), leases past
            # their local deadline stop their work now.
            self._drop_lapsed()
        self._write_liveness()

    def _drop_lapsed(self) -> None:
        lapsed = [key for key, lease in self.leases.items() if not lease.is_valid()]
        for key in lapsed:
            self.leases.pop(key, None)
        # A moved unit's lease too: its final writes were refused from its lapse on, which must not go unsaid.
        lapsed_moving = [key for key, (lease, _) in self.moving.items() if not lease.is_valid()]
        for key in lapsed_moving:
            self.moving.pop(key, None)
        lapsed += lapsed_moving
        if lapsed:
            # One line, however many: a worker holding thousands of units wrote thousands of lines per lapse.
            log.warning("%d leases lapsed; their work stops: %s", len(lapsed), _some_units(lapsed))
        if lapsed:
            self._publish()

    # ------------------------------------------------------------------ one tick

    async def tick(self) -> None:
        phases: list[tuple[str, float]] = []
        started = time.monotonic()
        self._step, self._step_started = "heartbeat", started

        def done(phase: str) -> None:
            phases.append((phase, time.monotonic()))
            self._step = _NEXT_STEP.get(phase, phase)
            self._step_started = phases[-1][1]

        await self._heartbeat()
        done("heartbeat")
        await self._renew()
        done("renew")
        await self._sort_leases()
        done("sort")
        await self._release()
        done("release")
        store = self._require_store()
        async with asyncio.timeout(self.call_timeout_s):
            taken = await store.acquire()
        for lease in taken:
            self.leases[lease.key] = lease
        if taken:
            self._reconcile_wanted = True  # a replicator whose units are all taken now is RUNNING
        done("acquire")
        await self._load_runtimes()
        self._publish()
        done("publish")
        await self._record_unit_loads()
        done("loads")
        await self._reconcile_if_due()
        took = time.monotonic() - started
        if took > self.tick_s:
            # A slow tick eats into the lease margin: say where the time went.
            steps, last = [], started
            for phase, at in phases:
                steps.append(f"{phase} {at - last:.2f}s")
                last = at
            log.warning("fleet agent %s: control tick took %.1fs (%s)", self.worker_id, took, ", ".join(steps))

    async def _heartbeat(self) -> None:
        sample = self._load()
        measured = fleet_store.LoadSample(sample.cpu_cores, sample.bytes_per_second, sample.lag_bytes)
        async with asyncio.timeout(self.call_timeout_s):
            await self._require_store().heartbeat(socket.gethostname(), os.getpid(), measured)

    async def _record_unit_loads(self) -> None:
        """Store the loads of held units that changed since last stored (once per new sample): what ``balance``
        weighs. A failure only delays it to the next sample."""
        sample = self._load()
        if sample.sequence == self._load_sequence_written:
            return
        self._load_sequence_written = sample.sequence
        self._loads_written = {key: load for key, load in self._loads_written.items() if key in self.leases}
        changed = {
            key: load
            for key, load in sample.unit_loads.items()
            if key in self.leases and self._loads_written.get(key) != load
        }
        if not changed:
            return
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self._require_store().record_unit_loads(changed)
        except (TimeoutError, OSError, SQLAlchemyError) as exc:
            log.warning("unit loads not stored (next sample retries): %s", exc)
            return
        self._loads_written.update(changed)

    async def _renew(self) -> None:
        due_before = time.monotonic() + self.renew_within_s
        held = [*self.leases.values(), *(lease for lease, _ in self.moving.values())]
        due = [lease for lease in held if lease.valid_until <= due_before]
        lost: set[UnitKey] = set()
        try:
            async with asyncio.timeout(self.call_timeout_s):
                lost = await self._require_store().renew(due)
        finally:
            # Dropped as lost first, so the line says why; leases whose renewal failed (the database away) keep
            # their old local deadline and lapse by themselves.
            dropped = [key for key in lost if self.leases.pop(key, None) is not None]
            dropped += [key for key in lost if self.moving.pop(key, None) is not None]
            if dropped:
                log.warning("%d leases lost at renewal; their work stops: %s", len(dropped), _some_units(dropped))
            self._drop_lapsed()
        if lost:
            self._full_sort_at = 0.0
            self._publish()

    async def _sort_leases(self) -> None:
        """Drop, hand over or give back the leases whose units moved, left the scope or are owned elsewhere.

        Most ticks read only the units in motion (assignment and owner differ): with thousands of units per worker,
        reading every one each tick took seconds of a tick that must renew within the lease's margin. Every unit is
        read every ``FULL_SORT_SECONDS`` and after anything unexpected: that finds units owned here but unknown
        (an acquire whose answer was lost). A unit that is assigned here and owned here needs nothing from a sort;
        if someone else took it (only possible once its lease lapsed), the renewal says so first."""
        now = time.monotonic()
        full = now >= self._full_sort_at
        store = self._require_store()
        async with asyncio.timeout(self.call_timeout_s):
            units = await (store.units_of_mine() if full else store.units_in_motion())
        if full:
            self._full_sort_at = now + FULL_SORT_SECONDS
        mine = {unit.key: unit for unit in units}
        taken: list[UnitKey] = []
        for key, lease in list(self.leases.items()):
            unit = mine.get(key)
            if unit is None and not full:
                continue  # assigned here and owned here, or the renewal would have found it lost
            if unit is None or unit.owner_worker != self.worker_id or unit.epoch != lease.epoch:
                self.leases.pop(key)  # the unit is gone, or someone else holds it now
                if unit is not None:
                    taken.append(key)
            elif unit.assigned_worker is None:
                # Not wanted any more (replicator deleting, topic out of scope): nothing of it is written again.
                self.leases.pop(key)
                self.unreleased[key] = lease
            elif unit.assigned_worker != self.worker_id:
                # Into ``moving`` before out of ``leases``: the work thread asks ``holds_unit`` at any moment, and
                # a unit found in neither would read as lost (its copy abandoned without final progress).
                self.moving[key] = (lease, now)
                self.leases.pop(key)
        if taken:
            log.warning(
                "%d leases held here are another worker's or a newer epoch's in the database; their work stops: %s",
                len(taken),
                _some_units(taken),
            )
        running = self._running()
        move_window_s = MOVE_WINDOW_LEASES * self.settings.fleet_lease_seconds
        for key, (lease, since) in list(self.moving.items()):
            if key not in running or now - since > move_window_s:
                if key in running:
                    log.warning(
                        "work on %s did not stop within %.0fs of being moved; releasing it (its writes are gated)",
                        key,
                        move_window_s,
                    )
                self.moving.pop(key)
                self.unreleased[key] = lease
        for key, unit in mine.items():
            tracked = key in self.leases or key in self.moving or key in self.unreleased
            if unit.owner_worker == self.worker_id and not tracked:
                # Owned in the database but unknown here (an acquire whose answer was lost): give it back.
                self.unreleased[key] = Lease(key, unit.epoch, 0.0)
        self._publish()

    async def _release(self) -> None:
        if not self.unreleased:
            return
        # The database expires a lease ``margin`` after its local deadline: after that, nothing to release.
        expired_before = time.monotonic() - self.settings.fleet_lease_margin_seconds
        pending = [
            lease
            for lease in self.unreleased.values()
            if lease.valid_until == 0.0 or lease.valid_until > expired_before
        ]
        try:
            async with asyncio.timeout(self.call_timeout_s):
                await self._require_store().release(pending)
        except (TimeoutError, OSError, SQLAlchemyError) as exc:
            log.warning("releasing %d leases failed (retried next tick): %s", len(pending), exc)
            self.unreleased = {lease.key: lease for lease in pending}
            return
        self.unreleased = {}

    async def _load_runtimes(self) -> None:
        ids = sorted({key.replicator_id for key in self.leases})
        if not ids:
            self.runtimes = {}
            return
        db = self._db
        assert db is not None
        # A replicator's desired state changes only with its generation: the engine objects of one whose generation
        # is unchanged are kept (its state may move on), so a tick reads and builds only what changed. Building every
        # held replicator's spec each tick (its JSON decoded, its regular expressions compiled) was a tenth of a
        # worker's CPU with 500 replicators.
        async with asyncio.timeout(self.call_timeout_s), db.connect() as conn:
            heads = await fleet_store.replicator_heads(conn, ids)
            unchanged = {
                str(head.id)
                for head in heads
                if head.state != ReplicatorState.DELETING
                and (known := self.runtimes.get(str(head.id))) is not None
                and known.generation == head.generation
            }
            rows = await fleet_store.replicators_to_run(
                conn, [str(head.id) for head in heads if str(head.id) not in unchanged]
            )
        runtimes = {}
        deleting = {str(head.id) for head in heads if head.state == ReplicatorState.DELETING} | (
            set(ids) - {str(head.id) for head in heads}
        )
        if deleting:
            # Deleted: nothing of it is written again from this tick on, without waiting for a reconcile pass to
            # take its units away (a burst of deletes makes those passes slow).
            for key in [key for key in self.leases if key.replicator_id in deleting]:
                self.unreleased[key] = self.leases.pop(key)
        for head in heads:
            rid = str(head.id)
            if rid in unchanged:
                known = self.runtimes[rid]
                runtimes[rid] = known if known.state == head.state else replace(known, state=head.state)
        for row in rows:
            if str(row.id) in deleting:
                continue
            try:
                runtimes[str(row.id)] = runtime_of(
                    replicator_id=str(row.id),
                    name=row.name,
                    generation=row.generation,
                    state=row.state,
                    kafka_clusters=row.kafka_clusters,
                    replication_info=row.replication_info,
                    created_at=row.created_at,
                    service_execution_role_arn=row.service_execution_role_arn,
                    delivery=row.delivery,
                    arn=row.arn,
                )
            except (KeyError, ValueError) as exc:
                log.error("replicator %s cannot run: %s", row.name, exc)
        self.runtimes = runtimes

    def _publish(self) -> None:
        units = frozenset(key for key in self.leases if key.replicator_id in self.runtimes)
        desired = DesiredWork(
            units,
            {rid: runtime for rid, runtime in self.runtimes.items()},
            {
                key: previous
                for key in units
                if (previous := self.leases[key].previous_owner) is not None and previous != self.worker_id
            },
        )
        if self._offered is None or desired.signature() != self._offered.signature():
            self._offered = desired
            self._offer(desired)

    async def _reconcile_if_due(self) -> None:
        """Start a reconcile pass in a thread when one is due and none is under way; never waited for here."""
        running = self._reconcile
        if running is not None and not running.done():
            return
        if running is not None and running.exception() is not None:
            exc = running.exception()
            log.warning("reconcile pass failed: %s: %s", type(exc).__name__, exc)
        since = time.monotonic() - self._last_reconcile
        if since < self.settings.reconcile_interval_seconds and not (
            self._reconcile_wanted and since >= self.tick_s * KICKED_TICK_MIN_FRACTION
        ):
            return
        self._reconcile_wanted = False
        self._last_reconcile = time.monotonic()
        self._reconcile = asyncio.create_task(self._reconcile_once(), name="reconcile")

    async def _reconcile_once(self) -> None:
        assert self._sync_db is not None
        result = await asyncio.to_thread(reconcile_once, self._sync_db, self.settings, self.worker_id)
        if result is not None:
            self.last_reconcile_at = time.time()
            if result.assign and self._kick is not None:
                self._kick.set()  # take (or hand over) at once what the pass assigned

    # ------------------------------------------------------------------ liveness

    def _write_liveness(self) -> None:
        path = self.settings.worker_liveness_file
        if path is None:
            return
        # Whether the loops turn, not whether the database answers: a supervisor restarting workers during a
        # database outage would only add to it. The last good tick is there for people to read.
        record = {
            "workerId": self.worker_id,
            "pid": os.getpid(),
            "controlAt": time.time(),
            "workAt": self._work_beat(),
            "lastGoodTickAt": self.last_tick_ok_at,
            "leases": len(self.leases),
        }
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps(record))
            temporary.replace(path)
        except OSError as exc:
            log.warning("liveness file %s not written: %s", path, exc)

    def _require_store(self) -> LeaseStore:
        if self._store is None:
            raise RuntimeError("ControlLoop.run() has not started")
        return self._store


def _some_units(keys: list[UnitKey], shown: int = 5) -> str:
    """The first few units, and how many more."""
    listed = ", ".join(f"{key.replicator_id} {key.topic}:{key.partition}" for key in sorted(keys)[:shown])
    return listed + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
