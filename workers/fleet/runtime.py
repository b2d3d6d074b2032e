"""From a stored replicator row to what the engine runs: the spec, and how to reach each cluster.

The one place the fleet reads the API's stored shapes (models/replicator.py): the ``replicationInfo`` through the
engine's typed spec (``ReplicationSpec.from_replication_info``, which also holds the consumer group settings), each
cluster into a ``ClusterAccess``: its bootstrap servers and security settings, with secrets named by ARN only.
``ConnectionResolver`` turns a ``ClusterAccess`` into the engine's ``ClusterConnection`` on the worker, reading the
secrets there (``workers/fleet/secrets.py``): credentials never travel in a Celery message and are never stored.

Secret formats (Secrets Manager secret strings, JSON unless said otherwise):

- ``saslScram.secretArn``: ``{"username": ..., "password": ...}`` (as MSK documents it);
- ``mTLS.secretArn``: ``{"certificate": PEM chain, "privateKey": PEM, "passphrase": optional}``;
- ``encryptionInTransit.rootCaCertificate``: PEM certificates inline, or the ARN of a secret holding them (PEM, or
  ``{"certificate": PEM}``); trusted in addition to the system store;
- ``saslOAuthBearer.clientCredentials.tokenRequestSecretArn``: ``{"clientId": ..., "clientSecret": ...}``
  (``client_id``/``client_secret`` also read);
- ``iamJwtBearer`` / ``clientCredentialsAssertion`` ``tokenRequestSecretArn``: ``{"clientId": ..., "privateKey":
  PEM (RSA for RS256, P-384 for ES384), "keyId": optional, "subject": optional}``;
- ``tokenEndpointTlsCertificateArn``: PEM certificates (or ``{"certificate": PEM}``) trusted for the token endpoint.

An MSK cluster reached through its IAM listener gets MSK IAM tokens signed with the replicator's
``serviceExecutionRoleArn``, assumed with STS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from workers.engine.connection import ClusterConnection, SaslMechanism, SecurityProtocol
from workers.engine.oauth import MskIamTokenProvider, OAuthSettings, OAuthTokenProvider
from workers.engine.spec import ReplicationSpec
from workers.fleet.secrets import SecretStore, SecretUnavailable

PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class OAuthAccess:
    token_endpoint_url: str
    grant: Literal["client_credentials", "client_assertion", "jwt_bearer"]
    endpoint_authentication: Literal["POST", "BASIC", "NONE"]
    secret_arn: str
    audience: str | None = None
    signing_algorithm: Literal["RS256", "ES384"] = "RS256"
    scope: str | None = None
    endpoint_ca_arn: str | None = None


@dataclass(frozen=True)
class ClusterAccess:
    """How to reach one cluster, secrets named by ARN (nothing secret in here)."""

    alias: str
    bootstrap_servers: str
    tls: bool = False
    root_ca: str | None = None  # PEM text, or a secret ARN
    scram: tuple[SaslMechanism, str] | None = None  # (mechanism, secret ARN)
    mtls_secret_arn: str | None = None
    oauth: OAuthAccess | None = None
    msk_iam: tuple[str, str | None] | None = None  # (region, role ARN)

    @property
    def security_protocol(self) -> SecurityProtocol:
        sasl = self.scram is not None or self.oauth is not None or self.msk_iam is not None
        if sasl:
            return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
        return "SSL" if self.tls else "PLAINTEXT"

    def secret_arns(self) -> list[str]:
        arns = [self.root_ca] if self.root_ca and not self.root_ca.startswith(PEM_BEGIN) else []
        if self.scram is not None:
            arns.append(self.scram[1])
        if self.mtls_secret_arn is not None:
            arns.append(self.mtls_secret_arn)
        if self.oauth is not None:
            arns += [self.oauth.secret_arn, *([self.oauth.endpoint_ca_arn] if self.oauth.endpoint_ca_arn else [])]
        return arns

    def describe(self) -> str:
        return f"{self.alias}@{self.bootstrap_servers} ({self.security_protocol})"


def access_of(cluster: Mapping[str, Any], region_hint: str | None = None, role_arn: str | None = None) -> ClusterAccess:
    """A stored ``kafkaClusters`` entry (as the API accepted it) as a ``ClusterAccess``."""
    ferry = cluster.get("ferry") or {}
    alias = str(cluster.get("kafkaClusterAlias") or "")
    servers = ferry.get("bootstrapServers")
    if not servers:
        raise ValueError(f"cluster {alias!r} has no resolved bootstrap servers")
    encryption = cluster.get("encryptionInTransit") or {}
    auth = cluster.get("clientAuthentication") or {}
    tls = bool(encryption) or ferry.get("securityProtocol") in ("SSL", "SASL_SSL") or "mTLS" in auth
    scram = None
    if "saslScram" in auth:
        mechanism: SaslMechanism = "SCRAM-SHA-512" if auth["saslScram"]["mechanism"] == "SHA512" else "SCRAM-SHA-256"
        scram = (mechanism, str(auth["saslScram"]["secretArn"]))
    mtls = str(auth["mTLS"]["secretArn"]) if "mTLS" in auth else None
    oauth = _oauth_access(auth["saslOAuthBearer"]) if "saslOAuthBearer" in auth else None
    msk_iam = None
    if ferry.get("authentication") == "MSK_IAM":
        reference = str(ferry.get("reference") or "")
        region = reference.split(":")[3] if reference.count(":") >= 5 else (region_hint or "us-east-1")
        msk_iam = (region, role_arn)
    return ClusterAccess(
        alias=alias,
        bootstrap_servers=str(servers),
        tls=tls,
        root_ca=encryption.get("rootCaCertificate"),
        scram=scram,
        mtls_secret_arn=mtls,
        oauth=oauth,
        msk_iam=msk_iam,
    )


def _oauth_access(stored: Mapping[str, Any]) -> OAuthAccess:
    common: dict[str, Any] = {
        "token_endpoint_url": str(stored["tokenEndpointUrl"]),
        "endpoint_authentication": stored.get("tokenEndpointAuthenticationMethod", "POST"),
        "scope": stored.get("scope"),
        "endpoint_ca_arn": stored.get("tokenEndpointTlsCertificateArn"),
    }
    if stored.get("clientCredentials"):
        return OAuthAccess(
            grant="client_credentials", secret_arn=str(stored["clientCredentials"]["tokenRequestSecretArn"]), **common
        )
    name, grant = (
        ("iamJwtBearer", "jwt_bearer")
        if stored.get("iamJwtBearer")
        else ("clientCredentialsAssertion", "client_assertion")
    )
    member = stored[name]
    return OAuthAccess(
        grant=grant,  # type: ignore[arg-type]
        secret_arn=str(member["tokenRequestSecretArn"]),
        audience=member.get("audience"),
        signing_algorithm=member.get("signingAlgorithm", "RS256"),
        **common,
    )


class ConnectionResolver:
    """``ClusterAccess`` -> ``ClusterConnection`` on this worker, secrets read here. Token providers are kept per
    access and secret content, so their cached tokens survive a re-resolve that changes nothing."""

    def __init__(self, secrets: SecretStore, *, request_timeout_ms: int | None = None) -> None:
        self.secrets = secrets
        # Every client of the fleet abandons a request after this (FERRY_FLEET_WRITE_TIMEOUT_SECONDS).
        self.request_timeout_ms = request_timeout_ms
        self._providers: dict[str, Any] = {}

    async def resolve(self, access: ClusterAccess) -> ClusterConnection:
        """Raises ``SecretUnavailable`` when a secret cannot be read or does not hold what it must."""
        ca_pem = await self._pem(access.root_ca) if access.root_ca else None
        kwargs: dict[str, Any] = {}
        if access.scram is not None:
            mechanism, arn = access.scram
            secret = await self._json(arn, ("username", "password"))
            kwargs.update(sasl_mechanism=mechanism, sasl_username=secret["username"], sasl_password=secret["password"])
        if access.mtls_secret_arn is not None:
            secret = await self._json(access.mtls_secret_arn, ("certificate", "privateKey"))
            kwargs.update(
                certificate_pem=secret["certificate"],
                private_key_pem=secret["privateKey"],
                private_key_password=secret.get("passphrase"),
            )
        if access.oauth is not None:
            kwargs.update(sasl_mechanism="OAUTHBEARER", token_provider=await self._oauth_provider(access.oauth))
        if access.msk_iam is not None:
            region, role = access.msk_iam
            key = f"msk-iam:{region}:{role}"
            provider = self._providers.get(key) or MskIamTokenProvider(region, role)
            self._providers[key] = provider
            kwargs.update(sasl_mechanism="OAUTHBEARER", token_provider=provider)
        try:
            return ClusterConnection(
                bootstrap_servers=access.bootstrap_servers,
                alias=access.alias,
                security_protocol=access.security_protocol,
                ca_pem=ca_pem,
                request_timeout_ms=self.request_timeout_ms,
                **kwargs,
            )
        except ValueError as exc:
            raise SecretUnavailable(
                f"cluster {access.alias}: the secrets do not make a usable connection: {exc}", missing=True
            ) from None

    def forget(self, access: ClusterAccess) -> None:
        """The cluster refused what the secrets held: read them again next time."""
        self.secrets.forget(access.secret_arns())

    async def _pem(self, reference: str) -> str:
        if reference.startswith(PEM_BEGIN) or "-----BEGIN" in reference:
            return reference
        value = await self.secrets.get(reference)
        if value.lstrip().startswith("{"):
            try:
                value = str(json.loads(value)["certificate"])
            except (ValueError, KeyError, TypeError):
                raise SecretUnavailable(f"secret {reference} holds no certificate", missing=True) from None
        if PEM_BEGIN not in value:
            raise SecretUnavailable(f"secret {reference} holds no PEM certificate", missing=True)
        return value

    async def _json(
        self, arn: str, required: tuple[str, ...], aliases: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        raw = await self.secrets.get(arn)
        try:
            value = json.loads(raw)
        except ValueError:
            raise SecretUnavailable(f"secret {arn} is not a JSON object", missing=True) from None
        if not isinstance(value, dict):
            raise SecretUnavailable(f"secret {arn} is not a JSON object", missing=True)
        for alias, name in (aliases or {}).items():
            if name not in value and alias in value:
                value[name] = value[alias]
        absent = [name for name in required if not isinstance(value.get(name), str) or not value[name]]
        if absent:
            raise SecretUnavailable(f"secret {arn} lacks {', '.join(absent)}", missing=True)
        return value

    async def _oauth_provider(self, oauth: OAuthAccess) -> OAuthTokenProvider:
        aliases = {"client_id": "clientId", "client_secret": "clientSecret", "private_key": "privateKey"}
        if oauth.grant == "client_credentials":
            secret = await self._json(oauth.secret_arn, ("clientId", "clientSecret"), aliases)
        else:
            secret = await self._json(oauth.secret_arn, ("clientId", "privateKey"), aliases)
        endpoint_ca = await self._pem(oauth.endpoint_ca_arn) if oauth.endpoint_ca_arn else None
        settings = OAuthSettings(
            token_endpoint_url=oauth.token_endpoint_url,
            grant=oauth.grant,
            endpoint_authentication=oauth.endpoint_authentication,
            client_id=secret["clientId"],
            client_secret=secret.get("clientSecret"),
            signing_key_pem=secret.get("privateKey"),
            signing_algorithm=oauth.signing_algorithm,
            key_id=secret.get("keyId"),
            audience=oauth.audience,
            subject=secret.get("subject"),
            scope=oauth.scope,
            token_endpoint_ca_pem=endpoint_ca,
        )
        # Keyed by everything the provider depends on (secrets included, as a digest): a rotated secret makes a
        # new provider, an unchanged one keeps its cached token.
        key = hashlib.sha256(repr((oauth, json.dumps(secret, sort_keys=True), endpoint_ca)).encode()).hexdigest()
        provider = self._providers.get(key)
        if provider is None:
            provider = OAuthTokenProvider(settings)
            self._providers[key] = provider
        return provider


@dataclass(frozen=True)
class ReplicatorRuntime:
    replicator_id: str
    name: str
    generation: int
    state: str
    spec: ReplicationSpec
    source: ClusterAccess
    target: ClusterAccess
    arn: str = ""  # the replicator's ARN: its log lines carry it (models/logs.py)


def runtime_of(
    *,
    replicator_id: str,
    name: str,
    generation: int,
    state: str,
    kafka_clusters: list[Mapping[str, Any]],
    replication_info: Mapping[str, Any],
    created_at: datetime,
    service_execution_role_arn: str | None = None,
    delivery: str = "at-least-once",
    arn: str = "",
) -> ReplicatorRuntime:
    spec = ReplicationSpec.from_replication_info(
        replication_info,
        replicator_id=replicator_id,
        created_at_ms=int(created_at.timestamp() * 1000),
        exactly_once=delivery == "exactly-once",
    )
    by_alias = {str(c["kafkaClusterAlias"]): c for c in kafka_clusters}
    return ReplicatorRuntime(
        replicator_id=replicator_id,
        name=name,
        generation=generation,
        state=state,
        spec=spec,
        source=access_of(by_alias[spec.source_alias], role_arn=service_execution_role_arn),
        target=access_of(by_alias[spec.target_alias], role_arn=service_execution_role_arn),
        arn=arn,
    )
