"""Fenced leases on units of work, kept in PostgreSQL.

A worker may copy a unit only while it holds the unit's lease. Invariants:

- Acquire succeeds only for a unit assigned to this worker whose lease is free or expired, and bumps ``epoch``:
  the fencing token of the new owner. So at most one live lease per unit exists at any moment.
- Renew extends only leases this worker still owns *at the same epoch*; anything else is lost and must stop at
  once. A unit moved to another worker stays renewed until its owner stopped it and released it, so a
  rebalance never makes a partition that stays look lost.
- Lease expiry is judged by PostgreSQL's clock on the server side; on the worker side a lease counts as valid
  only until ``renew request start + lease_seconds - safety_margin`` on the local monotonic clock. A worker that
  was paused (GC, SIGSTOP, a slow disk) therefore considers its lease gone before the database hands it to
  someone else, and a late or redelivered Celery message cannot resurrect ownership: nothing here is driven by
  messages, only by rows compared on (owner, epoch).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from workers.fleet.plan import UnitKey


@dataclass
class Lease:
    key: UnitKey
    epoch: int
    valid_until: float  # local monotonic deadline

    def is_valid(self) -> bool:
        return time.monotonic() < self.valid_until


@dataclass(frozen=True)
class AssignedUnit:
    key: UnitKey
    assigned_worker: str | None
    owner_worker: str | None
    epoch: int


def _key(row: object) -> UnitKey:
    replicator_id, topic, partition = row[0], row[1], row[2]  # type: ignore[index]
    return UnitKey(str(replicator_id), str(topic), int(partition))


class LeaseStore:
    def __init__(
        self, engine: AsyncEngine, worker_id: str, lease_seconds: float = 10.0, safety_margin: float = 2.0
    ) -> None:
        if safety_margin >= lease_seconds:
            raise ValueError("the safety margin must be shorter than the lease")
        self.engine = engine
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.safety_margin = safety_margin

    def _deadline(self, started: float) -> float:
        return started + self.lease_seconds - self.safety_margin

    async def heartbeat(self, hostname: str, pid: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO fleet_workers (worker_id, hostname, pid) VALUES (:w, :h, :p) "
                    "ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()"
                ),
                {"w": self.worker_id, "h": hostname, "p": pid},
            )

    async def units_of_mine(self) -> list[AssignedUnit]:
        """Units assigned to this worker or owned by it (a unit being moved away is both for a moment)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT replicator_id, topic, partition, assigned_worker, owner_worker, epoch FROM fleet_units "
                    "WHERE assigned_worker = :w OR owner_worker = :w"
                ),
                {"w": self.worker_id},
            )
            return [AssignedUnit(_key(r), r[3], r[4], int(r[5])) for r in rows]

    async def acquire(self) -> list[Lease]:
        """Take every unit assigned to this worker whose lease is free or expired."""
        started = time.monotonic()
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                text(
                    "UPDATE fleet_units SET owner_worker = :w, epoch = epoch + 1, "
                    "lease_expires_at = now() + make_interval(secs => :ttl) "
                    "WHERE assigned_worker = :w AND (owner_worker IS NULL OR lease_expires_at < now()) "
                    "RETURNING replicator_id, topic, partition, epoch"
                ),
                {"w": self.worker_id, "ttl": self.lease_seconds},
            )
            return [Lease(_key(r), int(r[3]), self._deadline(started)) for r in rows]

    async def renew(self, leases: Iterable[Lease]) -> set[UnitKey]:
        """Extend the given leases; returns the keys that are no longer held (stop those at once)."""
        held = {lease.key: lease for lease in leases}
        if not held:
            return set()
        started = time.monotonic()
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                text(
                    "UPDATE fleet_units SET lease_expires_at = now() + make_interval(secs => :ttl) "
                    "WHERE owner_worker = :w AND lease_expires_at >= now() "
                    "RETURNING replicator_id, topic, partition, epoch"
                ),
                {"w": self.worker_id, "ttl": self.lease_seconds},
            )
            renewed = {_key(r): int(r[3]) for r in rows}
        lost = set()
        for key, lease in held.items():
            if renewed.get(key) == lease.epoch:
                lease.valid_until = self._deadline(started)
            else:
                lease.valid_until = 0.0
                lost.add(key)
        return lost

    async def release(self, leases: Iterable[Lease]) -> None:
        """Give leases back after their work stopped, so the next owner need not wait for expiry."""
        params = [
            {
                "w": self.worker_id,
                "r": uuid.UUID(lease.key.replicator_id),
                "t": lease.key.topic,
                "p": lease.key.partition,
                "e": lease.epoch,
            }
            for lease in leases
        ]
        if not params:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE fleet_units SET owner_worker = NULL, lease_expires_at = NULL "
                    "WHERE replicator_id = :r AND topic = :t AND partition = :p AND owner_worker = :w AND epoch = :e"
                ),
                params,
            )

    async def leave(self) -> None:
        """A clean goodbye: free every lease still held and drop this worker from the fleet."""
        async with self.engine.begin() as conn:
            await conn.execute(
                text("UPDATE fleet_units SET owner_worker = NULL, lease_expires_at = NULL WHERE owner_worker = :w"),
                {"w": self.worker_id},
            )
            await conn.execute(text("DELETE FROM fleet_workers WHERE worker_id = :w"), {"w": self.worker_id})
