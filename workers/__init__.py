"""Ferry's worker fleet: Celery supervises; the replication engine (workers.engine) does the copying."""
