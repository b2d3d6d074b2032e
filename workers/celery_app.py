"""The Celery application (``celery -A workers.celery_app worker|beat``).

Creating the Celery object connects to nothing; its configuration is read from Ferry's settings only when
Celery first needs it (``workers.celery_config``), so importing this module has no side effects.
"""

from __future__ import annotations

from celery import Celery

app = Celery("ferry", include=["workers.tasks"])
app.config_from_object("workers.celery_config")
