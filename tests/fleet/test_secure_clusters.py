"""Replicators on secured clusters, end to end on the local stack's real brokers, identity provider and Secrets
Manager: TLS with the private CA, mTLS, SCRAM-256 and -512, OAUTHBEARER (client credentials, JWT bearer, client
assertion), mixed in one replicator; wrong credentials, certificates, CAs and token endpoints each visible in
StateInfo and recovered from once fixed, with no record lost; and no secret value anywhere it must not be."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest
from cryptography.hazmat.primitives.asymmetric import ec
from redis import Redis
from sqlalchemy import Engine, text

from dev import pki
from dev.secure import alter_scram_credential, put_secret, secrets_client
from dev.stack import TOOLS_JVM
from models.access_keys import IssuedKey
from tests.conftest import ROOT
from tests.exposition import metric_value
from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.test_fleet_lifecycle import count_records, create_topic, describe, produce
from workers.engine import admin as kafka_admin
from workers.engine.admin import (
    OPERATION_ALL,
    OPERATION_WRITE,
    PERMISSION_ALLOW,
    RESOURCE_TOPIC,
    AdminError,
)
from workers.engine.connection import ClusterConnection, client_kwargs

PERMISSION_DENY = 2
# More of the Kafka protocol's ACL enums (ResourceType, PatternType, AclOperation) than the engine needs.
RESOURCE_CLUSTER = 4
CLUSTER_RESOURCE_NAME = "kafka-cluster"
PATTERN_LITERAL = 3
PATTERN_PREFIXED = 4
OPERATION_CREATE = 5
TOPIC_AUTHORIZATION_FAILED = 29

RECORDS = 3000  # more than a fetch, a producer batch and a poll hold


@pytest.fixture(scope="module")
def secure(stack: dict[str, Any]) -> dict[str, Any]:
    secured: dict[str, Any] = stack.get("secure") or {}
    if not secured:
        pytest.fail(".run/stack.json has no 'secure' section: start the stack with this checkout's dev.stack up")
    return secured


@pytest.fixture(scope="module", autouse=True)
def _one_worker(fleet: Fleet) -> None:
    fleet.start_worker("secure-w1")


@pytest.fixture(scope="module")
def manager(secure: dict[str, Any]) -> Any:
    return secrets_client(secure["aws_endpoint"])


def ca_pem(secure: dict[str, Any]) -> str:
    return Path(secure["ca"]).read_text()


def cluster(secure: dict[str, Any], side: str, method: str, name: str) -> dict[str, Any]:
    """A kafkaClusters entry for the stack's ``side`` cluster reached with ``method``."""
    secrets = secure["secrets"]
    tls = {"EncryptionType": "TLS", "RootCaCertificate": ca_pem(secure)}
    tls_by_arn = {"EncryptionType": "TLS", "RootCaCertificate": secrets["ca"]}
    token = secure["token_endpoint"]
    listeners = secure[side]
    entries: dict[str, tuple[str, dict[str, Any]]] = {
        "tls": (listeners["tls"], {"EncryptionInTransit": tls}),
        "mtls": (
            listeners["mtls"],
            {"EncryptionInTransit": tls_by_arn, "ClientAuthentication": {"MTLS": {"SecretArn": secrets["mtls"]}}},
        ),
        "scram256": (
            listeners["sasl_scram"],
            {
                "EncryptionInTransit": tls,
                "ClientAuthentication": {"SaslScram": {"Mechanism": "SHA256", "SecretArn": secrets["scram_sha256"]}},
            },
        ),
        "scram512": (
            listeners["sasl_scram"],
            {
                "EncryptionInTransit": tls_by_arn,
                "ClientAuthentication": {"SaslScram": {"Mechanism": "SHA512", "SecretArn": secrets["scram_sha512"]}},
            },
        ),
        "oauth-client-credentials-post": (listeners["oauthbearer"], _oauth(tls, token, secrets, "POST")),
        "oauth-client-credentials-basic": (listeners["oauthbearer"], _oauth(tls, token, secrets, "BASIC")),
        "oauth-jwt-bearer": (
            listeners["oauthbearer"],
            _oauth(tls, token, secrets, "NONE", grant="IamJwtBearer", key=secrets["oauth_jwt_bearer_rs256"]),
        ),
        "oauth-client-assertion-es384": (
            listeners["oauthbearer"],
            _oauth(
                tls, token, secrets, "NONE", grant="ClientCredentialsAssertion", key=secrets["oauth_assertion_es384"]
            ),
        ),
    }
    bootstrap, security = entries[method]
    return {
        "ApacheKafkaCluster": {"ApacheKafkaClusterId": f"{name}-{side}", "BootstrapBrokerString": bootstrap},
        **security,
    }


def _oauth(
    tls: dict[str, Any], token: str, secrets: dict[str, str], method: str, *, grant: str = "", key: str = ""
) -> dict[str, Any]:
    oauth: dict[str, Any] = {
        "TokenEndpointUrl": token,
        "TokenEndpointAuthenticationMethod": method,
        "TokenEndpointTlsCertificateArn": secrets["ca"],
        "Scope": "kafka.replicate",
    }
    if grant:
        algorithm = "ES384" if "es384" in key else "RS256"
        oauth[grant] = {"Audience": "kafka", "SigningAlgorithm": algorithm, "TokenRequestSecretArn": key}
    else:
        oauth["ClientCredentials"] = {"TokenRequestSecretArn": secrets["oauth_client_credentials"]}
    return {"EncryptionInTransit": tls, "ClientAuthentication": {"SaslOAuthBearer": oauth}}


def secured_request(name: str, source: dict[str, Any], target: dict[str, Any], topic: str) -> dict[str, Any]:
    return {
        "ReplicatorName": name,
        "ServiceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry",
        "KafkaClusters": [source, target],
        "ReplicationInfoList": [
            {
                "SourceKafkaClusterId": source["ApacheKafkaCluster"]["ApacheKafkaClusterId"],
                "TargetKafkaClusterId": target["ApacheKafkaCluster"]["ApacheKafkaClusterId"],
                "TargetCompressionType": "NONE",
                "TopicReplication": {"TopicsToReplicate": [topic], "StartingPosition": {"Type": "EARLIEST"}},
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": []},
            }
        ],
    }


def copied(target_bootstrap: str, arn_description: dict[str, Any], topic: str) -> int:
    alias = arn_description["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
    return asyncio.run(count_records(target_bootstrap, f"{alias}.{topic}"))


@pytest.mark.parametrize(
    ("source_method", "target_method"),
    [
        ("tls", "scram512"),
        ("mtls", "scram256"),
        ("scram256", "oauth-client-credentials-post"),
        ("scram512", "mtls"),
        ("oauth-client-credentials-basic", "tls"),
        ("oauth-jwt-bearer", "mtls"),
        ("oauth-client-assertion-es384", "scram512"),
    ],
)
def test_replication_over_secured_listeners(
    fleet_kafka: Any,
    secure: dict[str, Any],
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
    source_method: str,
    target_method: str,
) -> None:
    topic = f"{unique}-t"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    asyncio.run(produce(source_bootstrap, topic, RECORDS, 2, "before"))
    request = secured_request(
        unique,
        cluster(secure, "source", source_method, unique),
        cluster(secure, "target", target_method, unique),
        topic,
    )
    arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
    running = wait_until("RUNNING", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    asyncio.run(produce(source_bootstrap, topic, RECORDS, 2, "after"))
    wait_until("every record on the target", lambda: copied(target_bootstrap, running, topic) == 2 * RECORDS, 60)
    fleet_kafka.delete_replicator(ReplicatorArn=arn)


# ----- failures that must be visible, and recovered from --------------------------------------------------------


def _wait_for_state_info(kafka: Any, arn: str, code: str, limit: float = 30.0) -> dict[str, Any]:
    described: dict[str, Any] = wait_until(
        f"StateInfo {code}",
        lambda: (d := describe(kafka, arn)).get("StateInfo", {}).get("Code") == code and d,
        limit,
    )
    return described


def _recovery_case(
    kafka: Any,
    manager: Any,
    secure: dict[str, Any],
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
    *,
    source: dict[str, Any],
    broken: tuple[str, str],
    fixed: str,
    code: str,
    http: httpx.Client | None = None,
) -> None:
    """Replicate from ``source`` (whose secret ``broken[0]`` holds ``broken[1]``) to the stack's TLS target: the
    replicator shows ``code`` within 30 s, then runs and copies every record once the secret holds ``fixed``."""
    secret_name, bad_value = broken
    put_secret(manager, secret_name, bad_value)
    topic = f"{unique}-t"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    asyncio.run(produce(source_bootstrap, topic, RECORDS, 2, "while-broken"))
    target = cluster(secure, "target", "tls", unique)
    arn = kafka.create_replicator(**secured_request(unique, source, target, topic))["ReplicatorArn"]
    failed = _wait_for_state_info(kafka, arn, code)
    assert failed["ReplicatorState"] == "FAILED"
    message = failed["StateInfo"]["Message"]
    assert message.startswith("source cluster "), message
    if http is not None:
        # The refusals count in the AuthError metric too.
        wait_until(
            "AuthError counted",
            lambda: (metric_value(http.get("/metrics").text, "AuthError", replicator_name=unique) or 0) > 0,
            20,
        )
    put_secret(manager, secret_name, fixed)
    running = wait_until("RUNNING again", lambda: (d := describe(kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60)
    asyncio.run(produce(source_bootstrap, topic, RECORDS, 2, "after-fix"))
    wait_until("every record on the target", lambda: copied(target_bootstrap, running, topic) == 2 * RECORDS, 60)
    kafka.delete_replicator(ReplicatorArn=arn)


@pytest.fixture
def own_secret(manager: Any, secure: dict[str, Any], unique: str) -> Iterator[str]:
    """A test's own secret name (the stack's shared ones stay as they are)."""
    name = f"ferry/test/{unique}"
    yield name
    manager.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def test_a_wrong_password_shows_and_a_corrected_one_recovers(
    fleet_kafka: Any, fleet_http: httpx.Client, manager: Any, secure: dict[str, Any], unique: str, own_secret: str,
    source_bootstrap: str, target_bootstrap: str,
) -> None:  # fmt: skip
    right = manager.get_secret_value(SecretId=secure["secrets"]["scram_sha512"])["SecretString"]
    arn = put_secret(manager, own_secret, right)
    source = cluster(secure, "source", "scram512", unique)
    source["ClientAuthentication"]["SaslScram"]["SecretArn"] = arn
    wrong = json.dumps({**json.loads(right), "password": "not-the-password"})
    _recovery_case(fleet_kafka, manager, secure, unique, source_bootstrap, target_bootstrap,
                   source=source, broken=(own_secret, wrong), fixed=right, code="AUTHENTICATION_FAILED",
                   http=fleet_http)  # fmt: skip


def _untrusted_client_certificate() -> str:
    """A client certificate the brokers do not accept (issued by a CA they do not trust)."""
    key = ec.generate_private_key(ec.SECP256R1())
    other = pki.issue("Unknown CA", key, key, ca=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    certificate = pki.issue("ferry", client_key, key, other.subject, client=True)
    return json.dumps(
        {"certificate": pki.pem_cert(certificate).decode(), "privateKey": pki.pem_key(client_key).decode()}
    )


def test_a_refused_client_certificate_shows_and_a_good_one_recovers(
    fleet_kafka: Any, manager: Any, secure: dict[str, Any], unique: str, own_secret: str,
    source_bootstrap: str, target_bootstrap: str,
) -> None:  # fmt: skip
    good = manager.get_secret_value(SecretId=secure["secrets"]["mtls"])["SecretString"]
    arn = put_secret(manager, own_secret, good)
    source = cluster(secure, "source", "mtls", unique)
    source["ClientAuthentication"]["MTLS"]["SecretArn"] = arn
    refused = _untrusted_client_certificate()
    _recovery_case(fleet_kafka, manager, secure, unique, source_bootstrap, target_bootstrap, source=source,
                   broken=(own_secret, refused), fixed=good, code="TLS_HANDSHAKE_FAILED")  # fmt: skip


def test_a_wrong_ca_shows_and_the_right_one_recovers(
    fleet_kafka: Any, manager: Any, secure: dict[str, Any], unique: str, own_secret: str,
    source_bootstrap: str, target_bootstrap: str,
) -> None:  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    wrong_ca = pki.pem_cert(pki.issue("Somebody else's CA", key, key, ca=True)).decode()
    arn = put_secret(manager, own_secret, wrong_ca)
    source = cluster(secure, "source", "tls", unique)
    source["EncryptionInTransit"]["RootCaCertificate"] = arn
    _recovery_case(fleet_kafka, manager, secure, unique, source_bootstrap, target_bootstrap, source=source,
                   broken=(own_secret, wrong_ca), fixed=ca_pem(secure), code="TLS_HANDSHAKE_FAILED")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_token_endpoint_shows_and_recovers_once_it_answers(
    fleet_kafka: Any, secure: dict[str, Any], unique: str, stack: dict[str, Any],
    source_bootstrap: str, target_bootstrap: str,
) -> None:  # fmt: skip
    port = _free_port()
    source = cluster(secure, "source", "oauth-client-credentials-post", unique)
    source["ClientAuthentication"]["SaslOAuthBearer"]["TokenEndpointUrl"] = f"https://localhost:{port}/token"
    topic = f"{unique}-t"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    asyncio.run(produce(source_bootstrap, topic, RECORDS, 2, "while-down"))
    target = cluster(secure, "target", "tls", unique)
    arn = fleet_kafka.create_replicator(**secured_request(unique, source, target, topic))["ReplicatorArn"]
    failed = _wait_for_state_info(fleet_kafka, arn, "AUTHENTICATION_FAILED")
    assert "token endpoint is unreachable" in failed["StateInfo"]["Message"]
    run_dir = Path(secure["ca"]).parents[1]
    idp = subprocess.Popen(
        [sys.executable, "-m", "dev.idp", "--port", str(port), "--run-dir", str(run_dir)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        running = wait_until(
            "RUNNING again", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "RUNNING" and d, 60
        )
        asyncio.run(produce(source_bootstrap, topic, RECORDS, 2, "after"))
        wait_until("every record on the target", lambda: copied(target_bootstrap, running, topic) == 2 * RECORDS, 60)
    finally:
        fleet_kafka.delete_replicator(ReplicatorArn=arn)
        os.killpg(idp.pid, 15)
        idp.wait(timeout=10)


def test_a_missing_secret_is_named_in_state_info(
    fleet_kafka: Any, secure: dict[str, Any], unique: str, source_bootstrap: str
) -> None:
    source = cluster(secure, "source", "scram512", unique)
    missing = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:ferry/missing/{unique}-AbCdEf"
    source["ClientAuthentication"]["SaslScram"]["SecretArn"] = missing
    target = cluster(secure, "target", "tls", unique)
    arn = fleet_kafka.create_replicator(**secured_request(unique, source, target, f"{unique}-t"))["ReplicatorArn"]
    failed = _wait_for_state_info(fleet_kafka, arn, "SECRET_NOT_FOUND")
    assert failed["StateInfo"]["Message"].startswith("source cluster ") and missing in failed["StateInfo"]["Message"]
    fleet_kafka.delete_replicator(ReplicatorArn=arn)


def write_denied(topic: str, principal: str) -> list[Acl]:
    """ACLs on ``topic`` for ``principal`` allowing everything but WRITE (once a topic has an ACL, operations
    nothing allows are denied)."""
    return [
        (RESOURCE_TOPIC, topic, PATTERN_LITERAL, principal, "*", OPERATION_ALL, PERMISSION_ALLOW),
        (RESOURCE_TOPIC, topic, PATTERN_LITERAL, principal, "*", OPERATION_WRITE, PERMISSION_DENY),
    ]


def test_a_target_that_refuses_writes_fails_with_a_reason_within_30s(
    fleet_kafka: Any, secure: dict[str, Any], unique: str, source_bootstrap: str, target_bootstrap: str
) -> None:
    """The replicator's SCRAM user may create the target topic but not write to it: the copy can never succeed,
    and the replicator must say so rather than stay RUNNING with nothing copied."""
    topic = f"{unique}-nowrite"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    asyncio.run(produce(source_bootstrap, topic, 50, 2, "w"))
    denied = write_denied(topic, "User:ferry")  # IDENTICAL naming: the target topic has the source's name
    asyncio.run(alter_acls(target_bootstrap, denied))
    try:
        refused_writes_fail(fleet_kafka, secure, unique, source_bootstrap, topic)
    finally:
        asyncio.run(alter_acls(target_bootstrap, denied, delete=True))


def refused_writes_fail(
    fleet_kafka: Any, secure: dict[str, Any], unique: str, source_bootstrap: str, topic: str
) -> None:
    source = {
        "ApacheKafkaCluster": {"ApacheKafkaClusterId": f"{unique}-source", "BootstrapBrokerString": source_bootstrap}
    }
    request = secured_request(unique, source, cluster(secure, "target", "scram512", unique), topic)
    request["ReplicationInfoList"][0]["TopicReplication"]["TopicNameConfiguration"] = {"Type": "IDENTICAL"}
    created = time.monotonic()
    arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
    failed = wait_until(
        "FAILED", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "FAILED" and d, 30, interval=0.5
    )
    print(f"a target that refuses writes: FAILED after {time.monotonic() - created:.1f}s")
    assert failed["StateInfo"]["Code"] == "PARTITIONS_NOT_AUTHORIZED", failed["StateInfo"]
    message = failed["StateInfo"]["Message"]
    assert message.startswith("2 partitions cannot be copied") and f"{topic}-0" in message, message
    assert "WRITE on the target topics" in message
    fleet_kafka.delete_replicator(ReplicatorArn=arn)


# An ACL binding: (resource type, resource name, pattern type, principal, host, operation, permission).
Acl = tuple[int, str, int, str, str, int, int]


async def alter_acls(bootstrap: str, acls: list[Acl], *, delete: bool = False) -> None:
    """Create (or delete) ACL bindings over the PLAINTEXT listener (a super user); deleting one that is not there
    is not an error."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for acl in acls:
            if delete:
                deleted = await admin._send_request(DeleteAclsRequest(*acl))
                answers = [(answer[0], answer[1]) for answer in deleted.filter_responses]
            else:
                answers = (await admin._send_request(CreateAclsRequest(*acl))).creation_responses
            for code, message in answers:
                assert code == 0, f"{'deleting' if delete else 'creating'} ACL {acl}: error {code} {message}"
    finally:
        await admin.close()


async def creation_refused(connection: ClusterConnection, probe_topic: str, plaintext: str) -> bool:
    """Whether ``connection``'s user authenticates and is refused creating ``probe_topic`` (a topic the ACLs
    cover). A probe created before the ACLs took effect is deleted again (as the super user) and False returned."""
    admin = AIOKafkaAdminClient(**client_kwargs(connection, "test-probe"))
    try:
        await admin.start()
        await kafka_admin.create_topic(admin, probe_topic, 1, 1, {})
    except AdminError as exc:
        return exc.code == TOPIC_AUTHORIZATION_FAILED
    except (KafkaError, OSError):
        return False  # the new SCRAM credential is not known to the broker yet
    finally:
        await admin.close()
    super_user = AIOKafkaAdminClient(bootstrap_servers=plaintext)
    await super_user.start()
    try:
        await super_user.delete_topics([probe_topic])
    finally:
        await super_user.close()
    return False


def copied_to(bootstrap: str, topic: str) -> int:
    return asyncio.run(count_records(bootstrap, topic))


def test_a_target_that_refuses_topic_creation_fails_with_a_reason_within_30s(
    fleet_kafka: Any, manager: Any, secure: dict[str, Any], stack: dict[str, Any], unique: str, own_secret: str,
    source_bootstrap: str, target_bootstrap: str,
) -> None:  # fmt: skip
    """The replicator's SCRAM user (its own, so the shared ``ferry`` user keeps no ACL) may do everything on the
    target but create one of its two topics: the replicator must say which and why rather than stay RUNNING with
    that topic never copied, copy the other meanwhile, and run once creation is granted.

    Kafka's CreateTopics asks for CREATE on the cluster and, refused, for CREATE on the topic: the user is denied
    both for the first topic, and only the cluster's for the second (which no ACL covers, so the stack's
    allow.everyone.if.no.acl.found allows it). Every other principal keeps what that default gave it: an ACL on a
    resource ends the default for everybody, so each denial comes with an allowance of everything to ``User:*``."""
    refused, allowed_topic = f"{unique}-nocreate", f"{unique}-ok"
    user, password = f"{unique}-u", secrets.token_hex(16)
    principal = f"User:{user}"
    allowed: list[Acl] = [
        (RESOURCE_CLUSTER, CLUSTER_RESOURCE_NAME, PATTERN_LITERAL, "User:*", "*", OPERATION_ALL, PERMISSION_ALLOW),
        (RESOURCE_TOPIC, refused, PATTERN_PREFIXED, "User:*", "*", OPERATION_ALL, PERMISSION_ALLOW),
    ]
    denied: list[Acl] = [
        (RESOURCE_CLUSTER, CLUSTER_RESOURCE_NAME, PATTERN_LITERAL, principal, "*", OPERATION_CREATE, PERMISSION_DENY),
        (RESOURCE_TOPIC, refused, PATTERN_PREFIXED, principal, "*", OPERATION_CREATE, PERMISSION_DENY),
    ]
    lib = Path(stack["kafka_lib"])
    for topic in (refused, allowed_topic):
        asyncio.run(create_topic(source_bootstrap, topic, 2))
        asyncio.run(produce(source_bootstrap, topic, RECORDS, 2, "before"))
    arn = None
    try:
        made = alter_scram_credential(
            target_bootstrap, lib, TOOLS_JVM, user, mechanism="SCRAM-SHA-512", password=password
        )
        assert made.returncode == 0, made.stderr
        asyncio.run(alter_acls(target_bootstrap, allowed + denied))
        connection = ClusterConnection(
            secure["target"]["sasl_scram"],
            security_protocol="SASL_SSL",
            ca_pem=ca_pem(secure),
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=password,
        )
        wait_until(
            f"{user} authenticated and refused topic creation",
            lambda: asyncio.run(creation_refused(connection, f"{refused}-probe", target_bootstrap)),
            60,
        )
        secret_arn = put_secret(manager, own_secret, json.dumps({"username": user, "password": password}))
        source = {
            "ApacheKafkaCluster": {
                "ApacheKafkaClusterId": f"{unique}-source",
                "BootstrapBrokerString": source_bootstrap,
            }
        }
        target = cluster(secure, "target", "scram512", unique)
        target["ClientAuthentication"]["SaslScram"]["SecretArn"] = secret_arn
        request = secured_request(unique, source, target, refused)
        replication = request["ReplicationInfoList"][0]["TopicReplication"]
        replication["TopicsToReplicate"] = [refused, allowed_topic]
        replication["TopicNameConfiguration"] = {"Type": "IDENTICAL"}  # the target topics have the source's names
        created = time.monotonic()
        arn = fleet_kafka.create_replicator(**request)["ReplicatorArn"]
        failed = wait_until(
            "FAILED", lambda: (d := describe(fleet_kafka, arn))["ReplicatorState"] == "FAILED" and d, 30, interval=0.5
        )
        took = time.monotonic() - created
        print(f"a target that refuses topic creation: FAILED after {took:.1f}s: {failed['StateInfo']}")
        assert failed["StateInfo"]["Code"] == "TARGET_TOPIC_CREATION_DENIED", failed["StateInfo"]
        message = failed["StateInfo"]["Message"]
        alias = failed["ReplicationInfoList"][0]["TargetKafkaClusterAlias"]
        assert message.startswith(f"target cluster {alias} refused to create 1 topic (TopicAuthorization"), message
        assert "needs CREATE on the target cluster" in message, message
        assert message.endswith(f"not created: {refused}"), message
        # The topic it may create is copied meanwhile.
        wait_until("the other topic copied", lambda: copied_to(target_bootstrap, allowed_topic) == RECORDS, 60)

        asyncio.run(alter_acls(target_bootstrap, denied, delete=True))
        granted = time.monotonic()
        wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60, interval=0.5)
        print(f"a target that refuses topic creation: RUNNING {time.monotonic() - granted:.1f}s after the grant")
        for topic in (refused, allowed_topic):
            asyncio.run(produce(source_bootstrap, topic, RECORDS, 2, "after"))
        for topic in (refused, allowed_topic):
            wait_until(f"all of {topic} copied", lambda t=topic: copied_to(target_bootstrap, t) == 2 * RECORDS, 60)
    finally:
        if arn is not None:
            fleet_kafka.delete_replicator(ReplicatorArn=arn)
        asyncio.run(alter_acls(target_bootstrap, allowed + denied, delete=True))
        alter_scram_credential(target_bootstrap, lib, TOOLS_JVM, user, mechanism="SCRAM-SHA-512", password=None)


# ----- no secret value where it must not be ------------------------------------------------------------------


def test_no_secret_value_in_logs_responses_redis_or_the_database(
    fleet: Fleet, fleet_kafka: Any, fleet_db: Engine, fleet_redis: Redis, manager: Any, secure: dict[str, Any],
    fleet_key: IssuedKey, unique: str,
) -> None:  # fmt: skip
    values = []
    for arn in secure["secrets"].values():
        raw = manager.get_secret_value(SecretId=arn)["SecretString"]
        values += [v for v in json.loads(raw).values() if isinstance(v, str)] if raw.startswith("{") else []
    secret_values = [v for v in values if len(v) >= 12 and "BEGIN CERTIFICATE" not in v]
    assert secret_values, "the stack's secrets hold passwords and keys"
    client_secret = json.loads(Path(secure["idp_clients"]).read_text())["ferry-cc"]["secret"]
    secret_values.append(client_secret)
    private_key_lines = [line for v in secret_values if "PRIVATE KEY" in v for line in v.splitlines()[1:3]]
    needles = [v for v in secret_values if "PRIVATE KEY" not in v] + private_key_lines

    listed = fleet_kafka.list_replicators()["Replicators"]
    responses = [json.dumps(listed, default=str)]
    responses += [json.dumps(describe(fleet_kafka, r["ReplicatorArn"]), default=str) for r in listed]
    with fleet_db.connect() as conn:
        rows = [
            str(row)
            for table in ("replicators", "replicator_metadata", "fleet_units", "offset_map_heads", "group_sync_state")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        ]
    redis_dump = []
    for key in fleet_redis.scan_iter("*"):
        kind = fleet_redis.type(key)
        if kind == b"hash":
            redis_dump.append(str(fleet_redis.hgetall(key)))
        elif kind == b"string":
            redis_dump.append(str(fleet_redis.get(key)))
        elif kind == b"list":
            redis_dump.append(str(fleet_redis.lrange(key, 0, -1)))
    logs = [path.read_text(errors="replace") for path in fleet.logs.glob("*.log")]
    for where, texts in (("responses", responses), ("database", rows), ("redis", redis_dump), ("logs", logs)):
        joined = "\n".join(texts)
        leaked = [needle[:6] + "..." for needle in needles if needle in joined]
        assert not leaked, f"secret values in the {where}: {leaked}"
