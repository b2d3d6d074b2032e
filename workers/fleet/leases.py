"""Fenced leases on units of work, kept in PostgreSQL.

A worker may copy a unit only while it holds the unit's lease. Invariants:

- Acquire succeeds only for a unit assigned to this worker whose lease is free or expired, and bumps ``epoch``:
  the fencing token of the new owner. So at most one live lease per unit exists at any moment.
- Renew extends only the (unit, epoch) pairs this worker holds and still owns; anything else is lost and must stop
  at once, and a lease it lost track of (a release that failed, an acquire whose answer never came) is not
  renewed, so it expires and its unit moves on. A unit moved to another worker stays renewed until its owner
  stopped it; its release is then retried until it succeeds or the lease expires.
- Lease expiry is judged by PostgreSQL's clock on the server side; on the worker side a lease counts as valid
  only until ``renew request start + lease_seconds - safety_margin`` on the local monotonic clock. A worker that
  was paused (GC, SIGSTOP, a slow disk) therefore considers its lease gone before the database hands it to
  someone else, and a late or redelivered Celery message cannot resurrect ownership: nothing here is driven by
  messages, only by rows compared on (owner, epoch).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from models import fleet_store
from models.fleet import AssignedUnit, UnitKey


@dataclass
class Lease:
    key: UnitKey
    epoch: int
    valid_until: float  # local monotonic deadline
    # The worker that held the unit before this lease (its exactly-once producer is fenced before copying).
    previous_owner: str | None = None

    def is_valid(self) -> bool:
        return time.monotonic() < self.valid_until


class LeaseStore:
    """One worker's leases: the statements are ``models/fleet_store.py``'s, the local deadlines are kept here."""

    def __init__(self, engine: AsyncEngine, worker_id: str, lease_seconds: float, safety_margin: float) -> None:
        if safety_margin >= lease_seconds:
            raise ValueError("the safety margin must be shorter than the lease")
        self.engine = engine
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.safety_margin = safety_margin

    def _deadline(self, started: float) -> float:
        return started + self.lease_seconds - self.safety_margin

    async def heartbeat(self, hostname: str, pid: int, load: fleet_store.LoadSample | None = None) -> None:
        async with self.engine.begin() as conn:
            await fleet_store.heartbeat(conn, self.worker_id, hostname, pid, load)

    async def record_unit_loads(self, loads: Mapping[UnitKey, float]) -> None:
        async with self.engine.begin() as conn:
            await fleet_store.record_unit_loads(conn, self.worker_id, loads)

    async def units_of_mine(self) -> list[AssignedUnit]:
        """Units assigned to this worker or owned by it (a unit being moved away is both for a moment)."""
        async with self.engine.connect() as conn:
            return await fleet_store.units_of(conn, self.worker_id)

    async def units_in_motion(self) -> list[AssignedUnit]:
        """Only the units of this worker whose assignment and lease disagree (moving, unassigned, to be taken)."""
        async with self.engine.connect() as conn:
            return await fleet_store.units_in_motion(conn, self.worker_id)

    async def acquire(self) -> list[Lease]:
        """Take every unit assigned to this worker whose lease is free or expired."""
        started = time.monotonic()
        async with self.engine.begin() as conn:
            taken = await fleet_store.acquire(conn, self.worker_id, self.lease_seconds)
        return [Lease(key, epoch, self._deadline(started), previous) for key, epoch, previous in taken]

    async def renew(self, leases: Iterable[Lease]) -> set[UnitKey]:
        """Extend the given leases; returns the keys that are no longer held (stop those at once)."""
        held = {lease.key: lease for lease in leases}
        if not held:
            return set()
        started = time.monotonic()
        async with self.engine.begin() as conn:
            renewal = await fleet_store.renew(
                conn, self.worker_id, [(key, lease.epoch) for key, lease in held.items()], self.lease_seconds
            )
        lost = set()
        for key, lease in held.items():
            if renewal.renewed.get(key) == lease.epoch:
                lease.valid_until = self._deadline(started)
            elif key not in renewal.busy:
                lease.valid_until = 0.0
                lost.add(key)
            # Busy (a reconcile pass is changing it): the old deadline stands; the next tick tries again.
        return lost

    async def release(self, leases: Iterable[Lease]) -> None:
        """Give leases back after their work stopped, so the next owner need not wait for expiry."""
        held = [(lease.key, lease.epoch) for lease in leases]
        if not held:
            return
        async with self.engine.begin() as conn:
            await fleet_store.release(conn, self.worker_id, held)

    async def leave(self) -> None:
        """A clean goodbye: free every lease still held and drop this worker from the fleet."""
        async with self.engine.begin() as conn:
            await fleet_store.leave(conn, self.worker_id)
