"""The typed replication spec: what to copy and how, built from the MSK ``replicationInfo`` JSON shape."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROGRESS_TOPIC = "__ferry_progress"
PROVENANCE_HEADER = "__ferry"
INTERNAL_TOPIC_PREFIX = "__"


class TopicNaming(enum.StrEnum):
    PREFIXED_WITH_SOURCE_CLUSTER_ALIAS = "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"
    IDENTICAL = "IDENTICAL"


class StartingPosition(enum.StrEnum):
    LATEST = "LATEST"
    EARLIEST = "EARLIEST"


class TargetCompression(enum.StrEnum):
    NONE = "NONE"
    GZIP = "GZIP"
    SNAPPY = "SNAPPY"
    LZ4 = "LZ4"
    ZSTD = "ZSTD"

    @property
    def producer_codec(self) -> str | None:
        """The aiokafka ``compression_type`` value."""
        return None if self is TargetCompression.NONE else self.value.lower()

    @property
    def batch_attribute(self) -> int:
        """The codec id in bits 0-2 of a record batch's attributes."""
        return {"NONE": 0, "GZIP": 1, "SNAPPY": 2, "LZ4": 3, "ZSTD": 4}[self.value]


def _compile_all(patterns: tuple[str, ...], what: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"{what}: {pattern!r} is not a valid regular expression: {exc}") from exc
    return tuple(compiled)


@dataclass(frozen=True)
class ReplicationSpec:
    """One replication flow from a source cluster to a target cluster.

    ``created_at_ms`` anchors startingPosition LATEST: a partition without progress starts at its first record
    produced at or after this time, so partitions and topics that appear after the replicator was created are
    copied from their first record instead of losing what was written before they were detected.
    """

    replicator_id: str
    source_alias: str
    target_alias: str
    topics_to_replicate: tuple[str, ...]
    topics_to_exclude: tuple[str, ...] = ()
    copy_topic_configurations: bool = True
    copy_access_control_lists: bool = True
    detect_and_copy_new_topics: bool = True
    starting_position: StartingPosition = StartingPosition.LATEST
    topic_naming: TopicNaming = TopicNaming.PREFIXED_WITH_SOURCE_CLUSTER_ALIAS
    target_compression: TargetCompression = TargetCompression.NONE
    exactly_once: bool = False
    created_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    _include: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _exclude: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.replicator_id:
            raise ValueError("replicator_id must not be empty")
        if not self.source_alias or not self.target_alias:
            raise ValueError("source_alias and target_alias must not be empty")
        if self.source_alias == self.target_alias:
            raise ValueError("source and target aliases must differ: loop prevention relies on them")
        object.__setattr__(self, "_include", _compile_all(self.topics_to_replicate, "topicsToReplicate"))
        object.__setattr__(self, "_exclude", _compile_all(self.topics_to_exclude, "topicsToExclude"))

    @classmethod
    def from_replication_info(
        cls,
        info: Mapping[str, Any],
        source_alias: str,
        target_alias: str,
        replicator_id: str,
        *,
        exactly_once: bool = False,
        created_at_ms: int | None = None,
    ) -> ReplicationSpec:
        """Build from one ``replicationInfoList`` entry as the API stores it (camelCase keys)."""
        topic_replication: Mapping[str, Any] = info.get("topicReplication") or {}
        starting = (topic_replication.get("startingPosition") or {}).get("type") or "LATEST"
        naming = (topic_replication.get("topicNameConfiguration") or {}).get(
            "type"
        ) or "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"
        extra: dict[str, Any] = {}
        if created_at_ms is not None:
            extra["created_at_ms"] = created_at_ms
        return cls(
            replicator_id=replicator_id,
            source_alias=source_alias,
            target_alias=target_alias,
            topics_to_replicate=tuple(topic_replication.get("topicsToReplicate") or ()),
            topics_to_exclude=tuple(topic_replication.get("topicsToExclude") or ()),
            copy_topic_configurations=bool(topic_replication.get("copyTopicConfigurations", True)),
            copy_access_control_lists=bool(topic_replication.get("copyAccessControlListsForTopics", True)),
            detect_and_copy_new_topics=bool(topic_replication.get("detectAndCopyNewTopics", True)),
            starting_position=StartingPosition(starting),
            topic_naming=TopicNaming(naming),
            target_compression=TargetCompression(info.get("targetCompressionType") or "NONE"),
            exactly_once=exactly_once,
            **extra,
        )

    def target_topic(self, source_topic: str) -> str:
        if self.topic_naming is TopicNaming.IDENTICAL:
            return source_topic
        return f"{self.source_alias}.{source_topic}"

    def is_replica_of_target(self, source_topic: str) -> bool:
        """A topic that this flow's target cluster is the origin of (PREFIXED naming): copying it back loops."""
        return source_topic.startswith(f"{self.target_alias}.")

    def should_replicate(self, source_topic: str) -> bool:
        """Whether a source topic is in scope: included, not excluded, not internal, not a replica of the target."""
        if source_topic.startswith(INTERNAL_TOPIC_PREFIX):
            return False
        if self.topic_naming is TopicNaming.PREFIXED_WITH_SOURCE_CLUSTER_ALIAS and self.is_replica_of_target(
            source_topic
        ):
            return False
        if not any(pattern.fullmatch(source_topic) for pattern in self._include):
            return False
        return not any(pattern.fullmatch(source_topic) for pattern in self._exclude)
