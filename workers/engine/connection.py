"""How the engine reaches a Kafka cluster: the one place that turns connection settings into client kwargs.

Secrets live only in ``ClusterConnection`` fields that are excluded from ``repr`` and never logged; log lines
use ``ClusterConnection.describe()``, which names the bootstrap servers and the security protocol only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Literal

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class ClusterConnection:
    """Bootstrap servers plus optional TLS and SASL settings of one cluster.

    ``alias`` is the name the replicator uses for the cluster (the topic prefix in PREFIXED naming).
    """

    bootstrap_servers: str
    alias: str = ""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = field(default=None, repr=False)
    client_id_prefix: str = "ferry"

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers must not be empty")
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and (self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None):
            raise ValueError(f"{self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password")

    def describe(self) -> str:
        """A log-safe description: never includes a credential."""
        name = f"{self.alias}@" if self.alias else ""
        return f"{name}{self.bootstrap_servers} ({self.security_protocol})"


def _ssl_context(connection: ClusterConnection) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=connection.ssl_cafile)
    if connection.ssl_certfile:
        context.load_cert_chain(connection.ssl_certfile, keyfile=connection.ssl_keyfile)
    return context


def client_kwargs(connection: ClusterConnection, role: str) -> dict[str, Any]:
    """Keyword arguments shared by aiokafka producers, consumers and admin clients for this cluster.

    ``role`` only shapes the client id (e.g. ``ferry-copier``) so broker logs and quotas can tell clients apart.
    """
    kwargs: dict[str, Any] = {
        "bootstrap_servers": connection.bootstrap_servers,
        "client_id": f"{connection.client_id_prefix}-{role}",
        "security_protocol": connection.security_protocol,
    }
    if connection.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(connection)
    if connection.security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = connection.sasl_mechanism
        kwargs["sasl_plain_username"] = connection.sasl_username
        kwargs["sasl_plain_password"] = connection.sasl_password
    return kwargs


async def diagnose_unreachable(connection: ClusterConnection, timeout_s: float = 3.0) -> str:
    """Why a cluster did not answer, in general terms: refused, timed out, host not found, TLS failed, or not Kafka.

    aiokafka reports any bootstrap failure as one "Unable to bootstrap" error, so each bootstrap address is tried
    with a plain TCP connection to tell the cases apart. What the far end sent (a banner, an HTTP page) is never
    read or repeated: a replicator's StateInfo must not turn Ferry into a port scanner.
    """
    outcomes: list[str] = []
    for address in connection.bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]")
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(host, int(port))
        except ConnectionRefusedError:
            outcomes.append("connection refused")
            continue
        except TimeoutError:
            outcomes.append("timed out")
            continue
        except socket.gaierror:
            outcomes.append("host name not found")
            continue
        except (OSError, ValueError):
            outcomes.append("could not connect")
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if connection.security_protocol in ("SSL", "SASL_SSL"):
            outcomes.append("TLS failed or the endpoint is not a Kafka broker")
        else:
            outcomes.append("the endpoint did not answer as a Kafka broker")
    # The most telling outcome first: a reachable endpoint that is not Kafka says more than a refusal.
    for telling in (
        "TLS failed or the endpoint is not a Kafka broker",
        "the endpoint did not answer as a Kafka broker",
        "timed out",
        "connection refused",
        "host name not found",
    ):
        if telling in outcomes:
            return telling
    return "could not connect"
