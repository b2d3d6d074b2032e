"""The durable offset map, consumer group sync state and failover operations in PostgreSQL.

``offset_map_runs`` holds the runs of ``workers/engine/offset_map.py`` per (replicator, source partition),
written by the copy units (``workers/fleet/offsets.py``) and read by the group sync loop and the API's
offset-translation endpoint. ``offset_map_heads`` holds each partition's durable copy position (the next source
offset the copier will look at: everything below it is on the target, or was a gap or a filtered record).

Translation reads only the runs around the asked offset (two indexed rows), so a long map costs nothing here.
The pure map logic is shared with the engine (``workers.engine.offset_map``, no I/O and no engine state).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from workers.engine.offset_map import RangeMap, Run, Translation

Db = AsyncConnection | AsyncSession

FAILOVER_ACTIVE_STATES = ("PENDING", "WAITING_FOR_PRODUCERS", "WAITING_FOR_LAG", "WAITING_FOR_GROUPS", "SYNCING")


class OffsetMapRun(Base):
    __tablename__ = "offset_map_runs"
    # Reverse translation (target offset -> source) finds the run holding a target offset.
    __table_args__ = (Index("ix_offset_map_runs_target", "replicator_id", "topic", "partition", "target_end"),)

    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source_end: Mapped[int] = mapped_column(BigInteger, nullable=False)
    target_start: Mapped[int] = mapped_column(BigInteger, nullable=False)
    target_end: Mapped[int] = mapped_column(BigInteger, nullable=False)


class OffsetMapHead(Base):
    __tablename__ = "offset_map_heads"

    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), primary_key=True
    )
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_topic: Mapped[str] = mapped_column(Text, nullable=False)
    next_source_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Where the copier's next copy lands at the earliest (right after its last acknowledged copy).
    next_target_offset: Mapped[int | None] = mapped_column(BigInteger)
    # Where copying of the partition began (the first head ever stored, right after the first assignment).
    origin_source_offset: Mapped[int | None] = mapped_column(BigInteger)
    origin_target_offset: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class GroupSyncState(Base):
    """The last sync decision per group and source partition (``status``: SYNCED, UNCHANGED, ACTIVE_ON_TARGET,
    AHEAD_OF_REPLICATION, NOT_MAPPED, FAILED)."""

    __tablename__ = "group_sync_state"

    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    target_offset: Mapped[int | None] = mapped_column(BigInteger)
    max_reread: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class FailoverOperation(Base):
    __tablename__ = "failover_operations"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    replicator_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("replicators.id", ondelete="CASCADE"), nullable=False, index=True
    )
    groups: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    grace_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    timeout_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    state: Mapped[str] = mapped_column(String(32), nullable=False, default="PENDING")
    progress: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


# ---------------------------------------------------------------------- writing the map


async def store_runs(db: Db, replicator_id: str, topic: str, partition: int, runs: Sequence[Run]) -> None:
    """Add newly copied runs of one partition, merging with (or, for a re-copy, replacing) what is stored."""
    if not runs:
        return
    low = min(run.source_start for run in runs)
    key = {"rid": uuid.UUID(replicator_id), "topic": topic, "part": partition, "low": low}
    rows = await db.execute(
        text(
            "SELECT source_start, source_end, target_start, target_end FROM offset_map_runs "
            "WHERE replicator_id = :rid AND topic = :topic AND partition = :part AND source_end >= :low"
        ),
        key,
    )
    merged = RangeMap(Run(*row) for row in rows)
    for run in runs:
        merged.add(run)
    await db.execute(
        text(
            "DELETE FROM offset_map_runs WHERE replicator_id = :rid AND topic = :topic AND partition = :part "
            "AND source_end >= :low"
        ),
        key,
    )
    await db.execute(
        text(
            "INSERT INTO offset_map_runs (replicator_id, topic, partition, source_start, source_end, target_start, "
            "target_end) VALUES (:rid, :topic, :part, :s0, :s1, :t0, :t1)"
        ),
        [
            {**key, "s0": r.source_start, "s1": r.source_end, "t0": r.target_start, "t1": r.target_end}
            for r in merged.runs
        ],
    )


async def store_heads(db: Db, replicator_id: str, heads: Iterable[tuple[str, int, str, int, int | None]]) -> None:
    """(source topic, partition, target topic, next source offset, next target offset) per partition, written in
    the transaction that stores the runs below them: the stored map and heads always agree."""
    params = [
        {
            "rid": uuid.UUID(replicator_id),
            "topic": topic,
            "part": partition,
            "tt": target_topic,
            "next": nxt,
            "nt": next_target,
        }
        for topic, partition, target_topic, nxt, next_target in heads
    ]
    if not params:
        return
    await db.execute(
        text(
            "INSERT INTO offset_map_heads (replicator_id, topic, partition, target_topic, next_source_offset, "
            "next_target_offset, origin_source_offset, origin_target_offset) "
            "VALUES (:rid, :topic, :part, :tt, :next, :nt, :next, :nt) "
            "ON CONFLICT (replicator_id, topic, partition) DO UPDATE "
            "SET target_topic = :tt, next_source_offset = :next, next_target_offset = :nt, updated_at = now()"
        ),
        params,
    )


async def thin(db: Db, replicator_id: str, max_runs: int) -> int:
    """Thin every partition of the replicator holding more than ``max_runs`` runs down to half of it.
    Returns the largest re-read bound left in a thinned partition (0 when none needed thinning)."""
    rid = uuid.UUID(replicator_id)
    crowded = await db.execute(
        text(
            "SELECT topic, partition FROM offset_map_runs WHERE replicator_id = :rid GROUP BY topic, partition "
            "HAVING count(*) > :max"
        ),
        {"rid": rid, "max": max_runs},
    )
    worst = 0
    for topic, partition in crowded.all():
        key = {"rid": rid, "topic": topic, "part": partition}
        rows = await db.execute(
            text(
                "SELECT source_start, source_end, target_start, target_end FROM offset_map_runs "
                "WHERE replicator_id = :rid AND topic = :topic AND partition = :part ORDER BY source_start"
            ),
            key,
        )
        m = RangeMap(Run(*row) for row in rows)
        m.thin(max(1, max_runs // 2))
        worst = max(worst, m.max_error())
        await db.execute(
            text("DELETE FROM offset_map_runs WHERE replicator_id = :rid AND topic = :topic AND partition = :part"),
            key,
        )
        await db.execute(
            text(
                "INSERT INTO offset_map_runs (replicator_id, topic, partition, source_start, source_end, "
                "target_start, target_end) VALUES (:rid, :topic, :part, :s0, :s1, :t0, :t1)"
            ),
            [
                {**key, "s0": r.source_start, "s1": r.source_end, "t0": r.target_start, "t1": r.target_end}
                for r in m.runs
            ],
        )
    return worst


# ---------------------------------------------------------------------- reading it


async def head(db: Db, replicator_id: str, topic: str, partition: int) -> int | None:
    row = await db.execute(
        text(
            "SELECT next_source_offset FROM offset_map_heads WHERE replicator_id = :rid AND topic = :topic "
            "AND partition = :part"
        ),
        {"rid": uuid.UUID(replicator_id), "topic": topic, "part": partition},
    )
    value = row.scalar_one_or_none()
    return None if value is None else int(value)


async def heads(db: Db, replicator_id: str) -> dict[tuple[str, int], int]:
    rows = await db.execute(
        text("SELECT topic, partition, next_source_offset FROM offset_map_heads WHERE replicator_id = :rid"),
        {"rid": uuid.UUID(replicator_id)},
    )
    return {(str(r[0]), int(r[1])): int(r[2]) for r in rows}


async def translate(db: Db, replicator_id: str, topic: str, partition: int, source_offset: int) -> Translation | None:
    """Forward translation (source offset -> target offset) from the run at or before the offset and the next."""
    key = {"rid": uuid.UUID(replicator_id), "topic": topic, "part": partition, "off": source_offset}
    where = "replicator_id = :rid AND topic = :topic AND partition = :part"
    cols = "source_start, source_end, target_start, target_end"
    before = await db.execute(
        text(
            f"SELECT {cols} FROM offset_map_runs WHERE {where} AND source_start <= :off "
            "ORDER BY source_start DESC LIMIT 1"
        ),
        key,
    )
    after = await db.execute(
        text(f"SELECT {cols} FROM offset_map_runs WHERE {where} AND source_start > :off ORDER BY source_start LIMIT 1"),
        key,
    )
    runs = [Run(*row) for row in [*before.all(), *after.all()]]
    found = (
        await db.execute(
            text(
                "SELECT next_target_offset, origin_source_offset, origin_target_offset FROM offset_map_heads "
                f"WHERE {where}"
            ),
            key,
        )
    ).one_or_none()
    next_target = origin = None
    if found is not None:
        next_target = found[0]
        if found[1] is not None and found[2] is not None:
            origin = (int(found[1]), int(found[2]))
    # Past the last stored run, a copy not flushed yet may already sit on the target: resume no later than where
    # the stored head says the next copy lands. Before the first run, copies lost in a crash are bounded by the
    # origin.
    return RangeMap(runs).translate(source_offset, next_target=next_target, origin=origin)


async def translate_back(db: Db, replicator_id: str, topic: str, partition: int, target_offset: int) -> int | None:
    """The source offset of the first record this replicator copied to ``target_offset`` or later; past its
    last copy, its head (where it looks next). None when it has copied and examined nothing there."""
    key = {"rid": uuid.UUID(replicator_id), "topic": topic, "part": partition, "off": target_offset}
    rows = await db.execute(
        text(
            "SELECT source_start, source_end, target_start, target_end FROM offset_map_runs "
            "WHERE replicator_id = :rid AND topic = :topic AND partition = :part AND target_end > :off "
            "ORDER BY target_start LIMIT 1"
        ),
        key,
    )
    found = [Run(*row) for row in rows]
    next_source = await head(db, replicator_id, topic, partition)
    if found:
        return RangeMap(found).translate_back(target_offset)
    last = await db.execute(
        text(
            "SELECT source_end FROM offset_map_runs WHERE replicator_id = :rid AND topic = :topic "
            "AND partition = :part ORDER BY source_start DESC LIMIT 1"
        ),
        key,
    )
    last_end = last.scalar_one_or_none()
    candidates = [int(v) for v in (last_end, next_source) if v is not None]
    return max(candidates) if candidates else None


@dataclass(frozen=True)
class Translated:
    """A translated position: ``offset`` on the other cluster, at most ``max_reread`` records before the true
    one; ``covered`` False when the source offset is past what was copied (the result is where the next copy
    goes); ``via`` says which maps decided it."""

    offset: int
    max_reread: int
    covered: bool
    via: str


async def translate_position(
    db: Db,
    replicator_id: str,
    topic: str,
    partition: int,
    source_offset: int,
    *,
    reverse_replicator_id: str | None = None,
    target_topic: str | None = None,
) -> Translated | None:
    """Where a consumer whose next source record is ``source_offset`` resumes on the target.

    One-way (LEGACY): the forward map. ENHANCED (IDENTICAL names, a reverse replicator target -> source): the
    source partition also holds records that came from the target; the first of them at or after the offset
    (the reverse map read backwards; past its copies, the reverse replicator's head) also bounds the answer,
    so a record that originated on the target and is not yet read is never skipped.
    """
    forward = await translate(db, replicator_id, topic, partition, source_offset)
    if forward is None:
        # This replicator has copied and examined nothing here: where its copies will land is unknown.
        return None
    if reverse_replicator_id is None:
        return Translated(forward.offset, forward.max_reread, forward.covered, "forward")
    back = await translate_back(db, reverse_replicator_id, target_topic or topic, partition, source_offset)
    if back is None or back >= forward.offset:
        return Translated(forward.offset, forward.max_reread, forward.covered, "forward")
    # The reverse replicator's first unread copy lies before the forward answer: resume there; what lies between
    # is at most re-read.
    return Translated(back, forward.max_reread + (forward.offset - back), True, "reverse")


async def reverse_replicator(db: Db, replicator_id: str) -> str | None:
    """A replicator of the same account that copies this one's target cluster back to its source (by bootstrap
    servers), with IDENTICAL naming: ENHANCED sync's partner. The oldest one if there are several."""
    row = await db.execute(
        text(
            """
            WITH me AS (
              SELECT r.account_id,
                (SELECT c->'ferry'->>'bootstrapServers' FROM jsonb_array_elements(r.kafka_clusters) c
                  WHERE c->>'kafkaClusterAlias' = r.replication_info->>'sourceKafkaClusterAlias') AS src,
                (SELECT c->'ferry'->>'bootstrapServers' FROM jsonb_array_elements(r.kafka_clusters) c
                  WHERE c->>'kafkaClusterAlias' = r.replication_info->>'targetKafkaClusterAlias') AS tgt
              FROM replicators r WHERE r.id = :rid
            )
            SELECT o.id FROM replicators o, me
            WHERE o.account_id = me.account_id AND o.id <> :rid AND o.state <> 'DELETING'
              AND o.replication_info->'topicReplication'->'topicNameConfiguration'->>'type' = 'IDENTICAL'
              AND (SELECT c->'ferry'->>'bootstrapServers' FROM jsonb_array_elements(o.kafka_clusters) c
                    WHERE c->>'kafkaClusterAlias' = o.replication_info->>'sourceKafkaClusterAlias') = me.tgt
              AND (SELECT c->'ferry'->>'bootstrapServers' FROM jsonb_array_elements(o.kafka_clusters) c
                    WHERE c->>'kafkaClusterAlias' = o.replication_info->>'targetKafkaClusterAlias') = me.src
            ORDER BY o.seq LIMIT 1
            """
        ),
        {"rid": uuid.UUID(replicator_id)},
    )
    found = row.scalar_one_or_none()
    return None if found is None else str(found)
