"""The Celery application (``celery -A workers.celery_app worker|beat``).

Creating the Celery object connects to nothing; its configuration is read from Ferry's settings only when
Celery first needs it (``workers.celery_config``), so importing this module has no side effects.

Every worker process also runs a fleet agent (``workers/fleet/agent.py``) in a thread that the worker starts
and stops with itself: Celery supervises it, and the agent does the replication work it holds leases for.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from typing import Any

from celery import Celery, bootsteps

from models.settings import get_settings
from workers.fleet.agent import AgentThread, new_worker_id

log = logging.getLogger(__name__)

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
