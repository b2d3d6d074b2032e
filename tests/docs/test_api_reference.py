"""docs/api-reference.md is what dev/api_reference.py renders from the committed openapi/openapi.json, and it
documents every operation of the document (no services needed)."""

from __future__ import annotations

import json

from dev.api_reference import HTTP_METHODS, OPENAPI_PATH, REFERENCE_PATH, current_reference


def test_committed_reference_is_current() -> None:
    assert REFERENCE_PATH.read_text() == current_reference(), (
        "docs/api-reference.md is out of date: run .venv/bin/python -m dev.api_reference (or make openapi) and commit"
    )


def test_every_operation_and_schema_has_a_section() -> None:
    document = json.loads(OPENAPI_PATH.read_text())
    reference = REFERENCE_PATH.read_text()
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            assert f"### {op['operationId']}\n" in reference
            assert f"`{method.upper()} {path}`" in reference
            for status in op["responses"]:
                assert f"| {status} |" in reference
    for name, schema in document["components"]["schemas"].items():
        assert f"### {name}\n" in reference
        for member in schema.get("properties", {}):
            assert f"| `{member}` |" in reference, (name, member)
