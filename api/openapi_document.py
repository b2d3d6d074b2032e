"""What the OpenAPI document says that FastAPI cannot derive from the routes: how callers authenticate.

Authentication is a middleware (``api/identity.py``), not a dependency of each route, so the routes do not declare
it. The document names two security schemes and gives every operation the one ``identity.py`` applies to its path:
none on the open paths (health probes), SigV4 or the metrics bearer token on ``/metrics``, SigV4 everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.identity import METRICS_PATH, OPEN_PATHS

SIGV4 = "SigV4"
METRICS_TOKEN = "MetricsBearerToken"

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    SIGV4: {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": (
            "AWS Signature Version 4, as boto3, the AWS CLI and Terraform's aws provider sign every call of the "
            "`kafka` service, with an access key Ferry issued (`ferry admin create-access-key`): "
            "`Authorization: AWS4-HMAC-SHA256 Credential=<access key id>/<yyyymmdd>/<region>/kafka/aws4_request, "
            "SignedHeaders=..., Signature=...` with `X-Amz-Date` (and `X-Amz-Content-SHA256`, which must be the "
            "body's SHA-256 when sent). The credential scope names service `kafka` and Ferry's region "
            "(FERRY_AWS_REGION); the signing time must be within 5 minutes of the server's clock. Presigned URLs "
            "(`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`, "
            "`X-Amz-Signature` in the query) are accepted for requests without a body. With curl: "
            "`--aws-sigv4 aws:amz:<region>:kafka --user <access key id>:<secret access key>`. A missing or wrong "
            "signature, or an unknown or revoked key, is 401 UnauthorizedException; a read-only key on an operation "
            "that changes something is 403 ForbiddenException; a key over its request rate is 429 "
            "TooManyRequestsException. The key's account scopes every operation (docs/security.md)."
        ),
    },
    METRICS_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "`Authorization: Bearer <FERRY_METRICS_TOKEN>`, for the platform's Prometheus on GET /metrics only: it "
            "sees every account's replicators, labelled with `account_id` (a SigV4-signed scrape sees its own "
            "account's)."
        ),
    },
}


def security_of(path: str) -> list[dict[str, list[str]]]:
    """The security requirement of the operations on ``path`` (alternatives: any one of them is enough)."""
    if path in OPEN_PATHS:
        return []
    if path == METRICS_PATH:
        return [{SIGV4: []}, {METRICS_TOKEN: []}]
    return [{SIGV4: []}]


def operation_id_of_handler(route: APIRoute) -> str:
    """The operation id of a route that names none: its handler's name in PascalCase (``prometheus_metrics`` is
    ``PrometheusMetrics``). Routes name their own (MSK's names for MSK's operations); this is the fallback."""
    return "".join(word.capitalize() for word in route.name.split("_"))


def document_security(app: FastAPI) -> None:
    """Make ``app.openapi()`` carry the security schemes and, per operation, the security that applies."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()  # cached by FastAPI as app.openapi_schema: completed once, here
        document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path, operations in document["paths"].items():
            for operation in operations.values():
                operation["security"] = security_of(path)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
