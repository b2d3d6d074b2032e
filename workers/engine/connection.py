"""How the engine reaches a Kafka cluster: the one place that turns connection settings into client kwargs.

A ``ClusterConnection`` holds everything a client needs, credentials included, resolved by its owner (the fleet
reads them from secrets on the worker itself): TLS with a private CA trusted in addition to the system store and
hostname verification on, a client certificate (mTLS), SASL/SCRAM-SHA-256 or -512 credentials, or an OAUTHBEARER
token provider. Credentials live only in fields excluded from ``repr`` and are never logged; log lines use
``describe()``, which names the bootstrap servers and the security protocol only.

``diagnose_unreachable`` says why a cluster did not answer, in general terms (refused, timed out, TLS failed,
authentication failed, not Kafka), never repeating what the far end sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

# Imported for its hooks: every client these settings build closes its connections promptly (install_prompt_close).
import workers.engine.aiokafka_hooks  # noqa: F401

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]

# What a failure to reach a cluster was, for StateInfo codes.
AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
TLS_HANDSHAKE_FAILED = "TLS_HANDSHAKE_FAILED"
UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class ClusterConnection:
    """Bootstrap servers plus TLS and SASL settings of one cluster.

    ``alias`` is the name the replicator uses for the cluster (the topic prefix in PREFIXED naming).
    """

    bootstrap_servers: str
    alias: str = ""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    # TLS: PEM certificates trusted in addition to the system store; a client certificate chain and key (mTLS).
    ca_pem: str | None = None
    certificate_pem: str | None = None
    private_key_pem: str | None = field(default=None, repr=False)
    private_key_password: str | None = field(default=None, repr=False)
    # SASL
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    # OAUTHBEARER: an aiokafka AbstractTokenProvider (caches and refreshes its tokens).
    token_provider: Any = field(default=None, repr=False, compare=False)
    client_id_prefix: str = "ferry"
    # How long a client waits for any broker's answer before abandoning the request and its connection (None: the
    # library's 40 s). The fleet sets it below its lease margin: a write that passed the lease check cannot
    # still be pending once the lease could belong to someone else.
    request_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers must not be empty")
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(f"{self.security_protocol} needs a sasl_mechanism")
            if self.sasl_mechanism == "OAUTHBEARER":
                if self.token_provider is None:
                    raise ValueError("OAUTHBEARER needs a token provider")
            elif self.sasl_username is None or self.sasl_password is None:
                raise ValueError(f"{self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password")
        if (self.certificate_pem is None) != (self.private_key_pem is None):
            raise ValueError("a client certificate needs its private key, and the other way round")
        if self.certificate_pem is not None and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError("a client certificate needs TLS (security protocol SSL or SASL_SSL)")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def describe(self) -> str:
        """A log-safe description: never includes a credential."""
        name = f"{self.alias}@" if self.alias else ""
        how = self.security_protocol + (f"/{self.sasl_mechanism}" if self.sasl_mechanism else "")
        if self.certificate_pem is not None:
            how += "/mTLS"
        return f"{name}{self.bootstrap_servers} ({how})"


@contextlib.contextmanager
def _private_files(*contents: str) -> Iterator[list[Path]]:
    """PEM texts as files only this process can read, for ``ssl`` (which loads client keys only from files),
    deleted once loaded."""
    with tempfile.TemporaryDirectory(prefix="ferry-tls-") as folder:
        os.chmod(folder, 0o700)
        paths = []
        for index, text in enumerate(contents):
            path = Path(folder) / f"{index}.pem"
            path.touch(mode=0o600)
            path.write_text(text)
            paths.append(path)
        yield paths


@lru_cache(maxsize=256)
def _ssl_context(
    ca_pem: str | None, certificate_pem: str | None, private_key_pem: str | None, password: str | None
) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system store, hostname verification on
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    if certificate_pem and private_key_pem:
        with _private_files(certificate_pem, private_key_pem) as (certificate, key):
            context.load_cert_chain(certificate, keyfile=key, password=password)
    return context


def ssl_context(connection: ClusterConnection) -> ssl.SSLContext:
    """The TLS context of a connection, built once per distinct set of certificates."""
    return _ssl_context(
        connection.ca_pem, connection.certificate_pem, connection.private_key_pem, connection.private_key_password
    )


def client_kwargs(connection: ClusterConnection, role: str) -> dict[str, Any]:
    """Keyword arguments shared by aiokafka producers, consumers and admin clients for this cluster.

    ``role`` only shapes the client id (e.g. ``ferry-copier``) so broker logs and quotas can tell clients apart.
    """
    kwargs: dict[str, Any] = {
        "bootstrap_servers": connection.bootstrap_servers,
        "client_id": f"{connection.client_id_prefix}-{role}",
        "security_protocol": connection.security_protocol,
    }
    if connection.request_timeout_ms is not None:
        kwargs["request_timeout_ms"] = connection.request_timeout_ms
    if connection.uses_tls:
        kwargs["ssl_context"] = ssl_context(connection)
    if connection.security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = connection.sasl_mechanism
        if connection.sasl_mechanism == "OAUTHBEARER":
            kwargs["sasl_oauth_token_provider"] = connection.token_provider
        else:
            kwargs["sasl_plain_username"] = connection.sasl_username
            kwargs["sasl_plain_password"] = connection.sasl_password
    return kwargs


class _NoTopics(frozenset[str]):
    """The topics an admin client's own metadata refreshes ask for: none. aiokafka's client asks for every topic when
    it follows none (its periodic refresh, and a forced one after every connection failure); an admin client uses
    only the brokers and the controller from it, and on a cluster of 1,300 topics decoding the rest cost 58 ms of CPU
    each time. Truthy, so aiokafka sends the list, and empty, so the list asks for no topic (Metadata v1 and later)."""

    def __bool__(self) -> bool:
        return True


NO_TOPICS = _NoTopics()


def admin_client(connection: ClusterConnection, role: str, **overrides: Any) -> AIOKafkaAdminClient:
    """An aiokafka admin client for this cluster (``client_kwargs``, then ``overrides``) whose own metadata refreshes
    ask for no topics (``_NoTopics``). Its calls that name topics still ask for those topics."""
    admin = AIOKafkaAdminClient(**{**client_kwargs(connection, role), **overrides})
    admin._client._topics = NO_TOPICS  # read by aiokafka's metadata refresh only; admin clients never set topics
    return admin


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class TokenUnavailable(KafkaError):  # type: ignore[misc]
    """An OAUTHBEARER token could not be obtained (the token endpoint refused, failed or was unreachable)."""


def classify(exc: BaseException) -> tuple[str, str] | None:
    """(code, general description) of a connection failure when its cause says more than "unreachable"."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TLS_HANDSHAKE_FAILED, "TLS failed: the cluster's certificate is not trusted (CA or host name)"
        if isinstance(cause, ssl.SSLError):
            reason = (cause.reason or "").lower()
            if "certificate" in reason or "unknown_ca" in reason or "unknown ca" in reason:
                return TLS_HANDSHAKE_FAILED, "TLS failed: the cluster did not accept the client certificate"
            return TLS_HANDSHAKE_FAILED, "TLS handshake failed"
        if isinstance(cause, TokenUnavailable):
            return AUTHENTICATION_FAILED, f"authentication failed: {cause.args[0] if cause.args else 'no token'}"
        if isinstance(cause, SaslAuthenticationFailed | IllegalSaslStateError):
            return AUTHENTICATION_FAILED, "authentication failed (wrong credentials, or a token the cluster refused)"
        if isinstance(cause, UnsupportedSaslMechanismError):
            return AUTHENTICATION_FAILED, "authentication failed: the cluster does not offer this SASL mechanism"
    return None


async def diagnose_unreachable(connection: ClusterConnection, timeout_s: float = 3.0) -> tuple[str, str]:
    """Why a cluster did not answer: (code, general description), code AUTHENTICATION_FAILED,
    TLS_HANDSHAKE_FAILED or UNREACHABLE.

    aiokafka reports any bootstrap failure as one "Unable to bootstrap" error, so each bootstrap address is tried
    again: a plain TCP connection tells refused, timed out and unknown hosts apart, then a Kafka connection with the
    cluster's security settings tells TLS and authentication failures apart. What the far end sent (a banner, an
    HTTP page) is never read back: a replicator's StateInfo must not turn Ferry into a port scanner.
    """
    outcomes: list[tuple[str, str]] = []
    kwargs = client_kwargs(connection, "diagnosis")
    for address in connection.bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]")
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(host, int(port))
        except ConnectionRefusedError:
            outcomes.append((UNREACHABLE, "connection refused"))
            continue
        except TimeoutError:
            outcomes.append((UNREACHABLE, "timed out"))
            continue
        except socket.gaierror:
            outcomes.append((UNREACHABLE, "host name not found"))
            continue
        except (OSError, ValueError):
            outcomes.append((UNREACHABLE, "could not connect"))
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        try:
            async with asyncio.timeout(timeout_s * 2):
                conn = await create_conn(
                    host,
                    int(port),
                    client_id=kwargs["client_id"],
                    request_timeout_ms=int(timeout_s * 1000),
                    ssl_context=kwargs.get("ssl_context"),
                    security_protocol=connection.security_protocol,
                    sasl_mechanism=kwargs.get("sasl_mechanism", "PLAIN"),
                    sasl_plain_username=kwargs.get("sasl_plain_username"),
                    sasl_plain_password=kwargs.get("sasl_plain_password"),
                    sasl_oauth_token_provider=kwargs.get("sasl_oauth_token_provider"),
                )
            conn.close()
            outcomes.append((UNREACHABLE, "connected, but the cluster did not answer metadata requests"))
        except (OSError, KafkaError, TimeoutError) as exc:
            classified = classify(exc)
            if classified is not None:
                outcomes.append(classified)
            elif connection.uses_tls:
                outcomes.append((UNREACHABLE, "TLS failed or the endpoint is not a Kafka broker"))
            else:
                outcomes.append((UNREACHABLE, "the endpoint did not answer as a Kafka broker"))
    # The most telling outcome first.
    for telling in (AUTHENTICATION_FAILED, TLS_HANDSHAKE_FAILED):
        for code, description in outcomes:
            if code == telling:
                return code, description
    for description in (
        "TLS failed or the endpoint is not a Kafka broker",
        "the endpoint did not answer as a Kafka broker",
        "connected, but the cluster did not answer metadata requests",
        "timed out",
        "connection refused",
        "host name not found",
    ):
        if (UNREACHABLE, description) in outcomes:
            return UNREACHABLE, description
    return UNREACHABLE, "could not connect"
