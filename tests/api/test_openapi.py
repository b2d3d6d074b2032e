"""The committed OpenAPI document matches the app, documents every operation with its AWS errors, and a user can
read it: every operation and member described, who may call what, and request examples the API accepts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema_rs
from pydantic import BaseModel

from api.audits import StartAuditRequest
from api.identity import METRICS_PATH, OPEN_PATHS
from api.offsets import StartFailoverRequest
from api.openapi_dump import OPENAPI_PATH, current_document
from models.replicator_shapes import (
    CreateReplicatorRequest,
    TagResourceRequest,
    UpdateReplicationInfoRequest,
    msk_documentation,
)

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


# ----- a document a user can read ------------------------------------------------------------------------------

# The operations with request examples, and the request shape each example must be.
EXAMPLE_SHAPES: dict[str, type[BaseModel]] = {
    "CreateReplicator": CreateReplicatorRequest,
    "UpdateReplicationInfo": UpdateReplicationInfoRequest,
    "TagResource": TagResourceRequest,
    "StartFailover": StartFailoverRequest,
    "StartAudit": StartAuditRequest,
}


def operations_of(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for operation in operations.values():
            yield path, operation


def test_every_operation_says_what_it_does_and_who_may_call_it() -> None:
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
    schemes = document["components"]["securitySchemes"]

    assert schemes["SigV4"]["type"] == "apiKey" and schemes["SigV4"]["name"] == "Authorization"
    assert "kafka" in schemes["SigV4"]["description"]
    assert schemes["MetricsBearerToken"] == {**schemes["MetricsBearerToken"], "type": "http", "scheme": "bearer"}
    operation_ids = []
    for path, operation in operations_of(document):
        name = operation.get("operationId")
        operation_ids.append(name)
        assert name and operation.get("summary") and operation.get("description"), f"{path}: {name}"
        for parameter in operation.get("parameters", []):
            assert parameter.get("description"), f"{name}: parameter {parameter['name']}"
        if path in OPEN_PATHS:
            assert operation["security"] == [], f"{name}: a health probe needs no credentials"
        elif path == METRICS_PATH:
            assert operation["security"] == [{"SigV4": []}, {"MetricsBearerToken": []}]
        else:
            assert operation["security"] == [{"SigV4": []}], name
        for requirement in operation["security"]:
            assert set(requirement) <= set(schemes)
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    assert {"CheckLiveness", "CheckReadiness", "CheckHealth"} <= set(operation_ids)


def test_every_schema_and_member_has_a_description() -> None:
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())

    undocumented = [
        f"{name}.{member}" if member else name
        for name, schema in document["components"]["schemas"].items()
        for member in ["", *schema.get("properties", {})]
        if not (schema["properties"][member] if member else schema).get("description")
    ]
    assert not undocumented, undocumented
    # MSK's words for MSK's members (models/msk_docs.py).
    create = document["components"]["schemas"]["CreateReplicatorRequest"]
    assert create["properties"]["replicatorName"]["description"] == msk_documentation(
        "CreateReplicatorRequest", "replicatorName"
    )


def test_examples_validate_against_their_schemas() -> None:
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())

    def check(schema: dict[str, Any], value: Any, where: str) -> None:
        # The schema with the document's components beside it, so its #/components/... references resolve.
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
        errors = [error.message for error in validator.iter_errors(value)]
        assert not errors, f"{where}: {errors}"

    with_examples = set()
    for _, operation in operations_of(document):
        name = operation["operationId"]
        for parameter in operation.get("parameters", []):
            for value in parameter["schema"].get("examples", []):
                check(parameter["schema"], value, f"{name} {parameter['name']}")
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        for example_name, example in body.get("examples", {}).items():
            with_examples.add(name)
            check(body["schema"], example["value"], f"{name} {example_name}")
            # The shape the API parses the body with: strict, unknown members refused.
            EXAMPLE_SHAPES[name].model_validate_json(json.dumps(example["value"]))
    assert with_examples == set(EXAMPLE_SHAPES)


def test_request_examples_are_requests_the_api_accepts(http: httpx.Client, unique: str) -> None:
    """Each CreateReplicator example creates a replicator (named for this test); on the first, every other
    operation's examples are accepted as they are (UpdateReplicationInfo with the currentVersion Describe gives)."""
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())

    def examples_of(path: str, method: str) -> list[dict[str, Any]]:
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        return [example["value"] for example in body["examples"].values()]

    arns = []
    for number, example in enumerate(examples_of("/replication/v1/replicators", "post")):
        created = http.post("/replication/v1/replicators", json={**example, "replicatorName": f"{unique}-{number}"})
        assert created.status_code == 200, created.text
        arns.append(quote(created.json()["replicatorArn"], safe=""))
    arn = arns[0]

    for example in examples_of("/v1/tags/{resourceArn}", "post"):
        tagged = http.post(f"/v1/tags/{arn}", json=example)
        assert tagged.status_code == 204, tagged.text
    for example in examples_of("/replication/v1/replicators/{replicatorArn}/replication-info", "put"):
        version = http.get(f"/replication/v1/replicators/{arn}").json()["currentVersion"]
        updated = http.put(
            f"/replication/v1/replicators/{arn}/replication-info", json={**example, "currentVersion": version}
        )
        assert updated.status_code == 200, updated.text
    for example in examples_of("/replication/v1/replicators/{replicatorArn}/failover", "post"):
        started = http.post(f"/replication/v1/replicators/{arn}/failover", json=example)
        assert started.status_code == 200 and started.json()["state"] == "PENDING", started.text
    for example in examples_of("/replication/v1/replicators/{replicatorArn}/audits", "post"):
        started = http.post(f"/replication/v1/replicators/{arn}/audits", json=example)
        assert started.status_code == 200 and started.json()["state"] == "PENDING", started.text
