"""The API's access log: one line per request, after its response, on the logger ``api.access``.

Outermost of the application's middleware, so it also sees the responses ``BodyLimitAndRequestId`` refuses with
(api/errors.py), which gives every request its ``x-amzn-RequestId``: that id is on the line (``request_id``), with
``method``, ``path``, ``status`` and ``duration_ms`` (models/logs.py). The path is logged as the client sent it,
percent-encoded, so it cannot break a text line; the query string and the headers are never logged (a presigned
request carries its signature in the query, every other one in ``Authorization``).
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import REQUEST_ID_SCOPE_KEY

log = logging.getLogger("api.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except BaseException:
            # Starlette's ServerErrorMiddleware answers 500 (or the client went away) outside this middleware.
            status = status or 500
            raise
        finally:
            method = str(scope.get("method", ""))
            raw = scope.get("raw_path") or scope.get("path", "").encode()
            path = raw.decode("ascii", "backslashreplace")
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            log.info(
                "%s %s %d %.1fms",
                method,
                path,
                status,
                duration_ms,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "request_id": scope.get(REQUEST_ID_SCOPE_KEY),
                },
            )
