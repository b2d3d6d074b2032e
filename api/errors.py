"""Every error the API returns, in the AWS rest-json wire format botocore understands.

An error is a status code, an ``x-amzn-ErrorType`` header naming one of the MSK error shapes, and a body
``{"message": ..., "invalidParameter": ...}``. This module is the one place that maps domain errors
(``models.errors``), FastAPI's request validation, Starlette's routing errors, oversized bodies, database
outages and unexpected exceptions to that format. Unexpected exceptions get a generic message: details go to
the log, never to the caller.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models import logs
from models.errors import (
    AuthenticationError,
    ConflictError,
    DependencyUnavailableError,
    FerryError,
    InvalidRequestError,
    LimitExceededError,
    PermissionDeniedError,
    ResourceNotFoundError,
)

logger = logging.getLogger(__name__)

# The largest CreateReplicator body MSK's limits allow is well under this (4 lists of 100 patterns of at most
# 256 characters, plus clusters and tags); anything bigger is refused before it is read.
MAX_BODY_BYTES = 1024 * 1024
REQUEST_ID_SCOPE_KEY = "ferry.request_id"

ERROR_TYPES: dict[int, str] = {
    400: "BadRequestException",
    401: "UnauthorizedException",
    403: "ForbiddenException",
    404: "NotFoundException",
    409: "ConflictException",
    429: "TooManyRequestsException",
    500: "InternalServerErrorException",
    503: "ServiceUnavailableException",
}
_DOMAIN_STATUS: dict[type[FerryError], int] = {
    InvalidRequestError: 400,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    LimitExceededError: 429,
    ResourceNotFoundError: 404,
    ConflictError: 409,
    DependencyUnavailableError: 503,
}
_DESCRIPTIONS = {
    400: "BadRequestException: the request is malformed or breaks a rule; invalidParameter names the member.",
    401: "UnauthorizedException: the credentials could not be validated.",
    403: "ForbiddenException: access forbidden.",
    404: "NotFoundException: the resource (or route) does not exist.",
    409: "ConflictException: a replicator with this name already exists.",
    429: "TooManyRequestsException: limit exceeded.",
    500: "InternalServerErrorException: unexpected internal error (details are logged, never returned).",
    503: "ServiceUnavailableException: a dependency (database, AWS) is unavailable; retry later.",
    "4XX": "Any other client error, e.g. 405 (wrong method) or 413 (body over 1 MiB): x-amzn-ErrorType "
    "BadRequestException.",
}


class AwsError(BaseModel):
    """The body of every error response; the error's name is in the `x-amzn-ErrorType` header."""

    message: str = Field(description="What went wrong, starting with the offending member when there is one.")
    invalidParameter: str | None = Field(default=None, description="The request member that caused the error.")


def error_responses(*statuses: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for an operation's errors, each with the AwsError body and ErrorType header."""
    keys: list[int | str] = [*statuses, "4XX"]
    return {
        key: {
            "model": AwsError,
            "description": _DESCRIPTIONS[key]
            + (" Also 413 when the body is over 1 MiB and 400 when it is not JSON." if key == 400 and body else ""),
            "headers": {
                "x-amzn-ErrorType": {
                    "description": "The AWS error code botocore maps to an exception class.",
                    "schema": {
                        "type": "string",
                        "example": ERROR_TYPES[key] if isinstance(key, int) else "BadRequestException",
                    },
                }
            },
        }
        for key in keys
    }


def aws_error(status: int, message: str, parameter: str | None = None, error_type: str | None = None) -> Response:
    error_type = error_type or ERROR_TYPES.get(
        status, "BadRequestException" if status < 500 else "InternalServerErrorException"
    )
    body: dict[str, str] = {"message": message}
    if parameter is not None:
        body["invalidParameter"] = parameter
    return JSONResponse(body, status_code=status, headers={"x-amzn-ErrorType": error_type})


# ----- handlers -----------------------------------------------------------------------------------------------


async def _domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, FerryError)
    status = next((code for cls, code in _DOMAIN_STATUS.items() if isinstance(exc, cls)), 400)
    if status >= 500:
        logger.warning("dependency unavailable: %s", exc.message)
    return aws_error(status, exc.message, exc.parameter)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors: Sequence[Any] = exc.errors()
    if not errors:
        return aws_error(400, "The request is invalid", None)
    # An unknown member is usually a misspelt one: naming it helps more than the "required" error it causes.
    first = min(errors, key=lambda error: error.get("type") != "extra_forbidden")
    kind = first.get("type", "")
    # loc starts with where the value came from ("body", "query", "path"); the rest is the member path.
    path = wire_path(list(first.get("loc", ()))[1:])
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "invalid JSON")
        return aws_error(400, f"The request body is not valid JSON: {detail}", "body")
    if not path:
        if kind == "missing":
            return aws_error(400, "The request body is required (a JSON object)", "body")
        return aws_error(400, f"The request body must be a JSON object: {first.get('msg', '')}", "body")
    message, member = validation_message(errors, location_prefix=1)
    return aws_error(400, message, member)


def validation_message(errors: Sequence[Any], *, location_prefix: int = 0) -> tuple[str, str]:
    """The message and member of a request's validation errors, as the API answers them: the first problem
    named by its wire path (an unknown member first), and how many more there are. ``location_prefix`` is how
    many leading ``loc`` entries say where the value came from rather than which member it is."""
    first = min(errors, key=lambda error: error.get("type") != "extra_forbidden")
    kind = first.get("type", "")
    path = wire_path(list(first.get("loc", ()))[location_prefix:]) or "body"
    if kind == "extra_forbidden":
        message = f"{path}: is not a member of this request (unknown field)"
    elif kind == "missing":
        message = f"{path}: is required"
    else:
        message = f"{path}: {first.get('msg', 'is invalid')}"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return message, path


def wire_path(location: Sequence[Any]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return aws_error(404, f"No operation matches {request.method} {request.url.path}", None)
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        response = aws_error(
            405,
            f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}",
            None,
            "BadRequestException",
        )
        response.headers["Allow"] = ", ".join(allowed)
        return response
    if exc.status_code == 413:
        return aws_error(413, f"The request body is larger than {MAX_BODY_BYTES} bytes", "body", "BadRequestException")
    if isinstance(exc, NulInRequest):
        return aws_error(400, str(exc.detail), "body", "BadRequestException")
    if exc.status_code >= 500:
        logger.error(
            "HTTP %s raised while serving %s %s: %s", exc.status_code, request.method, request.url.path, exc.detail
        )
        return aws_error(500, "An internal error occurred", None)
    if exc.status_code == 400:
        return aws_error(400, "The request body could not be read as JSON", "body")
    return aws_error(exc.status_code, str(exc.detail), None)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette only names the first matching route's)."""
    routes = request.app.router.routes
    return [
        method
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH")
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("database unavailable while serving %s %s: %s", request.method, request.url.path, exc)
    return aws_error(503, "The service's database is unavailable; retry later", None)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error while serving %s %s", request.method, request.url.path, exc_info=exc)
    response = aws_error(500, "An internal error occurred", None)
    # This response is sent from outside BodyLimitAndRequestId (Starlette's outermost middleware sends it).
    request_id = request.scope.get(REQUEST_ID_SCOPE_KEY)
    if request_id:
        response.headers["x-amzn-RequestId"] = request_id
    return response


# ----- request size and request ids ---------------------------------------------------------------------------


class RequestTooLarge(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413)


class NulInRequest(StarletteHTTPException):
    """A NUL character in the body: no field accepts one, and PostgreSQL cannot store one in text or JSON."""

    def __init__(self) -> None:
        super().__init__(status_code=400, detail=NUL_MESSAGE.format(where="body"))


NUL_MESSAGE = "The request's {where} contains a NUL character (\\u0000 or %00), which no field accepts"
# Any other control character in the path (percent-encoded: a request line cannot carry one raw) is in no ARN or id,
# and routing would not refuse it: a trailing %0A falls off a path parameter, so "<arn>\n" would act on <arn>.
_CONTROL_IN_PATH = re.compile(rb"%(?:[01][0-9a-f]|7f)|[\x00-\x1f\x7f]", re.IGNORECASE)
CONTROL_MESSAGE = "The request's path contains a control character (%01-%1F or %7F), which no ARN or id has"
# A NUL in a JSON body: raw, or escaped (the escape may be split across two chunks of the body).
_NUL_FORMS = (b"\x00", b"\\u0000")


class BodyLimitAndRequestId:
    """Refuse bodies over ``max_bytes`` without reading them, requests carrying a NUL character anywhere (no field
    takes one, and PostgreSQL would refuse it as a server error) or another control character in the path, and give
    every response an x-amzn-RequestId."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        # Every line logged for this request carries its id (uvicorn runs each request in a task of its own).
        logs.bind_log_context(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-amzn-RequestId"] = request_id
            await send(message)

        if _has_nul(scope.get("query_string", b"")) or _has_nul(scope.get("raw_path") or b""):
            await aws_error(400, NUL_MESSAGE.format(where="URL"), None, "BadRequestException")(
                scope, receive, send_with_id
            )
            return
        if _CONTROL_IN_PATH.search(scope.get("raw_path") or b""):
            await aws_error(400, CONTROL_MESSAGE, None, "BadRequestException")(scope, receive, send_with_id)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = aws_error(
                413, f"The request body is larger than {self.max_bytes} bytes", "body", "BadRequestException"
            )
            response.headers["Connection"] = "close"
            await response(scope, receive, send_with_id)
            return

        received = 0
        tail = b""

        async def receive_with_limit() -> Message:
            nonlocal received, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_bytes:
                    # An HTTPException, so FastAPI passes it through its body reader to our handler.
                    raise RequestTooLarge
                seen = tail + chunk
                if any(form in seen for form in _NUL_FORMS):
                    raise NulInRequest
                tail = seen[-5:]
            return message

        await self.app(scope, receive_with_limit, send_with_id)


def _has_nul(raw: bytes) -> bool:
    return b"\x00" in raw or b"%00" in raw


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def require_json_body(request: Request) -> None:
    """Dependency for operations with a body: only JSON is accepted, as the AWS SDKs send it."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise InvalidRequestError(
            f"Content-Type: the body must be application/json, got {content_type[:100]!r}", "Content-Type"
        )


def install_error_handling(app: FastAPI) -> None:
    app.add_middleware(BodyLimitAndRequestId)
    app.add_exception_handler(FerryError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for database_error in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(database_error, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
