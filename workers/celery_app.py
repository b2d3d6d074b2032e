"""The Celery application (``celery -A workers.celery_app worker|beat``).

Creating the Celery object connects to nothing; its configuration is read from Ferry's settings only when
Celery first needs it (``workers.celery_config``), so importing this module connects to nothing. It does mend
one kombu bug on import (``_tolerate_restore_after_connection_loss``), so a Redis restart never stops a worker.

Every worker process also runs a fleet agent (``workers/fleet/agent.py``) in a thread that the worker starts
and stops with itself: Celery supervises it, and the agent does the replication work it holds leases for.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import signal
import sys
from typing import Any

from celery import Celery, bootsteps
from kombu.transport import redis as kombu_redis

from models.settings import get_settings
from workers.fleet.agent import AgentThread, new_worker_id

log = logging.getLogger(__name__)


def _tolerate_restore_after_connection_loss() -> None:
    """Keep the worker alive when Redis dies while it holds unacknowledged messages.

    kombu 5.x closes the channel after the connection is gone, and restoring the unacknowledged messages then
    fails with ``AttributeError: 'NoneType' object has no attribute 'hostname'`` (the connection's parameters
    are cleared), which Celery treats as unrecoverable: the whole worker, and its fleet agent with it, exits
    on a Redis restart. Nothing is lost by not restoring here: the messages stay in Redis's unacked set, and
    Redis hands them out again after the visibility timeout (``restore_visible``).
    """
    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "_ferry_tolerant", False):
        return

    @functools.wraps(original)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return original(self, client)
        except AttributeError:
            connection = getattr(self.channel, "connection", None)
            if connection is not None and getattr(connection, "client", None) is not None:
                raise  # not the closed-connection case: a real bug, keep it loud
            log.warning(
                "the broker connection is gone: %d unacknowledged messages are left to Redis's visibility "
                "timeout to redeliver",
                len(self._delivered),
            )
            return None

    restore_unacked._ferry_tolerant = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]


_tolerate_restore_after_connection_loss()

app = Celery("ferry", include=["workers.tasks"])
app.config_from_object("workers.celery_config")


class FleetAgentStep(bootsteps.StartStopStep):
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: AgentThread | None = None

    def start(self, worker: Any) -> None:
        # kill -USR1 <pid> prints every thread's stack to the log: how to see where a hung worker waits.
        # (Celery replaces sys.stderr with a logging proxy; the real stream is sys.__stderr__.)
        if sys.__stderr__ is not None:
            faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
        settings = get_settings()
        if not settings.fleet_agent_enabled:
            log.info("fleet agent disabled (FERRY_FLEET_AGENT_ENABLED=false)")
            return
        self.thread = AgentThread(settings, new_worker_id(worker.hostname))
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None


app.steps["worker"].add(FleetAgentStep)
