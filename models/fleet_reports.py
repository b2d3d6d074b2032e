"""What workers report to the API through Redis: the contract between ``workers/`` and ``api/``.

Workers write, the API reads, and both go through the types here, so a field is named once. Every report carries
a ``version``; a reader ignores a report of another version (a worker of another release during a rolling
upgrade) rather than misreading it, and that report expires on its own after ``REPORT_TTL_SECONDS``.

- ``ferry:metrics:<replicator id>``: a hash, field ``<topic>:<partition>``, value one ``PartitionReport``;
- ``ferry:status:<replicator id>``: a hash written by the replicator's metadata unit (``StatusField``);
- ``ferry:worker:<worker id>``: one ``WorkerReport``, what that worker runs right now.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

METRICS_KEY = "ferry:metrics:{replicator_id}"
STATUS_KEY = "ferry:status:{replicator_id}"
WORKER_KEY = "ferry:worker:{worker_id}"
# Reports of a worker that stopped reporting disappear after this long.
REPORT_TTL_SECONDS = 30
REPORT_VERSION = 1


class StatusField(enum.StrEnum):
    """The fields of a replicator's status hash (values are JSON)."""

    CLUSTER_PING = "clusterPing"  # {cluster alias: 1 answered | 0 did not}
    TOPICS = "topics"  # {source topic: target topic}
    TOPIC_ERRORS = "topicErrors"  # {source topic: reason}
    GROUP_SYNC = "groupSync"  # the group sync summary (workers/fleet/groups.py)
    AUTH_FAILURES = "authFailures"  # passes a cluster refused the credentials or TLS handshake of (integer)
    REPORTED_AT_MS = "reportedAtMs"  # plain integer


@dataclass(frozen=True)
class PartitionReport:
    """One source partition's replication as its owner worker last measured it.

    ``lag_records``: the source's last stable offset minus the next source offset whose copy the target
    acknowledged; ``latency_ms_*``: target acknowledgement time minus the record's timestamp; rates are since the
    worker's previous report of the partition.
    """

    VERSION: ClassVar[int] = REPORT_VERSION

    source_topic: str
    partition: int
    target_topic: str
    owner: str
    epoch: int
    reported_at_ms: int
    health: str
    health_detail: str = ""
    records_copied: int = 0
    bytes_copied: int = 0
    records_filtered: int = 0
    next_source_offset: int | None = None
    source_end_offset: int | None = None
    lag_records: int | None = None
    latency_ms_last: float | None = None
    latency_ms_max_recent: float | None = None
    last_copied_timestamp_ms: int | None = None
    truncated_offsets: int = 0
    redelivered_records: int = 0
    records_per_second: float = 0.0
    bytes_per_second: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def field_name(self) -> str:
        """Its field in the replicator's metrics hash."""
        return partition_field(self.source_topic, self.partition)

    def to_json(self) -> str:
        # Its fields as they are (``errors`` is the one container, and JSON needs no copy of it): ``asdict`` deep
        # copies every field, and at 5,000 partitions per worker a report each 5 s made it a seventh of a
        # worker's samples (py-spy, 2026-12-02); this is 7x cheaper and writes the same text.
        return json.dumps({"version": self.VERSION, **vars(self)}, separators=(",", ":"))

    @staticmethod
    def health_markers(healths: Iterable[str]) -> tuple[bytes, ...]:
        """What ``to_json`` writes for each of these healths, for ``may_have_health``."""
        return tuple(json.dumps({"health": h}, separators=(",", ":"))[1:-1].encode() for h in healths)

    @staticmethod
    def may_have_health(raw: bytes | str, markers: tuple[bytes, ...]) -> bool:
        """False when the report's text cannot hold one of the healths ``markers`` stand for (a substring test
        in C): a pass over 10,000 reports that looks for a few blocked partitions parses only the candidates."""
        text = raw if isinstance(raw, bytes) else raw.encode()
        return any(marker in text for marker in markers)

    @classmethod
    def from_json(cls, raw: bytes | str) -> PartitionReport | None:
        """The report, or None when it is of another version or not a report at all."""
        data = _versioned(raw, cls.VERSION)
        if data is None:
            return None
        known = _REPORT_FIELDS
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError:
            return None


# Read once: ``dataclasses.fields`` per report was 8% of reading 1,000 replicators' reports for /metrics (cProfile).
_REPORT_FIELDS = frozenset(f.name for f in fields(PartitionReport))


def _versioned(raw: bytes | str, version: int) -> dict[str, Any] | None:
    """The JSON object of a report of this version, or None."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("version") != version:
        return None
    return data


def partition_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def parse_partition_field(name: str) -> tuple[str, int]:
    topic, _, partition = name.rpartition(":")
    return topic, int(partition)


@dataclass(frozen=True)
class WorkerReport:
    """What one worker runs right now, per replicator: lets operators (and tests) see that a stopped replicator
    left no copier behind."""

    VERSION: ClassVar[int] = REPORT_VERSION

    worker_id: str
    reported_at_ms: int
    # replicator id -> {"partitions": copy units held, "metadata": whether it runs the metadata unit}
    replicators: dict[str, dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps({"version": self.VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerReport | None:
        data = _versioned(raw, cls.VERSION)
        if data is None:
            return None
        try:
            return cls(str(data["worker_id"]), int(data["reported_at_ms"]), dict(data["replicators"]))
        except (KeyError, TypeError, ValueError):
            return None
