"""Topic and metadata sync: which source topics are in scope, and making their target topics fit to copy into.

Target topics are created with the source's partition count (and configs, with copyTopicConfigurations)
before any partition of them is handed to a copier; added source partitions are added on the target; topic
configs are kept in sync, leaving out the ones that must differ per cluster; with copyAccessControlListsForTopics
the source topics' ACLs are recreated on their target topics (as MirrorMaker 2 does: ALLOW WRITE is left out so
only the replicator writes to a replica, ALLOW ALL becomes ALLOW READ; ACLs are added, never removed).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient

from workers.engine import admin as kafka_admin
from workers.engine.admin import CONFIG_SOURCE_DYNAMIC_TOPIC, AdminError, ConfigEntry
from workers.engine.aiokafka_hooks import WritesFenced, topic_ids
from workers.engine.cluster_metadata import ClusterView, ListedTopic
from workers.engine.connection import ClusterConnection, admin_client
from workers.engine.spec import ReplicationSpec

log = logging.getLogger(__name__)

# Per-cluster settings never copied (MirrorMaker 2's DefaultConfigPropertyFilter list, plus the newer
# timestamp bounds and tiered-storage settings that only make sense on the cluster that has that storage).
PER_CLUSTER_CONFIGS = re.compile(
    r"follower\.replication\.throttled\.replicas"
    r"|leader\.replication\.throttled\.replicas"
    r"|message\.timestamp\.difference\.max\.ms"
    r"|message\.timestamp\.(before|after)\.max\.ms"
    r"|message\.timestamp\.type"
    r"|unclean\.leader\.election\.enable"
    r"|min\.insync\.replicas"
    r"|remote\.storage\.enable"
    r"|remote\.log\..*"
    r"|local\.retention\.(ms|bytes)"
)


def is_per_cluster_config(name: str) -> bool:
    return PER_CLUSTER_CONFIGS.fullmatch(name) is not None


def copyable_configs(entries: dict[str, ConfigEntry]) -> dict[str, str]:
    """The source topic's own overrides that the target should share."""
    return {
        name: entry.value
        for name, entry in entries.items()
        if entry.source == CONFIG_SOURCE_DYNAMIC_TOPIC
        and entry.value is not None
        and not entry.sensitive
        and not entry.read_only
        and not is_per_cluster_config(name)
    }


def target_acls(source_acls: Iterable[kafka_admin.TopicAcl], topics: dict[str, str]) -> set[kafka_admin.TopicAcl]:
    """The ACLs the target topics should carry for the source topics' ACLs (``topics``: source -> target name)."""
    out: set[kafka_admin.TopicAcl] = set()
    for acl in source_acls:
        target_topic = topics.get(acl.topic)
        if target_topic is None:
            continue
        operation = acl.operation
        if acl.permission == kafka_admin.PERMISSION_ALLOW:
            if operation == kafka_admin.OPERATION_WRITE:
                continue
            if operation == kafka_admin.OPERATION_ALL:
                operation = kafka_admin.OPERATION_READ
        out.add(kafka_admin.TopicAcl(target_topic, acl.principal, acl.host, operation, acl.permission))
    return out


@dataclass(frozen=True)
class ReplicatedTopic:
    source_topic: str
    target_topic: str
    partitions: int


@dataclass
class SyncReport:
    """Outcome of one sync pass. ``topics`` holds the topics ready to copy, with the number of partitions that
    exist on both sides; ``errors`` maps a source topic to why it is not (or not fully) ready."""

    topics: dict[str, ReplicatedTopic] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    partitions_added: dict[str, int] = field(default_factory=dict)
    configs_updated: list[str] = field(default_factory=list)
    acls_created: list[kafka_admin.TopicAcl] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    # Target topics the target refused to create for lack of a permission (the broker's error name by topic):
    # retried every pass, but only an ACL change on the target helps. Also in ``errors``, by source topic.
    creation_denied: dict[str, str] = field(default_factory=dict)
    # Topics that were deleted and created again under their name since the previous pass (their ids changed):
    # source topic names, and target topic names (a target topic deleted by hand is created again by the pass).
    recreated_sources: list[str] = field(default_factory=list)
    recreated_targets: list[str] = field(default_factory=list)


class TopicSynchronizer:
    def __init__(
        self,
        spec: ReplicationSpec,
        source: ClusterConnection,
        target: ClusterConnection,
        *,
        replication_factor: int | None = None,
        known_topics: Iterable[str] | None = None,
        write_gate: Callable[[], bool] | None = None,
        confirm_writes: Callable[[], Awaitable[bool]] | None = None,
        source_view: ClusterView | None = None,
        topics_max_age_s: float = 0.0,
    ) -> None:
        """``known_topics``: with detectAndCopyNewTopics off, the topic set an earlier pass fixed (the caller
        keeps it durable, so a restart elsewhere does not pick up topics created since). ``write_gate``: asked
        right before every write to the target (topic, partitions, configs, ACLs); False stops the pass with
        ``WritesFenced`` (the caller's lease on this work is gone). ``confirm_writes``: the authoritative (and
        slower) form of the gate, awaited once per pass, after the source was read and before the pass's first
        write: whatever a pass saw on the source after its work was withdrawn is never acted on. ``source_view``:
        the source's metadata as shared with other replicators of the process (``cluster_metadata.py``; the
        caller acquires and releases it), whose listing may be ``topics_max_age_s`` old; without one the
        synchroniser reads the source itself, fresh every pass."""
        self.write_gate = write_gate
        self.confirm_writes = confirm_writes
        self._confirmed = False
        self.spec = spec
        self.source = source
        self.target = target
        self.replication_factor = replication_factor
        self._own_view = source_view is None
        self.source_view = source_view or ClusterView(source, "private")
        self.topics_max_age_s = topics_max_age_s
        # The first listing must come from a request sent after this synchroniser started: the replicator's first
        # inventory fixes which topics existed at its start (startingPosition applies to those; the others are
        # copied from their beginning), and a shared listing can predate a topic created a moment ago.
        self._first_listing_after: float | None = time.monotonic()
        self._listing: dict[str, ListedTopic] = {}
        self._target_admin: AIOKafkaAdminClient | None = None
        self._known_topics: set[str] | None = None if known_topics is None else set(known_topics)
        # Whether each source topic name is in scope, as the spec's regular expressions answered: hundreds of
        # replicators on a worker matched every topic of a 1,300-topic source every pass (a quarter of its CPU).
        # Cleared when the spec changes; dropped names are forgotten when the listing shrinks well below it.
        self._in_scope: dict[str, bool] = {}
        # Topic ids seen by the previous pass, by name.
        self._source_ids: dict[str, str] = {}
        self._target_ids: dict[str, str] = {}

    @property
    def known_topics(self) -> frozenset[str] | None:
        """The fixed topic set while detectAndCopyNewTopics is off; None while detection is on."""
        if self.spec.detect_and_copy_new_topics or self._known_topics is None:
            return None
        return frozenset(self._known_topics)

    async def start(self) -> None:
        self._target_admin = admin_client(self.target, "topic-sync")
        await self._target_admin.start()
        if self.replication_factor is None:
            self.replication_factor = min(3, await kafka_admin.broker_count(self._target_admin))

    async def close(self) -> None:
        if self._own_view:
            await self.source_view.close()
        if self._target_admin is not None:
            await self._target_admin.close()

    def update_spec(self, spec: ReplicationSpec) -> None:
        """Apply an UpdateReplicationInfo (topic lists and flags); the next sync pass uses it."""
        self.spec = spec
        self._known_topics = None
        self._in_scope = {}

    @property
    def _target(self) -> AIOKafkaAdminClient:
        if self._target_admin is None:
            raise RuntimeError("TopicSynchronizer.start() was not called")
        return self._target_admin

    async def source_topics(self) -> dict[str, int]:
        """Source topics in scope with their partition counts."""
        found = self._listing = await self.source_view.topics(self.topics_max_age_s, self._first_listing_after)
        self._first_listing_after = None
        if len(self._in_scope) > 2 * len(found) + 100:
            self._in_scope = {}
        in_scope = self._in_scope
        topics = {}
        for name, meta in found.items():
            wanted = in_scope.get(name)
            if wanted is None:
                wanted = in_scope[name] = self.spec.should_replicate(name)
            if wanted and not meta.is_internal:
                topics[name] = meta.partitions
        if not self.spec.detect_and_copy_new_topics:
            # Without detection the topic set is fixed at the first pass; partitions added to those topics
            # are still followed.
            if self._known_topics is None:
                self._known_topics = set(topics)
            topics = {name: count for name, count in topics.items() if name in self._known_topics}
        return topics

    async def _may_write(self) -> None:
        if self.write_gate is not None and not self.write_gate():
            raise WritesFenced("the lease of this replicator's metadata unit is gone; nothing more is written")
        if self.confirm_writes is not None and not self._confirmed:
            if not await self.confirm_writes():
                raise WritesFenced("this replicator's metadata unit is no longer this worker's; nothing is written")
            self._confirmed = True

    async def sync_once(self, *, sync_configs: bool = True, configs_max_age_s: float = 0.0) -> SyncReport:
        """One pass. ``sync_configs``: compare configurations (and ACLs) with the source's this pass; the
        source's may have been described up to ``configs_max_age_s`` ago (by another replicator sharing the
        view); topics created this pass are described no longer ago than that either."""
        target_admin = self._target
        report = SyncReport()
        self._confirmed = False
        wanted = await self.source_topics()
        target_names = {name: self.spec.target_topic(name) for name in wanted}
        existing = (
            await kafka_admin.describe_topics(target_admin, sorted(target_names.values()) or None) if wanted else {}
        )
        copy_configs = self.spec.copy_topic_configurations
        source_configs = (
            await self.source_view.topic_configs(sorted(wanted), configs_max_age_s)
            if copy_configs and wanted and (sync_configs or set(target_names.values()) - set(existing))
            else {}
        )
        rf = self.replication_factor or 1
        for source_topic, partitions in sorted(wanted.items()):
            target_topic = target_names[source_topic]
            try:
                current = existing.get(target_topic)
                if current is None:
                    configs = copyable_configs(source_configs.get(source_topic, {})) if copy_configs else {}
                    await self._may_write()
                    if await kafka_admin.create_topic(target_admin, target_topic, partitions, rf, configs):
                        report.created.append(target_topic)
                        log.info(
                            "created target topic %s (%d partitions, %d configs)",
                            target_topic,
                            partitions,
                            len(configs),
                        )
                    ready = partitions
                elif current.partitions < partitions:
                    await self._may_write()
                    await kafka_admin.add_partitions(target_admin, target_topic, partitions)
                    report.partitions_added[target_topic] = partitions - current.partitions
                    log.info("added %d partitions to target topic %s", partitions - current.partitions, target_topic)
                    ready = partitions
                else:
                    ready = partitions
            except AdminError as exc:
                report.errors[source_topic] = str(exc)
                if current is None and exc.code in kafka_admin.AUTHORIZATION_FAILED:
                    report.creation_denied[target_topic] = exc.error_name
                log.warning("target topic %s not ready: %s", target_topic, exc)
                if target_topic not in existing:
                    continue
                ready = min(partitions, existing[target_topic].partitions)
            report.topics[source_topic] = ReplicatedTopic(source_topic, target_topic, ready)
        await self._note_recreated(report)
        if copy_configs and sync_configs:
            await self._sync_configs(report, source_configs, existing)
        if self.spec.copy_access_control_lists and sync_configs and report.topics:
            await self._sync_acls(report, configs_max_age_s)
        return report

    async def _note_recreated(self, report: SyncReport) -> None:
        """Compare the ids of the topics in scope with the previous pass's (copiers restart such copies)."""
        target_admin = self._target
        listed = self._listing  # as this pass listed the source
        sources = {
            name: topic.topic_id
            for name in report.topics
            if (topic := listed.get(name)) is not None and topic.topic_id is not None
        }
        targets = await topic_ids(target_admin, sorted(t.target_topic for t in report.topics.values()))
        report.recreated_sources = sorted(
            name for name, known in self._source_ids.items() if sources.get(name, known) != known
        )
        report.recreated_targets = sorted(
            name for name, known in self._target_ids.items() if targets.get(name, known) != known
        )
        # A topic missing for a moment keeps its last id, so its return under a new one is still noticed.
        self._source_ids.update(sources)
        self._target_ids.update(targets)

    async def _sync_acls(self, report: SyncReport, max_age_s: float) -> None:
        target_admin = self._target
        try:
            source_acls = await self.source_view.topic_acls(max_age_s)
            wanted = target_acls(source_acls or [], {t.source_topic: t.target_topic for t in report.topics.values()})
            if not wanted:
                return
            present = await kafka_admin.describe_topic_acls(target_admin)
            if present is None:
                raise kafka_admin.AdminError(
                    "target topic ACLs", kafka_admin.SECURITY_DISABLED, "the target cluster has no authorizer"
                )
        except kafka_admin.AdminError as exc:
            for source_topic in report.topics:
                report.errors.setdefault(source_topic, f"ACL sync: {exc}")
            log.warning("ACL sync failed: %s", exc)
            return
        by_target = {t.target_topic: t.source_topic for t in report.topics.values()}
        self._confirmed = False  # the source's ACLs were read after this pass's earlier confirmation
        for acl in sorted(wanted - set(present)):
            await self._may_write()
            try:
                await kafka_admin.create_topic_acl(target_admin, acl)
            except kafka_admin.AdminError as exc:
                report.errors.setdefault(by_target[acl.topic], f"ACL sync: {exc}")
                log.warning("creating %s failed: %s", acl, exc)
                continue
            report.acls_created.append(acl)
            log.info("created ACL on %s: %s", acl.topic, acl)

    async def _sync_configs(
        self,
        report: SyncReport,
        source_configs: dict[str, dict[str, ConfigEntry]],
        existing: dict[str, kafka_admin.TopicMetadata],
    ) -> None:
        target_admin = self._target
        pairs = {
            t.source_topic: t.target_topic
            for t in report.topics.values()
            if t.target_topic in existing and t.source_topic in source_configs
        }
        if not pairs:
            return
        target_configs = await kafka_admin.describe_topic_configs(target_admin, sorted(pairs.values()))
        for source_topic, target_topic in sorted(pairs.items()):
            current = {
                name: entry.value
                for name, entry in target_configs.get(target_topic, {}).items()
                if entry.source == CONFIG_SOURCE_DYNAMIC_TOPIC and entry.value is not None
            }
            desired = copyable_configs(source_configs[source_topic])
            # AlterConfigs replaces the whole override set: keep the target's own per-cluster overrides.
            desired.update({name: value for name, value in current.items() if is_per_cluster_config(name)})
            if desired == current:
                continue
            await self._may_write()
            try:
                await kafka_admin.replace_topic_configs(target_admin, target_topic, desired)
            except AdminError as exc:
                report.errors[source_topic] = str(exc)
                log.warning("config sync of %s failed: %s", target_topic, exc)
                continue
            report.configs_updated.append(target_topic)
            log.info("synced configs of %s: %s", target_topic, sorted(desired))
