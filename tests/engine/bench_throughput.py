"""Quick engine throughput measurement (not a test): ``python -m tests.engine.bench_throughput [records]``.

Produces ``records`` 1 KiB records over 6 partitions to the source, then times an in-process StandaloneReplicator
copying them (at-least-once and exactly-once, uncompressed and LZ4) until lag is zero.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

from tests.engine.conftest import Rec, caught_up, create_topic, produce, running, spec_for, wait_for

SOURCE, TARGET = "127.0.0.1:19092", "127.0.0.1:29092"
PARTITIONS = 6


async def main(records: int) -> None:
    unique = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"{unique}-data"
    await create_topic(SOURCE, topic, PARTITIONS)
    payload = os.urandom(512).hex().encode()[:1024]
    started = time.monotonic()
    await produce(SOURCE, topic, [Rec(i % PARTITIONS, None, payload) for i in range(records)])
    print(f"produced {records} x 1 KiB in {time.monotonic() - started:.1f}s")
    for exactly_once in (False, True):
        for compression in ("NONE", "LZ4"):
            spec = spec_for(
                unique,
                [topic],
                compression=compression,
                exactly_once=exactly_once,
                source_alias=f"b{int(exactly_once)}{compression.lower()}",
                replicator_id=f"{unique}-{exactly_once}-{compression}",
            )
            cpu = time.process_time()
            started = time.monotonic()
            async with running(spec, SOURCE, TARGET) as replicator:
                await wait_for(caught_up(replicator), 600, "copy", interval=0.05)
                elapsed = time.monotonic() - started
                copied = sum(s.records_copied for s in replicator.snapshot().partitions.values())
            cpu_used = time.process_time() - cpu
            mode = "exactly-once " if exactly_once else "at-least-once"
            print(
                f"{mode} {compression:4}: {copied} records in {elapsed:.2f}s = {copied / elapsed:,.0f} rec/s "
                f"= {copied * 1024 / elapsed / 1e6:.1f} MB/s (engine CPU {cpu_used:.1f}s)"
            )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
