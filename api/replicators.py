"""The five replicator operations of the MSK Replicator API, wire-compatible with boto3 and the AWS CLI.

Handlers only translate HTTP to service calls: validation and state rules live in ``models``. The ARN in
the path arrives percent-encoded (``/`` as ``%2F``) and uvicorn decodes it before routing, hence the
``:path`` converters.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from api.deps import transaction
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
    body: CreateReplicatorRequest, request: Request, caller: CallerDep
) -> CreateReplicatorResponse:
    """Record a new replicator in state CREATING; the worker fleet starts it."""
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
    max_results: Annotated[int | None, Query(alias="maxResults", ge=1, le=100)] = None,
    next_token: Annotated[str | None, Query(alias="nextToken", max_length=1024)] = None,
    replicator_name_filter: Annotated[str | None, Query(alias="replicatorNameFilter", max_length=128)] = None,
) -> ListReplicatorsResponse:
    """Replicators in creation order, optionally only those whose name starts with replicatorNameFilter."""
    async with transaction(request) as session:
        rows, token = await replicator_service.list_replicators(
            session,
            account_id=caller.account_id,
            max_results=max_results,
            next_token=next_token,
            name_filter=replicator_name_filter,
        )
        summaries = [replicator_service.summarize(row) for row in rows]
    return ListReplicatorsResponse(next_token=token, replicators=summaries)


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
async def describe_replicator(
    replicatorArn: ReplicatorArn, request: Request, caller: CallerDep
) -> DescribeReplicatorResponse:
    """The replicator's configuration, cluster aliases, state and currentVersion."""
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        return replicator_service.describe(row)


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
    body: UpdateReplicationInfoRequest,
    request: Request,
    caller: CallerDep,
) -> ReplicatorStateResponse:
    """Change the updatable settings; refused when currentVersion is stale or nothing would change."""
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
    current_version: Annotated[str | None, Query(alias="currentVersion", max_length=64)] = None,
) -> ReplicatorStateResponse:
    """Mark the replicator DELETING; the fleet stops it and removes it, after which Describe answers 404."""
    async with transaction(request) as session:
        row = await replicator_service.delete_replicator(
            session, account_id=caller.account_id, arn=replicatorArn, current_version=current_version
        )
    await request.app.state.fleet.reconcile_soon()
    return ReplicatorStateResponse(replicator_arn=row.arn, replicator_state=row.state)
