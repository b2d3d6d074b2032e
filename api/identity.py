"""The one place where the API learns who is calling.

Every request but the open ones (health probes and the API's own documentation) must carry an AWS Signature
Version 4 made with an access key Ferry issued (``ferry admin create-access-key``): boto3, the AWS CLI and
Terraform's aws provider sign this way unchanged. ``Authentication`` is an ASGI middleware, so a request is
authenticated before anything else looks at it (routing, JSON parsing, validation): an unsigned request learns
nothing but 401. It

1. verifies the signature (``api/sigv4.py``) with the key's secret, looked up on every request: in the process's
   cache of keys (``models/access_key_cache.py``) while PostgreSQL's notifications of key changes are shown to
   arrive, in the database otherwise. A revoked key fails as soon as the notification arrives (usually within a
   millisecond; at most the cache's probe interval, 5 s, when the listener's connection dies silently);
2. refuses a read-only key anything but reading (403 ``ForbiddenException``);
3. limits each key's request rate (429 ``TooManyRequestsException``; per API process, see docs/security.md);
4. records the ``Caller``: the key's account scopes every query, so no account sees another's replicators.

The web console (``/console``, ``api/console/``) is for browsers, which cannot sign: its pages carry a signed session
cookie instead (``api/console/session.py``), made at sign-in after ``check_access_key`` found the key id and secret
valid. ``Authentication`` reads that cookie here and looks its key up on every request as for a signature, so the
console's caller is the same ``Caller`` with the same account scope and the same read-only refusal.

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
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import sigv4
from api.errors import ERROR_TYPES, aws_error
from models import access_keys
from models.access_key_cache import AccessKeyCache
from models.access_keys import KeyPermission, VerifiableKey
from models.errors import AuthenticationError, FerryError, LimitExceededError, PermissionDeniedError
from models.secret_box import SecretBox, SecretKeyError
from models.settings import FerrySettings

log = logging.getLogger(__name__)

CALLER_SCOPE_KEY = "ferry.caller"
SCRAPER_SCOPE_KEY = "ferry.metrics_scraper"
# Open to anyone: liveness and readiness probes, and the API's own description.
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
METRICS_PATH = "/metrics"
CONSOLE_PATH = "/console"
CONSOLE_SESSION_SCOPE_KEY = "ferry.console_session"
# What a read-only key may still post in the console: its own sign-in and sign-out.
CONSOLE_SESSION_PATHS = frozenset({"/console/sign-in", "/console/sign-out"})
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
    read_only: bool = False


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
        if is_console_path(scope["path"]):
            await self._console(scope, receive, send)
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
        key = await self._key(scope, signed.access_key_id)
        if key is None:
            raise AuthenticationError(sigv4.INVALID_TOKEN)
        sigv4.verify(signed, key.secret_access_key)
        if key.permission is KeyPermission.READ_ONLY and scope["method"] not in READ_METHODS:
            raise PermissionDeniedError(
                f"User: {key.access_key_id} is not authorized to perform this operation: the key is read-only"
            )
        if not self.limiter.allow(key.access_key_id):
            raise LimitExceededError("Rate exceeded")
        return Caller(
            key.account_id, self.settings.aws_region, key.access_key_id, key.permission is KeyPermission.READ_ONLY
        )

    async def _console(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Console requests carry a session cookie, not a signature. A request without a valid signed-in session
        goes on without a caller: the console's pages send it to the sign-in page."""
        path = scope["path"]
        if path.startswith(f"{CONSOLE_PATH}/static/"):
            await self.app(scope, receive, send)
            return
        session = scope["app"].state.console_sessions.read(scope.get("headers", []))
        scope[CONSOLE_SESSION_SCOPE_KEY] = session
        caller: Caller | None = None
        if self.disabled:
            caller = Caller(self.settings.aws_account_id, self.settings.aws_region)
        elif session is not None and session.access_key_id is not None:
            try:
                key = await self._key(scope, session.access_key_id)
            except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
                log.warning("database unavailable while authenticating %s %s: %s", scope["method"], path, exc)
                await PlainTextResponse("The service's database is unavailable; retry later", 503)(scope, receive, send)
                return
            if key is not None:
                caller = Caller(
                    key.account_id, self.settings.aws_region, key.access_key_id,
                    key.permission is KeyPermission.READ_ONLY,
                )  # fmt: skip
        if caller is not None:
            if caller.read_only and scope["method"] not in READ_METHODS and path not in CONSOLE_SESSION_PATHS:
                message = f"The access key {caller.access_key_id} is read-only: it cannot change anything"
                await PlainTextResponse(message, 403)(scope, receive, send)
                return
            if caller.access_key_id is not None and not self.limiter.allow(caller.access_key_id):
                await PlainTextResponse("Rate exceeded", 429)(scope, receive, send)
                return
            scope[CALLER_SCOPE_KEY] = caller
        await self.app(scope, receive, send)

    async def _key(self, scope: Scope, access_key_id: str) -> VerifiableKey | None:
        box, state = self.box, scope["app"].state
        assert box is not None

        async def read(key_id: str) -> VerifiableKey | None:
            return await active_key(state.db_engine, box, key_id)

        cache: AccessKeyCache | None = getattr(state, "access_key_cache", None)
        return await (cache.lookup(access_key_id, read) if cache is not None else read(access_key_id))


def is_console_path(path: str) -> bool:
    return path == CONSOLE_PATH or path.startswith(f"{CONSOLE_PATH}/")


async def active_key(engine: AsyncEngine, box: SecretBox, access_key_id: str) -> VerifiableKey | None:
    """The active key with this id, or None: unknown, malformed, revoked, or sealed under another secret key."""
    try:
        async with engine.connect() as conn:
            return await access_keys.verifiable_key(conn, box, access_key_id)
    except SecretKeyError:
        log.warning("access key %s does not open with the configured secret key (was it rotated?)", access_key_id)
        return None


async def check_access_key(
    engine: AsyncEngine, box: SecretBox, access_key_id: str, secret_access_key: str
) -> VerifiableKey | None:
    """The key, when ``secret_access_key`` is its secret (the console's sign-in); None otherwise, saying no more
    than a wrong signature does."""
    key = await active_key(engine, box, access_key_id.strip())
    if key is None or not hmac.compare_digest(secret_access_key.encode(), key.secret_access_key.encode()):
        return None
    return key


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


async def _caller_of_request(request: Request) -> Caller:
    # async although it awaits nothing: FastAPI runs a plain def dependency on a thread, a hop per request.
    return current_caller(request)


CallerDep = Annotated[Caller, Depends(_caller_of_request)]
