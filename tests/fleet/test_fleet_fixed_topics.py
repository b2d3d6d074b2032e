"""detectAndCopyNewTopics=false holds across workers: the topic set fixed at the first pass survives the metadata
unit moving to another worker, so a topic created later is never copied."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import Engine, text

from tests.fleet.conftest import Fleet, unit_owners, wait_until
from tests.fleet.records import delivered
from tests.fleet.test_fleet_lifecycle import count_records, create_request, create_topic, describe, produce


def metadata_owner(db: Engine, arn: str) -> str | None:
    with db.connect() as conn:
        owner = conn.execute(
            text(
                "SELECT CASE WHEN u.lease_expires_at > now() THEN u.owner_worker END FROM fleet_units u "
                "JOIN replicators r ON r.id = u.replicator_id WHERE r.arn = :arn AND u.partition = -1"
            ),
            {"arn": arn},
        ).scalar_one_or_none()
    return None if owner is None else str(owner)


def metadata_passes_since(db: Engine, arn: str, since: Any) -> bool:
    with db.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT m.updated_at > :since FROM replicator_metadata m JOIN replicators r "
                    "ON r.id = m.replicator_id WHERE r.arn = :arn"
                ),
                {"arn": arn, "since": since},
            ).scalar_one_or_none()
        )


async def topic_exists(bootstrap: str, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.slow
def test_a_fixed_topic_set_survives_the_metadata_unit_moving(
    fleet: Fleet, fleet_kafka: Any, fleet_db: Engine, unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    fleet.start_worker("f1")
    first, later = f"{unique}-a", f"{unique}-b"
    asyncio.run(create_topic(source_bootstrap, first, 1))
    asyncio.run(produce(source_bootstrap, first, 10, 1, "a"))
    request = create_request(unique, source_bootstrap, target_bootstrap, [f"{unique}-.*"], DetectAndCopyNewTopics=False)
    arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
    wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)
    alias = describe(fleet_kafka, arn)["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    wait_until(
        "the first topic copied", lambda: asyncio.run(count_records(target_bootstrap, f"{alias}.{first}")) == 10, 60
    )

    asyncio.run(create_topic(source_bootstrap, later, 1))
    asyncio.run(produce(source_bootstrap, later, 10, 1, "b"))
    fleet.kill("f1", signal.SIGKILL)
    # Read before f2 starts: f2's first pass may write within milliseconds of taking the unit, and later passes
    # that see nothing new write nothing for a minute, so a time read after the takeover could miss every write.
    with fleet_db.connect() as conn:
        f1_gone_at = conn.execute(text("SELECT now()")).scalar_one()
    fleet.start_worker("f2")
    wait_until("the metadata unit on f2", lambda: (metadata_owner(fleet_db, arn) or "").startswith("f2"), 60)
    wait_until("a topic sync pass on f2", lambda: metadata_passes_since(fleet_db, arn, f1_gone_at), 30)
    asyncio.run(produce(source_bootstrap, first, 5, 1, "a2"))
    # At least once: records copied after f1's last progress write are copied again by f2.
    wait_until(
        "the first topic still copied on f2",
        lambda: asyncio.run(delivered(target_bootstrap, f"{alias}.{first}", 15)).distinct == 15,
        60,
    )

    assert {topic for topic, _ in unit_owners(fleet_db, arn)} == {first}
    assert not asyncio.run(topic_exists(target_bootstrap, f"{alias}.{later}")), "a topic created later was copied"
