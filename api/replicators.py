"""The five replicator operations of the MSK Replicator API, wire-compatible with boto3 and the AWS CLI.

Handlers only translate HTTP to service calls: validation and state rules live in ``models``. The ARN in
the path arrives percent-encoded (``/`` as ``%2F``) and uvicorn decodes it before routing, hence the
``:path`` converters.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response

from api import examples
from api.deps import reading, transaction
from api.errors import error_responses, require_json_body
from api.identity import CallerDep
from api.links import ARN_IN_BODY, VERSION_IN_BODY, link, on_success, replicator_links
from models import replicator_service
from models.replicator_shapes import (
    CreateReplicatorRequest,
    CreateReplicatorResponse,
    DescribeReplicatorResponse,
    ListReplicatorsResponse,
    ReplicatorStateResponse,
    UpdateReplicationInfoRequest,
    msk_documentation,
)

router = APIRouter(tags=["replicators"])

_READ_ERRORS = (400, 401, 403, 404, 429, 500, 503)
ReplicatorArn = Annotated[str, Path(description="The replicator ARN, percent-encoded (`:` as %3A, `/` as %2F).")]
_TO_DESCRIBE = {
    "DescribeReplicator": link("DescribeReplicator", "The replicator's new state", {"path.replicatorArn": ARN_IN_BODY})
}


@router.post(
    "/replication/v1/replicators",
    operation_id="CreateReplicator",
    summary="Create a replicator",
    response_model=CreateReplicatorResponse,
    response_model_exclude_none=True,
    responses={
        **error_responses(400, 401, 403, 404, 409, 429, 500, 503, body=True),
        **on_success(200, replicator_links("CreateReplicator", ARN_IN_BODY)),
    },
    dependencies=[Depends(require_json_body)],
)
async def create_replicator(
    body: Annotated[CreateReplicatorRequest, Body(openapi_examples=examples.CREATE_REPLICATOR)],
    request: Request,
    caller: CallerDep,
) -> CreateReplicatorResponse:
    """Records a new replicator in state CREATING; the worker fleet starts it, and it becomes RUNNING once every
    partition is copied (docs/replicator-states.md). Clusters are MSK clusters (their bootstrap brokers looked up
    with the AWS MSK API) or self-managed Apache Kafka clusters (bootstrapBrokerString); credentials are never in
    the request, only the ARNs of Secrets Manager secrets the workers read. The reserved tag `ferry:delivery`
    (`at-least-once` or `exactly-once`) chooses the delivery mode (docs/delivery.md).

    Errors: 400 when the body is invalid (the member is named in `invalidParameter`: an unknown or missing member,
    a pattern RE2 cannot run, a bootstrap address the address policy refuses, a cluster the replication does not
    name, an MSK cluster that does not exist); 409 when the account has a replicator of this name; 429 when the
    account has as many replicators as it may (FERRY_MAX_REPLICATORS_PER_ACCOUNT) or the key's request rate is
    exceeded; 401 when the signature or key is not valid, 403 for a read-only key; 503 when the database or the
    AWS MSK API is unavailable."""
    async with transaction(request) as session:
        row = await replicator_service.create_replicator(
            session,
            account_id=caller.account_id,
            region=caller.region,
            request=body,
            address_policy=request.app.state.address_policy,
            max_replicators=request.app.state.settings.max_replicators_per_account,
            default_delivery=request.app.state.settings.default_delivery,
        )
    await request.app.state.fleet.reconcile_soon()
    return CreateReplicatorResponse(
        replicator_arn=row.arn,
        replicator_name=row.name,
        replicator_state=row.state,
    )


@router.get(
    "/replication/v1/replicators",
    operation_id="ListReplicators",
    summary="List replicators",
    response_model=ListReplicatorsResponse,
    response_model_exclude_none=True,
    responses={
        **error_responses(*_READ_ERRORS),
        **on_success(
            200,
            {
                "DescribeReplicator": link(
                    "DescribeReplicator",
                    "The first replicator listed",
                    {"path.replicatorArn": "$response.body#/replicators/0/replicatorArn"},
                )
            },
        ),
    },
)
async def list_replicators(
    request: Request,
    caller: CallerDep,
    max_results: Annotated[
        int | None,
        Query(
            alias="maxResults",
            ge=1,
            le=100,
            description=msk_documentation("ListReplicatorsRequest", "maxResults") + " 1 to 100; default 100.",
        ),
    ] = None,
    next_token: Annotated[
        str | None,
        Query(alias="nextToken", max_length=1024, description=msk_documentation("ListReplicatorsRequest", "nextToken")),
    ] = None,
    replicator_name_filter: Annotated[
        str | None,
        Query(
            alias="replicatorNameFilter",
            max_length=128,
            description=msk_documentation("ListReplicatorsRequest", "replicatorNameFilter"),
        ),
    ] = None,
) -> Response:
    """The account's replicators in creation order, a page at a time (`nextToken` names the next page), optionally
    only those whose name starts with `replicatorNameFilter`.

    Errors: 400 when maxResults is out of range or nextToken is not one this service issued; 401, 403, 429 and 503
    as for every signed call."""
    async with reading(request) as session:
        body = await replicator_service.list_json(
            session,
            request.app.state.rendered,
            account_id=caller.account_id,
            max_results=max_results,
            next_token=next_token,
            name_filter=replicator_name_filter,
        )
    # Rendered already (each row once per version): a Response goes out as it is, not validated again.
    return Response(body, media_type="application/json")


@router.get(
    "/replication/v1/replicators/{replicatorArn:path}",
    operation_id="DescribeReplicator",
    summary="Describe a replicator",
    response_model=DescribeReplicatorResponse,
    response_model_exclude_none=True,
    responses={
        **error_responses(*_READ_ERRORS),
        **on_success(200, replicator_links("DescribeReplicator", ARN_IN_BODY, version=VERSION_IN_BODY)),
    },
)
async def describe_replicator(replicatorArn: ReplicatorArn, request: Request, caller: CallerDep) -> Response:
    """The replicator's configuration, cluster aliases, state (with `stateInfo` saying why when it is FAILED or
    degraded), tags and `currentVersion` (what UpdateReplicationInfo and DeleteReplicator check).

    Errors: 400 when the ARN is not a replicator ARN; 404 when the account has no such replicator (another
    account's replicators are not found either); 401, 403, 429 and 503 as for every signed call."""
    async with reading(request) as session:
        body = await replicator_service.describe_json(
            session, request.app.state.rendered, account_id=caller.account_id, arn=replicatorArn
        )
    return Response(body, media_type="application/json")


@router.put(
    "/replication/v1/replicators/{replicatorArn:path}/replication-info",
    operation_id="UpdateReplicationInfo",
    summary="Update a replicator's topic, consumer group or log delivery settings",
    response_model=ReplicatorStateResponse,
    response_model_exclude_none=True,
    responses={**error_responses(*_READ_ERRORS, body=True), **on_success(200, _TO_DESCRIBE)},
    dependencies=[Depends(require_json_body)],
)
async def update_replication_info(
    replicatorArn: ReplicatorArn,
    body: Annotated[UpdateReplicationInfoRequest, Body(openapi_examples=examples.UPDATE_REPLICATION_INFO)],
    request: Request,
    caller: CallerDep,
) -> ReplicatorStateResponse:
    """Changes what MSK lets change after creation: the topic and consumer group lists and their switches, or the
    log delivery (not both in one call). A RUNNING replicator becomes UPDATING until the workers run the new
    settings; the response carries no new currentVersion (DescribeReplicator does).

    Errors: 400 when the body is invalid, `currentVersion` is not the replicator's (it changed since you read it),
    the clusters named are not the replicator's, nothing would change, or the replicator is DELETING; 404 when the
    replicator does not exist; 401, 403, 429 and 503 as for every signed call."""
    async with transaction(request) as session:
        row = await replicator_service.update_replication_info(
            session, account_id=caller.account_id, arn=replicatorArn, request=body
        )
    await request.app.state.fleet.reconcile_soon()
    return ReplicatorStateResponse(replicator_arn=row.arn, replicator_state=row.state)


@router.delete(
    "/replication/v1/replicators/{replicatorArn:path}",
    operation_id="DeleteReplicator",
    summary="Delete a replicator",
    response_model=ReplicatorStateResponse,
    response_model_exclude_none=True,
    responses={**error_responses(*_READ_ERRORS), **on_success(200, _TO_DESCRIBE)},
)
async def delete_replicator(
    replicatorArn: ReplicatorArn,
    request: Request,
    caller: CallerDep,
    current_version: Annotated[
        str | None,
        Query(
            alias="currentVersion",
            max_length=64,
            description=msk_documentation("DeleteReplicatorRequest", "currentVersion")
            + " When given, the delete is refused (400) unless it is the replicator's currentVersion.",
        ),
    ] = None,
) -> ReplicatorStateResponse:
    """Marks the replicator DELETING; the fleet stops copying and removes it, after which DescribeReplicator
    answers 404. Target topics and their records stay. Deleting a replicator already DELETING answers the same.

    Errors: 400 when the ARN is not a replicator ARN or `currentVersion` is given and is not the replicator's; 404
    when the replicator does not exist; 401, 403, 429 and 503 as for every signed call."""
    async with transaction(request) as session:
        row = await replicator_service.delete_replicator(
            session, account_id=caller.account_id, arn=replicatorArn, current_version=current_version
        )
    await request.app.state.fleet.reconcile_soon()
    return ReplicatorStateResponse(replicator_arn=row.arn, replicator_state=row.state)
