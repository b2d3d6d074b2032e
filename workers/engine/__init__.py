"""Ferry's replication engine: plain asyncio + aiokafka, no Celery, FastAPI, SQLAlchemy or models imports.

Parts the fleet drives separately: ``TopicSynchronizer`` (topic/partition/config sync),
``PartitionCopier`` (copies an assignable set of source partitions), ``ProgressStore`` (durable progress on
the target). ``Replicator`` combines them for a single process (CLI, tests, benchmarks).
"""

from workers.engine.connection import ClusterConnection, client_kwargs
from workers.engine.copier import (
    BatchMapping,
    CopierError,
    CopierFenced,
    CopierOptions,
    LeaseCheck,
    LeaseLost,
    OffsetMapSink,
    PartitionCopier,
    TargetPartitionMissing,
)
from workers.engine.metrics import ErrorKind, Health, PartitionStats
from workers.engine.progress import PartitionProgress, ProgressStore
from workers.engine.replicator import Replicator, ReplicatorStats
from workers.engine.spec import (
    PROGRESS_TOPIC,
    PROVENANCE_HEADER,
    ReplicationSpec,
    StartingPosition,
    TargetCompression,
    TopicNaming,
)
from workers.engine.topics import ReplicatedTopic, SyncReport, TopicSynchronizer

__all__ = [
    "PROGRESS_TOPIC",
    "PROVENANCE_HEADER",
    "BatchMapping",
    "ClusterConnection",
    "CopierError",
    "CopierFenced",
    "CopierOptions",
    "ErrorKind",
    "Health",
    "LeaseCheck",
    "LeaseLost",
    "OffsetMapSink",
    "PartitionCopier",
    "PartitionProgress",
    "PartitionStats",
    "ProgressStore",
    "ReplicatedTopic",
    "ReplicationSpec",
    "Replicator",
    "ReplicatorStats",
    "StartingPosition",
    "SyncReport",
    "TargetCompression",
    "TargetPartitionMissing",
    "TopicNaming",
    "TopicSynchronizer",
    "client_kwargs",
]
