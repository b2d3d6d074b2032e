"""OAUTHBEARER token providers for aiokafka: OAuth 2.0 grants against an identity provider, and MSK IAM.

``OAuthTokenProvider`` fetches access tokens from a token endpoint (RFC 6749) with one of three grants:

- ``client_credentials`` with a client id and secret, sent in the form body (``POST``) or as HTTP Basic
  (``BASIC``); ``NONE`` sends the client id only;
- ``client_credentials`` with a JWT client assertion (RFC 7523 section 2.2) signed with the client's key;
- ``jwt_bearer``: a JWT assertion as the grant (RFC 7523 section 2.1), signed with the client's key.

Assertions are signed with RS256 or ES384. Tokens are cached and fetched anew before they expire (a tenth of
their lifetime ahead, at least 30 s, at most 5 min); a custom CA can be trusted for the token endpoint.
aiokafka has no re-authentication (KIP-368), so a broker closes a connection when its token expires and the
client reconnects with a fresh one.

``MskIamTokenProvider`` signs MSK IAM tokens (a presigned ``kafka-cluster:Connect`` request) with credentials of
an assumed role (aws-msk-iam-sasl-signer-python), cached the same way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Literal

import boto3
import jwt
from aiokafka.abc import AbstractTokenProvider
from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
from botocore.credentials import CredentialProvider, Credentials

from workers.engine.connection import TokenUnavailable

Grant = Literal["client_credentials", "client_assertion", "jwt_bearer"]
EndpointAuthentication = Literal["POST", "BASIC", "NONE"]
SigningAlgorithm = Literal["RS256", "ES384"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_SECONDS = 300
REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class OAuthSettings:
    token_endpoint_url: str
    grant: Grant
    endpoint_authentication: EndpointAuthentication
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    signing_key_pem: str | None = field(default=None, repr=False)
    signing_algorithm: SigningAlgorithm = "RS256"
    key_id: str | None = None
    audience: str | None = None
    subject: str | None = None
    scope: str | None = None
    token_endpoint_ca_pem: str | None = None

    def __post_init__(self) -> None:
        if not self.token_endpoint_url.startswith("https://"):
            raise ValueError("the token endpoint must be an https:// URL")
        if self.grant == "client_credentials" and self.endpoint_authentication != "NONE" and not self.client_secret:
            raise ValueError("client_credentials needs a client secret")
        if self.grant in ("client_assertion", "jwt_bearer") and not self.signing_key_pem:
            raise ValueError(f"{self.grant} needs a signing key")


def _refresh_margin(lifetime_s: float) -> float:
    return min(300.0, max(30.0, lifetime_s / 10))


class OAuthTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    def __init__(self, settings: OAuthSettings) -> None:
        self.settings = settings
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                token, lifetime = await asyncio.to_thread(self._fetch)
                self._token = token
                self._refresh_at = time.monotonic() + max(1.0, lifetime - _refresh_margin(lifetime))
                self.fetches += 1
            return self._token

    def _assertion(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.settings.client_id,
            "sub": self.settings.subject or self.settings.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.settings.key_id} if self.settings.key_id else None
        assert self.settings.signing_key_pem is not None
        key, algorithm = self.settings.signing_key_pem, self.settings.signing_algorithm
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)

    def _form(self) -> tuple[dict[str, str], dict[str, str]]:
        s = self.settings
        form: dict[str, str] = {}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        audience = s.audience or s.token_endpoint_url
        if s.grant == "jwt_bearer":
            form.update(grant_type=JWT_BEARER_GRANT, assertion=self._assertion(audience))
        elif s.grant == "client_assertion":
            form.update(
                grant_type="client_credentials",
                client_id=s.client_id,
                client_assertion_type=ASSERTION_TYPE,
                client_assertion=self._assertion(audience),
            )
        else:
            form["grant_type"] = "client_credentials"
            if s.endpoint_authentication == "BASIC":
                pair = f"{urllib.parse.quote(s.client_id)}:{urllib.parse.quote(s.client_secret or '')}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            else:
                form["client_id"] = s.client_id
                if s.endpoint_authentication == "POST":
                    form["client_secret"] = s.client_secret or ""
        if s.scope:
            form["scope"] = s.scope
        return form, headers

    def _fetch(self) -> tuple[str, float]:
        """Blocking: one token request (run in a thread)."""
        form, headers = self._form()
        request = urllib.request.Request(
            self.settings.token_endpoint_url, data=urllib.parse.urlencode(form).encode(), headers=headers, method="POST"
        )
        context = ssl.create_default_context()
        if self.settings.token_endpoint_ca_pem:
            context.load_verify_locations(cadata=self.settings.token_endpoint_ca_pem)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS, context=context) as response:
                body = json.loads(response.read(1 << 20))
        except urllib.error.HTTPError as exc:
            raise TokenUnavailable(f"the token endpoint refused the request (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            what = "TLS failed" if isinstance(reason, ssl.SSLError) else "unreachable"
            raise TokenUnavailable(f"the token endpoint is {what}") from None
        except ValueError:
            raise TokenUnavailable("the token endpoint did not answer with JSON") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenUnavailable("the token endpoint's answer held no access_token")
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        return token, lifetime


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """MSK IAM authentication tokens for ``region``, signed with the credentials of ``role_arn`` (assumed with STS)
    or, without a role, of the worker's own credential chain."""

    def __init__(self, region: str, role_arn: str | None = None, session_name: str = "ferry") -> None:
        self.region = region
        self.role_arn = role_arn
        self.session_name = session_name
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                token, expiry_ms = await asyncio.to_thread(self._generate)
                lifetime = max(1.0, expiry_ms / 1000 - time.time())
                self._token = token
                self._refresh_at = time.monotonic() + max(1.0, lifetime - _refresh_margin(lifetime))
            return self._token

    def _generate(self) -> tuple[str, int]:
        try:
            if self.role_arn:
                # The signer's own role helper calls STS without a region; assume the role in the cluster's.
                assumed = _AssumedRole(self.region, self.role_arn, self.session_name)
                token, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(
                    self.region, assumed
                )
            else:
                token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(self.region)
        except Exception as exc:  # noqa: BLE001 - botocore's credential and STS errors, of many classes
            raise TokenUnavailable(f"no MSK IAM token: {type(exc).__name__}") from None
        return str(token), int(expiry_ms)


class _AssumedRole(CredentialProvider):  # type: ignore[misc]
    """The temporary credentials of ``role_arn``, assumed with STS in ``region``."""

    METHOD = "ferry-assume-role"

    def __init__(self, region: str, role_arn: str, session_name: str) -> None:
        super().__init__()
        self.region = region
        self.role_arn = role_arn
        self.session_name = session_name

    def load(self) -> Credentials:
        sts = boto3.client("sts", region_name=self.region)
        answer = sts.assume_role(RoleArn=self.role_arn, RoleSessionName=self.session_name)["Credentials"]
        return Credentials(answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"])
