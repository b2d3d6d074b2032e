"""Wakes the fleet's reconcile loop right after the API changed desired state.

The API never imports worker code: it sends the ``ferry.reconcile`` task by name to the fleet's queue. Sending
is best effort: if Redis is briefly unavailable, the next beat-driven pass (every few seconds) applies the
change anyway, so a failed send is logged, never returned to the caller.
"""

from __future__ import annotations

import asyncio
import logging

from celery import Celery
from kombu.exceptions import KombuError

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
