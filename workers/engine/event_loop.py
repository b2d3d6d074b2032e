"""The event loop Ferry's processes run on (uvloop where installed, else asyncio's), and their garbage collector.

uvloop's transports read and write sockets in C; the engine spends a third of a catch-up in asyncio's
selector and stream code (the profile step of ``make bench``), so the loop is a large share of the record path.
``FERRY_EVENT_LOOP=asyncio`` chooses the standard loop (to compare, or to rule the loop out of a problem).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOP_ENV = "FERRY_EVENT_LOOP"
# py-spy on profile A, exactly-once, 1,000,000 x 1 KiB: decoding fell from 67-70 samples to 34-45 in a fleet worker
# (after gc.freeze) and from 53 to 35 in the engine at 10,000 against Python's default of 700.
YOUNG_COLLECTION_OBJECTS = 10_000


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's default (asked for, or uvloop not installed)."""
    chosen = os.environ.get(EVENT_LOOP_ENV, "uvloop").strip().lower()
    if chosen not in ("uvloop", "asyncio"):
        raise ValueError(f"{EVENT_LOOP_ENV} must be uvloop or asyncio, not {chosen!r}")
    if chosen == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional: the standard loop works without it
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the chosen loop."""
    try:
        factory = loop_factory()
    except ValueError:
        main.close()  # never to run: no "was never awaited" warning after the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def settle_garbage_collector() -> None:
    """Called by a copying process once it has started (the engine's CLI, the fleet agent): the objects made so far
    (modules, clients, settings) are left out of every later collection, and the youngest generation is collected
    every 10,000 new objects instead of 700. Copying makes two tracked objects per decoded record (aiokafka's
    record and its headers list) that live until their batch or transaction is acknowledged, so with the defaults
    a collection ran every few hundred records and the full ones walked the whole process: in a fleet worker
    (Celery, SQLAlchemy and boto3 loaded) decoding took 2.5 times the CPU it takes in the engine alone. The records
    hold no cycles (reference counting frees them), so collecting less often does not keep them longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_OBJECTS, *gc.get_threshold()[1:])
