"""The fleet agent: runs inside every Celery worker process and does what the reconcile loop assigned to it.

Celery supervises the process (start, stop, restart); the agent is two plain asyncio loops, each on a thread of
its own, started and stopped by a worker bootstep (``workers/celery_app.py``):

- the **control loop** (``workers/fleet/control.py``): heartbeat, leases (renew, release, acquire), which units
  this worker runs, reconcile passes and liveness. Light, and never behind the work it controls;
- the **work loop** (``workers/fleet/work.py``): the metadata and copy units of the leases held, offset map
  flushes and measurements to Redis.

They share only the lease table the control loop keeps (the work loop's write gates read it) and the set of
units whose work still runs (so a moved unit is released once stopped). Nothing here depends on Celery messages
for ownership: a redelivered or late task cannot start copying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid

from models.settings import FerrySettings
from workers.engine import event_loop
from workers.fleet.control import ControlLoop, DesiredWork
from workers.fleet.work import WorkLoop

log = logging.getLogger(__name__)


def new_worker_id(hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FleetAgent:
    """The two loops of one worker, wired together."""

    def __init__(self, settings: FerrySettings, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.work: WorkLoop
        self.control = ControlLoop(
            settings,
            self.worker_id,
            running=lambda: self.work.running,
            offer=self._offer_work,
            work_beat=lambda: self.work.last_beat,
            load=lambda: self.work.load_meter.sample,
        )
        self.work = WorkLoop(
            settings,
            self.worker_id,
            holds=self.control.holds,
            holds_unit=self.control.holds_unit,
            lease_epochs=self.control.lease_epochs,
            request_reconcile=self.control.request_reconcile,
        )

    def _offer_work(self, desired: DesiredWork) -> None:
        self.work.offer(desired)


class _LoopThread(threading.Thread):
    """One asyncio loop on a thread, stopped through an event set from another thread."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.ready = threading.Event()
        self.finished: asyncio.Event | None = None

    async def main(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        event_loop.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.ready.set()
        await self.main()

    def request_stop(self) -> None:
        self.ready.wait(30)
        loop, event = self.loop, self.stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                loop.call_soon_threadsafe(event.set)


class AgentThread:
    """Runs a FleetAgent: its control loop and its work loop on two threads, so Celery's worker threads never
    block either and the work never delays the control."""

    def __init__(self, settings: FerrySettings, worker_id: str | None = None) -> None:
        self.agent = FleetAgent(settings, worker_id)
        self._work_stopped = threading.Event()
        agent = self.agent
        outer = self

        class Control(_LoopThread):
            async def main(self) -> None:
                assert self.stop_event is not None
                work_stopped = asyncio.Event()

                async def watch_work() -> None:
                    await asyncio.to_thread(outer._work_stopped.wait)
                    work_stopped.set()

                watcher = asyncio.create_task(watch_work())
                try:
                    await agent.control.run(self.stop_event, work_stopped)
                finally:
                    watcher.cancel()

        class Work(_LoopThread):
            async def main(self) -> None:
                assert self.stop_event is not None
                try:
                    await agent.work.run(self.stop_event)
                finally:
                    outer._work_stopped.set()

        self._control = Control("ferry-fleet-control")
        self._work = Work("ferry-fleet-work")

    def start(self) -> None:
        self._control.start()
        self._work.start()

    def is_alive(self) -> bool:
        return self._control.is_alive() and self._work.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the work first (copiers write final progress under leases the control loop still renews), then
        the control loop, which releases every lease and leaves the fleet."""
        self._work.request_stop()
        self._work.join(timeout)
        self._work_stopped.set()
        self._control.request_stop()
        self._control.join(timeout)
