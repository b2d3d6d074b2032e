"""The API's part in the fleet's reconcile loop.

- ``FleetTrigger`` wakes the loop right after the API changed desired state. The API never imports worker code:
  it sends the ``ferry.reconcile`` task by name to the fleet's queue. Sending is best effort: if Redis is briefly
  unavailable, the next scheduled pass (every few seconds, on every worker) applies the change anyway, so a
  failed send is logged, never returned to the caller.
- ``ReconcileWatch`` runs passes itself every ``FERRY_RECONCILE_INTERVAL_SECONDS`` (``models/fleet_reconcile.py``,
  under the same advisory lock as the workers'): when every worker is dead, nobody else could see it, and the
  replicators would read RUNNING while nothing copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from celery import Celery
from kombu.exceptions import KombuError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from models.db import make_sync_engine
from models.fleet_reconcile import reconcile_once
from models.settings import FerrySettings

log = logging.getLogger(__name__)

RECONCILE_TASK = "ferry.reconcile"


class FleetTrigger:
    def __init__(self, settings: FerrySettings) -> None:
        self.queue = settings.celery_queue
        self.expires = max(5.0, settings.reconcile_interval_seconds * 5)
        self._celery = Celery("ferry-api", broker=settings.redis_url, set_as_current=False)
        self._celery.conf.broker_connection_retry_on_startup = False
        self._celery.conf.broker_transport_options = {"max_retries": 1}

    def _send(self) -> None:
        self._celery.send_task(RECONCILE_TASK, queue=self.queue, expires=self.expires, ignore_result=True)

    async def reconcile_soon(self) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._send), timeout=2.0)
        except (TimeoutError, KombuError, OSError) as exc:
            log.warning("could not wake the fleet (%s); the next scheduled pass applies the change", exc)

    def close(self) -> None:
        self._celery.close()


class ReconcileWatch:
    """Reconcile passes from the API process, in a thread (the pass is synchronous SQL), until ``stop``."""

    def __init__(self, settings: FerrySettings) -> None:
        self.settings = settings
        self.by = f"api@{socket.gethostname()}:{os.getpid()}"
        self._engine: Engine | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._engine = make_sync_engine(self.settings)
        try:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(reconcile_once, self._engine, self.settings, self.by)
                except (SQLAlchemyError, OSError) as exc:
                    log.warning("reconcile pass from the API failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.reconcile_interval_seconds)
        finally:
            self._engine.dispose()
