"""The offset map as stored in PostgreSQL (models/offset_store.py): merging across flushes, re-copies, crash holes with
an explicit bound, thinning, and finding an ENHANCED partner. Real database, no Kafka."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import TopicPartition
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncConnection

from models import offset_store as store
from models.db import make_async_engine
from models.offset_map import Run
from models.settings import FerrySettings
from tests.fleet.conftest import REPLICATOR_ROW, replicator_row
from tests.fleet.plans import assert_no_list_rescanned, statements_on
from workers.engine.batches import AckedPosition, BatchMapping
from workers.fleet.offset_map_sink import OffsetMapBuffer

T = TypeVar("T")


def on_db(settings: FerrySettings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = make_async_engine(settings)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def new_replicator(conn: AsyncConnection, source: str, target: str, naming: str = "IDENTICAL") -> str:
    clusters = [
        {"kafkaClusterAlias": "a", "ferry": {"bootstrapServers": source}},
        {"kafkaClusterAlias": "b", "ferry": {"bootstrapServers": target}},
    ]
    info = {
        "sourceKafkaClusterAlias": "a",
        "targetKafkaClusterAlias": "b",
        "topicReplication": {"topicNameConfiguration": {"type": naming}},
    }
    row = replicator_row(f"r-{uuid.uuid4().hex[:8]}", kafka_clusters=clusters, replication_info=info)
    await conn.execute(REPLICATOR_ROW, row)
    return str(row["id"])


async def stored(conn: AsyncConnection, rid: str) -> list[Run]:
    rows = await conn.execute(
        text(
            "SELECT source_start, source_end, target_start, target_end FROM offset_map_runs "
            "WHERE replicator_id = :rid ORDER BY source_start"
        ),
        {"rid": uuid.UUID(rid)},
    )
    return [Run(*row) for row in rows]


def test_flushes_merge_recopies_replace_and_holes_are_bounded(fleet_settings: FerrySettings) -> None:
    async def work(conn: AsyncConnection) -> dict[str, Any]:
        rid = await new_replicator(conn, "s:1", "t:1")
        await store.store_runs(conn, rid, "orders", 0, [Run(0, 10, 0, 10)])
        await store.store_runs(conn, rid, "orders", 0, [Run(10, 20, 10, 20)])  # next flush, contiguous
        merged = await stored(conn, rid)
        # A crash: 20..29 copied to 20..29 but never flushed; the copier resumed from progress 25 and re-copied
        # 25..34 to target 30..39.
        await store.store_runs(conn, rid, "orders", 0, [Run(25, 35, 30, 40)])
        await store.store_heads(conn, rid, [("orders", 0, "orders", 35, 40)])
        return {
            "merged": merged,
            "after_crash": await stored(conn, rid),
            "inside": await store.translate(conn, rid, "orders", 0, 7),
            "hole": await store.translate(conn, rid, "orders", 0, 22),
            "after_hole": await store.translate(conn, rid, "orders", 0, 27),
            "past_end": await store.translate(conn, rid, "orders", 0, 50),
            "unknown_partition": await store.translate(conn, rid, "orders", 1, 5),
        }

    got = on_db(fleet_settings, work)
    assert got["merged"] == [Run(0, 20, 0, 20)]
    assert got["after_crash"] == [Run(0, 20, 0, 20), Run(25, 35, 30, 40)]
    assert (got["inside"].offset, got["inside"].max_reread) == (7, 0)
    # Source 22 lies in the unmapped hole: resume right after the last mapped copy (20) and state the bound: the
    # ten target records 20..29 whose sources the map does not know.
    assert (got["hole"].offset, got["hole"].max_reread) == (20, 10)
    assert (got["after_hole"].offset, got["after_hole"].max_reread) == (32, 0)
    assert (got["past_end"].offset, got["past_end"].covered) == (40, False)
    assert got["unknown_partition"] is None


def test_a_flush_of_thousands_of_partitions_reads_each_partitions_runs_through_the_key(
    fleet_settings: FerrySettings, fleet_db: Engine
) -> None:
    """A replicator newer than the table's last ANALYZE has, by the statistics, no runs at all. A flush that joined
    its list of partitions with the runs was then planned as a loop over the list that compared every one of the
    replicator's runs with each partition: 4 million comparisons, 1 s, for 2,000 partitions; 6 s at 5,000. The
    lookup and the delete must probe each partition's runs through the primary key, and still merge each partition
    with its own runs."""
    partitions = 2_000
    with fleet_db.begin() as conn:
        conn.execute(text("ANALYZE offset_map_runs"))  # before this replicator has any run

    async def main() -> tuple[list[tuple[str, Any]], list[tuple[int, int, int]]]:
        engine = make_async_engine(fleet_settings)
        try:
            async with engine.begin() as conn:
                rid = await new_replicator(conn, "s:6", "t:6")
                await store.store_runs_of(conn, rid, {("wide", p): [Run(0, 10, 0, 10)] for p in range(partitions)})
            with statements_on(engine.sync_engine, "offset_map_runs") as statements:
                async with engine.begin() as conn:
                    more = {("wide", p): [Run(10, 20, 10, 20)] for p in range(partitions)}
                    await store.store_runs_of(conn, rid, more)
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT partition, source_start, source_end FROM offset_map_runs WHERE replicator_id = :r "
                        "ORDER BY partition"
                    ),
                    {"r": uuid.UUID(rid)},
                )
                return statements, [(row[0], row[1], row[2]) for row in rows]
        finally:
            await engine.dispose()

    statements, runs = asyncio.run(main())
    assert [statement.split()[0] for statement, _ in statements] == ["SELECT", "DELETE", "INSERT"]
    assert_no_list_rescanned(fleet_db, statements[:2])
    assert runs == [(p, 0, 20) for p in range(partitions)], "each partition merged with its own run"


def test_one_flush_stores_many_partitions_each_merged_with_its_own_runs(fleet_settings: FerrySettings) -> None:
    """A flush writes every partition that moved in one go: each partition's new runs merge with (or replace) its
    own stored runs only, never a neighbour's or another replicator's."""

    async def work(conn: AsyncConnection) -> dict[str, Any]:
        rid, other = await new_replicator(conn, "s:4", "t:4"), await new_replicator(conn, "s:5", "t:5")
        await store.store_runs_of(conn, other, {("orders", 0): [Run(0, 10, 0, 10)]})
        await store.store_runs_of(
            conn,
            rid,
            {("orders", 0): [Run(0, 10, 0, 10)], ("orders", 1): [Run(0, 5, 100, 105)], ("audit", 0): []},
        )
        await store.store_runs_of(
            conn,
            rid,
            {
                ("orders", 0): [Run(10, 20, 10, 20)],  # contiguous: merged into one run
                ("orders", 1): [Run(3, 8, 200, 205)],  # re-copied from 3 elsewhere: replaces 3..4
                **{("many", p): [Run(p, p + 1, p, p + 1)] for p in range(300)},
            },
        )
        rows = await conn.execute(
            text(
                "SELECT replicator_id, topic, partition, source_start, source_end, target_start, target_end "
                "FROM offset_map_runs WHERE replicator_id IN (:a, :b) ORDER BY 1, 2, 3, 4"
            ),
            {"a": uuid.UUID(rid), "b": uuid.UUID(other)},
        )
        found: dict[str, Any] = {}
        for replicator, topic, partition, *bounds in rows:
            owner = "mine" if str(replicator) == rid else "other"
            found.setdefault(owner, {}).setdefault((topic, partition), []).append(Run(*bounds))
        return found

    found = on_db(fleet_settings, work)
    mine = found["mine"]
    assert mine[("orders", 0)] == [Run(0, 20, 0, 20)]
    assert mine[("orders", 1)] == [Run(0, 3, 100, 103), Run(3, 8, 200, 205)]
    assert ("audit", 0) not in mine
    assert all(mine[("many", p)] == [Run(p, p + 1, p, p + 1)] for p in range(300))
    assert len(mine) == 302
    assert found["other"] == {("orders", 0): [Run(0, 10, 0, 10)]}


def test_a_crash_before_the_first_stored_run_is_bounded_by_the_origin(fleet_settings: FerrySettings) -> None:
    async def work(conn: AsyncConnection) -> list[Any]:
        rid = await new_replicator(conn, "s:3", "t:3")
        # The first owner stored its head at assignment (origin 0/0), then died before storing any run; the next
        # owner resumed from progress 60 and its copies landed at target 100 onwards.
        await store.store_heads(conn, rid, [("orders", 0, "orders", 0, 0)])
        await store.store_runs(conn, rid, "orders", 0, [Run(60, 200, 100, 240)])
        await store.store_heads(conn, rid, [("orders", 0, "orders", 200, 240)])
        return [await store.translate(conn, rid, "orders", 0, s) for s in (0, 59, 60, 150)]

    at_0, at_59, at_60, at_150 = on_db(fleet_settings, work)
    assert (at_0.offset, at_0.max_reread) == (0, 100)
    assert (at_59.offset, at_59.max_reread) == (0, 100)
    assert (at_60.offset, at_60.max_reread) == (100, 0)
    assert (at_150.offset, at_150.max_reread) == (190, 0)


def test_thinning_keeps_a_stated_bound(fleet_settings: FerrySettings) -> None:
    async def work(conn: AsyncConnection) -> tuple[int, int, list[Any]]:
        rid = await new_replicator(conn, "s:2", "t:2")
        # 40 runs separated by one-offset gaps (transaction markers), target contiguous.
        runs = [Run(i * 11, i * 11 + 10, i * 10, i * 10 + 10) for i in range(40)]
        for run in runs:
            await store.store_runs(conn, rid, "orders", 0, [run])
        bound = await store.thin(conn, rid, 16)
        left = len(await stored(conn, rid))
        answers = [await store.translate(conn, rid, "orders", 0, s) for s in range(0, 440)]
        return bound, left, answers

    bound, left, answers = on_db(fleet_settings, work)
    assert left <= 8
    assert bound > 0
    for s, answer in enumerate(answers):
        truth = (s // 11) * 10 + min(s % 11, 10)  # first copied record at or after s
        assert answer is not None
        assert answer.offset <= truth <= answer.offset + answer.max_reread <= answer.offset + bound, s


def test_enhanced_partner_is_the_identical_replicator_in_the_other_direction(fleet_settings: FerrySettings) -> None:
    async def work(conn: AsyncConnection) -> tuple[str | None, str | None, str, str]:
        forward = await new_replicator(conn, "a:1", "b:1")
        await new_replicator(conn, "b:1", "a:1", naming="PREFIXED_WITH_SOURCE_CLUSTER_ALIAS")
        backward = await new_replicator(conn, "b:1", "a:1")
        return (
            await store.reverse_replicator(conn, forward),
            await store.reverse_replicator(conn, backward),
            forward,
            backward,
        )

    of_forward, of_backward, forward, backward = on_db(fleet_settings, work)
    assert of_forward == backward
    assert of_backward == forward


def test_a_restarted_partition_forgets_its_map_and_gets_a_new_origin(fleet_settings: FerrySettings) -> None:
    """A recreated topic's copy starts anew: the buffer's next flush deletes the partition's stored runs and head in
    the transaction that stores the new ones, so no translation points into the deleted log."""
    source = TopicPartition("orders", 0)
    target = TopicPartition("src.orders", 0)

    async def main() -> tuple[list[Run], list[Run], Any, Any]:
        engine = make_async_engine(fleet_settings)
        try:
            async with engine.begin() as conn:
                rid = await new_replicator(conn, "s:5", "t:5", naming="PREFIXED")
            buffer = OffsetMapBuffer(rid, engine)
            buffer.record_batch(BatchMapping(source, target, range(0, 1000), 0))
            await buffer.flush(lambda: {source: AckedPosition(target.topic, 1000, 1000)})
            async with engine.connect() as conn:
                before = await stored(conn, rid)
            # The target topic was recreated: source offsets 0.. land at target offsets 0.. of the new log.
            buffer.record_batch(BatchMapping(source, target, range(900, 1000), 1000))  # in flight before
            buffer.restart(source)
            buffer.record_batch(BatchMapping(source, target, range(0, 300), 0))
            await buffer.flush(lambda: {source: AckedPosition(target.topic, 300, 300)})
            async with engine.connect() as conn:
                return (
                    before,
                    await stored(conn, rid),
                    await store.translate(conn, rid, "orders", 0, 150),
                    await store.translate(conn, rid, "orders", 0, 600),
                )
        finally:
            await engine.dispose()

    before, after, inside, beyond = asyncio.run(main())
    assert before == [Run(0, 1000, 0, 1000)]
    assert after == [Run(0, 300, 0, 300)]
    assert (inside.offset, inside.max_reread) == (150, 0)
    # Past the new copy, the head of the new log (not the deleted one's 1000).
    assert (beyond.offset, beyond.covered) == (300, False)


def test_a_flush_stores_only_the_heads_that_moved(fleet_settings: FerrySettings) -> None:
    """Every tick and every progress write flush the buffer: a quiet partition's head is not written again (a row
    per idle partition each time would grow the database's work with the partitions held), a moved one is, and a
    partition that left the copier is written again when it comes back."""
    quiet, busy = TopicPartition("quiet", 0), TopicPartition("busy", 0)

    async def heads(engine: Any, rid: str) -> dict[str, int]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT topic, next_source_offset FROM offset_map_heads WHERE replicator_id = :rid"),
                {"rid": uuid.UUID(rid)},
            )
            return {str(topic): int(offset) for topic, offset in rows}

    async def main() -> list[dict[str, int]]:
        engine = make_async_engine(fleet_settings)
        try:
            async with engine.begin() as conn:
                rid = await new_replicator(conn, "s:6", "t:6")
            buffer = OffsetMapBuffer(rid, engine)
            positions = {quiet: AckedPosition("quiet", 10, 10), busy: AckedPosition("busy", 10, 10)}
            await buffer.flush(lambda: dict(positions))
            seen = [await heads(engine, rid)]
            # Marks which rows the next flushes rewrite: an unchanged head must keep its mark.
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE offset_map_heads SET next_source_offset = 7 WHERE replicator_id = :rid"),
                    {"rid": uuid.UUID(rid)},
                )
            positions[busy] = AckedPosition("busy", 20, 20)
            await buffer.flush(lambda: dict(positions))
            seen.append(await heads(engine, rid))
            buffer.forget_heads([quiet])  # revoked, and assigned again
            await buffer.flush(lambda: dict(positions))
            seen.append(await heads(engine, rid))
            return seen
        finally:
            await engine.dispose()

    first, second, third = asyncio.run(main())
    assert first == {"quiet": 10, "busy": 10}
    assert second == {"quiet": 7, "busy": 20}
    assert third == {"quiet": 10, "busy": 20}


def test_lanes_waiting_behind_one_flush_share_the_next(fleet_settings: FerrySettings) -> None:
    """An exactly-once copier's lanes each store the offset map before their commit. Lanes that hand over their
    mappings while another lane's flush is under way wait for it, then share one flush: three lanes, two flushes,
    and every lane's mappings stored before its ``before_progress`` returns."""
    lanes = [TopicPartition(f"lane{i}", 0) for i in range(3)]

    def mapping(lane: int) -> BatchMapping:
        start = 1000 * lane  # one run per lane, in this order by source offset
        return BatchMapping(lanes[lane], TopicPartition(f"src.lane{lane}", 0), range(start, start + 100), start)

    async def main() -> tuple[int, list[Run]]:
        engine = make_async_engine(fleet_settings)
        try:
            async with engine.begin() as conn:
                rid = await new_replicator(conn, "s:7", "t:7")
            buffer = OffsetMapBuffer(rid, engine)
            waiting: list[asyncio.Task[None]] = []

            def positions_of_the_first_lane() -> dict[TopicPartition, AckedPosition]:
                # Called inside the first lane's flush, its lock held: the other two lanes hand over and wait.
                if not waiting:
                    for lane in (1, 2):
                        buffer.record_batch(mapping(lane))
                        waiting.append(asyncio.create_task(buffer.before_progress(dict)))
                return {}

            buffer.record_batch(mapping(0))
            await buffer.before_progress(positions_of_the_first_lane)
            await asyncio.gather(*waiting)
            async with engine.connect() as conn:
                return buffer.flushes, await stored(conn, rid)
        finally:
            await engine.dispose()

    flushes, runs = asyncio.run(main())
    assert runs == [Run(1000 * lane, 1000 * lane + 100, 1000 * lane, 1000 * lane + 100) for lane in range(3)]
    assert flushes == 2, f"{flushes} flushes for three lanes, two of which waited behind the first"


def test_a_progress_write_stores_the_heads_even_without_new_mappings(fleet_settings: FerrySettings) -> None:
    """A partition moves without records past transaction markers or filtered records: each progress write still
    stores the head it reaches (only lanes that waited behind a flush begun after their call share it)."""
    tp = TopicPartition("markers", 0)

    async def main() -> list[int]:
        engine = make_async_engine(fleet_settings)
        try:
            async with engine.begin() as conn:
                rid = await new_replicator(conn, "s:8", "t:8")
            buffer = OffsetMapBuffer(rid, engine)
            seen: list[int] = []
            buffer.record_batch(BatchMapping(tp, TopicPartition("src.markers", 0), range(0, 10), 0))
            for position in (10, 12, 14):  # past a marker each time, no record
                head = {tp: AckedPosition("src.markers", position, position)}
                await buffer.before_progress(head.copy)
                async with engine.connect() as conn:
                    row = await conn.execute(
                        text("SELECT next_source_offset FROM offset_map_heads WHERE replicator_id = :rid"),
                        {"rid": uuid.UUID(rid)},
                    )
                    seen.append(int(row.scalar_one()))
            return seen
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == [10, 12, 14]
