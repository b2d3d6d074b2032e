"""Data access for the durable offset map (``offset_map_runs``, ``offset_map_heads``) and the translations read
from it.

Written by the copy units (``workers/fleet/offset_map_sink.py``), read by group sync, failover and the API's
offset-translation endpoint. The pure folding of runs is ``models/offset_map.py``; this module stores and loads
them. Translation reads only the runs around the asked offset (two indexed rows), so a long map costs nothing here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Integer, Select, Text, and_, bindparam, column, delete, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from models.offset_map import RangeMap, Run, Translation
from models.offsets import OffsetMapHead, OffsetMapRun
from models.replicator import ReplicatorRow, ReplicatorState

Db = AsyncConnection | AsyncSession

_RUN_COLUMNS = (OffsetMapRun.source_start, OffsetMapRun.source_end, OffsetMapRun.target_start, OffsetMapRun.target_end)


def _of_partition(replicator_id: str, topic: str, partition: int) -> Any:
    return and_(
        OffsetMapRun.replicator_id == uuid.UUID(replicator_id),
        OffsetMapRun.topic == topic,
        OffsetMapRun.partition == partition,
    )


def _head_of(replicator_id: str, topic: str, partition: int) -> Any:
    return and_(
        OffsetMapHead.replicator_id == uuid.UUID(replicator_id),
        OffsetMapHead.topic == topic,
        OffsetMapHead.partition == partition,
    )


async def _runs(db: Db, statement: Select[int, int, int, int]) -> list[Run]:
    return [Run(*row) for row in (await db.execute(statement)).all()]


async def _replace_runs(db: Db, where: Any, key: tuple[str, str, int], runs: list[Run]) -> None:
    """Replace the runs ``where`` selects with ``runs`` of the partition ``key`` (replicator id, topic, partition)."""
    replicator_id, topic, partition = key
    await db.execute(delete(OffsetMapRun).where(where))
    if runs:
        await db.execute(
            insert(OffsetMapRun),
            [
                {
                    "replicator_id": uuid.UUID(replicator_id),
                    "topic": topic,
                    "partition": partition,
                    "source_start": r.source_start,
                    "source_end": r.source_end,
                    "target_start": r.target_start,
                    "target_end": r.target_end,
                }
                for r in runs
            ],
        )


# ---------------------------------------------------------------------- writing the map


async def store_runs(db: Db, replicator_id: str, topic: str, partition: int, runs: Sequence[Run]) -> None:
    """Add newly copied runs of one partition, merging with (or, for a re-copy, replacing) what is stored."""
    await store_runs_of(db, replicator_id, {(topic, partition): runs})


def _runs_statements() -> tuple[Any, Any, Any]:
    """The three statements of ``store_runs_of``, built once: building them (and their cache keys) on every flush
    was a third of a flush's CPU in a fleet worker copying exactly-once."""
    written = (
        func.unnest(
            bindparam("written_topics", type_=ARRAY(Text)),
            bindparam("written_partitions", type_=ARRAY(Integer)),
            bindparam("written_lows", type_=ARRAY(BigInteger)),
        )
        .table_valued("topic", "partition", "low")
        .render_derived(name="written")
    )
    # The stored runs each partition's new runs may touch: from the lowest new offset on (runs end where the next
    # begins, so the one just below is included to be merged with). Looked up partition by partition through the
    # primary key: a replicator newer than the table's last ANALYZE has, by the statistics, no runs at all, and a
    # plain join was then planned as a scan of its runs that read the whole list again for each one (thousands of
    # partitions, thousands of runs: seconds per flush). OFFSET 0 keeps the planner from merging the probe back
    # into such a join.
    overlapping = (
        select(OffsetMapRun.replicator_id, OffsetMapRun.topic, OffsetMapRun.partition, *_RUN_COLUMNS)
        .where(
            OffsetMapRun.replicator_id == bindparam("rid", type_=PgUUID),
            OffsetMapRun.topic == written.c.topic,
            OffsetMapRun.partition == written.c.partition,
            OffsetMapRun.source_end >= written.c.low,
        )
        .offset(0)
        .lateral("overlapping")
    )
    found_runs = select(*overlapping.c).select_from(written.join(overlapping, true()))
    # Matched on the found rows' keys alone: a filter on the deleted table's replicator would bring back the
    # estimate of no runs, and with it a plan that reads the found list again per row.
    found = found_runs.subquery("found")
    delete_found = delete(OffsetMapRun).where(
        OffsetMapRun.replicator_id == found.c.replicator_id,
        OffsetMapRun.topic == found.c.topic,
        OffsetMapRun.partition == found.c.partition,
        OffsetMapRun.source_start == found.c.source_start,
    )
    insert_runs = insert(OffsetMapRun).from_select(
        ["replicator_id", "topic", "partition", "source_start", "source_end", "target_start", "target_end"],
        select(
            func.unnest(bindparam("run_replicators", type_=ARRAY(PgUUID))),
            func.unnest(bindparam("run_topics", type_=ARRAY(Text))),
            func.unnest(bindparam("run_partitions", type_=ARRAY(Integer))),
            func.unnest(bindparam("run_source_starts", type_=ARRAY(BigInteger))),
            func.unnest(bindparam("run_source_ends", type_=ARRAY(BigInteger))),
            func.unnest(bindparam("run_target_starts", type_=ARRAY(BigInteger))),
            func.unnest(bindparam("run_target_ends", type_=ARRAY(BigInteger))),
        ),
    )
    return found_runs, delete_found, insert_runs


_FIND_RUNS, _DELETE_FOUND_RUNS, _INSERT_RUNS = _runs_statements()


async def store_runs_of(db: Db, replicator_id: str, runs_by_partition: Mapping[tuple[str, int], Sequence[Run]]) -> None:
    """Add newly copied runs of many partitions of one replicator (``(topic, partition) -> runs``), merging with (or,
    for a re-copy, replacing) what is stored: three statements whatever the number of partitions. A flush under load
    carries new runs for every partition that moved; three statements per partition (read, delete, insert) were
    tens of thousands of round trips a second with thousands of partitions."""
    lows = {key: min(run.source_start for run in runs) for key, runs in sorted(runs_by_partition.items()) if runs}
    if not lows:
        return
    rid = uuid.UUID(replicator_id)
    written = {
        "rid": rid,
        "written_topics": [topic for topic, _ in lows],
        "written_partitions": [partition for _, partition in lows],
        "written_lows": list(lows.values()),
    }
    stored: dict[tuple[str, int], list[Run]] = {key: [] for key in lows}
    for _, topic, partition, *bounds in (await db.execute(_FIND_RUNS, written)).all():
        stored[(topic, partition)].append(Run(*bounds))
    merged = {key: RangeMap(runs) for key, runs in stored.items()}
    for key, ranges in merged.items():
        for new_run in runs_by_partition[key]:
            ranges.add(new_run)
    await db.execute(_DELETE_FOUND_RUNS, written)
    rows = [(key, run) for key, ranges in merged.items() for run in ranges.runs]
    if rows:
        await db.execute(
            _INSERT_RUNS,
            {
                "run_replicators": [rid] * len(rows),
                "run_topics": [key[0] for key, _ in rows],
                "run_partitions": [key[1] for key, _ in rows],
                "run_source_starts": [r.source_start for _, r in rows],
                "run_source_ends": [r.source_end for _, r in rows],
                "run_target_starts": [r.target_start for _, r in rows],
                "run_target_ends": [r.target_end for _, r in rows],
            },
        )


async def store_heads(db: Db, replicator_id: str, heads: Iterable[tuple[str, int, str, int, int | None]]) -> None:
    """(source topic, partition, target topic, next source offset, next target offset) per partition, written in
    the transaction that stores the runs below them: the stored map and heads always agree. The first head ever
    stored for a partition is also its origin (where its map begins)."""
    values = [
        {
            "replicator_id": uuid.UUID(replicator_id),
            "topic": topic,
            "partition": partition,
            "target_topic": target_topic,
            "next_source_offset": nxt,
            "next_target_offset": next_target,
            "origin_source_offset": nxt,
            "origin_target_offset": next_target,
        }
        for topic, partition, target_topic, nxt, next_target in heads
    ]
    if not values:
        return
    statement = insert(OffsetMapHead)
    await db.execute(
        statement.on_conflict_do_update(
            index_elements=[OffsetMapHead.replicator_id, OffsetMapHead.topic, OffsetMapHead.partition],
            set_={
                "target_topic": statement.excluded.target_topic,
                "next_source_offset": statement.excluded.next_source_offset,
                "next_target_offset": statement.excluded.next_target_offset,
                "updated_at": func.now(),
            },
        ),
        values,
    )


async def forget_partition(db: Db, replicator_id: str, topic: str, partition: int) -> None:
    """Delete one partition's map and head: its copy starts anew in a recreated topic."""
    await db.execute(delete(OffsetMapRun).where(_of_partition(replicator_id, topic, partition)))
    await db.execute(delete(OffsetMapHead).where(_head_of(replicator_id, topic, partition)))


async def thin(db: Db, replicator_id: str, max_runs: int) -> int:
    """Thin every partition of the replicator holding more than ``max_runs`` runs down to half of it.
    Returns the largest re-read bound left in a thinned partition (0 when none needed thinning)."""
    crowded = await db.execute(
        select(OffsetMapRun.topic, OffsetMapRun.partition)
        .where(OffsetMapRun.replicator_id == uuid.UUID(replicator_id))
        .group_by(OffsetMapRun.topic, OffsetMapRun.partition)
        .having(func.count() > max_runs)
    )
    worst = 0
    for topic, partition in crowded.all():
        where = _of_partition(replicator_id, topic, partition)
        thinned = RangeMap(await _runs(db, select(*_RUN_COLUMNS).where(where).order_by(OffsetMapRun.source_start)))
        thinned.thin(max(1, max_runs // 2))
        worst = max(worst, thinned.max_error())
        await _replace_runs(db, where, (replicator_id, topic, partition), thinned.runs)
    return worst


# ---------------------------------------------------------------------- reading it


async def runs_of_partition(db: Db, replicator_id: str, topic: str, partition: int) -> list[Run]:
    """Every stored run of one source partition, by source offset (what the auditor follows)."""
    return await _runs(
        db,
        select(*_RUN_COLUMNS).where(_of_partition(replicator_id, topic, partition)).order_by(OffsetMapRun.source_start),
    )


async def origin(db: Db, replicator_id: str, topic: str, partition: int) -> int | None:
    """The source offset the partition's copy (and its map) began at, when a head was ever stored."""
    return (
        await db.execute(select(OffsetMapHead.origin_source_offset).where(_head_of(replicator_id, topic, partition)))
    ).scalar_one_or_none()


async def head(db: Db, replicator_id: str, topic: str, partition: int) -> int | None:
    value = (
        await db.execute(select(OffsetMapHead.next_source_offset).where(_head_of(replicator_id, topic, partition)))
    ).scalar_one_or_none()
    return None if value is None else int(value)


async def heads(db: Db, replicator_id: str) -> dict[tuple[str, int], int]:
    rows = await db.execute(
        select(OffsetMapHead.topic, OffsetMapHead.partition, OffsetMapHead.next_source_offset).where(
            OffsetMapHead.replicator_id == uuid.UUID(replicator_id)
        )
    )
    return {(str(r.topic), int(r.partition)): int(r.next_source_offset) for r in rows}


async def translate(db: Db, replicator_id: str, topic: str, partition: int, source_offset: int) -> Translation | None:
    """Forward translation (source offset -> target offset) from the run at or before the offset and the next."""
    where = _of_partition(replicator_id, topic, partition)
    before = select(*_RUN_COLUMNS).where(where, OffsetMapRun.source_start <= source_offset)
    after = select(*_RUN_COLUMNS).where(where, OffsetMapRun.source_start > source_offset)
    runs = [
        *await _runs(db, before.order_by(OffsetMapRun.source_start.desc()).limit(1)),
        *await _runs(db, after.order_by(OffsetMapRun.source_start).limit(1)),
    ]
    found = (
        await db.execute(
            select(
                OffsetMapHead.next_target_offset, OffsetMapHead.origin_source_offset, OffsetMapHead.origin_target_offset
            ).where(_head_of(replicator_id, topic, partition))
        )
    ).one_or_none()
    next_target = origin = None
    if found is not None:
        next_target = found.next_target_offset
        if found.origin_source_offset is not None and found.origin_target_offset is not None:
            origin = (int(found.origin_source_offset), int(found.origin_target_offset))
    # Past the last stored run, a copy not flushed yet may already sit on the target: resume no later than where
    # the stored head says the next copy lands. Before the first run, copies lost in a crash are bounded by the
    # origin.
    return RangeMap(runs).translate(source_offset, next_target=next_target, origin=origin)


async def translate_back(db: Db, replicator_id: str, topic: str, partition: int, target_offset: int) -> int | None:
    """The source offset of the first record this replicator copied to ``target_offset`` or later; past its
    last copy, its head (where it looks next). None when it has copied and examined nothing there."""
    where = _of_partition(replicator_id, topic, partition)
    found = await _runs(
        db,
        select(*_RUN_COLUMNS)
        .where(where, OffsetMapRun.target_end > target_offset)
        .order_by(OffsetMapRun.target_start)
        .limit(1),
    )
    if found:
        return RangeMap(found).translate_back(target_offset)
    next_source = await head(db, replicator_id, topic, partition)
    last_end = (
        await db.execute(
            select(OffsetMapRun.source_end).where(where).order_by(OffsetMapRun.source_start.desc()).limit(1)
        )
    ).scalar_one_or_none()
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


def _bootstrap_servers_of(replicator: Any, role: str) -> Any:
    """The resolved bootstrap servers of a replicator's source or target cluster, read from its stored JSON
    (``kafka_clusters[*].ferry.bootstrapServers`` of the entry whose alias replicationInfo names)."""
    cluster = func.jsonb_array_elements(replicator.kafka_clusters).table_valued(column("value", JSONB)).alias()
    return (
        select(cluster.c.value["ferry"]["bootstrapServers"].astext)
        .where(
            cluster.c.value["kafkaClusterAlias"].astext
            == replicator.replication_info[f"{role}KafkaClusterAlias"].astext
        )
        .scalar_subquery()
    )


async def reverse_replicator(db: Db, replicator_id: str) -> str | None:
    """A replicator of the same account that copies this one's target cluster back to its source (by bootstrap
    servers), with IDENTICAL naming: ENHANCED sync's partner. The oldest one if there are several."""
    me = aliased(ReplicatorRow, name="me")
    other = aliased(ReplicatorRow, name="other")
    naming = other.replication_info["topicReplication"]["topicNameConfiguration"]["type"].astext
    found = (
        await db.execute(
            select(other.id)
            .join(me, me.id == uuid.UUID(replicator_id))
            .where(
                other.account_id == me.account_id,
                other.id != me.id,
                other.state != ReplicatorState.DELETING.value,
                naming == "IDENTICAL",
                _bootstrap_servers_of(other, "source") == _bootstrap_servers_of(me, "target"),
                _bootstrap_servers_of(other, "target") == _bootstrap_servers_of(me, "source"),
            )
            .order_by(other.seq)
            .limit(1)
        )
    ).scalar_one_or_none()
    return None if found is None else str(found)
