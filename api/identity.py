"""The one place where the API learns who is calling.

Every request but the open ones (health probes and the API's own documentation) must carry an AWS Signature
Version 4 made with an access key Ferry issued (``ferry admin create-access-key``): boto3, the AWS CLI and
Terraform's aws provider sign this way unchanged. ``Authentication`` is an ASGI middleware, so a request is
authenticated before anything else looks at it (routing, JSON parsing, validation): an unsigned request learns
nothing but 401. It

1. verifies the signature (``api/sigv4.py``) with the key's secret, looked up on every request (a revoked key fails
   on its next request);
2. refuses a read-only key anything but reading (403 ``ForbiddenException``);
3. limits each key's request rate (429 ``TooManyRequestsException``; per API process, see docs/security.md);
4. records the ``Caller``: the key's account scopes every query, so no account sees another's replicators.

``GET /metrics`` also takes ``Authorization: Bearer <FERRY_METRICS_TOKEN>``, the platform's Prometheus scraping
every account; a SigV4-signed scrape sees its own account only. ``FERRY_AUTH=disabled`` turns all of this off
(every request acts for ``FERRY_AWS_ACCOUNT_ID``), with a warning at every start.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import sigv4
from api.errors import ERROR_TYPES, aws_error
from models import access_keys
from models.access_keys import KeyPermission
from models.errors import AuthenticationError, FerryError, LimitExceededError, PermissionDeniedError
from models.secret_box import SecretBox, SecretKeyError
from models.settings import FerrySettings

log = logging.getLogger(__name__)

CALLER_SCOPE_KEY = "ferry.caller"
SCRAPER_SCOPE_KEY = "ferry.metrics_scraper"
# Open to anyone: liveness and readiness probes, and the API's own description.
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
METRICS_PATH = "/metrics"
READ_METHODS = frozenset({"GET", "HEAD"})
_STATUS_OF: dict[type[FerryError], int] = {
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    LimitExceededError: 429,
}


@dataclass(frozen=True)
class Caller:
    account_id: str
    region: str
    # The access key that signed the request; None when authentication is disabled.
    access_key_id: str | None = None


class _RateLimiter:
    """A token bucket per access key: ``rate`` requests per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return True


class Authentication:
    """ASGI middleware: authenticate every request that is not open, before routing."""

    def __init__(self, app: ASGIApp, settings: FerrySettings) -> None:
        self.app = app
        self.settings = settings
        self.disabled = settings.auth == "disabled"
        self.box = secret_box_of(settings)
        metrics_token = settings.metrics_token
        self.metrics_token = metrics_token.get_secret_value().encode() if metrics_token else None
        self.limiter = _RateLimiter(settings.api_requests_per_second, settings.api_request_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.disabled:
            scope[CALLER_SCOPE_KEY] = Caller(self.settings.aws_account_id, self.settings.aws_region)
            await self.app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH and self._is_scraper(scope):
            scope[SCRAPER_SCOPE_KEY] = True
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except StarletteHTTPException as exc:  # the body limit or a NUL, met while reading the body
            message = exc.detail if exc.status_code == 400 else f"The request body is too large ({exc.status_code})"
            await aws_error(exc.status_code, message, "body", "BadRequestException")(scope, receive, send)
            return
        try:
            scope[CALLER_SCOPE_KEY] = await self._authenticate(scope, body)
        except FerryError as exc:
            status = (
                401 if isinstance(exc, AuthenticationError) else 403 if isinstance(exc, PermissionDeniedError) else 429
            )
            await aws_error(status, exc.message, None, ERROR_TYPES[status])(scope, receive, send)
            return
        except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
            log.warning("database unavailable while authenticating %s %s: %s", scope["method"], scope["path"], exc)
            await aws_error(503, "The service's database is unavailable; retry later")(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _is_scraper(self, scope: Scope) -> bool:
        if self.metrics_token is None:
            return False
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value.startswith(b"Bearer "):
                return hmac.compare_digest(value[len(b"Bearer ") :].strip(), self.metrics_token)
        return False

    async def _authenticate(self, scope: Scope, body: bytes) -> Caller:
        signed = sigv4.parse(
            method=scope["method"],
            raw_path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            raw_query=scope.get("query_string", b"").decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])],
            body=body,
            region=self.settings.aws_region,
        )
        assert self.box is not None
        engine: AsyncEngine = scope["app"].state.db_engine
        try:
            async with engine.connect() as conn:
                key = await access_keys.verifiable_key(conn, self.box, signed.access_key_id)
        except SecretKeyError:
            log.warning("access key %s does not open with the configured secret key (was it rotated?)",
                        signed.access_key_id)  # fmt: skip
            key = None
        if key is None:
            raise AuthenticationError(sigv4.INVALID_TOKEN)
        sigv4.verify(signed, key.secret_access_key)
        if key.permission is KeyPermission.READ_ONLY and scope["method"] not in READ_METHODS:
            raise PermissionDeniedError(
                f"User: {key.access_key_id} is not authorized to perform this operation: the key is read-only"
            )
        if not self.limiter.allow(key.access_key_id):
            raise LimitExceededError("Rate exceeded")
        return Caller(key.account_id, self.settings.aws_region, key.access_key_id)


def secret_box_of(settings: FerrySettings) -> SecretBox | None:
    """The box that opens stored secret access keys; raises ValueError (at start) when authentication is on and
    no usable secret key is configured."""
    secret = settings.secret_key_material()
    if settings.auth != "disabled" and secret is None:
        raise ValueError(
            "FERRY_SECRET_KEY or FERRY_SECRET_KEY_FILE is required to verify access keys; "
            "set FERRY_AUTH=disabled to run without authentication (never in production)"
        )
    return SecretBox(secret) if secret is not None else None


async def _read_body(receive: Receive) -> bytes:
    """The whole body (its size is bounded by the body limit middleware outside this one)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def current_caller(request: Request) -> Caller:
    caller = request.scope.get(CALLER_SCOPE_KEY)
    if not isinstance(caller, Caller):
        raise AuthenticationError(sigv4.MISSING)
    return caller


def is_metrics_scraper(request: Request) -> bool:
    """Whether the request carries the metrics bearer token (it may read every account's metrics)."""
    return bool(request.scope.get(SCRAPER_SCOPE_KEY))


CallerDep = Annotated[Caller, Depends(current_caller)]
