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
    ("get", "/replication/v1/usage"): ("GetUsage", {"400", "401", "403", "503"}),
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


def test_links_name_operations_parameters_and_response_members_that_exist() -> None:
    """The links (api/links.py) chain the operations for clients and the fuzzer's stateful test
    (tests/api/test_fuzz.py): each names an operation, parameters it has and members its source response has."""
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
    operations = {op["operationId"]: op for path in document["paths"].values() for op in path.values()}

    def member(schema: dict[str, Any], pointer: list[str]) -> bool:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        if not pointer:
            return True
        if "anyOf" in schema:
            return any(member(option, pointer) for option in schema["anyOf"])
        head, *rest = pointer
        if schema.get("type") == "array":
            return head.isdigit() and member(schema["items"], rest)
        return head in schema.get("properties", {}) and member(schema["properties"][head], rest)

    links = 0
    for source in operations.values():
        for status, response in source["responses"].items():
            for name, link in response.get("links", {}).items():
                links += 1
                target = operations[link["operationId"]]
                expressions = dict(link["parameters"])
                assert set(expressions) <= parameters_of(target), f"{source['operationId']} -> {name}"
                if "requestBody" in link:
                    body = target["requestBody"]["content"]["application/json"]["schema"]
                    assert all(member(body, [key]) for key in link["requestBody"]), name
                    expressions.update(link["requestBody"])
                for expression in expressions.values():
                    if expression.startswith("$response.body#/"):
                        schema = response["content"]["application/json"]["schema"]
                        pointer = expression.removeprefix("$response.body#/").split("/")
                        assert member(schema, pointer), f"{source['operationId']} {status}: {expression}"
                    else:
                        assert expression.removeprefix("$request.") in parameters_of(source), expression
    assert links >= 20


def parameters_of(operation: dict[str, Any]) -> set[str]:
    return {f"{p['in']}.{p['name']}" for p in operation.get("parameters", [])}
