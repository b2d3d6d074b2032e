"""The API's access key cache on a real database of its own: it answers from memory only while PostgreSQL's
notifications are shown to reach it, forgets a changed key, and stands aside while its listener is away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from dev.scratch_database import scratch_database
from models import access_keys
from models.access_key_cache import LISTENER_APPLICATION_NAME, AccessKeyCache
from models.access_keys import AccessKey, IssuedKey, VerifiableKey
from models.db import make_async_engine
from models.migrate import alembic_config, upgrade
from models.secret_box import SecretBox
from models.settings import FerrySettings
from tests.conftest import ACCOUNT, stack_settings
from tests.engine.conftest import wait_for

Condition = Callable[[], Awaitable[bool]]


class CountedReads:
    """The database read the API does, counting how often the cache had to fall back to it."""

    def __init__(self, engine: AsyncEngine, box: SecretBox) -> None:
        self.engine, self.box, self.count = engine, box, 0

    async def __call__(self, access_key_id: str) -> VerifiableKey | None:
        self.count += 1
        async with self.engine.connect() as conn:
            return await access_keys.verifiable_key(conn, self.box, access_key_id)


@pytest.fixture(scope="module")
def scratch_settings(stack: dict[str, Any]) -> Iterator[FerrySettings]:
    """A database of this module's own: it truncates the key table and terminates its listeners."""
    with scratch_database(stack["test_database_url"], "ferry_keys") as url:
        yield stack_settings(stack, database_url=url)


@pytest.fixture
async def engine(scratch_settings: FerrySettings) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(scratch_settings)
    yield engine
    await engine.dispose()


@pytest.fixture
def box(scratch_settings: FerrySettings) -> SecretBox:
    material = scratch_settings.secret_key_material()
    assert material is not None
    return SecretBox(material)


@pytest.fixture
async def cache(scratch_settings: FerrySettings) -> AsyncIterator[AccessKeyCache]:
    # Probes far apart: a probe notification waiting on the socket sends a lookup to the database, which would
    # blur the counts of reads these tests assert.
    cache = AccessKeyCache(scratch_settings.database_url, probe_seconds=60.0, retry_seconds=3.0)
    listener = asyncio.create_task(cache.run())
    try:
        await wait_for(_answering(cache), 10, "the cache's listener to prove that notifications arrive")
        yield cache
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


def _answering(cache: AccessKeyCache, answering: bool = True) -> Condition:
    async def check() -> bool:
        return cache.answering is answering

    return check


async def _new_key(engine: AsyncEngine, box: SecretBox) -> IssuedKey:
    async with engine.begin() as conn:
        return await access_keys.create_key(conn, box, account_id=ACCOUNT, description="key cache test")


async def _revoke(engine: AsyncEngine, access_key_id: str) -> None:
    async with engine.begin() as conn:
        assert await access_keys.revoke_key(conn, access_key_id)


async def test_a_key_is_read_once_then_forgotten_when_revoked(
    cache: AccessKeyCache, engine: AsyncEngine, box: SecretBox
) -> None:
    key, reads = await _new_key(engine, box), CountedReads(engine, box)
    for _ in range(5):
        found = await cache.lookup(key.access_key_id, reads)
        assert found is not None and found.secret_access_key == key.secret_access_key
    assert reads.count == 1, "four of the five lookups come from memory"

    await _revoke(engine, key.access_key_id)
    await wait_for(_forgotten(cache, key.access_key_id, reads), 5, "the revoked key to be refused")
    assert await cache.lookup(key.access_key_id, reads) is None
    assert await cache.lookup(key.access_key_id, reads) is None
    unknown = "FKIA" + "A" * 16
    before = reads.count
    assert await cache.lookup(unknown, reads) is None and await cache.lookup(unknown, reads) is None
    assert reads.count == before + 2, "an unknown key id is never cached: each lookup reads the database"


def _forgotten(cache: AccessKeyCache, access_key_id: str, reads: CountedReads) -> Condition:
    async def check() -> bool:
        return await cache.lookup(access_key_id, reads) is None

    return check


async def test_a_deleted_key_and_every_key_of_a_truncate_are_forgotten(
    cache: AccessKeyCache, engine: AsyncEngine, box: SecretBox
) -> None:
    key, reads = await _new_key(engine, box), CountedReads(engine, box)
    assert await cache.lookup(key.access_key_id, reads) is not None
    async with engine.begin() as conn:
        await conn.execute(delete(AccessKey).where(AccessKey.access_key_id == key.access_key_id))
    await wait_for(_forgotten(cache, key.access_key_id, reads), 5, "the deleted key to be refused")

    # A TRUNCATE fires no row trigger: its statement trigger says "*", and the cache forgets every key.
    other = await _new_key(engine, box)
    assert await cache.lookup(other.access_key_id, reads) is not None
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE access_keys")
    before = reads.count
    await wait_for(_read_again(cache, other.access_key_id, reads, before), 5, "every key to be forgotten")
    assert await cache.lookup(other.access_key_id, reads) is None


def _read_again(cache: AccessKeyCache, access_key_id: str, reads: CountedReads, before: int) -> Condition:
    async def check() -> bool:
        await cache.lookup(access_key_id, reads)
        return reads.count > before

    return check


async def test_a_read_that_races_a_revocation_is_not_kept(
    cache: AccessKeyCache, engine: AsyncEngine, box: SecretBox
) -> None:
    key, reads = await _new_key(engine, box), CountedReads(engine, box)

    async def read_then_revoke(access_key_id: str) -> VerifiableKey | None:
        found = await reads(access_key_id)  # read while the key is still active...
        await _revoke(engine, access_key_id)  # ...and revoked before the cache could keep what it read
        await wait_for(_generation_moved(cache, generation), 5, "the revocation's notification")
        return found

    generation = cache._generation
    assert await cache.lookup(key.access_key_id, read_then_revoke) is not None
    assert await cache.lookup(key.access_key_id, reads) is None, "the stale read was not kept"


def _generation_moved(cache: AccessKeyCache, generation: int) -> Condition:
    async def check() -> bool:
        return cache._generation != generation

    return check


async def test_the_cache_stands_aside_while_its_listener_is_away(
    cache: AccessKeyCache, engine: AsyncEngine, box: SecretBox, scratch_settings: FerrySettings
) -> None:
    key, reads = await _new_key(engine, box), CountedReads(engine, box)
    assert await cache.lookup(key.access_key_id, reads) is not None
    dsn = _dsn(scratch_settings)
    terminated = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND datname = current_database()"
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(terminated, (LISTENER_APPLICATION_NAME,))
    await wait_for(_answering(cache, False), 10, "the cache to stand aside", interval=0.01)

    before = reads.count
    assert await cache.lookup(key.access_key_id, reads) is not None
    assert await cache.lookup(key.access_key_id, reads) is not None
    assert reads.count == before + 2, "while the listener is away, every lookup reads the database"

    await wait_for(_answering(cache), 20, "the listener to come back and prove itself again")
    before = reads.count
    assert await cache.lookup(key.access_key_id, reads) is not None
    assert reads.count == before + 1, "the cache starts empty after a reconnect"


async def test_without_its_triggers_the_cache_never_answers(scratch_settings: FerrySettings) -> None:
    """A database not migrated to 0015, or with a trigger disabled, sends no notification when a key changes: the
    listener refuses to start, and keys are read from the database."""
    cache = AccessKeyCache(scratch_settings.database_url)
    async with await psycopg.AsyncConnection.connect(_dsn(scratch_settings), autocommit=True) as admin:
        await admin.execute("ALTER TABLE access_keys DISABLE TRIGGER access_keys_changed")
        try:
            with pytest.raises(psycopg.OperationalError, match="missing or disabled"):
                await cache._listen()
        finally:
            await admin.execute("ALTER TABLE access_keys ENABLE TRIGGER access_keys_changed")
    assert not cache.answering

    config = alembic_config(scratch_settings.database_url)
    await asyncio.to_thread(command.downgrade, config, "0014")
    try:
        with pytest.raises(psycopg.OperationalError, match="missing or disabled"):
            await cache._listen()
        assert not cache.answering
    finally:
        await asyncio.to_thread(upgrade, scratch_settings.database_url)


def _dsn(settings: FerrySettings) -> str:
    return settings.database_url.replace("postgresql+psycopg://", "postgresql://")
