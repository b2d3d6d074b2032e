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
# Redis going away is an outage to ride out, not a reason to exit: retry the broker forever (Celery's default gives
# up after 100 attempts), and give every Redis socket a deadline so a Redis that stops answering fails calls
# instead of hanging the consumer. Replication never waits on Celery or Redis either way.
broker_connection_retry = True
broker_connection_max_retries = None
broker_connection_timeout = 5
broker_transport_options = {
    "visibility_timeout": 600,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
    "health_check_interval": 10,
}
redis_socket_timeout = 10
redis_socket_connect_timeout = 5
redis_backend_health_check_interval = 10
timezone = "UTC"
beat_schedule = {
    "reconcile": {
        "task": "ferry.reconcile",
        "schedule": _settings.reconcile_interval_seconds,
        "options": {"expires": max(1.0, _settings.reconcile_interval_seconds * 2)},
    },
}
