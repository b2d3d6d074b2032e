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
# A task is acknowledged after it ran, so a worker that dies mid-task has it redelivered. Long-running work
# must therefore hold a fenced lease (see docs/ARCHITECTURE.md); tasks themselves stay short.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True
broker_transport_options = {"visibility_timeout": 3600}
timezone = "UTC"
beat_schedule = {
    "fleet-heartbeat": {
        "task": "ferry.ping",
        "schedule": _settings.reconcile_interval_seconds,
    },
}
