"""The committed OpenAPI document matches the app, and documents every operation with its AWS errors."""

from __future__ import annotations

import json
from typing import Any

import httpx

from api.openapi_dump import OPENAPI_PATH, current_document

OPERATIONS = {
    ("post", "/replication/v1/replicators"): (
        "CreateReplicator",
        {"400", "401", "403", "404", "409", "429", "500", "503"},
    ),
    ("get", "/replication/v1/replicators"): ("ListReplicators", {"400", "401", "403", "404", "429", "500", "503"}),
    ("get", "/replication/v1/replicators/{replicatorArn}"): (
        "DescribeReplicator",
        {"400", "401", "403", "404", "429", "500", "503"},
    ),
    ("delete", "/replication/v1/replicators/{replicatorArn}"): (
        "DeleteReplicator",
        {"400", "401", "403", "404", "429", "500", "503"},
    ),
    ("put", "/replication/v1/replicators/{replicatorArn}/replication-info"): (
        "UpdateReplicationInfo",
        {"400", "401", "403", "404", "429", "500", "503"},
    ),
    ("post", "/v1/tags/{resourceArn}"): ("TagResource", {"400", "404", "500"}),
    ("delete", "/v1/tags/{resourceArn}"): ("UntagResource", {"400", "404", "500"}),
    ("get", "/v1/tags/{resourceArn}"): ("ListTagsForResource", {"400", "404", "500"}),
}


def test_committed_document_is_current() -> None:
    assert OPENAPI_PATH.read_text() == current_document(), (
        "openapi/openapi.json is out of date: run .venv/bin/python -m api.openapi_dump and commit the result"
    )


def test_every_operation_documents_its_errors() -> None:
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())

    for (method, path), (operation_id, errors) in OPERATIONS.items():
        operation = document["paths"][path][method]
        assert operation["operationId"] == operation_id
        documented = set(operation["responses"])
        assert errors <= documented, f"{operation_id} lacks {errors - documented}"
        assert "422" not in documented  # FastAPI's default: Ferry answers 400 BadRequestException instead
        for status in errors:
            response = operation["responses"][status]
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/AwsError"}
            assert "x-amzn-ErrorType" in response["headers"]
    assert set(document["components"]["schemas"]["AwsError"]["properties"]) == {"message", "invalidParameter"}


def test_docs_page_and_document_are_served(http: httpx.Client) -> None:
    docs = http.get("/docs")
    served = http.get("/openapi.json")

    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert served.status_code == 200
    assert {op["operationId"] for path in served.json()["paths"].values() for op in path.values()} >= {
        operation_id for operation_id, _ in OPERATIONS.values()
    }
