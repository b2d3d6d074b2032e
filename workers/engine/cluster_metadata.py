"""Cluster metadata read once per cluster and shared by every replicator of a process that reaches it.

Many replicators on one worker usually share a source (and a target): each of them listing the source's topics,
describing their configurations and reading consumer group offsets on its own multiplies the same requests by
the number of replicators (issue 17: 120 replicators on a 90-topic source made 57 x 90 config descriptions per
2 s pass and starved the worker's work loop). A ``ClusterMetadataHub`` keeps one ``ClusterView`` per connection
identity; a view answers from what it fetched within the caller's ``max_age_s``, and otherwise makes one
request for all callers waiting at that moment (single flight):

- the topic listing (names, partition counts, ids, internal flags): one Metadata request for every topic;
- topic configurations: described in batches (callers within ``CONFIG_BATCH_WINDOW_S`` share one
  DescribeConfigs request), only for the topics some caller has in scope;
- topic ACLs, consumer group listing and each group's committed offsets, and the reachability probe.

Sharing is keyed by the full connection identity: bootstrap servers, security settings, and the credentials or
token provider, so two replicators reaching the same brokers as different principals (which ACLs may show
different topics) never share a view. The key is a digest, never the credentials themselves, and is not logged
(log lines use ``ClusterConnection.describe()``).

A view's requests run in tasks of their own behind ``asyncio.shield``: a caller that is cancelled (its
replicator deleted) leaves the fetch to the others, and a failure reaches every caller waiting on that fetch
(each reports it as its own StateInfo) without being cached, so the next pass asks again. Each view has its own
client, so a slow cluster holds up only the callers of that cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from workers.engine import admin as kafka_admin
from workers.engine.admin import ConfigEntry, TopicAcl
from workers.engine.aiokafka_hooks import describe_all_topics
from workers.engine.connection import ClusterConnection, admin_client, diagnose_unreachable

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Callers asking for configurations within this window share one DescribeConfigs request.
CONFIG_BATCH_WINDOW_S = 0.05


@dataclass(frozen=True)
class ListedTopic:
    name: str
    partitions: int
    is_internal: bool
    topic_id: str | None  # hex; None when the cluster does not say (older than Kafka 2.8)


ProbeResult = tuple[tuple[str, str] | None, str | None]


class SharedReadFailed(KafkaError):  # type: ignore[misc]
    """A view's read of its cluster failed (the cause is chained): the caller's own clients are not at fault, so
    it need not drop them; the view makes its client anew for the next read."""

    retriable = True


def connection_identity(connection: ClusterConnection) -> str:
    """A digest of everything that decides what a client sees of a cluster: the same for two connections that
    reach the same brokers as the same principal in the same way, different otherwise. Never log the inputs."""
    parts = [
        connection.bootstrap_servers,
        connection.security_protocol,
        connection.ca_pem or "",
        connection.certificate_pem or "",
        connection.private_key_pem or "",
        connection.private_key_password or "",
        connection.sasl_mechanism or "",
        connection.sasl_username or "",
        connection.sasl_password or "",
        # A token provider is a principal of its own (OAuth client, IAM role): shared only with itself.
        "" if connection.token_provider is None else f"provider:{id(connection.token_provider)}",
        str(connection.request_timeout_ms),
    ]
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return digest.hexdigest()


class _Cached(Generic[_T]):
    """One value fetched at most once per ``max_age_s`` however many callers ask, failures not kept.

    ``not_before`` (a ``time.monotonic()`` reading) asks for a value whose fetch started at or after that moment:
    a replicator's first inventory must see every topic that existed when it started, and a listing another
    replicator asked for a second earlier may predate a topic created since."""

    def __init__(self) -> None:
        self.value: _T | None = None
        self.fetched_at: float | None = None
        self.started_at: float | None = None
        self._inflight: asyncio.Future[_T] | None = None
        self._inflight_started = 0.0

    async def get(self, max_age_s: float, fetch: Callable[[], Awaitable[_T]], not_before: float | None = None) -> _T:
        while True:
            if (
                self.fetched_at is not None
                and time.monotonic() - self.fetched_at <= max_age_s
                and (not_before is None or (self.started_at is not None and self.started_at >= not_before))
            ):
                return self.value  # type: ignore[return-value]
            if self._inflight is None:
                self._inflight_started = time.monotonic()
                self._inflight = asyncio.ensure_future(self._run(fetch, self._inflight_started))
                self._inflight.add_done_callback(_retrieve)
            if not_before is None or self._inflight_started >= not_before:
                return await asyncio.shield(self._inflight)
            # A fetch started too early for this caller is under way: let it finish, then ask anew.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._inflight)

    async def _run(self, fetch: Callable[[], Awaitable[_T]], started: float) -> _T:
        try:
            value = await fetch()
        finally:
            self._inflight = None
        self.value, self.fetched_at, self.started_at = value, time.monotonic(), started
        return value


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Every waiter may have been cancelled: the failure is still looked at, so asyncio does not log it as lost.
    if not future.cancelled():
        future.exception()


class ClusterView:
    """What one process knows of one cluster as one principal, fetched once and handed to every caller."""

    def __init__(self, connection: ClusterConnection, key: str) -> None:
        self.connection = connection
        self.key = key
        self.users = 0
        # Requests sent to the cluster, by kind: what tests and benchmarks count.
        self.requests: Counter[str] = Counter()
        self._admin: AIOKafkaAdminClient | None = None
        self._admin_lock = asyncio.Lock()
        # The probe's own connection: a broker answers a connection's requests in order, so a probe queued behind
        # a large DescribeConfigs would time out and report a busy cluster as unreachable.
        self._probe_admin: AIOKafkaAdminClient | None = None
        self._probe: _Cached[ProbeResult] = _Cached()
        self._topics: _Cached[dict[str, ListedTopic]] = _Cached()
        self._acls: _Cached[list[TopicAcl] | None] = _Cached()
        self._groups: _Cached[list[str]] = _Cached()
        self._group_offsets: dict[str, _Cached[dict[TopicPartition, OffsetAndMetadata]]] = {}
        # Configurations by topic: (when described, entries; None when the cluster refused that topic).
        self._configs: dict[str, tuple[float, dict[str, ConfigEntry] | None]] = {}
        self._config_pending: set[str] = set()
        self._config_batch: asyncio.Future[None] | None = None

    async def admin(self) -> AIOKafkaAdminClient:
        async with self._admin_lock:
            if self._admin is None:
                admin = admin_client(self.connection, "metadata")
                try:
                    await admin.start()
                except BaseException:
                    with contextlib.suppress(KafkaError, OSError):
                        await admin.close()
                    raise
                self._admin = admin
            return self._admin

    async def _drop_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()

    async def _drop_probe_admin(self) -> None:
        admin, self._probe_admin = self._probe_admin, None
        if admin is not None:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()

    async def _request(self, kind: str, call: Callable[[AIOKafkaAdminClient], Awaitable[_T]]) -> _T:
        try:
            admin = await self.admin()
            self.requests[kind] += 1
            return await call(admin)
        except (KafkaError, OSError) as exc:
            await self._drop_admin()  # made anew by the next request
            raise SharedReadFailed(f"{type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ reachability

    async def probe(self, timeout_s: float, max_age_s: float) -> ProbeResult:
        """(None, the cluster's id) when the cluster answered a metadata request in time, else ((code, why not
        in general terms), None); the code is AUTHENTICATION_FAILED, TLS_HANDSHAKE_FAILED or UNREACHABLE."""

        async def fetch() -> ProbeResult:
            try:
                async with asyncio.timeout(timeout_s):
                    if self._probe_admin is None:
                        timeout_ms = int(timeout_s * 1000)
                        self._probe_admin = admin_client(self.connection, "probe", request_timeout_ms=timeout_ms)
                        await self._probe_admin.start()
                    self.requests["describe_cluster"] += 1
                    described = await kafka_admin.describe_cluster(self._probe_admin)
            except (TimeoutError, KafkaError, OSError):
                await self._drop_probe_admin()
                code, reason = await diagnose_unreachable(self.connection, min(3.0, timeout_s))
                return (code, f"{self.connection.bootstrap_servers}: {reason}"), None
            return None, str(described.get("cluster_id") or "") or None

        return await self._probe.get(max_age_s, fetch)

    # ------------------------------------------------------------------ topics

    async def topics(self, max_age_s: float, not_before: float | None = None) -> dict[str, ListedTopic]:
        """Every topic of the cluster (internal ones flagged) with its partition count and id; ``not_before``: from
        a request sent at or after that ``time.monotonic()`` reading."""

        async def fetch() -> dict[str, ListedTopic]:
            listed = await self._request("metadata", describe_all_topics)
            return {
                name: ListedTopic(name, partitions, internal, topic_id)
                for name, (partitions, internal, topic_id) in listed.items()
            }

        return await self._topics.get(max_age_s, fetch, not_before)

    async def topic_configs(self, topics: Iterable[str], max_age_s: float) -> dict[str, dict[str, ConfigEntry]]:
        """The configuration of each of these topics the cluster describes, described at most ``max_age_s`` ago;
        the stale ones of every caller within a short window go into one DescribeConfigs request."""
        wanted = set(topics)
        while True:
            now = time.monotonic()
            stale = {name for name in wanted if name not in self._configs or now - self._configs[name][0] > max_age_s}
            if not stale:
                return {name: entries for name in wanted if (entries := self._configs[name][1]) is not None}
            self._config_pending |= stale
            if self._config_batch is None:
                self._config_batch = asyncio.ensure_future(self._describe_pending())
                self._config_batch.add_done_callback(_retrieve)
            # Answered by this batch, or (joined after it started) by the next one the loop makes.
            await asyncio.shield(self._config_batch)
            # A topic described just now counts as fresh even with max_age_s 0.
            max_age_s = max(max_age_s, time.monotonic() - now)

    async def _describe_pending(self) -> None:
        try:
            await asyncio.sleep(CONFIG_BATCH_WINDOW_S)
        finally:
            self._config_batch = None  # callers from now on start the next batch
        batch, self._config_pending = sorted(self._config_pending), set()
        described = await self._request(
            "describe_configs", lambda admin: kafka_admin.describe_topic_configs(admin, batch)
        )
        at = time.monotonic()
        for name in batch:
            self._configs[name] = (at, described.get(name))

    async def topic_acls(self, max_age_s: float) -> list[TopicAcl] | None:
        """Every ACL on a literal topic name; None when the cluster has no authorizer."""
        return await self._acls.get(max_age_s, lambda: self._request("describe_acls", kafka_admin.describe_topic_acls))

    # ------------------------------------------------------------------ consumer groups

    async def consumer_groups(self, max_age_s: float) -> list[str]:
        async def fetch() -> list[str]:
            listed = await self._request("list_groups", kafka_admin.list_consumer_groups)
            return sorted({str(entry[0]) for entry in listed})

        return await self._groups.get(max_age_s, fetch)

    async def group_offsets(self, group: str, max_age_s: float) -> dict[TopicPartition, OffsetAndMetadata]:
        cached = self._group_offsets.setdefault(group, _Cached())
        return await cached.get(
            max_age_s, lambda: self._request("group_offsets", lambda admin: admin.list_consumer_group_offsets(group))
        )

    async def close(self) -> None:
        await self._drop_admin()
        await self._drop_probe_admin()


def _outside_callers_context(emit: Callable[..., None], *args: Any) -> None:
    """A view belongs to every replicator using it: its own log lines carry none of their context (the replicator
    that happened to open or release it last would otherwise be named)."""
    contextvars.Context().run(emit, *args)


class ClusterMetadataHub:
    """The views of one process (one event loop): ``acquire`` a view for a connection, ``release`` it when done.

    A view whose last user released it is closed in the background, so releasing never waits on a cluster (a
    replicator's delete must not wait behind a slow broker)."""

    def __init__(self) -> None:
        self._views: dict[str, ClusterView] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def acquire(self, connection: ClusterConnection) -> ClusterView:
        key = connection_identity(connection)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = ClusterView(connection, key)
            _outside_callers_context(log.info, "shared metadata view of %s opened", connection.describe())
        view.users += 1
        return view

    def release(self, view: ClusterView) -> None:
        view.users -= 1
        if view.users > 0 or self._views.get(view.key) is not view:
            return
        del self._views[view.key]
        task = asyncio.get_running_loop().create_task(view.close(), context=contextvars.Context())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        _outside_callers_context(log.info, "shared metadata view of %s closed", view.connection.describe())

    @property
    def views(self) -> list[ClusterView]:
        return list(self._views.values())

    def requests(self) -> Counter[str]:
        """Requests sent by the open views, by kind."""
        total: Counter[str] = Counter()
        for view in self._views.values():
            total.update(view.requests)
        return total

    async def close(self) -> None:
        for view in list(self._views.values()):
            await view.close()
        self._views.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
