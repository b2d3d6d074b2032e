"""The partition copier: copies an explicit, changeable set of source partitions to the target.

One consumer (read_committed, manual assignment, no group) per copier, and one producer (at-least-once) or one per
transaction lane (exactly-once). Each source record goes to the same partition number of the target topic with its
key, value, headers and timestamp.

Two delivery modes:

* at-least-once: batches are sent without waiting; acknowledgements advance each partition's durable
  position in order, and progress is written to the target's progress topic every ``progress_interval_s``
  after the data it covers was acknowledged. A crash re-copies at most what was acknowledged after the last
  progress write plus what was in flight.
* exactly-once: the partitions are shared out among ``TRANSACTION_LANES`` transactional producers; each lane's
  transaction holds what was fetched for its partitions since its last one and their progress records, so after
  any crash the target holds each source record once (for read_committed readers). The lanes' transactions
  overlap with each other and with fetching.

The caller supplies the transactional id of the unit of work (Kafka fences an older producer with the same
id) and optionally ``lease_check``, awaited with the partitions about to be written before every batch is sent and
every progress commit. A partition it refuses is dropped from the assignment before anything more of it is written
(its new owner copies on from the progress it reads); the copier copies on with the rest.

What goes into each producer batch and what an acknowledgement means for a partition is ``batches.py``; every
use of aiokafka's internals (raw batch fetching, stand-in batch builders, the sender gate) is
``aiokafka_hooks.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.partitioner import DefaultPartitioner

from workers.engine import admin as kafka_admin
from workers.engine import forwarding
from workers.engine.aiokafka_hooks import (
    SPLICE_AVAILABLE,
    RecordBatchBuilder,
    SplicedBuilder,
    WritesFenced,
    add_to_transaction,
    build_batches_aside,
    gate_sender,
    install_batch_fetching,
    leader_epoch_ends,
    pace_fetches,
    topic_ids,
)
from workers.engine.batches import (
    AckedPosition,
    BatchFormat,
    BatchMapping,
    OffsetMapSink,
    PartitionState,
    PendingBatch,
    acknowledge,
    build_batches,
    reopenable,
)
from workers.engine.connection import ClusterConnection, admin_client, client_kwargs
from workers.engine.metrics import CopyCounts, ErrorKind, PartitionMetrics, PartitionStats
from workers.engine.progress import PartitionProgress, ProgressStore, encode_progress, now_ms, progress_key
from workers.engine.spec import ReplicationSpec, StartingPosition, TopicNaming

# A line about one partition names it as extra={"partition": tp}: its own field in the JSON log (models/logs.py).
log = logging.getLogger(__name__)

# Producer batches that may take the next poll's records while they wait for the sender (``reopenable``).
_REOPENABLE = (RecordBatchBuilder, SplicedBuilder)

# Both are given the partitions whose writes they judge (the copier's own, also while it stops).
LeaseCheck = Callable[[frozenset[TopicPartition]], Awaitable[bool]]
WriteGate = Callable[[frozenset[TopicPartition]], bool]


@functools.cache
def compression_pool() -> ThreadPoolExecutor:
    """The process's threads for compressing target batches (``build_batches_aside``), one per CPU, shared by
    every copier: compression is CPU-bound, so more threads than cores would only queue."""
    # The CPUs this process may run on (a container's cpuset), not the machine's.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return ThreadPoolExecutor(max_workers=cpus, thread_name_prefix="ferry-compress")


# Exactly-once: this many transactional producers per copier, each with its own share of the partitions, so one's
# transaction is sent and committed while another's waits on its round trips. A partition stays with one lane while
# it is assigned, so its records reach the target in order. Fencing covers every lane, so this is fixed.
TRANSACTION_LANES = 4


def lane_transactional_ids(transactional_id: str) -> list[str]:
    """The transactional ids of a unit's exactly-once producers: its own id for the first lane (as before lanes),
    numbered after it for the others."""
    return [transactional_id] + [f"{transactional_id}-lane-{k}" for k in range(1, TRANSACTION_LANES)]


class CopierError(Exception):
    """The copier cannot continue; the owner must not restart it blindly."""


class CopierFenced(CopierError):
    """A newer producer with the same transactional id exists: this copier is a zombie."""


class LeasesLapsed(CopierError):
    """A transaction lane's producer had to be replaced while every partition of the lane had lost its lease."""


class TargetPartitionMissing(CopierError):
    """A source partition was assigned before its target partition existed (topic sync must run first)."""


@dataclass(frozen=True)
class CopierOptions:
    poll_timeout_ms: int = 100
    # Items of one poll: a forwarded or decoded source batch counts once (a record of an old-format batch too).
    # Small polls keep fetching, encoding and sending overlapped: 100 B records in 16 KiB batches copied at
    # 67, 111 and 112 MB/s with 256, 16 and 8 batches per poll (bench, same machine and hour).
    max_batches_per_poll: int = 16
    # At-least-once: source batches of few records (1 KiB records in 16 KiB batches: 15 each) cost more per poll
    # than per record, so a poll takes up to max_few_record_batches_per_poll of them, as many as hold about
    # records_per_poll records going by the previous poll. 64 batches of 15 records cost 8-12% less CPU per MB
    # than 16, where 64 batches of 160 records (100 B) or of 5,000 (forwarded 512 KiB batches) copied no faster
    # or slower (docs/performance.md, "2026-12-03, seventh").
    max_few_record_batches_per_poll: int = 64
    records_per_poll: int = 1024
    # Exactly-once: a commit costs round trips, so polls are larger; this also bounds what waits for the lanes.
    max_batches_per_transaction: int = 1024
    # Bytes fetched and not yet acknowledged: at-least-once's batches in flight; exactly-once's records queued for
    # the lanes and in their transactions (as fetched). No poll starts at or above it, so one poll may pass it.
    max_in_flight_bytes: int = 64 * 1024 * 1024
    progress_interval_s: float = 0.25
    # From many_partitions on: each write first stores the offset map, reading every held partition's position.
    progress_interval_many_s: float = 1.0
    housekeeping_interval_s: float = 0.5
    # How often the ids of the copied topics are compared with the ones their progress belongs to: a topic
    # deleted and created again under its name is copied anew from its beginning.
    topic_check_interval_s: float = 5.0
    producer_batch_bytes: int = 512 * 1024
    producer_linger_ms: int = 5
    # Must exceed the largest max.message.bytes of any replicated topic: one record per request at worst.
    producer_max_request_bytes: int = 16 * 1024 * 1024
    fetch_max_bytes: int = 64 * 1024 * 1024
    max_partition_fetch_bytes: int = 2 * 1024 * 1024
    # Every fetch lists every assigned partition and its answer carries each one (aiokafka has no incremental
    # fetch sessions), so its cost grows with the partitions held, idle or not. From many_partitions on, a fetch
    # waits for this many bytes per partition (up to fetch_min_bytes_max) or for fetch_max_wait_ms_many, so
    # fetches carry data worth their fixed cost. Below it a fetch returns at the first byte: a quiet topic's
    # record is not held back for the wait (end-to-end latency is what small replicators are judged on).
    fetch_min_bytes_per_partition: int = 256
    fetch_min_bytes_max: int = 1024 * 1024
    fetch_max_wait_ms: int = 200
    # From this many partitions on, quiet ones are polled less often: at most two fetches a second when idle.
    many_partitions: int = 1000
    fetch_max_wait_ms_many: int = 500
    transaction_timeout_ms: int = 60_000
    retry_backoff_s: float = 1.0
    # Write eligible source batches as they are instead of re-encoding each record (workers/engine/forwarding.py).
    forward_batches: bool = True
    forward_min_batch_bytes: int = forwarding.MIN_FORWARDED_BATCH_BYTES
    # Copy the records of smaller uncompressed source batches into producer batches still encoded, rewriting
    # only their offset and timestamp deltas (workers/engine/_splice.c), instead of decoding and re-encoding them.
    splice_records: bool = True


@functools.cache
def _warn_without_splice() -> None:
    """Once per process, however many copiers start."""
    log.warning(
        "the engine's compiled record splice (workers.engine._splice) is not installed: records of small "
        "uncompressed source batches are decoded and re-encoded, which costs more CPU; reinstall Ferry with a "
        "C compiler and Python's headers present to build it"
    )


def poll_limit_after(batches: dict[TopicPartition, list[Any]], options: CopierOptions) -> int:
    """At-least-once: how many items the next poll takes, from the records per item of this one: about
    ``records_per_poll`` records, in ``max_batches_per_poll`` to ``max_few_record_batches_per_poll`` items."""
    items = records = 0
    for fetched in batches.values():
        items += len(fetched)
        records += sum(map(forwarding.fetched_records, fetched))
    per_item = max(1, records // max(1, items))
    fitting = options.records_per_poll // per_item
    return max(options.max_batches_per_poll, min(options.max_few_record_batches_per_poll, fitting))


@dataclass
class _AssignmentChange:
    add: dict[TopicPartition, PartitionState]
    remove: set[TopicPartition]
    applied: asyncio.Future[list[PartitionState]]


@dataclass(eq=False)
class _Lane:
    """A producer of the copier (at-least-once has one) and, in exactly-once mode, its share of the partitions:
    records fetched for them wait in ``queued``, with the position after them, until the lane's next transaction
    takes them. Only the copy loop touches the consumer; a lane's task writes and commits."""

    transactional_id: str | None
    producer: Any = None
    partitions: set[TopicPartition] = field(default_factory=set)
    queued: dict[TopicPartition, tuple[list[Any], int]] = field(default_factory=dict)
    queued_batches: int = 0
    queued_bytes: int = 0
    task: asyncio.Task[None] | None = None
    # The partitions of the transaction under way (records or progress): their positions wait for its end.
    in_transaction: frozenset[TopicPartition] = frozenset()
    transaction_bytes: int = 0
    # Its transaction failed: records fetched for its partitions are dropped until the copy loop puts them back
    # where their last commit left them.
    halted: bool = False
    # Its abort failed too (or its producer would not start): a new producer before it writes again.
    broken: bool = False
    # A partition of it may have moved without records (new, transaction markers, restarted): its progress may be
    # behind, to be written by a transaction even if nothing is queued.
    progress_due: bool = False

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def take(self) -> dict[TopicPartition, tuple[list[Any], int]]:
        taken, self.queued, self.queued_batches, self.queued_bytes = self.queued, {}, 0, 0
        return taken

    def holds_up(self, tp: TopicPartition) -> bool:
        """Records of this partition are queued or in the transaction under way, or its lane is to be rewound: its
        positions must wait."""
        return self.halted or tp in self.queued or tp in self.in_transaction


def _error_kind(exc: BaseException) -> ErrorKind:
    if isinstance(exc, WritesFenced):
        return ErrorKind.LEASE_LOST
    if isinstance(exc, (RecordTooLargeError, MessageSizeTooLargeError)):
        return ErrorKind.RECORD_TOO_LARGE
    if isinstance(exc, (TopicAuthorizationFailedError, TransactionalIdAuthorizationFailed)):
        return ErrorKind.AUTH_DENIED
    return ErrorKind.PRODUCE_FAILED


async def fence_transactional_ids(connection: ClusterConnection, transactional_ids: Iterable[str]) -> None:
    """Fence the producers of the exactly-once copiers that used these transactional ids (a unit's previous owners),
    every lane of each: a producer initialised with the same id bumps its epoch, which aborts any transaction it
    left open and makes the broker refuse its late writes. Done before the new owner reads progress, so the progress
    read (read_committed) is not held back by an open transaction of a dead or paused owner, and before it copies."""
    lanes = sorted({lane for given in transactional_ids for lane in lane_transactional_ids(given)})
    await _fence_all(connection, lanes)


async def _fence_all(connection: ClusterConnection, transactional_ids: list[str]) -> None:
    """Fence these ids at once; every fence ends (none left running) before the first failure is raised."""
    results = await asyncio.gather(*(_fence(connection, tid) for tid in transactional_ids), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _fence(connection: ClusterConnection, transactional_id: str) -> None:
    producer = AIOKafkaProducer(
        **client_kwargs(connection, "fencer"), transactional_id=transactional_id, enable_idempotence=True
    )
    try:
        await producer.start()  # InitProducerId: the fencing itself
        log.info("fenced transactional id %s on %s", transactional_id, connection.describe())
    finally:
        await producer.stop()


def _recreated(
    source: TopicPartition,
    target: TopicPartition,
    known_ids: tuple[str | None, str | None],
    current_ids: tuple[str | None, str | None],
) -> tuple[ErrorKind, str] | None:
    """Why a copy must start anew: its source or target topic is no longer the one (by id) it belongs to."""
    (known_source, known_target), (source_id, target_id) = known_ids, current_ids
    if known_source and source_id and known_source != source_id:
        return ErrorKind.SOURCE_RECREATED, f"source topic {source.topic} was deleted and created again"
    if known_target and target_id and known_target != target_id:
        return ErrorKind.TARGET_RECREATED, f"target topic {target.topic} was deleted and created again"
    return None


async def _all_or_first_error(futures: list[asyncio.Future[Any]]) -> None:
    """Wait for every future (so none is left with an unretrieved error), then raise the first error."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class PartitionCopier:
    """Copies the source partitions it is assigned; assignment changes never pause the partitions that stay."""

    def __init__(
        self,
        spec: ReplicationSpec,
        source: ClusterConnection,
        target: ClusterConnection,
        *,
        transactional_id: str | None = None,
        lease_check: LeaseCheck | None = None,
        write_gate: WriteGate | None = None,
        offset_map_sink: OffsetMapSink | None = None,
        options: CopierOptions | None = None,
        progress_store: ProgressStore | None = None,
    ) -> None:
        if spec.exactly_once and not transactional_id:
            raise ValueError("exactly-once copying needs a transactional_id for the unit of work")
        self.spec = spec
        self.source = source
        self.target = target
        self.transactional_id = transactional_id if spec.exactly_once else None
        self.options = options or CopierOptions()
        self._lease_check = lease_check
        # Synchronous and local (no I/O): consulted by the producer before every request it sends.
        self._write_gate = write_gate
        self._sink = offset_map_sink
        self._store = progress_store or ProgressStore(target, spec.replicator_id)
        self._states: dict[TopicPartition, PartitionState] = {}
        self._changes: list[_AssignmentChange] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        # At-least-once: one lane. Exactly-once: TRANSACTION_LANES, each producer started when it first has work.
        self._lanes = [
            _Lane(lane_id)
            for lane_id in (lane_transactional_ids(self.transactional_id) if self.transactional_id else [None])
        ]
        self._lane_of: dict[TopicPartition, _Lane] = {}
        self._lane_room = asyncio.Event()
        self._target_probe: Any = None
        self._source_admin: Any = None
        self._target_admin: Any = None
        self._last_topic_check = time.monotonic()
        self._progress_lock = asyncio.Lock()
        self._progress_task: asyncio.Task[None] | None = None
        # For the write gate: whose data a target partition holds, and whose progress records are in flight on
        # each partition of the progress topic.
        self._sources_by_target: dict[TopicPartition, TopicPartition] = {}
        self._progress_in_flight: dict[int, Counter[TopicPartition]] = {}
        # Per source partition: (partitions of the progress topic, the partition its progress key hashes to).
        self._progress_partitions: dict[TopicPartition, tuple[int, int]] = {}
        self._in_flight_bytes = 0
        self._room = asyncio.Event()
        self._produce_failed = False
        self._producer_generation = 0
        self._last_progress = time.monotonic()
        self._progress_interval_s = self.options.progress_interval_s
        self._last_housekeeping = 0.0
        self._format: BatchFormat | None = None
        self._retired: dict[TopicPartition, PartitionStats] = {}
        # Every partition's measurements since this copier started, revoked ones included: ``copied_totals``.
        self._counted: dict[TopicPartition, list[PartitionMetrics]] = {}
        self._poll_limit = (
            self.options.max_batches_per_transaction if spec.exactly_once else self.options.max_batches_per_poll
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._format = BatchFormat(
            codec=self.spec.target_compression.batch_attribute,
            batch_bytes=self.options.producer_batch_bytes,
            transactional=self.transactional_id is not None,
            identical=self.spec.topic_naming is TopicNaming.IDENTICAL,
            # Records carrying the target cluster's id came from it: copying them back would loop.
            loop_origin=(await self._cluster_id(self.target)).encode(),
            origin=(await self._cluster_id(self.source)).encode(),
            keep_offsets=self._sink is not None,
            compress_ahead=compression_pool() if self.spec.target_compression.producer_codec is not None else None,
        )
        await self._store.ensure_topic()
        self._source_admin = admin_client(self.source, "copier-admin")
        self._target_admin = admin_client(self.target, "copier-admin")
        await self._source_admin.start()
        await self._target_admin.start()
        install_batch_fetching()
        if self.options.splice_records and not SPLICE_AVAILABLE:
            _warn_without_splice()
        forward = forwarding.ForwardBatches(
            self.spec.target_compression.batch_attribute,
            min_batch_bytes=self.options.forward_min_batch_bytes if self.forwards_batches else forwarding.NEVER,
            splice=self.splices_records,
        )
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(self.source, "copier-consumer"),
            key_deserializer=forward,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="none",
            fetch_max_bytes=self.options.fetch_max_bytes,
            max_partition_fetch_bytes=self.options.max_partition_fetch_bytes,
            fetch_max_wait_ms=self.options.fetch_max_wait_ms,
        )
        await self._consumer.start()
        self._target_probe = AIOKafkaConsumer(
            **client_kwargs(self.target, "copier-probe"),
            enable_auto_commit=False,
            isolation_level="read_committed" if self.spec.exactly_once else "read_uncommitted",
        )
        await self._target_probe.start()
        # In exactly-once mode the producer must exist before progress is read: initialising it aborts a
        # transaction a crashed predecessor left open, which would otherwise hold the progress topic's
        # last stable offset back and hide that predecessor's last committed progress.
        await self._start_producer(self._lanes[0])
        # The other lanes start when they get work; a transaction one of them left open (this unit's previous run,
        # crashed) is aborted now, for the same reason.
        await _fence_all(self.target, [lane.transactional_id for lane in self._lanes[1:] if lane.transactional_id])
        self._task = asyncio.create_task(self._run(), name=f"ferry-copier-{self.spec.replicator_id}")
        log.info(
            "copier for %s started: %s -> %s (%s)",
            self.spec.replicator_id,
            self.source.describe(),
            self.target.describe(),
            "exactly-once" if self.spec.exactly_once else "at-least-once",
        )

    @property
    def _batch_format(self) -> BatchFormat:
        if self._format is None:
            raise CopierError("copier is not started")
        return self._format

    @property
    def forwards_batches(self) -> bool:
        """IDENTICAL naming stamps and reads a loop-prevention header on every record, so it never forwards."""
        return self.options.forward_batches and self.spec.topic_naming is not TopicNaming.IDENTICAL

    @property
    def splices_records(self) -> bool:
        """In both naming modes (the splice filters and stamps IDENTICAL naming's origin header itself); not in a
        copier told not to forward, nor without the compiled splice (logged once when the copier starts)."""
        return self.options.forward_batches and self.options.splice_records and SPLICE_AVAILABLE

    async def _cluster_id(self, connection: ClusterConnection) -> str:
        admin = admin_client(connection, "copier-admin")
        await admin.start()
        try:
            return await kafka_admin.cluster_id(admin)
        finally:
            await admin.close()

    @property
    def _producer(self) -> Any:
        """The first lane's producer: all of at-least-once, and the one exactly-once asks for metadata."""
        return self._lanes[0].producer

    async def _start_producer(self, lane: _Lane) -> None:
        producer = AIOKafkaProducer(
            **client_kwargs(self.target, "copier-producer"),
            enable_idempotence=True,
            acks="all",
            compression_type=self.spec.target_compression.producer_codec,
            max_batch_size=self.options.producer_batch_bytes,
            linger_ms=self.options.producer_linger_ms,
            max_request_size=self.options.producer_max_request_bytes,
            transactional_id=lane.transactional_id,
            transaction_timeout_ms=self.options.transaction_timeout_ms,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        pool = self._batch_format.compress_ahead
        if pool is not None:
            if self._write_gate is not None:
                # Judged again once the batches are built: waiting for the compression threads must not stretch
                # the time from a lease check to the write past the lease's safety margin.
                gate_sender(producer, self._allows)
            build_batches_aside(producer, pool)
        if self._write_gate is not None:
            # Judged per batch of each produce request, on the source partitions that batch belongs to.
            gate_sender(producer, self._allows)
        lane.producer = producer
        self._producer_generation += 1

    async def stop(self) -> None:
        """Stop copying; in at-least-once mode, wait for in-flight data and write final progress first."""
        self._stopping = True
        self._wake.set()
        try:
            if self._task is not None:
                # The task's own error stays readable through ``failure`` / ``wait()``.
                await asyncio.wait({self._task})
            if self._task is not None and not self.spec.exactly_once and self.failure is None:
                states = list(self._states.values())
                await self._settle(states)
                await self._commit_progress(states)
        finally:
            # A progress write still under way (the loop failed meanwhile) ends before its clients close.
            await self._progress_written()
            for client in (*(lane.producer for lane in self._lanes), self._consumer, self._target_probe):
                if client is not None:
                    await _closed(client.stop(), "client")
            for admin in (self._source_admin, self._target_admin):
                if admin is not None:
                    await _closed(admin.close(), "admin client")

    async def wait(self) -> None:
        """Return when the copier stops; raise the error that stopped it."""
        if self._task is not None:
            await self._task

    @property
    def failure(self) -> BaseException | None:
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions being copied (not those whose lease was lost, even before they leave the loop)."""
        return frozenset(tp for tp, state in self._states.items() if not state.lease_lost)

    def positions(self) -> dict[TopicPartition, AckedPosition]:
        """Per assigned partition, how far its copy is acknowledged. Every batch below has already been handed to
        the offset map sink; the next copy lands at or after the position's target offset."""
        return {tp: state.position() for tp, state in self._states.items() if not state.lease_lost}

    def buffered_bytes(self) -> int:
        """Bytes fetched and not yet acknowledged by the target (``CopierOptions.max_in_flight_bytes`` bounds it)."""
        if self.spec.exactly_once:
            return sum(lane.queued_bytes + lane.transaction_bytes for lane in self._lanes)
        return self._in_flight_bytes

    def snapshot(self) -> dict[TopicPartition, PartitionStats]:
        """Measurements of every assigned partition (and of partitions revoked since the last snapshot)."""
        stats = dict(self._retired)
        self._retired.clear()
        for tp, state in self._states.items():
            stats[tp] = state.metrics.snapshot()
        return stats

    def counts(self) -> dict[TopicPartition, CopyCounts]:
        """The load counters of every assigned partition (unlike ``snapshot``, this leaves the final readings of
        revoked partitions to the snapshot's reader)."""
        return {tp: state.metrics.counts() for tp, state in self._states.items()}

    def copied_totals(self) -> dict[TopicPartition, tuple[int, int]]:
        """Records and bytes copied per partition since this copier started, partitions revoked since (and
        assigned again) included: these never decrease for as long as the copier lives, so a reader's deltas
        between two readings are exact (usage accounting, ``workers/fleet/usage.py``)."""
        return {
            tp: (sum(m.records_copied for m in counted), sum(m.bytes_copied for m in counted))
            for tp, counted in self._counted.items()
        }

    # ------------------------------------------------------------------ assignment

    async def assign(
        self, partitions: Iterable[TopicPartition], *, from_beginning: Iterable[TopicPartition] = ()
    ) -> None:
        """Start copying these source partitions (already assigned ones are ignored).

        Their target partitions must exist (``TargetPartitionMissing`` otherwise). Each resumes from its
        durable progress, or, the first time, from startingPosition, except the ``from_beginning`` ones: partitions
        that appeared after the replicator started (a new topic, an added partition) are copied from their
        beginning whatever startingPosition says, as MirrorMaker 2 does, so records backfilled into them are
        never skipped. That first position is made durable before this returns (at-least-once) or with the next
        transaction (exactly-once).
        """
        self._raise_if_failed()
        queued = {tp for change in self._changes for tp in change.add}
        new = sorted({tp for tp in partitions if tp not in self._states and tp not in queued})
        if not new:
            return
        await self._check_target_partitions(new)
        progress = await self._store.load(new)
        target_tps = {tp: TopicPartition(self.spec.target_topic(tp.topic), tp.partition) for tp in new}
        source_ids, target_ids = await self._topic_ids(new)
        restarted: dict[TopicPartition, tuple[ErrorKind, str]] = {}
        for tp, found in progress.items():
            why = _recreated(
                tp,
                target_tps[tp],
                (found.source_topic_id, found.target_topic_id),
                (source_ids.get(tp.topic), target_ids.get(target_tps[tp].topic)),
            )
            if why is not None:
                restarted[tp] = why
        for tp in restarted:
            del progress[tp]
        later = set(from_beginning)
        first_time = [tp for tp in new if tp not in progress]
        starts = await self._starting_offsets([tp for tp in first_time if tp not in restarted and tp not in later])
        at_beginning = [tp for tp in first_time if tp in restarted or tp in later]
        if at_beginning:
            starts.update(await self._consumer.beginning_offsets(at_beginning))
        target_ends = await self._target_probe.end_offsets(list(target_tps.values()))
        states: dict[TopicPartition, PartitionState] = {}
        for tp in new:
            target_tp = target_tps[tp]
            metrics = PartitionMetrics(tp, target_tp.topic)
            self._counted.setdefault(tp, []).append(metrics)
            saved = progress.get(tp)
            if saved is not None:
                start, target_next, committed = (
                    saved.next_source_offset,
                    saved.next_target_offset,
                    saved.next_source_offset,
                )
                if not self.spec.exactly_once and target_next is not None:
                    # Records the target got after the last progress write will be copied again.
                    metrics.redelivered_records = max(0, target_ends[target_tp] - target_next)
            else:
                start, target_next, committed = starts[tp], target_ends[target_tp], None
            if tp in restarted:
                kind, detail = restarted[tp]
                metrics.record_error(kind, f"{detail}; copying from its beginning (offset {start})")
                log.warning("%s: %s; copying from offset %d", tp, detail, start, extra={"partition": tp})
                if self._sink is not None:
                    self._sink.restart(tp)
            metrics.next_source_offset = start
            epoch = saved.source_leader_epoch if saved is not None and saved.source_leader_epoch is not None else -1
            self._sources_by_target[target_tp] = tp
            states[tp] = PartitionState(
                tp,
                target_tp,
                metrics,
                acked_next=start,
                acked_target_next=target_next,
                committed_next=committed,
                sent_next=start,
                source_topic_id=source_ids.get(tp.topic),
                target_topic_id=target_ids.get(target_tp.topic),
                fetched_epoch=epoch,
                acked_epoch=epoch,
            )
            if metrics.redelivered_records:
                log.info(
                    "%s: %d records after the last progress will be copied again",
                    tp,
                    metrics.redelivered_records,
                    extra={"partition": tp},
                )
        await self._submit(_AssignmentChange(states, set(), asyncio.get_running_loop().create_future()))
        if not self.spec.exactly_once:
            # Durable at once, so a crash before the first periodic write neither re-resolves LATEST nor
            # loses the target offset that duplicate accounting starts from.
            await self._commit_progress(list(states.values()))

    async def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop copying these partitions; returns once their copied data and progress are durable, so
        another copier can take them over without loss."""
        gone = {tp for tp in partitions if tp in self._states}
        if not gone:
            return
        revoked = await self._submit(_AssignmentChange({}, gone, asyncio.get_running_loop().create_future()))
        if not self.spec.exactly_once and self.failure is None:
            await self._settle(revoked)
            await self._commit_progress(revoked)
        for state in revoked:
            self._retired[state.source] = state.metrics.snapshot()

    async def _submit(self, change: _AssignmentChange) -> list[PartitionState]:
        self._changes.append(change)
        self._wake.set()
        if self._task is None:
            raise CopierError("copier is not started")
        waiters: set[asyncio.Future[Any]] = {change.applied, self._task}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if change.applied not in done:
            self._raise_if_failed()
            raise CopierError("copier stopped before the assignment change was applied")
        return change.applied.result()

    def _raise_if_failed(self) -> None:
        failure = self.failure
        if failure is not None:
            raise failure

    async def _check_target_partitions(self, partitions: list[TopicPartition]) -> None:
        for topic in sorted({tp.topic for tp in partitions}):
            target_topic = self.spec.target_topic(topic)
            needed = max(tp.partition for tp in partitions if tp.topic == topic) + 1
            available: set[int] = await self._producer.partitions_for(target_topic) or set()
            if len(available) < needed:
                # Partitions added moments ago may be missing from cached metadata.
                await self._producer.client.force_metadata_update()
                available = await self._producer.partitions_for(target_topic) or set()
            if len(available) < needed:
                raise TargetPartitionMissing(
                    f"target topic {target_topic} has {len(available)} partitions, {needed} needed"
                )

    async def _topic_ids(self, partitions: Iterable[TopicPartition]) -> tuple[dict[str, str], dict[str, str]]:
        """The current ids of these partitions' source topics and of their target topics, by name."""
        sources = sorted({tp.topic for tp in partitions})
        targets = sorted({self.spec.target_topic(topic) for topic in sources})
        return await topic_ids(self._source_admin, sources), await topic_ids(self._target_admin, targets)

    async def _starting_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        if self.spec.starting_position is StartingPosition.EARLIEST:
            return dict(await self._consumer.beginning_offsets(partitions))
        ends = await self._consumer.end_offsets(partitions)
        since = await self._consumer.offsets_for_times(dict.fromkeys(partitions, self.spec.created_at_ms))
        return {tp: ends[tp] if since.get(tp) is None else since[tp].offset for tp in partitions}

    def _apply_changes(self) -> None:
        if not self._changes:
            return
        changes, self._changes = self._changes, []
        revoked: dict[int, list[PartitionState]] = {}
        for change in changes:
            revoked[id(change)] = [self._states.pop(tp) for tp in change.remove if tp in self._states]
            self._states.update(change.add)
            if self.spec.exactly_once:
                self._assign_lanes(change.remove, change.add)
        # Manual assignment replaces the consumer's whole assignment and forgets positions, so every kept
        # partition is put back exactly where its copy stands; only prefetched data is fetched again.
        self._consumer.assign(list(self._states))
        for state in self._states.values():
            self._consumer.seek(state.source, state.sent_next)
        self._pace_fetches()
        for change in changes:
            if not change.applied.done():
                change.applied.set_result(revoked[id(change)])

    def _pace_fetches(self) -> None:
        held = len(self._states)
        options = self.options
        if held < options.many_partitions:
            self._progress_interval_s = options.progress_interval_s
            pace_fetches(self._consumer, 1, options.fetch_max_wait_ms)
            return
        self._progress_interval_s = max(options.progress_interval_s, options.progress_interval_many_s)
        min_bytes = min(options.fetch_min_bytes_max, options.fetch_min_bytes_per_partition * held)
        pace_fetches(self._consumer, min_bytes, options.fetch_max_wait_ms_many)

    # ------------------------------------------------------------------ main loop

    async def _run(self) -> None:
        exactly_once = self.spec.exactly_once
        try:
            while not self._stopping:
                if exactly_once and self._changes:
                    # Nothing of a partition may be in a transaction while it leaves or changes lanes.
                    await self._quiesce_lanes()
                self._apply_changes()
                if not self._states:
                    await self._idle()
                    continue
                if self._produce_failed:
                    try:
                        await self._recover()
                    except KafkaError as exc:
                        for state in self._states.values():
                            state.metrics.record_error(ErrorKind.PRODUCE_FAILED, f"{type(exc).__name__}: {exc}")
                        log.warning("target %s unavailable: %s", self.target.describe(), exc)
                        await asyncio.sleep(self.options.retry_backoff_s)
                    continue
                if exactly_once:
                    self._raise_if_lane_failed()
                    self._rewind_halted_lanes()
                    if (
                        sum(lane.queued_batches for lane in self._lanes) >= self._poll_limit
                        or self.buffered_bytes() >= self.options.max_in_flight_bytes
                    ):
                        await self._wait_for_lanes()
                        continue
                try:
                    batches = await self._consumer.getmany(
                        timeout_ms=self.options.poll_timeout_ms, max_records=self._poll_limit
                    )
                except OffsetOutOfRangeError as exc:
                    await self._handle_out_of_range(exc.args[0] if exc.args else {})
                    continue
                except KafkaError as exc:
                    await self._fetch_failed(exc)
                    continue
                if self._changes:
                    # Records fetched for a partition that is being revoked must not be sent: drop the poll
                    # and fetch again from the (unchanged) positions after the change (exactly-once: once the
                    # lanes' transactions are through, at the top of the loop).
                    if not exactly_once:
                        for state in self._states.values():
                            self._consumer.seek(state.source, state.sent_next)
                    continue
                if batches:
                    # A worker that was paused past its lease must not write even one more batch: the partition
                    # may have a new owner already. The check is local; it covers the partitions this poll writes
                    # to, not every partition held (thousands of idle ones would make every poll cost as much).
                    lost = await self._lost_leases([self._states[tp] for tp in batches if tp in self._states])
                    if lost:
                        # Dropping them is an assignment change: this poll is dropped and the kept partitions
                        # fetch again from where their copy stands.
                        self._abandon(lost)
                        continue
                if exactly_once:
                    await self._queue_for_lanes(batches)
                else:
                    if batches:
                        self._poll_limit = poll_limit_after(batches, self.options)
                    await self._copy_pipelined(batches)
                    if time.monotonic() - self._last_progress >= self._progress_interval_s:
                        self._write_progress_aside()
                await self._housekeeping()
        except CopierError as exc:
            kind = ErrorKind.FENCED if isinstance(exc, (CopierFenced, LeasesLapsed)) else ErrorKind.PRODUCE_FAILED
            for state in self._states.values():
                state.metrics.record_error(kind, str(exc))
            log.error("copier for %s stopped: %s", self.spec.replicator_id, exc)
            raise
        except Exception:
            log.exception("copier for %s crashed", self.spec.replicator_id)
            raise
        finally:
            await self._lanes_stopped()

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def _fetch_failed(self, exc: KafkaError) -> None:
        kind = ErrorKind.AUTH_DENIED if isinstance(exc, TopicAuthorizationFailedError) else ErrorKind.FETCH_FAILED
        for state in self._states.values():
            state.metrics.record_error(kind, f"{type(exc).__name__}: {exc}")
        log.warning("fetch from %s failed: %s", self.source.describe(), exc)
        await asyncio.sleep(self.options.retry_backoff_s)

    async def _handle_out_of_range(self, positions: dict[TopicPartition, int]) -> None:
        """The source log no longer holds our position: retention (or deleteRecords) passed it, the topic was
        recreated, or the log was truncated below it (unclean leader election). Never skip silently."""
        if self.spec.exactly_once:
            # What was fetched below these positions is committed first, so each partition's copy stands at the
            # position the broker refused. One whose transaction failed meanwhile is back at its last commit,
            # where its next fetch tells again.
            await self._drain_lanes()
            positions = {
                tp: offset
                for tp, offset in positions.items()
                if tp in self._states and self._states[tp].sent_next == offset
            }
        states = [self._states[tp] for tp in positions if tp in self._states]
        restarted = await self._restart_recreated(states)
        tps = [state.source for state in states if state.source not in restarted]
        if not tps:
            return
        beginnings = await self._consumer.beginning_offsets(tps)
        ends = await self._consumer.end_offsets(tps)
        epochs = {
            tp: self._states[tp].fetched_epoch
            for tp in tps
            if positions[tp] >= beginnings[tp] and self._states[tp].fetched_epoch >= 0
        }
        divergences = await leader_epoch_ends(self._consumer._client, epochs) if epochs else {}
        for tp in tps:
            state = self._states[tp]
            position = positions[tp]
            if position < beginnings[tp]:
                resume = beginnings[tp]
                lost = resume - position
                state.metrics.truncated_offsets += lost
                state.metrics.record_error(
                    ErrorKind.SOURCE_TRUNCATED,
                    f"offsets {position}..{resume - 1} deleted by source retention before they were copied",
                )
                log.warning(
                    "%s: source truncated: %d offsets lost (%d..%d), continuing at %d",
                    tp,
                    lost,
                    position,
                    resume - 1,
                    resume,
                    extra={"partition": tp},
                )
            elif tp in divergences and divergences[tp] < position:
                # The log was cut back below our position and written again (an unclean leader election): it
                # agrees with what was copied up to where the epoch of our last copy ends, and from there on
                # holds records never copied.
                resume = max(divergences[tp], beginnings[tp])
                state.metrics.record_error(
                    ErrorKind.SOURCE_DIVERGED,
                    f"the source log was truncated at offset {resume} by a leader change: offsets "
                    f"{resume}..{position - 1} copied earlier are on the target but no longer on the source; "
                    f"copying continues from offset {resume}",
                )
                log.warning(
                    "%s: source log diverged at %d (position was %d), continuing there",
                    tp,
                    resume,
                    position,
                    extra={"partition": tp},
                )
            else:
                # Where the log diverged is unknown (nothing copied under a known leader epoch, e.g. progress
                # written by an older Ferry): continue at its end and say that records may be missing.
                resume = ends[tp]
                state.metrics.record_error(
                    ErrorKind.SOURCE_TRUNCATED,
                    f"position {position} is beyond the source end {resume} and where the source log was truncated "
                    "is unknown: records written to it after the truncation and before offset "
                    f"{resume} may not have been copied",
                )
                log.warning(
                    "%s: position %d beyond source end %d, continuing at the end",
                    tp,
                    position,
                    resume,
                    extra={"partition": tp},
                )
            # Also when going back (diverged): applied behind the batches in flight, as the acknowledged position.
            self._advance_without_records(state, resume)
            self._consumer.seek(tp, resume)

    def _advance_without_records(self, state: PartitionState, offset: int) -> None:
        state.sent_next = offset
        if self.spec.exactly_once:
            self._progress_due(state.source)
            state.acked_next = offset
            state.acked_epoch = state.fetched_epoch
            state.metrics.next_source_offset = offset
            return
        state.pending.append(PendingBatch.position_only(offset, state.fetched_epoch))
        # Already resolved: applied now, behind any batch still in flight (whose acknowledgement drains it).
        self._drain_acks(state)

    async def _restart_recreated(self, states: list[PartitionState]) -> set[TopicPartition]:
        """Start anew the copies whose source or target topic was deleted and created again; returns them."""
        if not states:
            return set()
        source_ids, target_ids = await self._topic_ids([state.source for state in states])
        restarted: set[TopicPartition] = set()
        for state in states:
            if self._states.get(state.source) is not state:
                continue  # revoked meanwhile
            current = (source_ids.get(state.source.topic), target_ids.get(state.target.topic))
            why = _recreated(state.source, state.target, (state.source_topic_id, state.target_topic_id), current)
            if why is None:
                # Ids learnt for the first time (progress from an older Ferry, a broker that could not say).
                state.source_topic_id = state.source_topic_id or current[0]
                state.target_topic_id = state.target_topic_id or current[1]
                continue
            await self._restart(state, current, *why)
            restarted.add(state.source)
        return restarted

    async def _restart(
        self, state: PartitionState, ids: tuple[str | None, str | None], kind: ErrorKind, detail: str
    ) -> None:
        """Copy this partition anew from the beginning of its source log: whatever was copied or mapped belongs to
        a topic that is gone."""
        if not self.spec.exactly_once:
            await self._progress_written()
            await self._settle([state])
            for pending in state.pending:
                self._in_flight_bytes -= pending.size
            state.pending.clear()
            state.failed = None
        tp = state.source
        start = (await self._consumer.beginning_offsets([tp]))[tp]
        state.target_topic_id = None  # read again below: the target may have been recreated too
        target_end = (await self._target_probe.end_offsets([state.target]))[state.target]
        state.source_topic_id, state.target_topic_id = ids
        state.acked_next = state.sent_next = start
        state.acked_target_next = target_end
        state.committed_next = None  # progress is written anew, with the new ids
        state.fetched_epoch = state.acked_epoch = -1
        state.confirmed_generation = -1
        state.metrics.next_source_offset = start
        self._progress_due(tp)
        state.metrics.record_error(kind, f"{detail}; copying it again from the beginning (source offset {start})")
        log.warning("%s: %s; copying from offset %d", tp, detail, start, extra={"partition": tp})
        if self._sink is not None:
            self._sink.restart(tp)
        self._consumer.seek(tp, start)
        self._consumer.resume(tp)
        if self._in_flight_bytes <= self.options.max_in_flight_bytes:
            self._room.set()

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < self.options.housekeeping_interval_s:
            return
        self._last_housekeeping = now
        settled: list[tuple[PartitionState, int | None]] = []
        for state in self._states.values():
            end = self._consumer.last_stable_offset(state.source)
            if end is not None and end >= 0:
                state.metrics.source_end_offset = end
            # Exactly-once: a partition with records queued or in a transaction is left for a later turn.
            if not self._held_by_lane(state.source):
                settled.append((state, end))
        if now - self._last_topic_check >= self.options.topic_check_interval_s:
            self._last_topic_check = now
            await self._restart_recreated([state for state, _ in settled])
        for state, end in settled:
            if state.pending or state.failed is not None or self._produce_failed:
                # While a failure is recovered, a position past sent_next may hold fetched records that were
                # never sent: only the recovery's rewind may move this partition.
                continue
            if end is not None and end >= 0 and end <= state.sent_next:
                # The consumer never moves past the last stable offset its latest fetch reported: nothing to catch
                # up on (the common case of a quiet partition, answered without asking the consumer).
                continue
            # Transaction markers and aborted batches move the consumer's position without handing out
            # records: make that move part of the partition's progress so lag can reach zero.
            position = await self._consumer.position(state.source)
            if position > state.sent_next:
                self._advance_without_records(state, position)

    # ------------------------------------------------------------------ record conversion

    # ------------------------------------------------------------------ at-least-once

    async def _copy_pipelined(self, batches: dict[TopicPartition, list[Any]]) -> None:
        handed_over: set[TopicPartition] = set()
        for tp, records in batches.items():
            state = self._states.get(tp)
            if state is None or state.lease_lost:
                # Lost while this poll was handed over (the progress task checks leases too): it leaves the loop
                # at the next assignment change, and nothing more of it is written here.
                continue
            unconfirmed = state.confirmed_generation != self._producer_generation
            if unconfirmed and any(pending.records for pending in state.pending):
                # Records arrived while this partition's probe batch is still unacknowledged (an assignment
                # change resumed it): fetch them again once the probe is through. Only a batch with records
                # confirms the producer (and resumes the partition): waiting on a mere position advance (records
                # all filtered, a marker) would pause the partition for good.
                self._consumer.seek(tp, state.sent_next)
                self._consumer.pause(tp)
                continue
            position = await self._consumer.position(tp)
            reopen = None if unconfirmed else reopenable(self._batch_format, state)
            if reopen is not None:
                held = reopen[1]
                size_before = held.size
            built = build_batches(self._batch_format, state, records, position, reopen)
            if reopen is not None:
                # Records went into the batch the producer holds: it covers them now, and up to ``position``
                # when nothing else was built.
                self._in_flight_bytes += held.size - size_before
                if not built:
                    state.sent_next = held.next_source_offset
                    handed_over.add(tp)
                    continue
            if not built:
                self._advance_without_records(state, position)
                continue
            if unconfirmed and len(built) > 1:
                # A fresh producer id has no sequence state on the broker, so if its first batch to a
                # partition is rejected, the broker would accept the batches queued behind it and the target
                # would hold later records before earlier ones. One batch goes first; once it is acknowledged
                # the broker refuses any batch that follows a rejected one (OutOfOrderSequence).
                built = built[:1]
                position = built[0][1].next_source_offset
                self._consumer.seek(tp, position)
            if unconfirmed:
                self._consumer.pause(tp)
            for builder, pending in built:
                pending.generation = self._producer_generation
                try:
                    pending.future = await self._producer.send_batch(
                        builder, state.target.topic, partition=state.target.partition
                    )
                except KafkaError as exc:
                    self._mark_failed(state, exc)
                    # The consumer already moved past every partition of this poll: put the ones whose records
                    # were not all handed to the producer back where their copy stands, or they would be skipped.
                    for other in batches:
                        other_state = self._states.get(other)
                        if other not in handed_over and other_state is not None:
                            self._consumer.seek(other, other_state.sent_next)
                    return
                if not pending.source_offsets:
                    pending.source_offsets = None
                state.pending.append(pending)
                state.open_batch = (builder, pending) if type(builder) in _REOPENABLE else None
                self._in_flight_bytes += pending.size
                pending.future.add_done_callback(functools.partial(self._on_done, state))
            state.sent_next = position
            handed_over.add(tp)
        while self._in_flight_bytes > self.options.max_in_flight_bytes and not self._produce_failed:
            self._room.clear()
            await self._room.wait()

    def _mark_failed(self, state: PartitionState, exc: BaseException) -> None:
        if state.failed is None:
            state.failed = exc
            state.metrics.record_error(_error_kind(exc), f"{type(exc).__name__}: {exc}")
            log.warning(
                "copy of %s to %s failed: %s", state.source, state.target, exc, extra={"partition": state.source}
            )
        self._produce_failed = True
        self._room.set()

    def _on_done(self, state: PartitionState, _future: asyncio.Future[Any]) -> None:
        self._drain_acks(state)

    def _drain_acks(self, state: PartitionState) -> None:
        """Advance the partition's acknowledged position through every leading completed batch, in order."""
        if state.lease_lost:
            # Abandoned: its batches still in flight only release their room; their outcome is its new owner's
            # business (a failure here must not restart the producer of the partitions that copy on).
            while state.pending and state.pending[0].future.done():
                self._in_flight_bytes -= state.pending.popleft().size
            if self._in_flight_bytes <= self.options.max_in_flight_bytes:
                self._room.set()
            return
        ack_ms = time.time() * 1000
        while state.pending and state.failed is None and state.pending[0].future.done():
            pending = state.pending.popleft()
            self._in_flight_bytes -= pending.size
            future = pending.future
            if future.cancelled():
                self._mark_failed(state, asyncio.CancelledError("send cancelled"))
                break
            exc = future.exception()
            if exc is not None:
                self._mark_failed(state, exc)
                break
            acknowledge(state, pending, future.result().offset if pending.records else 0, ack_ms, self._sink)
            if pending.records and state.confirmed_generation != pending.generation:
                state.confirmed_generation = pending.generation
                if pending.generation == self._producer_generation and state.source in self._states:
                    self._consumer.resume(state.source)
        if self._in_flight_bytes <= self.options.max_in_flight_bytes:
            self._room.set()

    async def _settle(self, states: Iterable[PartitionState]) -> None:
        """Wait until every batch sent for these partitions has succeeded or failed."""
        states = list(states)
        futures = [pending.future for state in states for pending in state.pending]
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)
        for state in states:
            self._drain_acks(state)

    def _write_progress_aside(self) -> None:
        """Start a progress write in a task of its own unless one is under way. Each write first stores the offset
        map in PostgreSQL (the map must cover every position progress claims), and the copy loop must not stand
        still meanwhile: at 5,000 partitions a worker's flush took 1-6 s under load, and records waited for it."""
        task = self._progress_task
        if task is not None:
            if not task.done():
                return
            self._progress_task = None
            task.result()  # an unexpected error stops the copier, as it did when progress was written in the loop
        self._last_progress = time.monotonic()
        self._progress_task = asyncio.create_task(
            self._commit_progress(list(self._states.values())), name=f"progress {self.spec.replicator_id}"
        )
        self._progress_task.add_done_callback(self._progress_ended)

    def _progress_ended(self, task: asyncio.Task[None]) -> None:
        # Said at once, also when the loop stops before it looks at the task again.
        if not task.cancelled() and task.exception() is not None:
            log.error("progress write of %s failed: %r", self.spec.replicator_id, task.exception())

    async def _progress_written(self) -> None:
        """Wait for the progress write under way, if any: positions are about to be rewound or the producer
        replaced, and a write computed before that must not land after it."""
        task = self._progress_task
        if task is not None and not task.done():
            await asyncio.wait({task})

    async def _recover(self) -> None:
        """After a failed send: keep what was acknowledged, rewind every partition to it, new producer."""
        if self.spec.exactly_once:
            await self._recover_lanes()
            return
        await self._progress_written()
        states = list(self._states.values())
        await self._settle(states)
        for state in states:
            for pending in state.pending:
                self._in_flight_bytes -= pending.size
            state.pending.clear()
            state.failed = None
            state.sent_next = state.acked_next
            state.fetched_epoch = state.acked_epoch
            self._consumer.seek(state.source, state.acked_next)
            self._consumer.resume(state.source)
        await self._restart_producer(self._lanes[0])
        self._produce_failed = False
        await asyncio.sleep(self.options.retry_backoff_s)

    async def _restart_producer(self, lane: _Lane) -> None:
        old, lane.producer = lane.producer, None
        if old is not None:
            try:
                await old.stop()
            except KafkaError as exc:
                log.warning("stopping the failed producer: %s", exc)
        await self._start_producer(lane)

    async def _commit_progress(self, states: list[PartitionState]) -> None:
        """Write progress for partitions whose acknowledged position moved (at-least-once mode)."""
        async with self._progress_lock:
            self._last_progress = time.monotonic()
            dirty = [s for s in states if s.acked_next != s.committed_next and not s.lease_lost]
            if not dirty or self._producer is None:
                return
            values = [(state, state.progress()) for state in dirty]
            if self._sink is not None:
                await self._sink.before_progress(self.positions)
            # Checked after the sink's await, right before writing: a pause during it cannot outlive the lease.
            lost = await self._lost_leases(dirty)
            if lost:
                self._abandon(lost)
                values = [(state, progress) for state, progress in values if not state.lease_lost]
                if not values:
                    return
            try:
                futures = [
                    await self._send_progress(self._producer, state.source, progress) for state, progress in values
                ]
                await asyncio.gather(*futures)
            except KafkaError as exc:
                for state, _ in values:
                    state.metrics.record_error(ErrorKind.PROGRESS_COMMIT_FAILED, f"{type(exc).__name__}: {exc}")
                log.warning("progress write failed (will retry): %s", exc)
                if isinstance(exc, OutOfOrderSequenceNumber):
                    # This producer's numbering of a progress partition is broken for good: every later write
                    # would fail the same way. Recover as from a failed send, with a new producer.
                    self._produce_failed = True
                return
            for state, progress in values:
                state.committed_next = progress.next_source_offset

    async def _send_progress(
        self, producer: Any, source: TopicPartition, progress: PartitionProgress
    ) -> asyncio.Future[Any]:
        """Send one progress record to the partition its key hashes to, known to the write gate while in flight."""
        key = progress_key(self.spec.replicator_id, source)
        partitions = await producer.partitions_for(self._store.topic)
        # The key's partition, hashed once per partition copied (murmur2 in Python costs more than the send).
        known = self._progress_partitions.get(source)
        if known is None or known[0] != len(partitions):
            ordered = sorted(partitions)
            known = (len(partitions), DefaultPartitioner()(key, ordered, ordered))
            self._progress_partitions[source] = known
        partition = known[1]
        in_flight = self._progress_in_flight.setdefault(partition, Counter())
        in_flight[source] += 1

        def done(_: object = None) -> None:
            in_flight[source] -= 1
            if in_flight[source] <= 0:
                del in_flight[source]

        try:
            future: asyncio.Future[Any] = await producer.send(
                self._store.topic, key=key, value=encode_progress(progress), partition=partition
            )
        except BaseException:
            done()
            raise
        future.add_done_callback(done)
        return future

    def _allows(self, target: TopicPartition) -> bool:
        """The write gate of one batch of a produce request: its partitions' leases must all hold."""
        gate = self._write_gate
        if gate is None:
            return True
        if target.topic == self._store.topic:
            sources = frozenset(self._progress_in_flight.get(target.partition, ()))
        else:
            source = self._sources_by_target.get(target)
            sources = frozenset() if source is None else frozenset({source})
        # A batch of no known partition belongs to nobody: refused (the gate would pass an empty set).
        return bool(sources) and gate(sources)

    async def _lost_leases(self, states: list[PartitionState]) -> list[PartitionState]:
        """Of these partitions about to be written (also revoked ones writing their final progress), the ones whose
        lease the check refuses. All of them are asked at once; each alone only when that answer is no."""
        if self._lease_check is None or not states:
            return []
        if await self._lease_check(frozenset(state.source for state in states)):
            return []
        return [state for state in states if not await self._lease_check(frozenset({state.source}))]

    def _abandon(self, states: list[PartitionState]) -> None:
        """Their leases are gone: nothing more of them is written here, and they leave the assignment (at the next
        turn of the copy loop). Another worker may own them now and copies on from the progress it reads; what
        this copier sent after its last progress is copied again (at least once) or was never committed
        (exactly-once). The other partitions copy on: a lease lapsing on a few partitions of thousands must not
        send every one of them back to its last progress."""
        lost = [state for state in states if not state.lease_lost]
        if not lost:
            return
        for state in lost:
            state.lease_lost = True
            state.open_batch = None
            # Batches that completed but were not drained (behind a failed one) release their room now: the state
            # may leave the loop before a recovery, which would otherwise have cleared them.
            self._drain_acks(state)
            state.metrics.record_error(ErrorKind.LEASE_LOST, "lease check refused further writes; copy stopped here")
            self._retired[state.source] = state.metrics.snapshot()
        assigned = {state.source for state in lost if self._states.get(state.source) is state}
        if assigned:
            self._changes.append(_AssignmentChange({}, assigned, asyncio.get_running_loop().create_future()))
            self._wake.set()
        log.warning(
            "copier for %s: lease lost for %d partitions (%s); they stop here, the other %d copy on",
            self.spec.replicator_id,
            len(lost),
            ", ".join(f"{state.source.topic}-{state.source.partition}" for state in lost[:5])
            + (", ..." if len(lost) > 5 else ""),
            len(self._states) - len(assigned),
        )

    # ------------------------------------------------------------------ exactly-once

    # Each lane commits a transaction of its own partitions' records and their progress while the copy loop fetches
    # on and the other lanes commit theirs: a transaction waits on round trips (AddPartitionsToTxn, the produce
    # requests, the progress write, EndTxn), and aiokafka keeps one produce request in flight per broker and
    # producer, so one producer alone leaves the target and this process mostly idle.

    def _held_by_lane(self, tp: TopicPartition) -> bool:
        lane = self._lane_of.get(tp)
        return lane is not None and lane.holds_up(tp)

    def _assign_lanes(self, removed: Iterable[TopicPartition], added: Iterable[TopicPartition]) -> None:
        """Called with no transaction under way: a partition joins the lane with the fewest partitions."""
        for tp in removed:
            lane = self._lane_of.pop(tp, None)
            if lane is not None:
                lane.partitions.discard(tp)
        for tp in added:
            if tp in self._lane_of:
                continue
            lane = min(self._lanes, key=lambda candidate: len(candidate.partitions))
            lane.partitions.add(tp)
            lane.progress_due = True
            self._lane_of[tp] = lane

    def _progress_due(self, tp: TopicPartition) -> None:
        lane = self._lane_of.get(tp)
        if lane is not None:
            lane.progress_due = True

    async def _queue_for_lanes(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batches.items():
            state = self._states.get(tp)
            lane = self._lane_of.get(tp)
            if state is None or state.lease_lost or lane is None or lane.halted:
                # A halted lane's partitions go back to their last commit before they are fetched for again.
                continue
            position = await self._consumer.position(tp)
            queued = lane.queued.get(tp)
            if queued is None:
                lane.queued[tp] = (records, position)
            else:
                queued[0].extend(records)
                lane.queued[tp] = (queued[0], position)
            lane.queued_batches += len(records)
            lane.queued_bytes += sum(map(forwarding.fetched_size, records))
        await self._dispatch_lanes()

    def _lane_needs_progress(self, lane: _Lane) -> bool:
        """A partition of the lane moved without records (a new one, transaction markers) and its progress says less."""
        if not lane.progress_due:
            return False
        for tp in lane.partitions:
            state = self._states.get(tp)
            if state is not None and not state.lease_lost and state.acked_next != state.committed_next:
                return True
        lane.progress_due = False
        return False

    async def _dispatch_lanes(self) -> None:
        """Start a transaction loop on every idle lane that has something to commit."""
        # A lane's loop that ended with an error (fenced) is answered first, never replaced by a new one.
        self._raise_if_lane_failed()
        for index, lane in enumerate(self._lanes):
            if self._stopping or self._produce_failed or self._changes:
                return
            if lane.busy or lane.halted or lane.broken:
                continue
            if not lane.queued and not self._lane_needs_progress(lane):
                continue
            if lane.producer is None:
                if not await self._lane_still_held(lane):
                    lane.take()  # records of partitions this copier no longer owns: never written here
                    continue
                try:
                    await self._start_producer(lane)
                except KafkaError as exc:
                    log.warning("exactly-once producer %s did not start: %s", lane.transactional_id, exc)
                    lane.broken = lane.halted = True
                    self._produce_failed = True
                    return
            lane.task = asyncio.create_task(
                self._lane_loop(lane), name=f"ferry-transactions-{self.spec.replicator_id}-{index}"
            )

    async def _lane_loop(self, lane: _Lane) -> None:
        """Transactions one after the other, each taking everything queued for the lane, for as long as there is
        something to commit and the copy loop does not need the lanes to stand still."""
        while not (lane.halted or self._stopping or self._changes or self._produce_failed):
            if not lane.queued and not self._lane_needs_progress(lane):
                return
            lane.transaction_bytes = lane.queued_bytes
            batches = lane.take()
            self._lane_room.set()
            lane.in_transaction = frozenset(batches)
            try:
                await self._copy_in_transaction(lane, batches)
            finally:
                lane.in_transaction = frozenset()
                lane.transaction_bytes = 0
                self._lane_room.set()  # room for more bytes

    async def _wait_for_lanes(self) -> None:
        """Enough is queued or held: wait until a lane takes its queue, ends a transaction or ends its loop."""
        self._lane_room.clear()  # before the dispatch: a lane may take its queue during it
        await self._dispatch_lanes()
        running = self._running_lanes()
        if not running:
            return
        room = asyncio.ensure_future(self._lane_room.wait())
        try:
            await asyncio.wait([*running, room], return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()
        self._raise_if_lane_failed()

    def _running_lanes(self) -> list[asyncio.Task[None]]:
        return [lane.task for lane in self._lanes if lane.task is not None and not lane.task.done()]

    def _raise_if_lane_failed(self) -> None:
        """A lane's loop ends with an error only when the copier must stop (fenced, a bug): the copy loop raises it."""
        failures: list[BaseException] = []
        for lane in self._lanes:
            task = lane.task
            if task is not None and task.done():
                lane.task = None
                if not task.cancelled() and task.exception() is not None:
                    failures.append(task.exception())  # type: ignore[arg-type]
        if failures:
            # Fenced lanes all say so; the first tells.
            raise failures[0]

    def _rewind_halted_lanes(self) -> None:
        for lane in self._lanes:
            if lane.halted and not lane.busy and not lane.broken:
                self._rewind(lane)

    def _rewind(self, lane: _Lane) -> None:
        """Put the lane's partitions back where their last commit left them; what was queued is fetched again."""
        lane.take()
        lane.halted = False
        for tp in lane.partitions:
            state = self._states.get(tp)
            if state is not None:
                state.sent_next = state.acked_next
                state.fetched_epoch = state.acked_epoch
                self._consumer.seek(tp, state.acked_next)

    async def _quiesce_lanes(self) -> None:
        """Let every transaction under way end (the lane loops stop after it), then put every partition back at its
        last commit: nothing queued, nothing in flight."""
        running = self._running_lanes()
        if running:
            await asyncio.wait(running)
        self._raise_if_lane_failed()
        for lane in self._lanes:
            self._rewind(lane)

    async def _drain_lanes(self) -> None:
        """Commit everything queued (a lane whose transaction fails is rewound instead) and let every lane stop. An
        assignment change cuts it short: the lanes are quiesced for it and what was queued is fetched again."""
        while not (self._stopping or self._changes):
            self._raise_if_lane_failed()
            self._rewind_halted_lanes()
            await self._dispatch_lanes()
            running = self._running_lanes()
            if not running:
                return
            await asyncio.wait(running)

    async def _recover_lanes(self) -> None:
        """A lane's producer is unusable: with every lane still, give it a new one."""
        await self._quiesce_lanes()
        for lane in self._lanes:
            if lane.broken:
                if not await self._lane_still_held(lane):
                    raise LeasesLapsed(
                        f"the leases of transaction lane {lane.transactional_id} lapsed while its producer was "
                        "broken; a new producer would fence their new owner's"
                    )
                await self._restart_producer(lane)
                lane.broken = False
        self._produce_failed = False
        await asyncio.sleep(self.options.retry_backoff_s)

    async def _lane_still_held(self, lane: _Lane) -> bool:
        """Whether the copier still holds a partition of this lane, asked before the lane's producer is initialised.

        Initialising a transactional producer fences every other producer with its transactional id, and a lane's
        id names the unit of work's owner, not this process: a copier paused past its leases (GC, SIGSTOP, a frozen
        VM) shares the ids of its successor when that successor is the same worker started again. Starting a lane
        then would fence the successor's lane; so the lease check is asked first, and partitions it refuses are
        abandoned as a refused transaction would abandon them."""
        if lane.transactional_id is None or self._lease_check is None:
            return True
        states = [
            state for tp in lane.partitions if (state := self._states.get(tp)) is not None and not state.lease_lost
        ]
        lost = await self._lost_leases(states)
        if lost:
            self._abandon(lost)
        return len(lost) < len(states)

    async def _lanes_stopped(self) -> None:
        """The copy loop ends: a stop lets the transactions under way commit; a failure cancels them (a transaction
        left open is aborted by the next producer with its id, or by the fencing of the partitions' next owner)."""
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        if not tasks:
            return
        if not self._stopping:
            for task in tasks:
                task.cancel()
        await asyncio.wait(tasks)
        for lane in self._lanes:
            lane.task = None
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.warning("transactions of %s ended with: %r", self.spec.replicator_id, task.exception())

    async def _copy_in_transaction(self, lane: _Lane, batches: dict[TopicPartition, tuple[list[Any], int]]) -> None:
        touched: list[tuple[PartitionState, list[PendingBatch], int]] = []
        producer = lane.producer
        try:
            await producer.begin_transaction()
            add_to_transaction(producer, self._transaction_partitions(batches))
            touched = await self._send_side_by_side(producer, batches)
            await _all_or_first_error([p.future for _, sent, _ in touched for p in sent])
            progress: dict[TopicPartition, PartitionProgress] = {}
            for state, sent, position in touched:
                target_next = state.acked_target_next
                for pending in sent:
                    target_next = pending.future.result().offset + pending.records
                progress[state.source] = PartitionProgress(
                    state.target.topic,
                    position,
                    target_next,
                    now_ms(),
                    source_topic_id=state.source_topic_id,
                    target_topic_id=state.target_topic_id,
                    source_leader_epoch=None if state.fetched_epoch < 0 else state.fetched_epoch,
                )
            for tp in lane.partitions if lane.progress_due else ():
                quiet = self._states.get(tp)
                if (
                    quiet is not None
                    and tp not in progress
                    and not quiet.lease_lost
                    and quiet.acked_next != quiet.committed_next
                ):
                    progress[tp] = quiet.progress()
            lane.in_transaction = lane.in_transaction.union(progress)
            if self._sink is not None:
                # The mappings are stored before the commit that makes them visible (as at-least-once stores
                # them before its progress): a worker killed between the two leaves no committed copy unmapped.
                # If the transaction aborts instead, its re-copy replaces these mappings.
                for state, sent, _ in touched:
                    for pending in sent:
                        if pending.records and pending.source_offsets:
                            base = pending.future.result().offset
                            self._sink.record_batch(
                                BatchMapping(state.source, state.target, pending.source_offsets, base)
                            )
                await self._sink.before_progress(self.positions)
            futures = [await self._send_progress(producer, tp, value) for tp, value in progress.items()]
            await _all_or_first_error(futures)
            lost = await self._lost_leases([self._states[tp] for tp in progress if tp in self._states])
            if lost:
                # One of its partitions has another owner now: the transaction must not commit. The lane's other
                # partitions copy this stretch again in its next one.
                await self._abort(lane)
                self._abandon(lost)
                return
            await producer.commit_transaction()
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            lane.halted = True  # never written with again; the copy loop raises this when it sees the task end
            raise CopierFenced(f"transactional id {lane.transactional_id} was fenced: {exc}") from exc
        except KafkaError as exc:
            await self._transaction_failed(lane, exc, [state for state, _, _ in touched])
            return
        ack_ms = time.time() * 1000
        for state, sent, position in touched:
            for pending in sent:
                # The sink has these mappings already (above, before the commit).
                acknowledge(state, pending, pending.future.result().offset if pending.records else 0, ack_ms, None)
            state.acked_next = state.sent_next = position
            state.acked_epoch = state.fetched_epoch
            state.metrics.next_source_offset = position
        for tp, value in progress.items():
            self._states[tp].committed_next = value.next_source_offset

    async def _send_side_by_side(
        self, producer: Any, batches: dict[TopicPartition, tuple[list[Any], int]]
    ) -> list[tuple[PartitionState, list[PendingBatch], int]]:
        """Hand every partition's batches to the lane's producer, the partitions side by side.

        aiokafka queues one batch per partition until a request takes it, and sends one request at a time to each
        broker. Partition after partition, every request of a transaction carried one batch, a round trip per batch;
        side by side, each request carries a batch of every partition of the lane (docs/performance.md, "2026-12-03,
        sixth": a lane's send phase 244 -> 139 ms). Each partition's batches still go in order."""

        async def send(state: PartitionState, records: list[Any], position: int) -> list[PendingBatch]:
            sent: list[PendingBatch] = []
            for builder, pending in build_batches(self._batch_format, state, records, position):
                pending.future = await producer.send_batch(
                    builder, state.target.topic, partition=state.target.partition
                )
                sent.append(pending)
            return sent

        work = [
            (state, records, position)
            for tp, (records, position) in batches.items()
            if (state := self._states.get(tp)) is not None and not state.lease_lost
        ]
        jobs = [asyncio.ensure_future(send(*job)) for job in work]
        try:
            sent = await asyncio.gather(*jobs)  # raises the first error at once
        except BaseException:
            # The transaction is aborted: nothing more of it is handed over.
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise
        return [(state, handed, position) for (state, _, position), handed in zip(work, sent, strict=True)]

    def _transaction_partitions(self, batches: dict[TopicPartition, Any]) -> list[TopicPartition]:
        """The target partitions a transaction over these polled partitions writes: their data and, where already
        known, the progress partition of each."""
        written: list[TopicPartition] = []
        for tp in batches:
            state = self._states.get(tp)
            if state is None:
                continue
            written.append(state.target)
            known = self._progress_partitions.get(tp)
            if known is not None:
                written.append(TopicPartition(self._store.topic, known[1]))
        return written

    async def _transaction_failed(self, lane: _Lane, exc: KafkaError, states: list[PartitionState]) -> None:
        for state in states or [self._states[tp] for tp in lane.partitions if tp in self._states]:
            state.metrics.record_error(ErrorKind.TRANSACTION_FAILED, f"{type(exc).__name__}: {exc}")
        log.warning("transaction for %s failed, retrying from the last commit: %s", self.spec.replicator_id, exc)
        await self._abort(lane)
        if lane.broken:
            return
        await asyncio.sleep(self.options.retry_backoff_s)

    async def _abort(self, lane: _Lane) -> None:
        """Abort the lane's open transaction; the copy loop puts its partitions back where their last commit left
        them before it fetches for them again."""
        lane.halted = True
        try:
            await lane.producer.abort_transaction()
        except KafkaError as abort_exc:
            log.warning("abort failed, the producer will be replaced: %s", abort_exc)
            lane.broken = True
            self._produce_failed = True


async def _closed(closing: Awaitable[object], what: str) -> None:
    """Close one client. aiokafka's consumer re-raises the CancelledError of a fetch it cancels on close when that
    fetch was timing out (seen on a worker woken from SIGSTOP); that is not a cancellation of ours, and letting it
    out would end the fleet's work loop. A real cancellation of this task still propagates."""
    try:
        await closing
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("closing a %s surfaced a CancelledError of its own; it is closed", what)
