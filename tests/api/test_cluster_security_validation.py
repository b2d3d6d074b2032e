"""What workers cannot honour is refused when the request carries it, naming the member: no secured setting is
ever dropped or downgraded to PLAINTEXT later."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.api.conftest import create_request

SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ferry/test-AbCdEf"
CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUW0==\n-----END CERTIFICATE-----\n"
TLS = {"EncryptionType": "TLS", "RootCaCertificate": CA}
OAUTH = {
    "TokenEndpointUrl": "https://idp.example.com/oauth2/token",
    "TokenEndpointAuthenticationMethod": "POST",
    "ClientCredentials": {"TokenRequestSecretArn": SECRET},
}


def secured(request: dict[str, Any], **source: Any) -> dict[str, Any]:
    out = copy.deepcopy(request)
    out["KafkaClusters"][0].update(source)
    return out


CASES = [
    (
        "SCRAM without TLS",
        {"ClientAuthentication": {"SaslScram": {"Mechanism": "SHA512", "SecretArn": SECRET}}},
        "kafkaClusters[0].clientAuthentication.saslScram",
        "never sends credentials to a cluster in clear",
    ),
    (
        "OAUTHBEARER without TLS",
        {"ClientAuthentication": {"SaslOAuthBearer": OAUTH}},
        "kafkaClusters[0].clientAuthentication.saslOAuthBearer",
        "never sends tokens in clear",
    ),
    (
        "a secret that is not a secret ARN",
        {"EncryptionInTransit": TLS, "ClientAuthentication": {"MTLS": {"SecretArn": "my-client-cert"}}},
        "kafkaClusters[0].clientAuthentication.mTLS.secretArn",
        "not a Secrets Manager secret ARN",
    ),
    (
        "a root CA that is neither PEM nor a secret ARN",
        {"EncryptionInTransit": {"EncryptionType": "TLS", "RootCaCertificate": "trust me"}},
        "kafkaClusters[0].encryptionInTransit.rootCaCertificate",
        "PEM certificates",
    ),
    (
        "a token endpoint over http",
        {
            "EncryptionInTransit": TLS,
            "ClientAuthentication": {"SaslOAuthBearer": {**OAUTH, "TokenEndpointUrl": "http://idp.example.com/t"}},
        },
        "kafkaClusters[0].clientAuthentication.saslOAuthBearer.tokenEndpointUrl",
        "https:// URL",
    ),
    (
        "a token endpoint on the metadata service",
        {
            "EncryptionInTransit": TLS,
            "ClientAuthentication": {"SaslOAuthBearer": {**OAUTH, "TokenEndpointUrl": "https://169.254.169.254/t"}},
        },
        "kafkaClusters[0].clientAuthentication.saslOAuthBearer.tokenEndpointUrl",
        "cloud metadata endpoint",
    ),
    (
        "a JWT bearer grant without its signing key",
        {
            "EncryptionInTransit": TLS,
            "ClientAuthentication": {
                "SaslOAuthBearer": {
                    "TokenEndpointUrl": "https://idp.example.com/t",
                    "TokenEndpointAuthenticationMethod": "NONE",
                    "IamJwtBearer": {"Audience": "kafka", "SigningAlgorithm": "RS256"},
                }
            },
        },
        "kafkaClusters[0].clientAuthentication.saslOAuthBearer.iamJwtBearer.tokenRequestSecretArn",
        "private key",
    ),
    (
        "client credentials sent with no authentication method",
        {
            "EncryptionInTransit": TLS,
            "ClientAuthentication": {"SaslOAuthBearer": {**OAUTH, "TokenEndpointAuthenticationMethod": "NONE"}},
        },
        "kafkaClusters[0].clientAuthentication.saslOAuthBearer.tokenEndpointAuthenticationMethod",
        "use POST or BASIC",
    ),
    (
        "two OAuth grants at once",
        {
            "EncryptionInTransit": TLS,
            "ClientAuthentication": {
                "SaslOAuthBearer": {
                    **OAUTH,
                    "ClientCredentialsAssertion": {
                        "Audience": "kafka",
                        "SigningAlgorithm": "ES384",
                        "TokenRequestSecretArn": SECRET,
                    },
                }
            },
        },
        "kafkaClusters[0].clientAuthentication.saslOAuthBearer",
        "exactly one of",
    ),
]


@pytest.mark.parametrize(("case", "source", "member", "reason"), CASES, ids=[c[0] for c in CASES])
def test_settings_workers_cannot_honour_are_refused(
    kafka: Any, unique: str, clusters: dict[str, Any], case: str, source: dict[str, Any], member: str, reason: str
) -> None:
    with pytest.raises(kafka.exceptions.BadRequestException) as error:
        kafka.create_replicator(**secured(create_request(unique, clusters), **source))
    assert error.value.response["InvalidParameter"] == member, case
    assert reason in error.value.response["Error"]["Message"], error.value.response["Error"]["Message"]
    assert not kafka.list_replicators(ReplicatorNameFilter=unique)["Replicators"]


def test_secured_settings_are_kept_exactly_as_given(kafka: Any, unique: str, clusters: dict[str, Any]) -> None:
    scram = {"SaslScram": {"Mechanism": "SHA256", "SecretArn": SECRET}}
    request = secured(create_request(unique, clusters), EncryptionInTransit=TLS, ClientAuthentication=scram)
    arn = kafka.create_replicator(**request)["ReplicatorArn"]
    described = kafka.describe_replicator(ReplicatorArn=arn)["KafkaClusters"][0]
    assert described["ClientAuthentication"] == scram
    assert described["EncryptionInTransit"] == TLS
