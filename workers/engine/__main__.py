"""Run one replication flow as its own process.

    python -m workers.engine --source 127.0.0.1:19092 --target 127.0.0.1:29092 --spec spec.json \\
        [--source-alias src] [--target-alias tgt] [--replicator-id id] [--exactly-once] \\
        [--transactional-id id] [--metrics-file stats.json] [--partition-slice K/N]

``spec.json`` is either one MSK ``replicationInfoList`` entry, or an object with a ``replicationInfo`` entry
and optional ``sourceAlias``, ``targetAlias``, ``replicatorId``, ``exactlyOnce`` and ``createdAtMs``
(command-line flags win). SIGTERM or SIGINT stops the flow gracefully (final progress written).
``--partition-slice K/N`` copies only slice K of N of the partitions in scope, so N processes started with
slices 0/N .. N-1/N share one replicator's partitions between them (a scale-out without the fleet).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from workers.engine import event_loop
from workers.engine.connection import ClusterConnection
from workers.engine.copier import CopierOptions
from workers.engine.spec import ReplicationSpec
from workers.engine.standalone import PartitionSlice, StandaloneReplicator

log = logging.getLogger("workers.engine")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="source bootstrap servers")
    parser.add_argument("--target", required=True, help="target bootstrap servers")
    parser.add_argument("--spec", required=True, type=Path, help="replicationInfo JSON file")
    parser.add_argument("--source-alias")
    parser.add_argument("--target-alias")
    parser.add_argument("--replicator-id")
    parser.add_argument("--exactly-once", action="store_true", default=None)
    parser.add_argument("--transactional-id")
    parser.add_argument("--metrics-file", type=Path, help="write a JSON snapshot here every --metrics-interval")
    parser.add_argument("--metrics-interval", type=float, default=1.0)
    parser.add_argument("--topic-refresh", type=float, default=5.0, help="seconds between topic sync passes")
    parser.add_argument(
        "--no-forward-batches",
        dest="forward_batches",
        action="store_false",
        help="decode and re-encode every record even where a source batch could be written as it is",
    )
    parser.add_argument(
        "--no-splice-records",
        dest="splice_records",
        action="store_false",
        help="decode and re-encode the records of small uncompressed source batches instead of splicing them",
    )
    parser.add_argument(
        "--forward-min-batch-bytes",
        type=int,
        default=CopierOptions.forward_min_batch_bytes,
        help="smallest source batch written as it is; smaller ones are re-batched (default %(default)s)",
    )
    parser.add_argument(
        "--partition-slice",
        type=_partition_slice,
        help="K/N: copy only slice K of N of the partitions (N processes with slices 0/N..N-1/N share a replicator)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def _partition_slice(text: str) -> PartitionSlice:
    try:
        return PartitionSlice.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_spec(args: argparse.Namespace) -> ReplicationSpec:
    document: dict[str, Any] = json.loads(args.spec.read_text())
    info = document.get("replicationInfo", document)
    source_alias = args.source_alias or document.get("sourceAlias") or "source"
    target_alias = args.target_alias or document.get("targetAlias") or "target"
    replicator_id = args.replicator_id or document.get("replicatorId") or f"cli-{source_alias}-{target_alias}"
    exactly_once = args.exactly_once if args.exactly_once is not None else bool(document.get("exactlyOnce"))
    return ReplicationSpec.from_replication_info(
        info,
        source_alias,
        target_alias,
        replicator_id,
        exactly_once=exactly_once,
        created_at_ms=document.get("createdAtMs"),
    )


def write_metrics(path: Path, replicator: StandaloneReplicator) -> None:
    stats = replicator.snapshot().as_json()
    stats["writtenAtMs"] = int(time.time() * 1000)
    stats["pid"] = os.getpid()
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(stats))
    temporary.replace(path)


async def run(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    replicator = StandaloneReplicator(
        spec,
        ClusterConnection(args.source, alias=spec.source_alias),
        ClusterConnection(args.target, alias=spec.target_alias),
        transactional_id=args.transactional_id,
        options=CopierOptions(
            forward_batches=args.forward_batches,
            forward_min_batch_bytes=args.forward_min_batch_bytes,
            splice_records=args.splice_records,
        ),
        topic_refresh_s=args.topic_refresh,
        partition_slice=args.partition_slice,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await replicator.start()
    event_loop.settle_garbage_collector()
    runner = asyncio.create_task(replicator.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        while not runner.done() and not stop.is_set():
            if args.metrics_file is not None:
                write_metrics(args.metrics_file, replicator)
            await asyncio.wait({runner, stopper}, timeout=args.metrics_interval, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await replicator.stop()
        if args.metrics_file is not None:
            write_metrics(args.metrics_file, replicator)
    failure = replicator.copier.failure
    if failure is not None:
        log.error("replication stopped: %s", failure)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    return event_loop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
