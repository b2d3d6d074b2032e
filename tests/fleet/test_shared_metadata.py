"""Many replicators of one worker on one source share its metadata (issue 17): 30 metadata units on real
clusters, database and Redis, matching the test's own topics with a `.*`-style pattern, list the source's topics
about once per pass between them and describe its configurations about once per config round, not once per
replicator; a configuration changed on the source still reaches the target; an unreachable source of one
replicator says so in its own StateInfo without holding up the others; and replicators reaching the same brokers
as different principals never share what they read."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.asyncio import Redis
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from models.bootstrap import AddressPolicy
from tests.fleet.conftest import insert_replicator, plaintext_runtime
from tests.fleet.test_metadata_unit_guards import closed_port
from workers.engine import admin as kafka_admin
from workers.engine.cluster_metadata import ClusterMetadataHub, connection_identity
from workers.engine.connection import ClusterConnection
from workers.fleet.address_vetting import AddressVetting
from workers.fleet.metadata_unit import MetadataUnit
from workers.fleet.runtime import ReplicatorRuntime

REPLICATORS = 30
TOPICS = 6
CONFIG_INTERVAL_S = 4.0


def stored_runtime(fleet_db: Engine, name: str, source: str, target: str, pattern: str) -> ReplicatorRuntime:
    rid = insert_replicator(fleet_db, name, "CREATING")
    # One alias for all: they copy into the same target topics, as replicators of one source often do.
    return plaintext_runtime(
        str(rid), name, source, target, {"topicsToReplicate": [pattern], "copyTopicConfigurations": True}
    )


def observation(fleet_db: Engine, replicator_id: str) -> tuple[int, str | None, str | None]:
    with fleet_db.connect() as conn:
        row = conn.execute(
            text(
                "SELECT jsonb_array_length(partitions), error_code, error_message "
                "FROM replicator_metadata WHERE replicator_id = :id"
            ),
            {"id": replicator_id},
        ).one()
    return int(row[0]), row[1], row[2]


async def topic_config(bootstrap: str, topic: str, name: str) -> str | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        entries = (await kafka_admin.describe_topic_configs(admin, [topic])).get(topic, {})
        entry = entries.get(name)
        return None if entry is None else entry.value
    finally:
        await admin.close()


async def test_thirty_replicators_on_one_source_read_its_metadata_once_between_them(
    fleet_db: Engine,
    adb: AsyncEngine,
    aredis: Redis,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    topics = [f"{unique}-{i}" for i in range(TOPICS)]
    admin = AIOKafkaAdminClient(bootstrap_servers=source_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 2, 1, topic_configs={"retention.ms": "3600000"}) for t in topics])
    finally:
        await admin.close()

    hub = ClusterMetadataHub()
    vetting = AddressVetting(AddressPolicy(["127.0.0.0/8"]))
    units = [
        MetadataUnit(
            stored_runtime(fleet_db, f"{unique}-r{i:02d}", source_bootstrap, target_bootstrap, f"{unique}-.*"),
            adb,
            aredis,
            config_interval_s=CONFIG_INTERVAL_S,
            probe_timeout_s=3.0,
            vetting=vetting,
            hub=hub,
        )
        for i in range(REPLICATORS)
    ]
    unreachable = f"127.0.0.1:{closed_port()}"
    broken = MetadataUnit(
        stored_runtime(fleet_db, f"{unique}-broken", unreachable, target_bootstrap, f"{unique}-.*"),
        adb,
        aredis,
        probe_timeout_s=3.0,
        vetting=vetting,
        hub=hub,
    )
    try:
        rounds = 0
        started = time.monotonic()

        async def one_round() -> None:
            nonlocal rounds
            began = time.monotonic()
            await asyncio.gather(*(unit.pass_once() for unit in [*units, broken]))
            rounds += 1
            print(f"pass {rounds} of every replicator: {time.monotonic() - began:.1f}s")

        await one_round()
        await one_round()
        source = next(view for view in hub.views if view.connection.bootstrap_servers == source_bootstrap)

        def assert_shared() -> None:
            # Without sharing: a listing per replicator per pass, a description per replicator per config round.
            # One more listing than the passes is allowed for the start: a replicator's first listing must be sent
            # after its synchroniser started, and those that start after the first listing went out ask again
            # (CI saw two in the first 0.8 s).
            elapsed = time.monotonic() - started
            listed, described = source.requests["metadata"], source.requests["describe_configs"]
            print(f"{REPLICATORS} replicators, {rounds} passes in {elapsed:.1f}s: source {dict(source.requests)}")
            assert listed <= elapsed / 2.0 + 2, f"{listed} topic listings in {elapsed:.1f}s (pass interval 2 s)"
            # Config rounds are aligned to the clock: a span of E seconds touches at most E / interval + 2 of them.
            assert described <= elapsed / CONFIG_INTERVAL_S + 2, f"{described} DescribeConfigs in {elapsed:.1f}s"
            assert listed < REPLICATORS / 3 and described < REPLICATORS / 3

        assert_shared()
        for unit in units:
            assert observation(fleet_db, unit.runtime.replicator_id)[:2] == (TOPICS * 2, None)
        count, code, message = observation(fleet_db, broken.runtime.replicator_id)
        assert (count, code) == (0, "SOURCE_CLUSTER_UNREACHABLE")
        assert message == f"{unreachable}: connection refused"

        # A configuration changed on the source reaches the target at the next config round, still described
        # once per round between all of them.
        admin = AIOKafkaAdminClient(bootstrap_servers=source_bootstrap)
        await admin.start()
        try:
            await kafka_admin.replace_topic_configs(admin, topics[0], {"retention.ms": "7200000"})
        finally:
            await admin.close()
        changed_at = time.monotonic()
        deadline = changed_at + 3 * CONFIG_INTERVAL_S + 20
        while await topic_config(target_bootstrap, f"src.{topics[0]}", "retention.ms") != "7200000":
            assert time.monotonic() < deadline, "the changed configuration never reached the target"
            await one_round()
        print(f"config followed in {time.monotonic() - changed_at:.1f}s")
        assert_shared()
    finally:
        for unit in [*units, broken]:
            await unit._close_sync()
            unit._release_views()
            await unit.groups.close()
        await hub.close()
    assert not hub.views


def test_replicators_reaching_the_same_brokers_as_different_principals_never_share() -> None:
    def scram(user: str, password: str) -> ClusterConnection:
        return ClusterConnection(
            "broker-1:9096",
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=password,
        )

    alice, alice_again, bob = scram("alice", "pw-a"), scram("alice", "pw-a"), scram("bob", "pw-b")
    rotated = scram("alice", "pw-a2")
    assert connection_identity(alice) == connection_identity(alice_again)
    assert len({connection_identity(c) for c in (alice, bob, rotated)}) == 3
    plain = ClusterConnection("broker-1:9096")
    assert connection_identity(plain) != connection_identity(alice)
    # Token providers compare equal as connections (they are left out of ==), but are principals of their own.
    providers: list[Any] = [object(), object()]
    oauth = [
        ClusterConnection(
            "broker-1:9096", security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", token_provider=provider
        )
        for provider in providers
    ]
    assert oauth[0] == oauth[1] and connection_identity(oauth[0]) != connection_identity(oauth[1])
    # The key names no credential.
    assert "pw-a" not in connection_identity(alice) and "alice" not in connection_identity(alice)

    async def views() -> None:
        hub = ClusterMetadataHub()
        shared = hub.acquire(alice)
        assert hub.acquire(alice_again) is shared
        assert hub.acquire(bob) is not shared
        hub.release(shared)
        assert shared in hub.views  # alice_again still uses it
        hub.release(shared)
        assert shared not in hub.views
        await hub.close()

    asyncio.run(views())
