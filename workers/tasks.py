"""Celery tasks: thin entry points that call into the fleet code; no business logic lives here."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine

from models.db import make_sync_engine
from models.fleet_reconcile import reconcile_once
from models.settings import get_settings
from workers.celery_app import app


@lru_cache(maxsize=1)
def _database() -> Engine:
    return make_sync_engine(get_settings())


@app.task(name="ferry.ping")
def ping() -> dict[str, Any]:
    """Answers with the worker's identity: proves a real worker process picked the task up."""
    return {"pong": True, "hostname": socket.gethostname(), "pid": os.getpid()}


@app.task(name="ferry.reconcile", ignore_result=True)
def reconcile() -> bool:
    """One reconcile pass (see models/fleet_reconcile.py); False when another pass was already running."""
    result = reconcile_once(_database(), get_settings(), f"task@{socket.gethostname()}:{os.getpid()}")
    return result is not None
