"""The one-pass Metadata decoders (workers/engine/metadata_decode.py) read what aiokafka's schemas read: the same
values from the same bytes, at the edges of the wire format (null arrays and strings, multi-byte varints, tagged
fields), and from a real broker."""

from __future__ import annotations

import os
from io import BytesIO

import pytest
from aiokafka.protocol.metadata import MetadataResponse_v5
from aiokafka.protocol.struct import Struct as SchemaStruct

from tests.engine.conftest import admin_client, create_topic, wait_for
from workers.engine import aiokafka_hooks
from workers.engine.aiokafka_hooks import describe_all_topics, topic_ids
from workers.engine.metadata_decode import decode_metadata_v5, decode_topic_listing_v12

V12 = aiokafka_hooks._MetadataResponseV12


def generic(response_class: type, raw: bytes) -> object:
    """What aiokafka's schema walk decodes (the method the hooks replaced)."""
    return SchemaStruct.decode.__func__(response_class, BytesIO(raw))  # type: ignore[attr-defined]


def test_metadata_v5_decodes_as_aiokafka_does_at_the_edges() -> None:
    many_replicas = list(range(130))  # a count past one byte
    topics = [
        (0, "orders", False, [(0, p, p % 3, [1, 2, 3], [1, 2], []) for p in range(300)]),
        (0, "wide", False, [(0, 0, 1, many_replicas, many_replicas[:64], [7])]),
        (3, "missing", False, []),  # UNKNOWN_TOPIC_OR_PARTITION: no partitions
        (0, "nulls", True, [(9, 0, -1, None, None, None)]),  # null arrays, leader unknown
        (0, "ünïcode-topic", False, [(0, 0, 2, [2], [2], [])]),
    ]
    brokers = [(1, "broker-1.example", 9092, None), (2, "broker-2.example", 9093, "rack-b")]
    raw = MetadataResponse_v5(0, brokers, None, 2, topics).encode()
    expected = generic(MetadataResponse_v5, raw)
    decoded = decode_metadata_v5(MetadataResponse_v5, BytesIO(raw))
    for field in MetadataResponse_v5.SCHEMA.names:
        assert getattr(decoded, field) == getattr(expected, field), field


def test_metadata_v5_refuses_a_truncated_response() -> None:
    raw = MetadataResponse_v5(0, [], "c", 1, [(0, "t", False, [(0, 0, 1, [1], [1], [])])]).encode()
    with pytest.raises(Exception):  # noqa: B017 - struct.error or ValueError, as aiokafka's own decoding
        decode_metadata_v5(MetadataResponse_v5, BytesIO(raw[:-3]))
    with pytest.raises(ValueError, match="left after decoding"):
        decode_metadata_v5(MetadataResponse_v5, BytesIO(raw + b"\0"))


def test_the_topic_listing_keeps_every_topic_field_and_counts_the_partitions() -> None:
    # aiokafka's TaggedFields.encode writes tag and value without the value's size: the size is put in the value.
    tagged = {1: bytes([3]) + b"abc"}
    wide = list(range(200))
    topics = [
        (0, "orders", os.urandom(16), False, [(0, p, 1, 5, [1, 2, 3], [1, 2], [], {}) for p in range(200)], -1, {}),
        (0, "tagged", os.urandom(16), True, [(0, 0, 1, 5, wide, wide, [], tagged)], 0, tagged),
        (3, "missing", bytes(16), False, [], -2147483648, {}),
        (0, None, os.urandom(16), False, [(0, 0, 1, 5, None, None, None, {})], 0, {}),
    ]
    raw = V12(0, [(1, "broker-1", 9092, None, {}), (2, "b2", 9093, "r", tagged)], "cluster", 1, topics, {}).encode()
    expected = generic(V12, raw)
    decoded = decode_topic_listing_v12(V12, BytesIO(raw))
    assert (
        [(t[0], t[1], t[2], t[3], len(t[4]), t[5]) for t in expected.topics]
        == [  # type: ignore[attr-defined]
            tuple(t[:6]) for t in decoded.topics
        ]
    )
    assert [tuple(b[:4]) for b in expected.brokers] == [tuple(b[:4]) for b in decoded.brokers]  # type: ignore[attr-defined]
    assert (decoded.cluster_id, decoded.controller_id) == ("cluster", 1)
    with pytest.raises(ValueError, match="left after decoding"):
        decode_topic_listing_v12(V12, BytesIO(raw + b"\0"))


async def test_a_real_brokers_metadata_reads_the_same_through_the_decoders(source_bootstrap: str, unique: str) -> None:
    bootstrap = source_bootstrap
    await create_topic(bootstrap, f"{unique}-a", partitions=7)
    await create_topic(bootstrap, f"{unique}-b", partitions=1)
    async with admin_client(bootstrap) as admin:
        listed: dict[str, tuple[int, bool, str | None]] = {}

        async def both_listed() -> bool:
            # Topics created moments ago are listed once their leaders are elected.
            listed.update(await describe_all_topics(admin))
            return f"{unique}-a" in listed and f"{unique}-b" in listed

        await wait_for(both_listed, 30, "the new topics in the cluster's listing")
        ids = await topic_ids(admin, [f"{unique}-a", f"{unique}-b", f"{unique}-none"])
        described = {entry["topic"]: entry for entry in await admin.describe_topics([f"{unique}-a", f"{unique}-b"])}
    assert listed[f"{unique}-a"][:2] == (7, False) and listed[f"{unique}-b"][:2] == (1, False)
    assert set(ids) == {f"{unique}-a", f"{unique}-b"} and ids[f"{unique}-a"] == listed[f"{unique}-a"][2]
    # aiokafka's describe_topics decodes a v5 response (through decode_metadata_v5 once the hooks are imported).
    assert sorted(p["partition"] for p in described[f"{unique}-a"]["partitions"]) == list(range(7))
    assert all(p["leader"] >= 0 and p["replicas"] for p in described[f"{unique}-a"]["partitions"])
