"""Developer tooling: the local stack (two Kafka clusters, PostgreSQL, Redis, API, workers)."""
