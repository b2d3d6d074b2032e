"""Resolve an Amazon MSK cluster ARN to bootstrap servers, once, when a replicator is created.

The result is stored with the replicator, so workers connect with plain bootstrap servers and never need AWS
credentials. Resolution uses boto3's default credential chain (environment, shared files, instance role);
without credentials the caller gets a BadRequest that says so instead of a hung or failed request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from models.errors import DependencyUnavailableError, InvalidRequestError

# Which GetBootstrapBrokers string fits which client setup, best first. Workers speak PLAINTEXT, TLS and
# SASL/SCRAM; IAM (SaslIam) is the last resort because it needs an MSK-specific SASL mechanism.
_PREFERENCE = {
    "saslScram": ("BootstrapBrokerStringSaslScram", "BootstrapBrokerStringPublicSaslScram"),
    "mTLS": ("BootstrapBrokerStringTls", "BootstrapBrokerStringPublicTls"),
    "tls": ("BootstrapBrokerStringTls", "BootstrapBrokerStringPublicTls"),
    "default": (
        "BootstrapBrokerString",
        "BootstrapBrokerStringTls",
        "BootstrapBrokerStringSaslScram",
        "BootstrapBrokerStringSaslIam",
        "BootstrapBrokerStringPublicTls",
        "BootstrapBrokerStringPublicSaslScram",
        "BootstrapBrokerStringPublicSaslIam",
    ),
}


@dataclass(frozen=True)
class MskBootstrap:
    bootstrap_servers: str
    all_strings: dict[str, str]
    # How workers must speak to those brokers (the listener the chosen string belongs to).
    security_protocol: str


def _protocol_of(key: str) -> str | None:
    """PLAINTEXT or SSL for the listeners workers can use today; None for SASL (SCRAM, IAM) listeners."""
    if "Sasl" in key:
        return None
    return "SSL" if "Tls" in key else "PLAINTEXT"


def resolve_msk_bootstrap(cluster_arn: str, cluster_wire: dict[str, Any], parameter: str) -> MskBootstrap:
    """Call kafka GetBootstrapBrokers for ``cluster_arn`` (blocking: run it in a worker thread)."""
    region = cluster_arn.split(":")[3]
    session = boto3.Session()
    if session.get_credentials() is None:
        raise InvalidRequestError(
            f"{parameter}: Ferry has no AWS credentials, so it cannot resolve the bootstrap brokers of MSK "
            f"cluster {cluster_arn!r}. Give Ferry's API credentials (e.g. AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or an instance role), or describe the cluster as apacheKafkaCluster with "
            "its bootstrapBrokerString.",
            parameter,
        )
    try:
        answer = session.client("kafka", region_name=region).get_bootstrap_brokers(ClusterArn=cluster_arn)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise InvalidRequestError(
            f"{parameter}: MSK refused GetBootstrapBrokers for {cluster_arn!r}: "
            f"{error.get('Code', 'error')}: {error.get('Message', '')}",
            parameter,
        ) from None
    except BotoCoreError as exc:
        raise DependencyUnavailableError(
            f"Amazon MSK could not be reached to resolve {cluster_arn!r}: {exc}", parameter
        ) from None
    strings = {key: str(value) for key, value in answer.items() if key.startswith("BootstrapBrokerString")}
    for key in _PREFERENCE[_client_setup(cluster_wire)]:
        if strings.get(key):
            protocol = _protocol_of(key)
            if protocol is None:
                # Workers cannot authenticate with SASL yet; accepting the cluster would only end in FAILED.
                raise InvalidRequestError(
                    f"{parameter}: MSK cluster {cluster_arn!r} is reachable only through {key} (SASL "
                    "authentication), which Ferry's workers do not support yet; give the cluster a TLS or "
                    "plaintext listener, or describe it as apacheKafkaCluster",
                    parameter,
                )
            return MskBootstrap(bootstrap_servers=strings[key], all_strings=strings, security_protocol=protocol)
    raise InvalidRequestError(
        f"{parameter}: MSK returned no bootstrap broker string usable with this cluster's client settings",
        parameter,
    )


def _client_setup(cluster_wire: dict[str, Any]) -> str:
    auth = cluster_wire.get("clientAuthentication") or {}
    if "saslScram" in auth:
        return "saslScram"
    if "mTLS" in auth:
        return "mTLS"
    if cluster_wire.get("encryptionInTransit"):
        return "tls"
    return "default"
