"""How the ``ferry`` command talks to a Ferry API: as the AWS CLI would, from the same configuration.

Credentials, region and profile come from botocore's chain (``--profile`` / ``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``..., ``~/.aws/credentials`` and ``~/.aws/config``; the region also from ``AWS_REGION``);
the endpoint from ``--endpoint-url``, ``FERRY_ENDPOINT_URL``, or botocore's own ``AWS_ENDPOINT_URL_KAFKA`` /
``AWS_ENDPOINT_URL`` / the profile's ``endpoint_url``. The MSK operations go through boto3's ``kafka`` client
(its parameter validation, its serialisation, its retries of throttled calls); the Ferry extensions (metrics,
offset translation, failover, audits) are raw HTTP signed by ``KafkaSigV4``, the one SigV4 signer of the
command line.

Every failure becomes an ``ApiError`` with the AWS error code, a one-line message and, when the server
answered, its HTTP status; callers map those to exit codes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import botocore.session
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

DEFAULT_REGION = "us-east-1"
# A status for failures the server never answered: the request did not reach it (or no answer came back).
UNREACHABLE = 0


class KafkaSigV4(httpx.Auth):
    """Signs httpx requests as the AWS CLI signs the kafka service's (SigV4, service ``kafka``)."""

    requires_request_body = True

    def __init__(self, credentials: Credentials, region: str) -> None:
        self.credentials = credentials
        self.region = region

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        headers = {name: value for name, value in request.headers.items() if name.lower() in ("host", "content-type")}
        signed = AWSRequest(method=request.method, url=str(request.url), data=request.content, headers=headers)
        SigV4Auth(self.credentials, "kafka", self.region).add_auth(signed)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in signed.headers:
                request.headers[name] = signed.headers[name]
        yield request


class ApiError(Exception):
    """A call that failed: ``code`` is the AWS error code (``NotFoundException``...), ``status`` the HTTP status
    (``UNREACHABLE`` when no answer came), ``message`` one line."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = " ".join(message.split())
        self.status = status


@dataclass
class ApiClient:
    endpoint_url: str
    region: str
    kafka: Any  # boto3's kafka client
    http: httpx.Client

    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One MSK operation by its boto3 name (``describe_replicator``); the answer without ResponseMetadata."""
        method: Callable[..., dict[str, Any]] = getattr(self.kafka, operation)
        try:
            answer = method(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or UNREACHABLE)
            raise ApiError(error.get("Code") or "Error", error.get("Message") or str(exc), status) from None
        except BotoCoreError as exc:
            raise _local_error(exc) from None
        answer.pop("ResponseMetadata", None)
        return answer

    def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One Ferry extension call (signed); its JSON answer."""
        try:
            response = self.http.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise ApiError("EndpointConnectionError", f"{self.endpoint_url}: {exc}", UNREACHABLE) from None
        try:
            answer: Any = response.json()
        except ValueError:
            answer = {"message": response.text[:300] or response.reason_phrase}
        if response.status_code >= 400:
            if not isinstance(answer, dict):
                answer = {"message": str(answer)[:300]}
            code = response.headers.get("x-amzn-ErrorType", "").split(":")[0] or f"HTTP{response.status_code}"
            message = answer.get("message") or answer.get("Message") or response.reason_phrase
            raise ApiError(code, str(message), response.status_code)
        return answer if isinstance(answer, dict) else {"value": answer}

    def close(self) -> None:
        self.http.close()


def _local_error(exc: BotoCoreError) -> ApiError:
    if isinstance(exc, ParamValidationError):
        # botocore's report is a heading line ending in ':' and one line per problem.
        heading, *problems = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        return ApiError("ParamValidationError", f"{heading} {'; '.join(problems)}".strip(), 400)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
        return ApiError(type(exc).__name__, str(exc), 401)
    if isinstance(exc, BotoConnectionError):
        return ApiError("EndpointConnectionError", str(exc), UNREACHABLE)
    return ApiError(type(exc).__name__, str(exc), UNREACHABLE)


class EndpointMissing(Exception):
    """No Ferry endpoint configured: the call would go to AWS itself."""


def connect(endpoint_url: str | None, region: str | None, profile: str | None) -> ApiClient:
    """A client of the API at ``endpoint_url`` (or the endpoint configured as the AWS CLI would find it).

    Raises ``ApiError`` for missing credentials or an unknown profile, ``EndpointMissing`` when nothing names an
    endpoint other than AWS's own."""
    try:
        session = botocore.session.Session(profile=profile)
        credentials = session.get_credentials()
    except ProfileNotFound as exc:
        raise ApiError("ProfileNotFound", str(exc), 401) from None
    if credentials is None:
        raise ApiError(
            "NoCredentialsError",
            "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
            "~/.aws/credentials)",
            401,
        )
    # The AWS CLI v2's order: --region, AWS_REGION, AWS_DEFAULT_REGION, the profile (botocore reads the last two).
    region = region or os.environ.get("AWS_REGION") or session.get_config_variable("region") or DEFAULT_REGION
    try:
        kafka = session.create_client("kafka", region_name=region, endpoint_url=endpoint_url)
    except (NoRegionError, BotoCoreError) as exc:
        raise ApiError(type(exc).__name__, str(exc), UNREACHABLE) from None
    resolved: str = kafka.meta.endpoint_url
    if (urlsplit(resolved).hostname or "").endswith(".amazonaws.com"):
        raise EndpointMissing(
            "no Ferry endpoint: pass --endpoint-url or set FERRY_ENDPOINT_URL (or AWS_ENDPOINT_URL_KAFKA)"
        )
    verify: str | bool = session.get_config_variable("ca_bundle") or True
    http = httpx.Client(
        base_url=resolved,
        timeout=60,
        verify=verify,
        auth=KafkaSigV4(credentials.get_frozen_credentials(), region),
    )
    return ApiClient(resolved, region, kafka, http)


def endpoint_from_environment() -> str | None:
    return os.environ.get("FERRY_ENDPOINT_URL") or None
