"""The local stack's secured side, so every way Ferry reaches a secured cluster is tested against real brokers.

Each cluster gets three more listeners beside PLAINTEXT (port) and CONTROLLER (port + 1):

- port + 2: SASL_SSL with SCRAM-SHA-256 and -512 (user ``ferry``, created when the storage is formatted, or with
  Kafka's ConfigCommand on a cluster formatted before);
- port + 3: SSL with required client certificates (Ferry's certificate maps to ``User:ferry``);
- port + 4: SASL_SSL with OAUTHBEARER, tokens validated against ``.run/oauth/jwks.json``;
- port + 5: SSL without client authentication (TLS with the private CA only).

Certificates and keys come from ``dev/pki.py``; the identity provider issuing tokens is ``dev/idp.py``; an
AWS-compatible Secrets Manager (moto in server mode) holds the secrets a replicator names, seeded at every ``up``
(moto keeps them in memory). ``.run/stack.json`` lists all of it under ``secure``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

SCRAM_USER = "ferry"
SECRETS_REGION = "us-east-1"
# moto accepts any credentials; these only satisfy boto3's credential chain in the stack's processes.
SECRETS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ferry-dev", "AWS_SECRET_ACCESS_KEY": "ferry-dev-secret"}
OAUTH_AUDIENCE = "kafka"
CLIENT_CREDENTIALS_CLIENT = "ferry-cc"
ASSERTION_CLIENT = "ferry-jwt"

SECRET_NAMES = {
    "scram_sha512": "ferry/dev/scram-sha512",
    "scram_sha256": "ferry/dev/scram-sha256",
    "mtls": "ferry/dev/mtls",
    "ca": "ferry/dev/ca",
    "oauth_client_credentials": "ferry/dev/oauth-client-credentials",
    "oauth_jwt_bearer_rs256": "ferry/dev/oauth-jwt-bearer-rs256",
    "oauth_assertion_es384": "ferry/dev/oauth-assertion-es384",
}


@dataclass(frozen=True)
class SecurePorts:
    scram: int
    mtls: int
    oauth: int
    tls: int

    @classmethod
    def of(cls, port: int) -> SecurePorts:
        return cls(port + 2, port + 3, port + 4, port + 5)


def scram_password(run_dir: Path) -> str:
    """The ``ferry`` user's SCRAM password (hex: Kafka's --add-scram cannot take commas), made once."""
    path = run_dir / "secure" / "scram.password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(16))
    return path.read_text().strip()


def listener_properties(port: int, cport: int, run_dir: Path) -> str:
    ports = SecurePorts.of(port)
    tls, oauth = run_dir / "tls", run_dir / "oauth"
    jaas = {
        "scram": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "oauth": "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
    }
    return f"""\
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport},SCRAM://127.0.0.1:{ports.scram},\
MTLS://127.0.0.1:{ports.mtls},OAUTH://127.0.0.1:{ports.oauth},TLS://127.0.0.1:{ports.tls}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SCRAM://127.0.0.1:{ports.scram},MTLS://127.0.0.1:{ports.mtls},\
OAUTH://127.0.0.1:{ports.oauth},TLS://127.0.0.1:{ports.tls}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SCRAM:SASL_SSL,MTLS:SSL,OAUTH:SASL_SSL,TLS:SSL
ssl.keystore.type=PEM
ssl.keystore.location={tls / "broker.pem"}
ssl.truststore.type=PEM
ssl.truststore.location={tls / "ca.pem"}
listener.name.mtls.ssl.client.auth=required
listener.name.tls.ssl.client.auth=none
ssl.principal.mapping.rules=RULE:^CN=([^,]+).*$/$1/,DEFAULT
listener.name.scram.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.scram.scram-sha-256.sasl.jaas.config={jaas["scram"]}
listener.name.scram.scram-sha-512.sasl.jaas.config={jaas["scram"]}
listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oauth.oauthbearer.sasl.jaas.config={jaas["oauth"]}
listener.name.oauth.oauthbearer.sasl.server.callback.handler.class=\
org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
listener.name.oauth.oauthbearer.sasl.oauthbearer.jwks.endpoint.url=file://{oauth / "jwks.json"}
listener.name.oauth.oauthbearer.sasl.oauthbearer.expected.audience={OAUTH_AUDIENCE}
listener.name.oauth.oauthbearer.sasl.oauthbearer.expected.issuer=https://idp.ferry.test
"""


def jwks_system_property(run_dir: Path) -> str:
    """Kafka only reads OAuth URLs listed in this JVM property."""
    return f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls=file://{run_dir / 'oauth' / 'jwks.json'}"


def scram_format_args(run_dir: Path) -> list[str]:
    password = scram_password(run_dir)
    return [
        "--add-scram",
        f"SCRAM-SHA-256=[name={SCRAM_USER},password={password}]",
        "--add-scram",
        f"SCRAM-SHA-512=[name={SCRAM_USER},password={password}]",
    ]


def scram_logins_work(scram_bootstrap: str, run_dir: Path) -> bool:
    """Whether ``ferry`` logs in to the SCRAM listener with both mechanisms."""

    async def login(mechanism: str) -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=scram_bootstrap,
            security_protocol="SASL_SSL",
            ssl_context=ssl.create_default_context(cafile=str(run_dir / "tls" / "ca.pem")),
            sasl_mechanism=mechanism,
            sasl_plain_username=SCRAM_USER,
            sasl_plain_password=scram_password(run_dir),
            request_timeout_ms=10_000,
        )
        try:
            await admin.start()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            await admin.close()

    return all(asyncio.run(login(mechanism)) for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"))


def ensure_scram_user(
    bootstrap: str, scram_bootstrap: str, lib: Path, jvm: list[str], *, marker: Path, run_dir: Path
) -> bool:
    """Create (or reset) the SCRAM user on a running cluster with Kafka's ConfigCommand, unless it already logs in
    with both mechanisms. The marker alone is not trusted: a broker restored from a KRaft snapshot was seen to
    come back with the user's SCRAM-SHA-256 credential but without its -512 one. Returns False when
    ConfigCommand failed (the SCRAM listener then refuses ``ferry``)."""
    password = scram_password(run_dir)
    if marker.exists() and marker.read_text().strip() == password and scram_logins_work(scram_bootstrap, run_dir):
        return True
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):  # one credential per request
        result = alter_scram_credential(bootstrap, lib, jvm, SCRAM_USER, mechanism=mechanism, password=password)
        if result.returncode != 0:
            return False
    marker.write_text(password)
    return True


def alter_scram_credential(
    bootstrap: str, lib: Path, jvm: list[str], user: str, *, mechanism: str, password: str | None
) -> subprocess.CompletedProcess[str]:
    """Set (``password``) or delete (None) one SCRAM credential of ``user`` with Kafka's ConfigCommand, over a
    listener where the caller may alter users (the PLAINTEXT one: a super user)."""
    change = ["--add-config", f"{mechanism}=[password={password}]"] if password else ["--delete-config", mechanism]
    return subprocess.run(
        ["java", *jvm, "-cp", f"{lib}/*", "kafka.admin.ConfigCommand", "--bootstrap-server", bootstrap,
         "--alter", "--entity-type", "users", "--entity-name", user, *change],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def write_idp_clients(run_dir: Path) -> str:
    """The identity provider's clients (``.run/oauth/clients.json``); returns the client-credentials secret."""
    oauth = run_dir / "oauth"
    path = oauth / "clients.json"
    existing: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    secret = existing.get(CLIENT_CREDENTIALS_CLIENT, {}).get("secret") or secrets.token_urlsafe(24)
    clients = {
        CLIENT_CREDENTIALS_CLIENT: {"secret": secret, "audience": OAUTH_AUDIENCE},
        ASSERTION_CLIENT: {
            "keys": [(oauth / "client-rs256.pub").read_text(), (oauth / "client-es384.pub").read_text()],
            "audience": OAUTH_AUDIENCE,
        },
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(clients, indent=2))
    return str(secret)


def idp_argv(port: int, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "dev.idp", "--port", str(port), "--run-dir", str(run_dir)]


def secrets_manager_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def secrets_client(endpoint: str) -> Any:
    return boto3.client(
        "secretsmanager",
        endpoint_url=endpoint,
        region_name=SECRETS_REGION,
        aws_access_key_id=SECRETS_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SECRETS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )


def secrets_manager_answers(endpoint: str) -> bool:
    try:
        secrets_client(endpoint).list_secrets(MaxResults=1)
    except (BotoCoreError, ClientError):
        return False
    return True


def put_secret(client: Any, name: str, value: str) -> str:
    """Create the secret or give it this value; returns its ARN."""
    try:
        return str(client.create_secret(Name=name, SecretString=value)["ARN"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceExistsException":
            raise
    client.put_secret_value(SecretId=name, SecretString=value)
    return str(client.describe_secret(SecretId=name)["ARN"])


def seed_secrets(endpoint: str, run_dir: Path, client_secret: str) -> dict[str, str]:
    """The stack's test secrets in the local Secrets Manager; returns their ARNs by purpose."""
    tls, oauth = run_dir / "tls", run_dir / "oauth"
    scram = json.dumps({"username": SCRAM_USER, "password": scram_password(run_dir)})
    values = {
        "scram_sha512": scram,
        "scram_sha256": scram,
        "mtls": json.dumps(
            {"certificate": (tls / "client.crt").read_text(), "privateKey": (tls / "client.key").read_text()}
        ),
        "ca": (tls / "ca.pem").read_text(),
        "oauth_client_credentials": json.dumps({"clientId": CLIENT_CREDENTIALS_CLIENT, "clientSecret": client_secret}),
        "oauth_jwt_bearer_rs256": json.dumps(
            {"clientId": ASSERTION_CLIENT, "privateKey": (oauth / "client-rs256.key").read_text()}
        ),
        "oauth_assertion_es384": json.dumps(
            {"clientId": ASSERTION_CLIENT, "privateKey": (oauth / "client-es384.key").read_text()}
        ),
    }
    client = secrets_client(endpoint)
    return {purpose: put_secret(client, SECRET_NAMES[purpose], value) for purpose, value in values.items()}
