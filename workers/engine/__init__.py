"""Ferry's replication engine: plain asyncio + aiokafka, no Celery, FastAPI, SQLAlchemy or models imports.

Import from the modules themselves; this package imports none of them, so the API can read the typed spec
(``workers.engine.spec``, standard library only) without loading the copier or aiokafka:

- ``spec``: ``ReplicationSpec`` (what to copy and how, from the stored ``replicationInfo``), ``NameFilter``,
  ``GroupReplication``;
- ``connection``: ``ClusterConnection`` and ``client_kwargs``, the one place cluster settings become client kwargs;
- ``topics``: ``TopicSynchronizer`` (topics, partitions, configurations and ACLs on the target);
- ``copier``: ``PartitionCopier`` (copies an assignable set of source partitions), with ``batches`` (producer
  batches and acknowledgement bookkeeping), ``forwarding`` (which source batches travel as they are),
  ``aiokafka_hooks`` (every use of aiokafka internals), ``progress`` (durable progress on the target) and
  ``metrics`` (per-partition measurements);
- ``standalone``: ``StandaloneReplicator``, sync plus one copier in one process (the CLI, tests, benchmarks).
"""
