"""Celery tasks: thin entry points that call into the fleet code; no business logic lives here."""

from __future__ import annotations

import os
import socket
from typing import Any

from workers.celery_app import app


@app.task(name="ferry.ping")
def ping() -> dict[str, Any]:
    """Answers with the worker's identity: proves a real worker process picked the task up."""
    return {"pong": True, "hostname": socket.gethostname(), "pid": os.getpid()}
