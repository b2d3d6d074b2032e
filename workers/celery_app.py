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

from celery import Celery, bootsteps, signals
from celery.apps import worker as celery_worker_program
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from models import logs
from models.settings import get_settings
from workers.engine import event_loop
from workers.fleet.agent import AgentThread, new_worker_id

log = logging.getLogger(__name__)


def _tolerate_restore_after_connection_loss() -> None:
    """Keep the worker alive when Redis dies while it holds unacknowledged messages.

    After the broker connection is lost, kombu 5.x still uses the closed channel: to restore the unacknowledged
    messages when it closes the channel, and to acknowledge a task (``task_acks_late``) that finished meanwhile.
    Both build a new Redis client from the connection's parameters, which are gone by then, and fail with an
    ``AttributeError`` that Celery treats as unrecoverable: the whole worker, and its fleet agent with it, exited
    on a Redis restart (seen in the test suite, both ways). Raised as a Redis ``ConnectionError`` instead, kombu
    and Celery handle it as the connection error it is (logged, and the reconnect goes on). Nothing is lost: the
    messages stay in Redis's unacked set and are handed out again after the visibility timeout.
    """
    original = getattr(kombu_redis.Channel, "_connparams")  # noqa: B009 (private, untyped in the stubs)
    if getattr(original, "_ferry_tolerant", False):
        return

    @functools.wraps(original)
    def connparams(self: Any, asynchronous: bool = False) -> Any:
        connection = self.connection
        if connection is None or connection.client is None:
            raise RedisConnectionError("the broker connection is closed")
        return original(self, asynchronous=asynchronous)

    connparams._ferry_tolerant = True  # type: ignore[attr-defined]
    setattr(kombu_redis.Channel, "_connparams", connparams)  # noqa: B010


_tolerate_restore_after_connection_loss()

app = Celery("ferry", include=["workers.tasks"])
app.config_from_object("workers.celery_config")


def _role() -> logs.Role:
    """Which Celery program this process runs (``celery ... beat`` or ``ferry beat``; else a worker)."""
    return "beat" if next((arg for arg in sys.argv[1:] if arg in ("worker", "beat")), None) == "beat" else "worker"


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Ferry's log format (models/logs.py) for worker and beat; Celery installs no handlers of its own."""
    logs.configure(_role(), get_settings().log_format, loglevel or get_settings().log_level)
    # Celery's notices from its signal handlers ("worker: Warm shutdown") bypass logging: as log lines instead.
    celery_worker_program.safe_say = _say  # type: ignore[attr-defined]


def _say(message: str, _stream: Any = None) -> None:
    logs.write_from_signal_handler("celery.apps.worker", message)


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
        worker_id = new_worker_id(worker.hostname)
        logs.set_process_context(worker_id=worker_id)  # one agent per worker process: every line names it
        event_loop.settle_garbage_collector()
        self.thread = AgentThread(settings, worker_id)
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None


app.steps["worker"].add(FleetAgentStep)
