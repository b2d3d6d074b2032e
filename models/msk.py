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

# Which GetBootstrapBrokers string fits which client setup, best first. SASL/SCRAM needs the replicator's SCRAM
# secret, so only a cluster described with saslScram uses those listeners; without client authentication, IAM
# (tokens signed for the replicator's serviceExecutionRoleArn) is what MSK Replicator itself uses.
_PREFERENCE = {
    "saslScram": ("BootstrapBrokerStringSaslScram", "BootstrapBrokerStringPublicSaslScram"),
    "mTLS": ("BootstrapBrokerStringTls", "BootstrapBrokerStringPublicTls"),
    "tls": (
        "BootstrapBrokerStringSaslIam",
        "BootstrapBrokerStringTls",
        "BootstrapBrokerStringPublicSaslIam",
        "BootstrapBrokerStringPublicTls",
    ),
    "default": (
        "BootstrapBrokerStringSaslIam",
        "BootstrapBrokerStringTls",
        "BootstrapBrokerString",
        "BootstrapBrokerStringPublicSaslIam",
        "BootstrapBrokerStringPublicTls",
    ),
}


@dataclass(frozen=True)
class MskBootstrap:
    bootstrap_servers: str
    all_strings: dict[str, str]
    # How workers must speak to those brokers (the listener the chosen string belongs to).
    security_protocol: str
    # "MSK_IAM" for the IAM listener, else None (the cluster's clientAuthentication says how).
    authentication: str | None = None


def _protocol_of(key: str) -> str:
    """The security protocol of the listener a GetBootstrapBrokers string belongs to (MSK's SASL listeners are all
    on TLS)."""
    if "Sasl" in key:
        return "SASL_SSL"
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
            return MskBootstrap(
                bootstrap_servers=strings[key],
                all_strings=strings,
                security_protocol=_protocol_of(key),
                authentication="MSK_IAM" if "SaslIam" in key else None,
            )
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
