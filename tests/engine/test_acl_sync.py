"""copyAccessControlListsForTopics: the source topics' ACLs appear on their target topics as MirrorMaker 2 copies
them (ALLOW WRITE left out, ALLOW ALL as ALLOW READ, DENY and host restrictions kept), ACLs added later follow,
and nothing is copied when the flag is off. The target's ACLs are read back with Kafka's own AclCommand."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import admin_client, create_topic, running, spec_for, wait_for
from workers.engine import admin as kafka_admin
from workers.engine.admin import TopicAcl

pytestmark = pytest.mark.asyncio

ALLOW, DENY = kafka_admin.PERMISSION_ALLOW, 2
READ, WRITE, ALL, DESCRIBE = kafka_admin.OPERATION_READ, kafka_admin.OPERATION_WRITE, kafka_admin.OPERATION_ALL, 8
ACL_LINE = re.compile(r"\(principal=(?P<principal>[^,]+), host=(?P<host>[^,]+), operation=(?P<op>\w+), "
                      r"permissionType=(?P<perm>\w+)\)")  # fmt: skip


async def add_acls(bootstrap: str, acls: list[TopicAcl]) -> None:
    async with admin_client(bootstrap) as admin:
        for acl in acls:
            await kafka_admin.create_topic_acl(admin, acl)


async def topic_acls(bootstrap: str, topic: str) -> set[TopicAcl]:
    async with admin_client(bootstrap) as admin:
        found = await kafka_admin.describe_topic_acls(admin)
    assert found is not None, "the dev clusters run an authorizer"
    return {acl for acl in found if acl.topic == topic}


def acls_by_acl_command(stack: dict[str, Any], bootstrap: str, topic: str) -> set[tuple[str, str, str, str]]:
    """(principal, host, operation, permission) of a topic, as Kafka's kafka-acls tool lists them."""
    lib = Path(stack["kafka_lib"])
    argv = ["java", "-Xmx256m", "-cp", f"{lib}/*", "org.apache.kafka.tools.AclCommand",
            "--bootstrap-server", bootstrap, "--list", "--topic", topic]  # fmt: skip
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {(m["principal"], m["host"], m["op"], m["perm"]) for m in ACL_LINE.finditer(result.stdout)}


async def test_topic_acls_are_copied_like_mirrormaker(
    stack: dict[str, Any], source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"acl-{unique}"
    await create_topic(source_bootstrap, topic, partitions=1)
    await add_acls(
        source_bootstrap,
        [
            TopicAcl(topic, "User:alice", "*", READ, ALLOW),
            TopicAcl(topic, "User:alice", "*", WRITE, ALLOW),
            TopicAcl(topic, "User:bob", "*", ALL, ALLOW),
            TopicAcl(topic, "User:mallory", "*", READ, DENY),
            TopicAcl(topic, "User:carol", "10.0.0.1", DESCRIBE, ALLOW),
        ],
    )
    spec = spec_for(unique, [topic])
    target_topic = spec.target_topic(topic)
    async with running(spec, source_bootstrap, target_bootstrap, config_refresh_s=0.5):
        await wait_for(lambda: _has(target_bootstrap, target_topic, 4), 30, "the copied ACLs on the target topic")
        # An ACL added on the source later follows at the next config pass.
        await add_acls(source_bootstrap, [TopicAcl(topic, "User:dave", "*", READ, ALLOW)])
        await wait_for(lambda: _has(target_bootstrap, target_topic, 5), 30, "the later ACL on the target topic")
    listed = await asyncio.to_thread(acls_by_acl_command, stack, target_bootstrap, target_topic)
    assert listed == {
        ("User:alice", "*", "READ", "ALLOW"),
        ("User:bob", "*", "READ", "ALLOW"),
        ("User:mallory", "*", "READ", "DENY"),
        ("User:carol", "10.0.0.1", "DESCRIBE", "ALLOW"),
        ("User:dave", "*", "READ", "ALLOW"),
    }


async def test_no_acls_are_copied_when_the_flag_is_off(
    source_bootstrap: str, target_bootstrap: str, unique: str
) -> None:
    topic = f"acl-off-{unique}"
    await create_topic(source_bootstrap, topic, partitions=1)
    await add_acls(source_bootstrap, [TopicAcl(topic, "User:alice", "*", READ, ALLOW)])
    spec = spec_for(unique, [topic], copy_acls=False)
    target_topic = spec.target_topic(topic)
    async with running(spec, source_bootstrap, target_bootstrap) as replicator:
        # Two more full passes (configs included) after the one at start.
        for _ in range(2):
            report = await replicator.synchronizer.sync_once(sync_configs=True)
            assert topic in report.topics
            assert report.acls_created == []
    assert await topic_acls(target_bootstrap, target_topic) == set()


async def _has(bootstrap: str, topic: str, count: int) -> bool:
    return len(await topic_acls(bootstrap, topic)) >= count
