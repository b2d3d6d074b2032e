"""OAUTHBEARER token providers against real endpoints: the local stack's identity provider (tokens cached, fetched
anew before they expire, refusals and outages as clear errors) and MSK IAM tokens, whose presigned request is
recomputed and checked with botocore."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from botocore.auth import SIGV4_TIMESTAMP, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from workers.engine.connection import TokenUnavailable
from workers.engine.oauth import MskIamTokenProvider, OAuthSettings, OAuthTokenProvider


@pytest.fixture
def secure(stack: dict[str, Any]) -> dict[str, Any]:
    secured: dict[str, Any] = stack["secure"]
    return secured


@pytest.fixture
def ca(secure: dict[str, Any]) -> str:
    return Path(secure["ca"]).read_text()


@pytest.fixture
def short_lived_client(secure: dict[str, Any], unique: str) -> Iterator[tuple[str, str]]:
    """A client of the identity provider whose tokens live 31 s (refreshed 30 s before they expire)."""
    path = Path(secure["idp_clients"])
    clients = json.loads(path.read_text())
    clients[unique] = {"secret": f"{unique}-secret", "audience": "kafka", "tokenSeconds": 31}
    path.write_text(json.dumps(clients))
    yield unique, f"{unique}-secret"
    clients = json.loads(path.read_text())
    clients.pop(unique, None)
    path.write_text(json.dumps(clients))


async def test_tokens_are_cached_and_fetched_again_before_they_expire(
    secure: dict[str, Any], ca: str, short_lived_client: tuple[str, str]
) -> None:
    client_id, secret = short_lived_client
    provider = OAuthTokenProvider(
        OAuthSettings(
            secure["token_endpoint"],
            "client_credentials",
            "BASIC",
            client_id,
            secret,
            scope="kafka.replicate",
            token_endpoint_ca_pem=ca,
        )
    )
    first = await provider.token()
    assert await provider.token() == first and provider.fetches == 1, "a valid token is reused"
    claims = jwt.decode(first, options={"verify_signature": False})
    assert claims["aud"] == "kafka" and claims["scope"] == "kafka.replicate" and claims["client_id"] == client_id
    deadline = time.monotonic() + 10
    renewed = first
    while renewed == first and time.monotonic() < deadline:
        renewed = await provider.token()
    assert renewed != first and provider.fetches == 2, "fetched anew ahead of expiry"
    assert jwt.decode(renewed, options={"verify_signature": False})["exp"] > claims["exp"]


async def test_a_refusing_or_unreachable_endpoint_is_a_clear_error(secure: dict[str, Any], ca: str) -> None:
    refused = OAuthTokenProvider(
        OAuthSettings(
            secure["token_endpoint"], "client_credentials", "POST", "ferry-cc", "wrong", token_endpoint_ca_pem=ca
        )
    )
    with pytest.raises(TokenUnavailable, match=r"refused the request \(HTTP 401\)"):
        await refused.token()
    untrusted = OAuthTokenProvider(OAuthSettings(secure["token_endpoint"], "client_credentials", "POST", "x", "y"))
    with pytest.raises(TokenUnavailable, match="TLS failed"):
        await untrusted.token()  # the stack's CA is private: not trusted without token_endpoint_ca_pem
    down = OAuthTokenProvider(OAuthSettings("https://localhost:1/token", "client_credentials", "POST", "x", "y"))
    with pytest.raises(TokenUnavailable, match="unreachable"):
        await down.token()


def _presigned_url(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


async def test_msk_iam_tokens_are_presigned_connect_requests_botocore_verifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_id, secret = "AKIAFERRYTEST0000001", "ferry-test-secret-access-key-0000000000"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    token = await MskIamTokenProvider("eu-west-1").token()
    url = urlsplit(_presigned_url(token))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert url.netloc == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == "kafka-cluster:Connect"
    access_key, date, region, service, _ = query["X-Amz-Credential"].split("/")
    assert (access_key, region, service) == (key_id, "eu-west-1", "kafka-cluster")
    assert query["X-Amz-Expires"] == "900"
    signed_at = dt.datetime.strptime(query["X-Amz-Date"], SIGV4_TIMESTAMP).replace(tzinfo=dt.UTC)
    assert abs(dt.datetime.now(dt.UTC) - signed_at) < dt.timedelta(minutes=1)
    # Recompute the signature with botocore over the query as signed (the signer appends User-Agent afterwards).
    kept = [p for p in url.query.split("&") if p.split("=", 1)[0] not in ("X-Amz-Signature", "User-Agent")]
    request = AWSRequest(method="GET", url=f"https://{url.netloc}/?{'&'.join(kept)}")
    request.context["timestamp"] = query["X-Amz-Date"]
    signer = SigV4QueryAuth(Credentials(key_id, secret), "kafka-cluster", "eu-west-1", expires=900)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    assert hmac.compare_digest(expected, query["X-Amz-Signature"])
    assert date == query["X-Amz-Date"][:8]


async def test_msk_iam_tokens_for_a_role_use_its_assumed_credentials(
    monkeypatch: pytest.MonkeyPatch, secure: dict[str, Any]
) -> None:
    # The stack's moto server answers STS too: AssumeRole returns temporary credentials for the role.
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", secure["aws_endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ferry-dev")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ferry-dev-secret")
    role = "arn:aws:iam::123456789012:role/ferry-replicator"
    token = await MskIamTokenProvider("us-east-1", role).token()
    query = {k: v[0] for k, v in parse_qs(urlsplit(_presigned_url(token)).query).items()}
    assert query["Action"] == "kafka-cluster:Connect"
    access_key = query["X-Amz-Credential"].split("/")[0]
    assert access_key.startswith("ASIA") and access_key != "ferry-dev", "temporary credentials of the role"
    assert query.get("X-Amz-Security-Token"), "an assumed role's session token is part of the request"
