"""The record splice (workers/engine/_splice.c, ``SplicedBuilder``, the ``SplicedBatch`` path of
``build_batches``) without a broker: spliced producer batches decode to exactly the records of their source
batches, batches split where they fill up, a poll mixes spliced, forwarded and decoded items in offset order, and a
batch that does not parse copies nothing. tests/engine's copier tests run the same path against real brokers."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from tests.engine.conftest import spec_for
from tests.engine.test_batches import SOURCE_CLUSTER, TARGET_CLUSTER, batch_format, state
from workers.engine import aiokafka_hooks
from workers.engine.aiokafka_hooks import ForwardedBuilder, RecordBatchBuilder, SplicedBuilder, decode_batch
from workers.engine.batches import build_batches, reopenable
from workers.engine.connection import ClusterConnection
from workers.engine.copier import CopierOptions, PartitionCopier
from workers.engine.forwarding import (
    LOG_APPEND_TIME,
    BatchHeader,
    DecodedBatch,
    ForwardBatches,
    RawBatch,
    SplicedBatch,
)
from workers.engine.spec import PROVENANCE_HEADER

BASE_TIME = 1_700_000_000_000


def source_batch(
    first_offset: int, records: Sequence[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]]
) -> bytes:
    """An uncompressed v2 batch as a producer writes it (``records``: timestamp, key, value, headers), its base
    offset set as the broker sets it."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    for index, (timestamp, key, value, headers) in enumerate(records):
        builder.append(index, timestamp, key, value, headers)
    raw = builder.build()
    struct.pack_into(">q", raw, 0, first_offset)
    return bytes(raw)


def random_records(rng: random.Random, count: int) -> list[tuple[int, bytes | None, bytes | None, list[Any]]]:
    records = []
    for _ in range(count):
        key = None if rng.random() < 0.2 else rng.randbytes(rng.randrange(0, 40))
        value = None if rng.random() < 0.1 else rng.randbytes(rng.choice([0, 1, 100, 1000, 70_000]))
        headers = [(f"h{j}", rng.randbytes(rng.randrange(0, 20))) for j in range(rng.randrange(0, 3))]
        # Timestamps move backwards as well as forwards, and far: every delta size of the varint.
        timestamp = BASE_TIME + rng.choice([0, -1, 1, -5_000, 86_400_000, -(2**40), 2**40])
        records.append((timestamp, key, value, headers))
    return records


def as_tuples(records: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [(r.timestamp, r.key, r.value, list(r.headers)) for r in records]


def built_records(builder: Any) -> list[Any]:
    raw = bytes(builder._build())
    batch = DefaultRecordBatch(raw)
    assert batch.validate_crc(), "the CRC covers the header and the records"
    return list(batch)


def spliced(raw: bytes, start: int | None = None) -> SplicedBatch:
    header = BatchHeader.parse(raw)
    return SplicedBatch(memoryview(raw), header.base_offset if start is None else start, header.next_offset, 4)


def test_the_compiled_splice_is_installed() -> None:
    """``pip install`` builds it (pyproject.toml); without it the engine falls back to decoding, and CI must not
    test that fallback in its place."""
    assert aiokafka_hooks.SPLICE_AVAILABLE


@pytest.mark.parametrize("seed", range(8))
def test_spliced_records_decode_as_the_source_records_renumbered(seed: int) -> None:
    rng = random.Random(seed)
    sources = []
    offset = 1_000
    for _ in range(rng.randrange(1, 6)):
        records = random_records(rng, rng.randrange(1, 40))
        sources.append(source_batch(offset, records))
        offset += len(records)
    builder = SplicedBuilder(1 << 30, transactional=False)
    for raw in sources:
        header = BatchHeader.parse(raw)
        appended, next_offset, _, _ = builder.splice(memoryview(raw), header.base_offset)
        assert (appended, next_offset) == (header.record_count, header.next_offset)
    expected = [record for raw in sources for record in DefaultRecordBatch(raw)]
    copied = built_records(builder)
    assert as_tuples(copied) == as_tuples(expected)
    assert [r.offset for r in copied] == list(range(len(expected))), "offset deltas renumbered from 0"
    header = BatchHeader.parse(builder._build())
    assert header.first_timestamp == expected[0].timestamp
    assert header.max_timestamp == max(r.timestamp for r in expected)
    assert header.record_count == header.last_offset_delta + 1 == len(expected)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (-1, -1, -1)
    assert header.base_offset == 0 and header.leader_epoch == -1, "as a producer writes them"


def test_records_before_the_fetch_position_are_left_out() -> None:
    raw = source_batch(50, [(BASE_TIME + i, None, f"v{i}".encode(), []) for i in range(10)])
    builder = SplicedBuilder(1 << 20, transactional=False)
    assert builder.splice(memoryview(raw), 56)[:2] == (4, 60)
    assert [r.value for r in built_records(builder)] == [b"v6", b"v7", b"v8", b"v9"]
    assert BatchHeader.parse(builder._build()).first_timestamp == BASE_TIME + 6, "the first record copied"


def test_a_full_producer_batch_stops_the_splice_and_the_first_record_always_fits() -> None:
    raw = source_batch(0, [(BASE_TIME, None, bytes(3000), []) for _ in range(5)])
    builder = SplicedBuilder(7000, transactional=False)
    assert builder.splice(memoryview(raw), 0)[:2] == (2, 2), "a third record would pass 7,000 bytes"
    assert builder.size() <= 7000
    assert builder.splice(memoryview(raw), 2)[:2] == (0, 2), "full: nothing more goes in"
    small = SplicedBuilder(100, transactional=False)
    assert small.splice(memoryview(raw), 2)[:2] == (1, 3), "an empty batch takes one record, whatever its size"


def test_producer_state_and_the_transactional_flag_are_written_with_a_new_crc() -> None:
    raw = source_batch(0, [(BASE_TIME, b"k", b"v", [])])
    builder = SplicedBuilder(1 << 20, transactional=True)
    builder.splice(memoryview(raw), 0)
    builder._set_producer_state(77, 3, 1_000)
    assert builder.sealed, "once the sender numbered it, nothing may be appended"
    header = BatchHeader.parse(builder._build())
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (77, 3, 1_000)
    assert header.is_transactional
    assert DefaultRecordBatch(bytes(builder._build())).validate_crc()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[:-3], id="cut short"),
        pytest.param(lambda raw: raw[:61] + b"\xff\xff\xff\xff\x0f" + raw[66:], id="record length too large"),
        pytest.param(lambda raw: raw[:61] + b"\x02" + raw[62:], id="record length too small"),
        pytest.param(lambda raw: raw[:57] + (10**6).to_bytes(4, "big") + raw[61:], id="record count too large"),
        pytest.param(lambda raw: raw[:16] + b"\x01" + raw[17:], id="not v2"),
    ],
)
def test_a_batch_that_does_not_parse_raises_and_copies_nothing(damage: Any) -> None:
    raw = source_batch(0, [(BASE_TIME, b"key", b"value" * 10, [("h", b"x")]) for _ in range(3)])
    builder = SplicedBuilder(1 << 20, transactional=False)
    builder.splice(memoryview(raw), 0)
    size_before = builder.size()
    with pytest.raises(ValueError, match="corrupt record batch"):
        builder.splice(memoryview(damage(raw)), 0)
    assert builder.size() == size_before and builder.records == 3


def test_compressed_or_log_append_time_batches_are_refused() -> None:
    raw = bytearray(source_batch(0, [(BASE_TIME, None, b"v", [])]))
    struct.pack_into(">h", raw, 21, LOG_APPEND_TIME)
    with pytest.raises(ValueError, match="CreateTime"):
        SplicedBuilder(1 << 20, transactional=False).splice(memoryview(raw), 0)
    header = BatchHeader.parse(raw)
    assert not ForwardBatches(0, splice=True).splices(header)
    uncompressed = BatchHeader.parse(source_batch(0, [(BASE_TIME, None, b"", [])]))
    assert ForwardBatches(3, splice=True).splices(uncompressed), "to a compressed target: compressed when built"
    assert not ForwardBatches(3, splice=True).splices(uncompressed._replace(attributes=3)), "a compressed source"
    gappy = header._replace(attributes=0, last_offset_delta=5)  # compacted: offsets 0 and 5 of 2 records
    assert not ForwardBatches(0, splice=True).splices(gappy), "the offset map of a spliced batch is a range"
    assert ForwardBatches(0, splice=True).splices(header._replace(attributes=0))
    assert not ForwardBatches(0).splices(header._replace(attributes=0)), "off unless asked for"


async def test_a_poll_of_spliced_forwarded_and_decoded_items_keeps_offset_order() -> None:
    partition = state(0)
    first = source_batch(0, [(BASE_TIME + i, None, f"s{i}".encode(), []) for i in range(3)])
    forwarded_raw = source_batch(3, [(BASE_TIME, None, b"f3", [])])
    forwarded = RawBatch(memoryview(forwarded_raw), 3, 1, BASE_TIME, leader_epoch=5)
    decoded_raw = source_batch(4, [(BASE_TIME, None, b"d4", [])])
    decoded = DecodedBatch(decode_batch(decoded_raw), 6)
    last = source_batch(5, [(BASE_TIME, None, b"s5", []), (BASE_TIME, None, b"s6", [])])
    built = build_batches(batch_format(), partition, [spliced(first), forwarded, decoded, spliced(last)], 9)
    assert [type(builder) for builder, _ in built] == [
        SplicedBuilder,
        ForwardedBuilder,
        RecordBatchBuilder,
        SplicedBuilder,
    ]
    assert [pending.next_source_offset for _, pending in built] == [3, 4, 5, 9]
    assert [list(pending.source_offsets or []) for _, pending in built] == [[0, 1, 2], [3], [4], [5, 6]]
    assert [[r.value for r in built_records(builder)] for builder, _ in built[2:]] == [[b"d4"], [b"s5", b"s6"]]
    assert [pending.first_timestamp_ms for _, pending in built] == [BASE_TIME, BASE_TIME, BASE_TIME, BASE_TIME]
    assert partition.fetched_epoch == 6


async def test_a_source_batch_larger_than_a_producer_batch_is_split_without_a_gap() -> None:
    partition = state(0)
    raw = source_batch(100, [(BASE_TIME, None, bytes(1000), []) for _ in range(10)])
    built = build_batches(batch_format(batch_bytes=2500), partition, [spliced(raw, start=101)], 110)
    offsets = [list(pending.source_offsets or []) for _, pending in built]
    assert [offset for run in offsets for offset in run] == list(range(101, 110))
    assert all(len(run) == 2 for run in offsets[:-1]), "two 1 KB records per 2,500-byte batch"
    assert [pending.next_source_offset for _, pending in built] == [run[-1] + 1 for run in offsets]
    assert all(builder.size() <= 2500 for builder, _ in built)
    assert sum(pending.records for _, pending in built) == 9


async def test_the_next_poll_splices_into_the_batch_the_producer_has_not_taken() -> None:
    """As with decoded records: a poll of small source batches must not become a small producer batch."""
    partition = state(0)
    built = build_batches(batch_format(), partition, [spliced(source_batch(0, [(BASE_TIME, None, b"a", [])]))], 1)
    builder, pending = built[0]
    pending.future = asyncio.get_running_loop().create_future()  # handed to the producer, not yet sent
    partition.pending.append(pending)
    partition.open_batch = (builder, pending)
    reopen = reopenable(batch_format(), partition)
    assert reopen is not None
    more = build_batches(
        batch_format(), partition, [spliced(source_batch(1, [(BASE_TIME + 5, None, b"b", [])]))], 3, reopen
    )
    assert more == []
    assert (pending.records, pending.next_source_offset, list(pending.source_offsets or [])) == (2, 3, [0, 1])
    assert pending.size == builder.size()
    assert [(r.offset, r.timestamp, r.value) for r in built_records(builder)] == [
        (0, BASE_TIME, b"a"),
        (1, BASE_TIME + 5, b"b"),
    ]
    assert reopenable(batch_format(), partition) is None, "built: sealed"


@pytest.mark.parametrize(
    ("naming", "options", "splices"),
    [
        ("PREFIXED_WITH_SOURCE_CLUSTER_ALIAS", CopierOptions(), True),
        ("IDENTICAL", CopierOptions(), True),  # the splice filters and stamps the origin header itself
        ("PREFIXED_WITH_SOURCE_CLUSTER_ALIAS", CopierOptions(splice_records=False), False),
        ("PREFIXED_WITH_SOURCE_CLUSTER_ALIAS", CopierOptions(forward_batches=False), False),
    ],
)
def test_which_copiers_splice(naming: str, options: CopierOptions, splices: bool) -> None:
    spec = spec_for("splice", ["orders"], naming=naming)
    copier = PartitionCopier(spec, ClusterConnection("localhost:1"), ClusterConnection("localhost:2"), options=options)
    assert copier.splices_records is splices


@pytest.mark.parametrize("seed", range(6))
async def test_identical_naming_filters_and_stamps_spliced_records_as_decoded_ones(seed: int) -> None:
    """Active-active: a record whose first origin header names the target cluster came from it and is left out;
    one without an origin header (or with a null one) gets the source cluster's. Spliced and decoded copies of the
    same source batches must hold the same records, offsets and counts."""
    rng = random.Random(seed)
    origin = PROVENANCE_HEADER
    choices: list[list[tuple[str, bytes | None]]] = [
        [],
        [(origin, TARGET_CLUSTER)],  # came from the target: filtered
        [(origin, b"a-third-cluster")],  # kept as it is
        [("other", b"x"), (origin, TARGET_CLUSTER), ("more", b"")],
        [(origin, None)],  # a null origin is no origin: stamped
        [(origin, b"a-third-cluster"), (origin, TARGET_CLUSTER)],  # the first one decides
        [("h", b"v")],
    ]
    sources, offset = [], 500
    for _ in range(rng.randrange(1, 5)):
        records = [
            (BASE_TIME + rng.randrange(-10_000, 10_000), rng.randbytes(5), rng.randbytes(rng.randrange(0, 2000)),
             rng.choice(choices))
            for _ in range(rng.randrange(1, 60))
        ]  # fmt: skip
        sources.append(source_batch(offset, records))
        offset += len(records)
    fmt = batch_format(identical=True, batch_bytes=rng.choice([4096, 1 << 20]))
    spliced_state, decoded_state = state(500), state(500)
    spliced_out = build_batches(
        fmt,
        spliced_state,
        [spliced(raw, start=501) for raw in sources][:1] + [spliced(raw) for raw in sources[1:]],
        offset,
    )
    decoded_items = [DecodedBatch([r for r in decode_batch(raw) if r.offset >= 501]) for raw in sources[:1]]
    decoded_items += [DecodedBatch(decode_batch(raw)) for raw in sources[1:]]
    decoded_out = build_batches(fmt, decoded_state, [item for item in decoded_items if item.records], offset)

    def copied(out: list[tuple[Any, Any]]) -> tuple[list[Any], list[int]]:
        records = [r for builder, _ in out for r in built_records(builder)]
        return as_tuples(records), [o for _, pending in out for o in (pending.source_offsets or [])]

    assert copied(spliced_out) == copied(decoded_out)
    assert spliced_state.metrics.records_filtered == decoded_state.metrics.records_filtered > 0
    assert (spliced_out[-1][1].next_source_offset if spliced_out else offset) == offset
    for records, _ in [copied(spliced_out)]:
        assert all(sum(1 for name, _ in headers if name == origin) >= 1 for *_, headers in records)


def test_headers_that_run_past_their_record_copy_nothing_in_identical_naming() -> None:
    raw = bytearray(source_batch(0, [(BASE_TIME, b"k", b"v", [("h", b"x")])]))
    assert raw[69] == 2, "one header (zigzag 1) right after the key and the value"
    raw[69] = 10  # five headers claimed, one there
    builder = SplicedBuilder(1 << 20, transactional=False)
    provenance = (PROVENANCE_HEADER.encode(), TARGET_CLUSTER, SOURCE_CLUSTER)
    with pytest.raises(ValueError, match="headers run past the record"):
        builder.splice(memoryview(bytes(raw)), 0, provenance)
    assert builder.size() == 61 and builder.records == 0
    assert builder.splice(memoryview(bytes(raw)), 0)[:2] == (1, 1), "without loop prevention headers are not read"


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_spliced_records_are_compressed_whole_for_a_compressed_target(codec: int) -> None:
    """An uncompressed source to a compressed target: the records are spliced, then compressed with the batch's
    codec when it is built; aiokafka's reader decompresses exactly the source records, and a new producer state
    (a retry) rewrites the header without compressing again."""
    rng = random.Random(codec)
    records = random_records(rng, 40)
    raw = source_batch(0, records)
    builder = SplicedBuilder(1 << 22, transactional=False, codec=codec)
    assert builder.compresses
    appended, next_offset, _, _ = builder.splice(memoryview(raw), 0)
    assert (appended, next_offset) == (40, 40)
    builder._set_producer_state(7, 0, 0)
    first = bytes(builder._build())
    batch = DefaultRecordBatch(first)
    assert batch.compression_type == codec and batch.validate_crc()
    assert as_tuples(list(batch)) == as_tuples(list(DefaultRecordBatch(raw)))
    compressed = builder._compressed
    builder._set_producer_state(7, 0, 40)
    again = bytes(builder._build())
    assert builder._compressed is compressed, "compressed once"
    assert DefaultRecordBatch(again).base_sequence == 40 and DefaultRecordBatch(again).validate_crc()
    assert again[61:] == first[61:]


def test_spliced_batches_for_a_compressed_target_are_built_aside() -> None:
    """``build_batches_aside`` compresses spliced batches on the compression threads, as decoded ones."""
    assert SplicedBuilder in aiokafka_hooks._BUILT_ASIDE
    builder = SplicedBuilder(1 << 20, transactional=False, codec=1)
    builder.splice(memoryview(source_batch(0, [(BASE_TIME, b"k", b"v" * 100, [])])), 0)
    assert builder.compresses and builder.ahead() is None and not builder.built()
