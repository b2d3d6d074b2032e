"""The typed replication spec: what to copy and how, read from the MSK ``replicationInfo`` JSON shape.

This is the one place a stored ``replicationInfo`` is read: the fleet builds its runtime from it, group sync
takes its consumer group settings from it, and the API's offset endpoints take the target-topic naming rule
from it. It imports nothing but the standard library and RE2, so the API can use it without loading the copier.
Where the stored shape leaves a member out, the default is the dataclass field's default below, which is MSK's.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import re2

PROGRESS_TOPIC = "__ferry_progress"
PROVENANCE_HEADER = "__ferry"
# Kafka's internal topics and groups (and Ferry's own progress topic) are never replicated.
INTERNAL_PREFIX = "__"


class TopicNaming(enum.StrEnum):
    PREFIXED_WITH_SOURCE_CLUSTER_ALIAS = "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"
    IDENTICAL = "IDENTICAL"


class StartingPosition(enum.StrEnum):
    LATEST = "LATEST"
    EARLIEST = "EARLIEST"


class OffsetSyncMode(enum.StrEnum):
    LEGACY = "LEGACY"
    ENHANCED = "ENHANCED"


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


# RE2 options of every pattern (the API checks patterns with the same ones: models/patterns.py).
PATTERN_MAX_MEMORY = 8 << 20


class NameFilter:
    """Include and exclude patterns for topic or consumer group names, compiled once with RE2.

    A name passes when it is not internal (``__*``), fully matches an include pattern (Java's ``matches()``, as
    MSK does) and matches no exclude pattern. RE2 matches in time linear in the name's length whatever the
    pattern, so no pattern can stall a worker's event loop.
    """

    __slots__ = ("_exclude", "_include")

    def __init__(self, include: Iterable[str], exclude: Iterable[str] = (), *, what: str = "patterns") -> None:
        self._include = _compile_all(include, what)
        self._exclude = _compile_all(exclude, what)

    def matches(self, name: str) -> bool:
        if name.startswith(INTERNAL_PREFIX):
            return False
        if not any(pattern.fullmatch(name) for pattern in self._include):
            return False
        return not any(pattern.fullmatch(name) for pattern in self._exclude)


def _compile_all(patterns: Iterable[str], what: str) -> tuple[Any, ...]:
    options = re2.Options()
    options.max_mem = PATTERN_MAX_MEMORY
    options.log_errors = False
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re2.compile(pattern, options))
        except re2.error as exc:
            raise ValueError(f"{what}: {pattern!r} is not a valid regular expression: {exc}") from exc
    return tuple(compiled)


def _default(cls: type, name: str) -> Any:
    """The default of a dataclass field: the one statement of that MSK default."""
    for spec_field in fields(cls):
        if spec_field.name == name:
            if spec_field.default is not MISSING:
                return spec_field.default
            if spec_field.default_factory is not MISSING:
                return spec_field.default_factory()
    raise KeyError(name)


def _member(stored: Mapping[str, Any], member: str, cls: type, name: str) -> Any:
    value = stored.get(member)
    return _default(cls, name) if value is None else value


@dataclass(frozen=True)
class GroupReplication:
    """The ``consumerGroupReplication`` member: which consumer groups follow the copy, and how."""

    groups_to_replicate: tuple[str, ...] = ()
    groups_to_exclude: tuple[str, ...] = ()
    detect_and_copy_new_groups: bool = True
    synchronise_offsets: bool = True
    offset_sync_mode: OffsetSyncMode = OffsetSyncMode.LEGACY
    filter: NameFilter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = NameFilter(self.groups_to_replicate, self.groups_to_exclude, what="consumerGroupsToReplicate")
        object.__setattr__(self, "filter", names)

    @property
    def enhanced(self) -> bool:
        return self.offset_sync_mode is OffsetSyncMode.ENHANCED

    @classmethod
    def from_stored(cls, groups: Mapping[str, Any]) -> GroupReplication:
        return cls(
            groups_to_replicate=tuple(_member(groups, "consumerGroupsToReplicate", cls, "groups_to_replicate")),
            groups_to_exclude=tuple(_member(groups, "consumerGroupsToExclude", cls, "groups_to_exclude")),
            detect_and_copy_new_groups=bool(
                _member(groups, "detectAndCopyNewConsumerGroups", cls, "detect_and_copy_new_groups")
            ),
            synchronise_offsets=bool(_member(groups, "synchroniseConsumerGroupOffsets", cls, "synchronise_offsets")),
            offset_sync_mode=OffsetSyncMode(_member(groups, "consumerGroupOffsetSyncMode", cls, "offset_sync_mode")),
        )


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
    groups: GroupReplication = field(default_factory=GroupReplication)
    exactly_once: bool = False
    created_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    topic_filter: NameFilter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.replicator_id:
            raise ValueError("replicator_id must not be empty")
        if not self.source_alias or not self.target_alias:
            raise ValueError("source_alias and target_alias must not be empty")
        if self.source_alias == self.target_alias:
            raise ValueError("source and target aliases must differ: loop prevention relies on them")
        topics = NameFilter(self.topics_to_replicate, self.topics_to_exclude, what="topicsToReplicate")
        object.__setattr__(self, "topic_filter", topics)

    @classmethod
    def from_replication_info(
        cls,
        info: Mapping[str, Any],
        source_alias: str | None = None,
        target_alias: str | None = None,
        replicator_id: str = "",
        *,
        exactly_once: bool = False,
        created_at_ms: int | None = None,
    ) -> ReplicationSpec:
        """Build from one ``replicationInfoList`` entry as the API stores it (camelCase keys). The aliases
        default to the entry's ``sourceKafkaClusterAlias`` and ``targetKafkaClusterAlias``."""
        topics: Mapping[str, Any] = info.get("topicReplication") or {}
        starting = (topics.get("startingPosition") or {}).get("type")
        naming = (topics.get("topicNameConfiguration") or {}).get("type")
        extra: dict[str, Any] = {}
        if created_at_ms is not None:
            extra["created_at_ms"] = created_at_ms
        return cls(
            replicator_id=replicator_id,
            source_alias=source_alias or str(info.get("sourceKafkaClusterAlias") or ""),
            target_alias=target_alias or str(info.get("targetKafkaClusterAlias") or ""),
            topics_to_replicate=tuple(topics.get("topicsToReplicate") or ()),
            topics_to_exclude=tuple(_member(topics, "topicsToExclude", cls, "topics_to_exclude")),
            copy_topic_configurations=bool(
                _member(topics, "copyTopicConfigurations", cls, "copy_topic_configurations")
            ),
            copy_access_control_lists=bool(
                _member(topics, "copyAccessControlListsForTopics", cls, "copy_access_control_lists")
            ),
            detect_and_copy_new_topics=bool(
                _member(topics, "detectAndCopyNewTopics", cls, "detect_and_copy_new_topics")
            ),
            starting_position=StartingPosition(starting or _default(cls, "starting_position")),
            topic_naming=TopicNaming(naming or _default(cls, "topic_naming")),
            target_compression=TargetCompression(_member(info, "targetCompressionType", cls, "target_compression")),
            groups=GroupReplication.from_stored(info.get("consumerGroupReplication") or {}),
            exactly_once=exactly_once,
            **extra,
        )

    def target_topic(self, source_topic: str) -> str:
        """The target topic a source topic is copied to: the one statement of the naming rule."""
        if self.topic_naming is TopicNaming.IDENTICAL:
            return source_topic
        return f"{self.source_alias}.{source_topic}"

    def is_replica_of_target(self, source_topic: str) -> bool:
        """A topic that this flow's target cluster is the origin of (PREFIXED naming): copying it back loops."""
        return source_topic.startswith(f"{self.target_alias}.")

    def should_replicate(self, source_topic: str) -> bool:
        """Whether a source topic is in scope: included, not excluded, not internal, not a replica of the target."""
        if self.topic_naming is TopicNaming.PREFIXED_WITH_SOURCE_CLUSTER_ALIAS and self.is_replica_of_target(
            source_topic
        ):
            return False
        return self.topic_filter.matches(source_topic)
