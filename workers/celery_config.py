"""Celery configuration derived from Ferry's settings; imported lazily by Celery when it configures itself."""

from __future__ import annotations

from models.settings import get_settings

_settings = get_settings()

broker_url = _settings.redis_url
result_backend = _settings.redis_url
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_expires = 3600
task_default_queue = _settings.celery_queue
# Tasks are short (a reconcile pass); replication runs in the fleet agent, never inside a task. Threads, not
# forked children, so the agent's event loop and sockets are never copied into a fork.
worker_pool = "threads"
worker_concurrency = 2
# A task is acknowledged after it ran, so a worker that dies mid-task has it redelivered; every task is
# idempotent (a reconcile pass is level-triggered), so a redelivery is harmless.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True
broker_transport_options = {"visibility_timeout": 600}
timezone = "UTC"
beat_schedule = {
    "reconcile": {
        "task": "ferry.reconcile",
        "schedule": _settings.reconcile_interval_seconds,
        "options": {"expires": max(1.0, _settings.reconcile_interval_seconds * 2)},
    },
}
