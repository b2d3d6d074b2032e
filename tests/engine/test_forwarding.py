"""Batch forwarding: eligible source batches reach the target as they are (same boundaries, same codec, same
records); every other batch is decoded record by record; the copy is identical either way."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.engine.conftest import Rec, caught_up, create_topic, produce, read_topic, running, spec_for, wait_for
from workers.engine import copier, forwarding
from workers.engine.aiokafka_hooks import install_batch_fetching
from workers.engine.copier import CopierOptions

pytestmark = pytest.mark.asyncio


async def fetch_items(
    bootstrap: str,
    topic: str,
    partition: int,
    start: int,
    end: int,
    codec: int,
    min_batch_bytes: int = 0,
    splice: bool = False,
) -> list[Any]:
    """What a forwarding consumer yields for offsets ``start``..``end`` of one partition."""
    install_batch_fetching()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        key_deserializer=forwarding.ForwardBatches(codec, min_batch_bytes=min_batch_bytes, splice=splice),
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        items: list[Any] = []
        deadline = time.monotonic() + 30
        while await consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"fetching {topic} did not reach offset {end}"
            batches = await consumer.getmany(tp, timeout_ms=500)
            items.extend(batches.get(tp, []))
        return items
    finally:
        await consumer.stop()


def batch_sizes(items: list[Any]) -> list[int]:
    assert all(isinstance(item, forwarding.RawBatch) for item in items), [type(i).__name__ for i in items]
    return [item.record_count for item in items]


def records_of(count: int, partition: int, tag: str) -> list[Rec]:
    return [
        Rec(partition, f"k{i}".encode() if i % 7 else None, f"{tag}-{i}".encode() * 3, ((f"h{i % 3}", b"x"),))
        for i in range(count)
    ]


async def produce_in_batches(
    bootstrap: str, topic: str, recs: list[Rec], per_batch: int, compression: str | None
) -> None:
    for start in range(0, len(recs), per_batch):
        await produce(bootstrap, topic, recs[start : start + per_batch], compression=compression)


def same_records(source: list[Any], target: list[Any]) -> None:
    assert [(r.key, r.value, r.timestamp, list(r.headers)) for r in target] == [
        (r.key, r.value, r.timestamp, list(r.headers)) for r in source
    ]


@pytest.mark.parametrize(("codec_name", "producer_codec", "codec_id"), [("NONE", None, 0), ("GZIP", "gzip", 1)])
async def test_source_batches_arrive_with_their_boundaries_and_codec(
    source_bootstrap: str,
    target_bootstrap: str,
    unique: str,
    codec_name: str,
    producer_codec: str | None,
    codec_id: int,
) -> None:
    topic = f"fwd-{unique}"
    await create_topic(source_bootstrap, topic, partitions=2)
    recs = records_of(300, 0, "a") + records_of(120, 1, "b")
    await produce_in_batches(source_bootstrap, topic, recs, per_batch=40, compression=producer_codec)
    spec = spec_for(unique, [topic], compression=codec_name)
    # These batches are tiny: forward them all, whatever their size.
    options = CopierOptions(retry_backoff_s=0.2, forward_min_batch_bytes=0)
    async with running(spec, source_bootstrap, target_bootstrap, options=options) as replicator:
        await wait_for(caught_up(replicator), 60, "the copy to catch up")
    target_topic = spec.target_topic(topic)
    source_records = await read_topic(source_bootstrap, topic)
    target_records = await read_topic(target_bootstrap, target_topic)
    for partition in (0, 1):
        same_records(source_records[partition], target_records[partition])
        count = len(source_records[partition])
        source_batches = batch_sizes(await fetch_items(source_bootstrap, topic, partition, 0, count, codec_id))
        target_batches = batch_sizes(await fetch_items(target_bootstrap, target_topic, partition, 0, count, codec_id))
        # The decoding path would have merged these 40-record batches into one 512 KiB producer batch.
        assert source_batches == target_batches
        assert len(target_batches) > 1


async def test_decoded_when_the_codec_changes_and_identical_with_forwarding_off(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"fwd-mixed-{unique}"
    await create_topic(source_bootstrap, topic, partitions=1)
    recs = records_of(200, 0, "c")
    await produce_in_batches(source_bootstrap, topic, recs, per_batch=50, compression="lz4")
    # LZ4 source batches into a GZIP target: every batch is re-encoded.
    recoded = spec_for(f"{unique}-gz", [topic], compression="GZIP", source_alias=f"gz{unique}")
    # Forwarding switched off: the record-by-record path, same result.
    decoded = spec_for(f"{unique}-off", [topic], compression="LZ4", source_alias=f"off{unique}")
    async with running(recoded, source_bootstrap, target_bootstrap) as first:
        await wait_for(caught_up(first), 60, "the GZIP copy to catch up")
    async with running(
        decoded, source_bootstrap, target_bootstrap, options=CopierOptions(retry_backoff_s=0.2, forward_batches=False)
    ) as second:
        await wait_for(caught_up(second), 60, "the decoded copy to catch up")
    source_records = (await read_topic(source_bootstrap, topic))[0]
    for spec, codec_id in ((recoded, 1), (decoded, 3)):
        target_topic = spec.target_topic(topic)
        same_records(source_records, (await read_topic(target_bootstrap, target_topic))[0])
        merged = batch_sizes(await fetch_items(target_bootstrap, target_topic, 0, 0, 200, codec_id))
        assert merged == [200], f"{target_topic}: expected one re-encoded batch, got {merged}"


async def test_a_position_inside_a_batch_decodes_that_batch_from_there(source_bootstrap: str, unique: str) -> None:
    topic = f"fwd-mid-{unique}"
    await create_topic(source_bootstrap, topic, partitions=1)
    await produce_in_batches(source_bootstrap, topic, records_of(90, 0, "d"), per_batch=30, compression=None)
    items = await fetch_items(source_bootstrap, topic, 0, 10, 90, codec=0)
    decoded, *forwarded = items
    assert isinstance(decoded, forwarding.DecodedBatch)
    assert [record.offset for record in decoded.records] == list(range(10, 30))
    assert [(item.base_offset, item.record_count) for item in forwarded] == [(30, 30), (60, 30)]


async def test_small_uncompressed_batches_are_fetched_for_splicing_from_the_position(
    source_bootstrap: str, unique: str
) -> None:
    topic = f"fwd-splice-{unique}"
    await create_topic(source_bootstrap, topic, partitions=1)
    await produce_in_batches(source_bootstrap, topic, records_of(90, 0, "s"), per_batch=30, compression=None)
    await produce_in_batches(source_bootstrap, topic, records_of(30, 0, "z"), per_batch=30, compression="gzip")
    items = await fetch_items(
        source_bootstrap, topic, 0, 10, 120, codec=0, min_batch_bytes=forwarding.NEVER, splice=True
    )
    assert [type(item) for item in items] == [forwarding.SplicedBatch] * 3 + [forwarding.DecodedBatch]
    assert [(item.start_offset, item.next_offset) for item in items[:3]] == [(10, 30), (30, 60), (60, 90)]
    assert [record.offset for record in items[3].records] == list(range(90, 120)), "compressed: decoded"
    assert sum(map(forwarding.fetched_records, items)) == 110


async def test_a_batch_larger_than_the_target_default_limit_is_split(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"fwd-big-{unique}"
    await create_topic(source_bootstrap, topic, partitions=1, configs={"max.message.bytes": str(8 * 1024 * 1024)})
    producer = AIOKafkaProducer(
        bootstrap_servers=source_bootstrap,
        acks="all",
        max_request_size=8 * 1024 * 1024,
        max_batch_size=4 * 1024 * 1024,  # one 3 MB batch, as a producer with a big batch.size writes it
    )
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(3000):
            assert batch.append(key=None, value=b"%04d" % i * 250, timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    items = await fetch_items(source_bootstrap, topic, 0, 0, 3000, codec=0)
    assert [type(item) for item in items] == [forwarding.DecodedBatch], "a 3 MB batch must not be forwarded"
    assert [record.offset for record in items[0].records] == list(range(3000))
    # Configurations not copied: the target topic keeps the broker's default 1 MiB max.message.bytes.
    spec = spec_for(unique, [topic], copy_configs=False)
    async with running(spec, source_bootstrap, target_bootstrap) as replicator:
        await wait_for(caught_up(replicator), 60, "the copy to catch up")
    copied = (await read_topic(target_bootstrap, spec.target_topic(topic)))[0]
    assert [r.value for r in copied] == [b"%04d" % i * 250 for i in range(3000)]


async def test_small_batches_are_rebatched_by_default(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"fwd-small-{unique}"
    await create_topic(source_bootstrap, topic, partitions=1)
    await produce_in_batches(source_bootstrap, topic, records_of(400, 0, "e"), per_batch=20, compression=None)
    spec = spec_for(unique, [topic])
    async with running(spec, source_bootstrap, target_bootstrap) as replicator:
        await wait_for(caught_up(replicator), 60, "the copy to catch up")
    target_topic = spec.target_topic(topic)
    same_records((await read_topic(source_bootstrap, topic))[0], (await read_topic(target_bootstrap, target_topic))[0])
    target_batches = batch_sizes(await fetch_items(target_bootstrap, target_topic, 0, 0, 400, codec=0))
    # Under 64 KiB each, the 20 source batches are re-batched into fewer, larger producer batches.
    assert sum(target_batches) == 400
    assert len(target_batches) < 20, target_batches


def _decoded(records: int) -> forwarding.DecodedBatch:
    return forwarding.DecodedBatch([object()] * records, size=records * 1024)


def _forwarded(records: int) -> forwarding.RawBatch:
    return forwarding.RawBatch(memoryview(b"\0" * 64), 0, records, 0)


async def test_an_at_least_once_poll_takes_more_batches_when_they_hold_few_records() -> None:
    options = CopierOptions()
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    # 1 KiB records in the Java producer's 16 KiB batches: 15 a batch, so 64 batches (960 records) a poll.
    assert copier.poll_limit_after({a: [_decoded(15)] * 10, b: [_decoded(15)] * 6}, options) == 64
    # 40 records a batch: as many as hold about records_per_poll records.
    assert copier.poll_limit_after({a: [_decoded(40)] * 16}, options) == options.records_per_poll // 40
    # 100 B records (160 a batch) and forwarded 512 KiB batches keep the smaller polls that suit them.
    assert copier.poll_limit_after({a: [_decoded(160)] * 16}, options) == options.max_batches_per_poll
    assert copier.poll_limit_after({a: [_forwarded(5000)] * 4}, options) == options.max_batches_per_poll
    # A poll of a few single records (old-format batches, a quiet topic) is no reason to poll less.
    assert copier.poll_limit_after({a: [object()]}, options) == options.max_few_record_batches_per_poll
