"""OpenAPI links: which value of a response is a parameter of the next call (``responses.<status>.links``).

They document how the operations chain (CreateReplicator's ARN is what DescribeReplicator, the tag operations
and the extensions take; DescribeReplicator's currentVersion is what UpdateReplicationInfo and DeleteReplicator
check), and the API fuzzer's stateful test follows them (tests/api/test_fuzz.py). Routes add them to their
``responses`` with ``on_success``.
"""

from __future__ import annotations

from typing import Any

ARN_IN_BODY = "$response.body#/replicatorArn"
VERSION_IN_BODY = "$response.body#/currentVersion"

# Every operation on one replicator, with the name of its ARN path parameter.
_ON_A_REPLICATOR = {
    "DescribeReplicator": "replicatorArn",
    "UpdateReplicationInfo": "replicatorArn",
    "DeleteReplicator": "replicatorArn",
    "TagResource": "resourceArn",
    "UntagResource": "resourceArn",
    "ListTagsForResource": "resourceArn",
    "GetReplicatorMetrics": "replicatorArn",
    "TranslateOffset": "replicatorArn",
    "StartFailover": "replicatorArn",
    "StartAudit": "replicatorArn",
}


def link(
    operation_id: str, description: str, parameters: dict[str, str], body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One link: ``parameters`` maps ``<location>.<name>`` (``path.replicatorArn``) to a runtime expression;
    ``body`` holds members of the request body (expressions too), merged into it."""
    value: dict[str, Any] = {"operationId": operation_id, "description": description, "parameters": parameters}
    if body is not None:
        value["requestBody"] = body
    return value


def replicator_links(source: str, arn: str, *, version: str | None = None) -> dict[str, dict[str, Any]]:
    """Links from operation ``source``'s response naming one replicator (its ARN at the runtime expression
    ``arn``) to every other operation on it. With ``version`` (a currentVersion expression) DeleteReplicator
    also gets the version it checks, and UpdateReplicationInfo, which requires one, is linked only then."""
    links: dict[str, dict[str, Any]] = {}
    for operation, member in _ON_A_REPLICATOR.items():
        if operation == source or (operation == "UpdateReplicationInfo" and version is None):
            continue
        parameters = {f"path.{member}": arn}
        body = None
        if version is not None and operation == "UpdateReplicationInfo":
            body = {"currentVersion": version}
        if version is not None and operation == "DeleteReplicator":
            parameters["query.currentVersion"] = version
        links[operation] = link(operation, f"The replicator as {operation}'s {member}", parameters, body)
    return links


def on_success(status: int, links: dict[str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses`` entry adding ``links`` to its success response."""
    return {status: {"links": links}}
