"""100,000 records over 6 partitions with every record shape arrive intact, in order, on the right partitions,
in both naming modes; excluded topics do not."""

from __future__ import annotations

import time

from tests.engine.conftest import (
    Rec,
    admin_client,
    create_topic,
    produce,
    read_topic,
    running,
    spec_for,
    topic_count,
    wait_for,
)
from workers.engine.admin import cluster_id, describe_topic_configs
from workers.engine.spec import PROVENANCE_HEADER

MAIN_RECORDS = 100_000
LARGE_LIMIT = 2_000_000


def main_records() -> list[Rec]:
    base = int(time.time() * 1000) - MAIN_RECORDS
    records = []
    for i in range(MAIN_RECORDS):
        headers: tuple[tuple[str, bytes], ...] = ()
        if i % 7 == 0:
            headers = (("dup", b"first"), ("other", b"x"), ("dup", b"second"))
        elif i % 7 == 1:
            headers = (("empty", b""),)
        key = None if i % 10 == 0 else f"key-{i % 997}".encode()
        records.append(Rec(partition=i % 6, key=key, value=f"value-{i}".encode(), headers=headers, timestamp=base + i))
    return records


def shape(record: object, drop_provenance: bytes | None = None) -> tuple[object, ...]:
    headers = tuple(record.headers)  # type: ignore[attr-defined]
    if drop_provenance is not None:
        assert headers[-1] == (PROVENANCE_HEADER, drop_provenance), headers
        headers = headers[:-1]
    return (record.key, record.value, headers, record.timestamp)  # type: ignore[attr-defined]


async def test_records_arrive_intact_in_both_naming_modes(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    main, compact, large, skipped = (f"{unique}-main", f"{unique}-compact", f"{unique}-large", f"{unique}-skip")
    await create_topic(source_bootstrap, main, 6)
    await create_topic(source_bootstrap, compact, 2, {"cleanup.policy": "compact"})
    await create_topic(source_bootstrap, large, 1, {"max.message.bytes": str(LARGE_LIMIT)})
    await create_topic(source_bootstrap, skipped, 1)
    await produce(source_bootstrap, main, main_records())
    compact_records = [
        Rec(partition=i % 2, key=f"k{i % 50}".encode(), value=None if i % 5 == 4 else f"c{i}".encode())
        for i in range(400)
    ]
    await produce(source_bootstrap, compact, compact_records)
    # Room for the record batch and record overheads below the topic's limit.
    big_value = b"L" * (LARGE_LIMIT - 200)
    await produce(
        source_bootstrap,
        large,
        [Rec(0, b"small", b"before"), Rec(0, b"big", big_value), Rec(0, None, b"after")],
        max_request_size=LARGE_LIMIT * 2,
    )
    await produce(source_bootstrap, skipped, [Rec(0, b"k", b"must not be copied")])

    topics = [f"{unique}-.*"]
    prefixed = spec_for(unique, topics, exclude=[skipped], replicator_id=f"rep-{unique}-p")
    identical = spec_for(unique, topics, exclude=[skipped], naming="IDENTICAL", replicator_id=f"rep-{unique}-i")
    async with (
        running(prefixed, source_bootstrap, target_bootstrap),
        running(identical, source_bootstrap, target_bootstrap),
    ):
        for target_name in (f"src.{main}", main):
            await wait_for(
                lambda n=target_name: _has(target_bootstrap, n, MAIN_RECORDS),
                120,  # type: ignore[misc]
                f"{MAIN_RECORDS} records in {target_name}",
            )
        for target_name in (f"src.{large}", large):
            await wait_for(
                lambda n=target_name: _has(target_bootstrap, n, 3),
                60,  # type: ignore[misc]
                f"3 records in {target_name}",
            )
        for target_name in (f"src.{compact}", compact):
            await wait_for(
                lambda n=target_name: _has(target_bootstrap, n, 400),
                60,  # type: ignore[misc]
                f"400 records in {target_name}",
            )

    async with admin_client(source_bootstrap) as admin:
        source_id = (await cluster_id(admin)).encode()
    for topic in (main, compact, large):
        source_data = await read_topic(source_bootstrap, topic)
        for target_name, provenance in ((f"src.{topic}", None), (topic, source_id)):
            target_data = await read_topic(target_bootstrap, target_name)
            assert sorted(target_data) == sorted(source_data), f"{target_name}: partition numbers differ"
            for partition, records in source_data.items():
                expected = [shape(r) for r in records]
                actual = [shape(r, provenance) for r in target_data[partition]]
                assert actual == expected, f"{target_name}[{partition}] differs from the source"
    source_main = await read_topic(source_bootstrap, main)
    assert sum(len(v) for v in source_main.values()) == MAIN_RECORDS
    assert any(r.key is None for r in source_main[0]), "the data set must contain null keys"

    async with admin_client(target_bootstrap) as admin:
        existing = set(await admin.list_topics())
        assert skipped not in existing and f"src.{skipped}" not in existing, "excluded topic was copied"
        configs = await describe_topic_configs(admin, [f"src.{compact}", f"src.{large}"])
    assert configs[f"src.{compact}"]["cleanup.policy"].value == "compact"
    assert configs[f"src.{large}"]["max.message.bytes"].value == str(LARGE_LIMIT)


async def _has(bootstrap: str, topic: str, count: int) -> bool:
    try:
        return await topic_count(bootstrap, topic) >= count
    except KeyError:
        return False
