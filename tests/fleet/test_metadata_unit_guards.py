"""A replicator's metadata unit on real clusters, database and Redis: it refuses a bootstrap address the worker
must not reach (vetted again where the worker resolves it), says why a cluster is unreachable in general terms
without echoing what the far end sent, and refuses a source and target that are the same Kafka cluster."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from models.bootstrap import AddressPolicy
from tests.engine.conftest import create_topic
from tests.fleet.conftest import insert_replicator, plaintext_runtime
from workers.fleet.address_vetting import AddressVetting
from workers.fleet.metadata_unit import MetadataUnit
from workers.fleet.runtime import ReplicatorRuntime


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def new_replicator(fleet_db: Engine, prefix: str, source: str, target: str) -> ReplicatorRuntime:
    """A CREATING replicator row from ``source`` to ``target`` replicating ``<name>-.*``, and its runtime."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rid = insert_replicator(fleet_db, name, "CREATING")
    return plaintext_runtime(str(rid), name, source, target, {"topicsToReplicate": [f"{name}-.*"]})


async def one_pass(
    fleet_db: Engine, adb: AsyncEngine, aredis: Redis, source: str, target: str, allowed: list[str]
) -> dict[str, Any]:
    """Run one metadata pass for a new replicator from ``source`` to ``target``; its stored observation."""
    runtime = new_replicator(fleet_db, "guard", source, target)
    rid = uuid.UUID(runtime.replicator_id)
    unit = MetadataUnit(runtime, adb, aredis, probe_timeout_s=3.0, vetting=AddressVetting(AddressPolicy(allowed)))
    try:
        await unit.pass_once()
    finally:
        unit._release_views()
        await unit.hub.close()
        await unit.groups.close()
    with fleet_db.connect() as conn:
        row = conn.execute(
            text("SELECT error_code, error_message FROM replicator_metadata WHERE replicator_id = :id"), {"id": rid}
        ).one()
    return {"code": row[0], "message": row[1]}


async def test_a_name_the_worker_must_not_reach_is_refused_before_connecting(
    fleet_db: Engine, adb: AsyncEngine, aredis: Redis, target_bootstrap: str
) -> None:
    # Only the cluster's own address is allowed, not loopback names: "localhost" is refused where it resolves.
    observed = await one_pass(fleet_db, adb, aredis, "localhost:19092", target_bootstrap, ["127.0.0.1/32"])
    assert observed["code"] == "BOOTSTRAP_ADDRESS_REFUSED"
    assert observed["message"].startswith("source cluster: localhost:19092 is a loopback address")


async def test_an_unreachable_cluster_is_described_in_general_terms(
    fleet_db: Engine, adb: AsyncEngine, aredis: Redis, target_bootstrap: str
) -> None:
    refused = f"127.0.0.1:{closed_port()}"
    observed = await one_pass(fleet_db, adb, aredis, refused, target_bootstrap, ["127.0.0.0/8"])
    assert observed["code"] == "SOURCE_CLUSTER_UNREACHABLE"
    assert observed["message"] == f"{refused}: connection refused"


async def test_an_endpoint_that_is_not_kafka_is_named_so_without_its_banner(
    fleet_db: Engine, adb: AsyncEngine, aredis: Redis, source_bootstrap: str, stack: dict[str, Any]
) -> None:
    redis_port = int(str(stack["redis_url"]).rsplit(":", 1)[1].split("/", 1)[0])
    not_kafka = f"127.0.0.1:{redis_port}"
    observed = await one_pass(fleet_db, adb, aredis, source_bootstrap, not_kafka, ["127.0.0.0/8"])
    assert observed["code"] == "TARGET_CLUSTER_UNREACHABLE"
    assert observed["message"] == f"{not_kafka}: the endpoint did not answer as a Kafka broker"


async def test_source_and_target_on_the_same_cluster_are_refused(
    fleet_db: Engine, adb: AsyncEngine, aredis: Redis, source_bootstrap: str
) -> None:
    port = source_bootstrap.rsplit(":", 1)[1]
    same_cluster_other_name = f"localhost:{port}"
    observed = await one_pass(
        fleet_db, adb, aredis, source_bootstrap, same_cluster_other_name, ["127.0.0.0/8", "localhost"]
    )
    assert observed["code"] == "SOURCE_AND_TARGET_SAME_CLUSTER"
    assert "same Kafka cluster" in observed["message"]


async def test_a_pass_that_observes_nothing_new_writes_nothing(
    fleet_db: Engine, adb: AsyncEngine, aredis: Redis, source_bootstrap: str, target_bootstrap: str
) -> None:
    """Hundreds of metadata units per worker each rewrote their unchanged row every 2 s and queued for the
    database pool; an unchanged observation is now written only again after a minute, a change at once."""
    runtime = new_replicator(fleet_db, "quiet", source_bootstrap, target_bootstrap)
    rid, name = uuid.UUID(runtime.replicator_id), runtime.name
    await create_topic(source_bootstrap, f"{name}-first", 2)

    def stored() -> tuple[Any, Any]:
        with fleet_db.connect() as conn:
            row = conn.execute(
                text("SELECT partitions, updated_at FROM replicator_metadata WHERE replicator_id = :id"), {"id": rid}
            ).one()
        return sorted(tuple(p) for p in row[0]), row[1]

    unit = MetadataUnit(runtime, adb, aredis, interval_s=0.1, vetting=AddressVetting(AddressPolicy(["127.0.0.0/8"])))
    try:
        await unit.pass_once()
        first, first_written = stored()
        assert first == [(f"{name}-first", 0), (f"{name}-first", 1)]
        await unit.pass_once()
        assert stored() == (first, first_written)

        await create_topic(source_bootstrap, f"{name}-second", 1)
        deadline = time.monotonic() + 30
        while (now := stored())[0] == first:
            assert time.monotonic() < deadline, "the new topic never reached the stored inventory"
            await unit.pass_once()
        assert now[0] == [*first, (f"{name}-second", 0)]
        assert now[1] > first_written
    finally:
        unit._release_views()
        await unit.hub.close()
        await unit.groups.close()
        await unit._close_sync()
