"""Verified access keys kept in the API process, and forgotten as soon as PostgreSQL says that they changed.

Every signed request needs its key's secret. Read from the database, that is a pool checkout, a ping, BEGIN, a
SELECT and ROLLBACK: about a fifth of the API's CPU for a DescribeReplicator. A cache makes it a dict lookup. A
revoked key must still fail on its next request, in every API process. So the cache answers only when it can
know that its copy is current:

- A trigger (migration 0015) NOTIFYs the channel ``ferry_access_keys`` at commit of every UPDATE or DELETE of
  ``access_keys``, with the key id (``*`` for a TRUNCATE). Each API process LISTENs on a connection of its own and
  forgets the key. A key that is not yet cached needs nothing: it is read from the database.
- The cache answers only while its listener is connected and has proven that notifications reach it: a probe
  NOTIFY sent when it connects, then every ``probe_seconds``, must come back before the next probe. If one does
  not come back, or the connection drops (or a pooler in between drops LISTEN), every lookup reads the database,
  as if there were no cache. After a reconnect the cache starts empty: notifications sent while it was away are
  lost.
- A lookup finds the listener's socket with unread data: a notification may be in flight, so it reads the
  database.
- A lookup that read the database keeps the key only if no notification arrived meanwhile (a generation count).
  Without that check, a read from just before a revocation could be stored just after it.
- An entry is kept for at most ``max_age_seconds``.

Unknown and revoked keys are never cached. A hostile caller with random key ids costs what it cost before.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from models.access_keys import VerifiableKey
from models.db import CONNECT_ARGS

log = logging.getLogger(__name__)

CHANNEL = "ferry_access_keys"
EVERY_KEY = "*"
LISTENER_APPLICATION_NAME = "ferry-access-key-listener"
_PROBE_PREFIX = "probe:"
_TRIGGER_PRESENT = "SELECT 1 FROM pg_trigger WHERE tgname = 'access_keys_changed' AND NOT tgisinternal"


class AccessKeyCache:
    def __init__(
        self,
        database_url: str,
        *,
        max_entries: int = 10_000,
        max_age_seconds: float = 300.0,
        probe_seconds: float = 5.0,
        retry_seconds: float = 2.0,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._conninfo = make_conninfo(url, application_name=LISTENER_APPLICATION_NAME, **CONNECT_ARGS)
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self.probe_seconds = probe_seconds
        self.retry_seconds = retry_seconds
        self._keys: dict[str, tuple[VerifiableKey, float]] = {}
        self._generation = 0
        self._listener_fd: int | None = None  # set while the listener is connected and proven
        self._probing = False
        self.hits = 0
        self.misses = 0

    @property
    def answering(self) -> bool:
        """Whether cached keys are used: the listener is connected and its last probe came back."""
        return self._listener_fd is not None

    async def lookup(
        self, access_key_id: str, read: Callable[[str], Awaitable[VerifiableKey | None]]
    ) -> VerifiableKey | None:
        """The active key ``access_key_id``: from the cache when it can be trusted, otherwise ``read`` from the
        database (and kept, when nothing changed meanwhile)."""
        if self._listener_fd is not None and not self._probing and not self._notification_waiting():
            cached = self._keys.get(access_key_id)
            if cached is not None and time.monotonic() - cached[1] < self.max_age_seconds:
                self.hits += 1
                return cached[0]
        self.misses += 1
        generation = self._generation
        key = await read(access_key_id)
        if key is not None and self._listener_fd is not None and generation == self._generation:
            if len(self._keys) >= self.max_entries:
                self._keys.clear()
            self._keys[access_key_id] = (key, time.monotonic())
        return key

    def _notification_waiting(self) -> bool:
        assert self._listener_fd is not None
        poller = select.poll()
        poller.register(self._listener_fd, select.POLLIN)
        return bool(poller.poll(0))

    def _forget(self, access_key_id: str) -> None:
        self._generation += 1
        if access_key_id == EVERY_KEY:
            self._keys.clear()
        else:
            self._keys.pop(access_key_id, None)

    def _stop_answering(self) -> None:
        self._listener_fd = None
        self._generation += 1
        self._keys.clear()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after any failure (the cache is off while disconnected)."""
        warned = False
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                self._stop_answering()
                raise
            except (psycopg.Error, OSError) as exc:
                was_answering = self.answering
                self._stop_answering()
                if was_answering or not warned:  # once per outage, not once per retry
                    log.warning("access key cache off (every request reads its key from the database): %s", exc)
                    warned = True
            await asyncio.sleep(self.retry_seconds)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            if (await (await conn.execute(_TRIGGER_PRESENT)).fetchone()) is None:
                # A database not migrated to 0015 sends no notifications: a cache would never forget a key.
                raise psycopg.OperationalError("the access_keys_changed trigger is missing (run the migrations)")
            await conn.execute(f"LISTEN {CHANNEL}")
            while True:
                probe = f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
                # While the probe runs, psycopg keeps what it reads in a backlog that the socket check in lookup()
                # cannot see: the cache stands aside until that backlog is handled.
                self._probing = True
                try:
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, probe))
                    came_back = await self._handle(conn.notifies(timeout=0), probe, conn.fileno())
                finally:
                    self._probing = False
                came_back_later = await self._handle(conn.notifies(timeout=self.probe_seconds), probe, conn.fileno())
                if not (came_back or came_back_later):
                    raise psycopg.OperationalError(
                        f"a probe notification on {CHANNEL} did not come back within {self.probe_seconds:g}s"
                    )

    async def _handle(self, notifications: AsyncIterator[psycopg.Notify], probe: str, fd: int) -> bool:
        """Forget the keys named; whether ``probe`` came back (which turns the cache on)."""
        came_back = False
        async for notification in notifications:
            if notification.payload == probe:
                came_back = True
                if self._listener_fd is None:
                    self._generation += 1
                    self._keys.clear()
                    self._listener_fd = fd
                    log.info("access key cache on: notifications on %s arrive", CHANNEL)
            elif not notification.payload.startswith(_PROBE_PREFIX):
                self._forget(notification.payload)
        return came_back
