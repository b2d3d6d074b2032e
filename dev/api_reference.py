"""docs/api-reference.md, rendered from the committed openapi/openapi.json: ``python -m dev.api_reference [--check]``.

The reference is generated, never edited: every operation with its method, path, summary, description,
security, parameters, request and response schemas (a table of members per schema, with MSK's descriptions),
and errors. ``tests/docs/test_api_reference.py`` fails when the committed page differs from what this renders,
so the page changes in review together with the API (``make openapi`` writes both).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OPENAPI_PATH = ROOT / "openapi" / "openapi.json"
REFERENCE_PATH = ROOT / "docs" / "api-reference.md"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
# MSK's operations in the order of its API reference; then Ferry's extensions, then the probes.
MSK_OPERATIONS = (
    "CreateReplicator",
    "ListReplicators",
    "DescribeReplicator",
    "UpdateReplicationInfo",
    "DeleteReplicator",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
)
HEALTH_PATHS = ("/livez", "/readyz", "/healthz")
GROUPS = ("MSK Replicator operations", "Ferry extensions", "Health probes")


def _group(path: str, op: dict[str, Any]) -> tuple[int, int]:
    """(group index, position within it) of an operation."""
    if op["operationId"] in MSK_OPERATIONS:
        return 0, MSK_OPERATIONS.index(op["operationId"])
    if path in HEALTH_PATHS:
        return 2, HEALTH_PATHS.index(path)
    return 1, 0


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _anchor(text: str) -> str:
    """GitHub's heading anchor: lower case, spaces to dashes, punctuation dropped."""
    return "".join(ch for ch in text.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def type_of(schema: dict[str, Any]) -> str:
    """A short type: ``string``, ``integer (1-100)``, ``[KafkaCluster](#kafkacluster)``, ``array of ...``."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{_anchor(name)})"
    variants = schema.get("anyOf") or schema.get("oneOf")
    if variants:
        kinds = [type_of(v) for v in variants if v.get("type") != "null"]
        return " or ".join(kinds) if kinds else "null"
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of string to {type_of(schema['additionalProperties'])}"
    bounds = []
    if "minimum" in schema or "maximum" in schema:
        bounds.append(f"{schema.get('minimum', '')}-{schema.get('maximum', '')}")
    if "minLength" in schema or "maxLength" in schema:
        bounds.append(f"length {schema.get('minLength', 0)}-{schema.get('maxLength', '')}")
    if "pattern" in schema:
        bounds.append(f"pattern `{schema['pattern']}`")
    if "format" in schema:
        bounds.append(schema["format"])
    return f"{kind} ({', '.join(bounds)})" if bounds else str(kind)


def _refs_in(node: Any) -> list[str]:
    """Every schema name ``node`` refers to, in order of appearance."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.append(_ref_name(value))
            else:
                found.extend(_refs_in(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_refs_in(item))
    return found


def _body_schema(content: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for media_type, body in content.items():
        if "schema" in body:
            return media_type, body["schema"]
    return None


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### {op['operationId']}", "", f"`{method.upper()} {path}`: {op.get('summary', '')}", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    security = [name for requirement in op.get("security", []) for name in requirement]
    if security:
        lines += [f"Authentication: {', '.join(f'[{name}](#authentication)' for name in security)}.", ""]
    elif "security" in op:
        lines += ["Authentication: none.", ""]
    parameters = op.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for parameter in parameters:
            description = parameter.get("description") or parameter.get("schema", {}).get("description", "")
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | {_cell(type_of(parameter.get('schema', {})))} | "
                f"{'yes' if parameter.get('required') else 'no'} | {_cell(description)} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        found = _body_schema(body.get("content", {}))
        if found:
            media_type, schema = found
            lines += [f"Request body ({media_type}): {type_of(schema)}.", ""]
        for content in body.get("content", {}).values():
            for name, example in (content.get("examples") or {}).items():
                lines += [
                    f"Example `{name}`: {example.get('summary', '')}",
                    "",
                    "```json",
                    json.dumps(example.get("value"), indent=2),
                    "```",
                    "",
                ]
    lines += ["| status | meaning | body |", "|---|---|---|"]
    for status, response in op.get("responses", {}).items():
        found = _body_schema(response.get("content", {}))
        shape = f"{type_of(found[1])} ({found[0]})" if found else ""
        lines.append(f"| {status} | {_cell(response.get('description', ''))} | {_cell(shape)} |")
    lines.append("")
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split()), ""]
    if "enum" in schema:
        lines += [f"One of {type_of(schema)}.", ""]
        return lines
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        lines += [f"Type: {type_of(schema)}.", ""]
        return lines
    required = set(schema.get("required", []))
    lines += ["| member | type | required | description |", "|---|---|---|---|"]
    for member, definition in properties.items():
        lines.append(
            f"| `{member}` | {_cell(type_of(definition))} | {'yes' if member in required else 'no'} | "
            f"{_cell(definition.get('description', ''))} |"
        )
    lines.append("")
    return lines


def render(document: dict[str, Any]) -> str:
    info = document["info"]
    security_schemes: dict[str, Any] = document.get("components", {}).get("securitySchemes", {})
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    operations = [
        (method, path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]
    operations.sort(key=lambda found: _group(found[1], found[2]))  # stable: extensions keep the document's order
    grouped: dict[str, list[tuple[str, str, dict[str, Any]]]] = {title: [] for title in GROUPS}
    for method, path, op in operations:
        grouped[GROUPS[_group(path, op)[0]]].append((method, path, op))

    lines = [
        f"# {info['title']} API reference",
        "",
        "<!-- Generated from openapi/openapi.json by `python -m dev.api_reference`: do not edit by hand. -->",
        "",
        f"Version {info.get('version', '')}. {info.get('description', '').strip()}",
        "",
        "## Operations",
        "",
        "| operation | method and path | summary |",
        "|---|---|---|",
    ]
    for title in GROUPS:
        for method, path, op in grouped[title]:
            lines.append(
                f"| [{op['operationId']}](#{_anchor(op['operationId'])}) | `{method.upper()} {path}` | "
                f"{_cell(op.get('summary', ''))} |"
            )
    lines += ["", "## Authentication", ""]
    for name, scheme in security_schemes.items():
        lines += [f"**{name}** ({scheme.get('type')}): {' '.join(scheme.get('description', '').split())}", ""]
    for title in GROUPS:
        if not grouped[title]:
            continue
        lines += [f"## {title}", ""]
        for method, path, op in grouped[title]:
            lines += _operation(method, path, op)
    # Schemas in the order operations first use them, then any left over (nested ones follow their parent).
    ordered: list[str] = []
    pending = _refs_in([op for _, _, op in operations])
    while pending:
        name = pending.pop(0)
        if name in ordered or name not in schemas:
            continue
        ordered.append(name)
        pending = _refs_in(schemas[name]) + pending
    ordered += sorted(set(schemas) - set(ordered))
    lines += ["## Schemas", ""]
    for name in ordered:
        lines += _schema(name, schemas[name])
    return "\n".join(lines).rstrip() + "\n"


def current_reference() -> str:
    return render(json.loads(OPENAPI_PATH.read_text()))


def main(argv: list[str]) -> int:
    reference = current_reference()
    if "--check" in argv:
        committed = REFERENCE_PATH.read_text() if REFERENCE_PATH.exists() else ""
        if committed != reference:
            print(f"{REFERENCE_PATH} is out of date: run python -m dev.api_reference", file=sys.stderr)
            return 1
        return 0
    REFERENCE_PATH.write_text(reference)
    print(f"wrote {REFERENCE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
