"""From a stored replicator row to what the engine runs: the spec and the two cluster connections.

The one place the fleet turns the API's stored shapes (models/replicator.py) into engine objects: the
``replicationInfo`` through the engine's typed spec (``ReplicationSpec.from_replication_info``, which also holds
the consumer group settings), the clusters into ``ClusterConnection`` objects. Connection secrets, when SASL/TLS
arrive, are resolved here from a secret store by reference: never stored in clear, never sent in a Celery message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workers.engine.connection import ClusterConnection
from workers.engine.spec import ReplicationSpec


@dataclass(frozen=True)
class ReplicatorRuntime:
    replicator_id: str
    name: str
    generation: int
    state: str
    spec: ReplicationSpec
    source: ClusterConnection
    target: ClusterConnection


def _connection(cluster: Mapping[str, Any]) -> ClusterConnection:
    ferry = cluster.get("ferry") or {}
    servers = ferry.get("bootstrapServers")
    if not servers:
        raise ValueError(f"cluster {cluster.get('kafkaClusterAlias')!r} has no resolved bootstrap servers")
    protocol = ferry.get("securityProtocol", "PLAINTEXT")
    if protocol not in ("PLAINTEXT", "SSL"):
        raise ValueError(f"cluster {cluster.get('kafkaClusterAlias')!r}: security protocol {protocol} not supported")
    return ClusterConnection(
        bootstrap_servers=str(servers), alias=str(cluster["kafkaClusterAlias"]), security_protocol=protocol
    )


def runtime_of(
    *,
    replicator_id: str,
    name: str,
    generation: int,
    state: str,
    kafka_clusters: list[Mapping[str, Any]],
    replication_info: Mapping[str, Any],
    created_at: datetime,
) -> ReplicatorRuntime:
    spec = ReplicationSpec.from_replication_info(
        replication_info, replicator_id=replicator_id, created_at_ms=int(created_at.timestamp() * 1000)
    )
    by_alias = {str(c["kafkaClusterAlias"]): c for c in kafka_clusters}
    return ReplicatorRuntime(
        replicator_id=replicator_id,
        name=name,
        generation=generation,
        state=state,
        spec=spec,
        source=_connection(by_alias[spec.source_alias]),
        target=_connection(by_alias[spec.target_alias]),
    )
