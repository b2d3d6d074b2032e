"""Ferry's control plane: the MSK Replicator compatible REST API (FastAPI)."""
