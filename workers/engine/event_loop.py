"""The event loop Ferry's processes run on: uvloop where it is installed, else asyncio's own.

uvloop's transports read and write sockets in C; the engine spends a third of a catch-up in asyncio's
selector and stream code (the profile step of ``make bench``), so the loop is a large share of the record path.
``FERRY_EVENT_LOOP=asyncio`` chooses the standard loop (to compare, or to rule the loop out of a problem).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOP_ENV = "FERRY_EVENT_LOOP"


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
