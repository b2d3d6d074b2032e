"""Verified access keys kept in the API process, and forgotten as soon as PostgreSQL says that they changed.

Every signed request needs its key's secret. Reading it from the database means a pool checkout, a ping, BEGIN, a
SELECT and ROLLBACK: about a fifth of the API's CPU for a DescribeReplicator. A cache makes it a dict lookup. A
revoked key must still be refused within moments, in every API process. So the cache answers only when it can
know that its copy is current:

- A trigger (migration 0015) NOTIFYs the channel ``ferry_access_keys`` at commit of every UPDATE or DELETE of
  ``access_keys``, with the key id (``*`` for a TRUNCATE). Each API process LISTENs on a connection of its own and
  forgets the key. A key that is not yet cached needs nothing: it is read from the database.
- The cache answers only while its listener is connected and has proven that notifications from other sessions
  reach it. A probe NOTIFY is sent from a second connection when the listener connects, then every
  ``probe_seconds``, and must come back to the listener (from that other backend) before the next probe. Both
  triggers must also be present and enabled. If a probe does not come back (a pooler in between that drops LISTEN,
  a connection that died without a word), or the connection drops, or anything else goes wrong in the listener,
  every lookup reads the database, as if there were no cache. After a reconnect the cache starts empty:
  notifications sent while it was away are lost.
- A lookup that finds unread data on the listener's socket reads the database: a notification may be in flight.
  (Over TLS, bytes that the TLS layer has already decrypted are invisible to this check. libpq reads every
  available byte each time it is woken, so they are handled in the same step.)
- A lookup that read the database keeps the key only if no notification arrived meanwhile (a generation count).
  Without that check, a read from just before a revocation could be stored just after it.
- An entry is kept for at most ``max_age_seconds``.

How soon a revocation takes effect: as soon as the listening backend sends the notification, usually within a
millisecond of the commit. At worst, it takes ``probe_seconds``, when the listener's connection dies silently.
Triggers do not fire under ``session_replication_role = replica`` (a logical replication apply, or
``pg_restore --disable-triggers``). Keys changed that way are not forgotten until ``max_age_seconds``. Unknown and
revoked keys are never cached, so a hostile caller with random key ids costs what it cost before.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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
# Both triggers of migration 0015, on access_keys, enabled ('O': origin and local, 'A': always).
_TRIGGERS_ENABLED = (
    "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'access_keys'::regclass "
    "AND tgname IN ('access_keys_changed', 'access_keys_truncated') AND tgenabled IN ('O', 'A')"
)


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
        self._prober_conninfo = make_conninfo(
            url, application_name=f"{LISTENER_APPLICATION_NAME}-probe", **CONNECT_ARGS
        )
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self.probe_seconds = probe_seconds
        self.retry_seconds = retry_seconds
        self._keys: dict[str, tuple[VerifiableKey, float]] = {}
        self._generation = 0
        self._listener: psycopg.AsyncConnection[Any] | None = None  # set while connected and proven
        self._answered_since_failure = False

    @property
    def answering(self) -> bool:
        """Whether cached keys are used: the listener is connected and its last probe came back."""
        return self._listener is not None

    async def lookup(
        self, access_key_id: str, read: Callable[[str], Awaitable[VerifiableKey | None]]
    ) -> VerifiableKey | None:
        """The active key ``access_key_id``: from the cache when it can be trusted, otherwise ``read`` from the
        database (and kept, when nothing changed meanwhile)."""
        if self._listener is not None and not self._notification_waiting(self._listener):
            cached = self._keys.get(access_key_id)
            if cached is not None and time.monotonic() - cached[1] < self.max_age_seconds:
                return cached[0]
        generation = self._generation
        key = await read(access_key_id)
        if key is not None and self._listener is not None and generation == self._generation:
            if len(self._keys) >= self.max_entries:
                self._keys.clear()
            self._keys[access_key_id] = (key, time.monotonic())
        return key

    @staticmethod
    def _notification_waiting(listener: psycopg.AsyncConnection[Any]) -> bool:
        if listener.closed:
            return True
        try:
            fd = listener.fileno()
        except psycopg.Error:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def _forget(self, access_key_id: str) -> None:
        self._generation += 1
        if access_key_id == EVERY_KEY:
            self._keys.clear()
        else:
            self._keys.pop(access_key_id, None)

    def _stop_answering(self) -> None:
        self._listener = None
        self._generation += 1
        self._keys.clear()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after any failure (the cache is off while disconnected)."""
        warned = False  # once per outage, not once per retry
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                self._stop_answering()
                raise
            # Whatever went wrong, _listen stopped the answers; retrying keeps the cache from staying off for good.
            except Exception as exc:  # noqa: BLE001
                self._stop_answering()
                if self._answered_since_failure or not warned:
                    log.warning("access key cache off (every request reads its key from the database): %s", exc)
                    warned, self._answered_since_failure = True, False
            await asyncio.sleep(self.retry_seconds)

    async def _listen(self) -> None:
        try:
            async with (
                await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as listener,
                await psycopg.AsyncConnection.connect(self._prober_conninfo, autocommit=True) as prober,
            ):
                await listener.execute(f"LISTEN {CHANNEL}")
                while True:
                    row = await (await prober.execute(_TRIGGERS_ENABLED)).fetchone()
                    if row is None or row[0] != 2:
                        # Without them no notification says that a key changed: a cache would never forget one.
                        raise psycopg.OperationalError(
                            "the triggers access_keys_changed and access_keys_truncated are missing or disabled "
                            "(run the migrations)"
                        )
                    probe = f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
                    # From another session, as a revocation comes: a session's own notifications come back to it
                    # even where those of others would not (a pooler that moves LISTEN to another server session).
                    await prober.execute("SELECT pg_notify(%s, %s)", (CHANNEL, probe))
                    notifications = listener.notifies(timeout=self.probe_seconds)
                    if not await self._handle(notifications, probe, listener):
                        raise psycopg.OperationalError(
                            f"a probe notification on {CHANNEL} did not come back within {self.probe_seconds:g}s"
                        )
        finally:
            self._stop_answering()  # before the connection closes, whatever ends the listener

    async def _handle(
        self,
        notifications: AsyncIterator[psycopg.Notify],
        probe: str,
        listener: psycopg.AsyncConnection[Any],
    ) -> bool:
        """Forget the keys named; whether ``probe`` came back from another backend (which turns the cache on)."""
        came_back = False
        own_pid = listener.info.backend_pid
        async for notification in notifications:
            if notification.payload == probe and notification.pid != own_pid:
                came_back = True
                if self._listener is None:
                    self._generation += 1
                    self._keys.clear()
                    self._listener = listener
                    self._answered_since_failure = True
                    log.info("access key cache on: notifications on %s arrive", CHANNEL)
            elif not notification.payload.startswith(_PROBE_PREFIX):
                self._forget(notification.payload)
        return came_back
