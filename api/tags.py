"""TagResource, UntagResource and ListTagsForResource for replicator ARNs (``/v1/tags/{resourceArn}``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response

from api import examples
from api.deps import reading, transaction
from api.errors import error_responses, require_json_body
from api.identity import CallerDep
from api.links import link, on_success
from models import replicator_service
from models.replicator_shapes import ListTagsForResourceResponse, TagResourceRequest

router = APIRouter(tags=["tags"])

# The service model lists 400, 404 and 500 for the tag operations; 503 is Ferry's database being down.
_TAG_ERRORS = (400, 404, 500, 503)
ResourceArn = Annotated[str, Path(description="The replicator ARN, percent-encoded (`:` as %3A, `/` as %2F).")]
_TO_LIST_TAGS = {
    "ListTagsForResource": link(
        "ListTagsForResource", "The replicator's tags now", {"path.resourceArn": "$request.path.resourceArn"}
    )
}


@router.post(
    "/v1/tags/{resourceArn:path}",
    operation_id="TagResource",
    summary="Add or overwrite tags on a replicator",
    status_code=204,
    response_class=Response,
    responses={**error_responses(*_TAG_ERRORS, body=True), **on_success(204, _TO_LIST_TAGS)},
    dependencies=[Depends(require_json_body)],
)
async def tag_resource(
    resourceArn: ResourceArn,
    body: Annotated[TagResourceRequest, Body(openapi_examples=examples.TAG_RESOURCE)],
    request: Request,
    caller: CallerDep,
) -> Response:
    """Adds tags to a replicator; tags with existing keys are overwritten. Answers 204 with no body.

    Errors: 400 when the body is invalid, it has no tag, a key or value breaks MSK's tag rules (at most 128 and
    256 characters of letters, digits, spaces and `_.:/=+-@`, no `aws:` prefix, at most 50 tags), or it changes the
    reserved `ferry:delivery` tag (chosen at creation); 404 when the replicator does not exist; 401, 403, 429 and
    503 as for every signed call."""
    async with transaction(request) as session:
        await replicator_service.tag_resource(session, account_id=caller.account_id, arn=resourceArn, tags=body.tags)
    return Response(status_code=204)


@router.delete(
    "/v1/tags/{resourceArn:path}",
    operation_id="UntagResource",
    summary="Remove tags from a replicator",
    status_code=204,
    response_class=Response,
    responses={**error_responses(*_TAG_ERRORS), **on_success(204, _TO_LIST_TAGS)},
)
async def untag_resource(
    resourceArn: ResourceArn,
    request: Request,
    caller: CallerDep,
    tag_keys: Annotated[
        list[str],
        Query(alias="tagKeys", description="The keys of the tags to remove (the query parameter repeated per key)."),
    ],
) -> Response:
    """Removes tags from a replicator; keys that are not present are ignored. Answers 204 with no body.

    Errors: 400 when no tag key is given or a key is the reserved `ferry:delivery` (chosen at creation); 404 when
    the replicator does not exist; 401, 403, 429 and 503 as for every signed call."""
    async with transaction(request) as session:
        await replicator_service.untag_resource(
            session, account_id=caller.account_id, arn=resourceArn, tag_keys=tag_keys
        )
    return Response(status_code=204)


@router.get(
    "/v1/tags/{resourceArn:path}",
    operation_id="ListTagsForResource",
    summary="List a replicator's tags",
    response_model=ListTagsForResourceResponse,
    responses=error_responses(*_TAG_ERRORS),
)
async def list_tags_for_resource(
    resourceArn: ResourceArn, request: Request, caller: CallerDep
) -> ListTagsForResourceResponse:
    """The replicator's tags, the reserved `ferry:delivery` among them when it was given at creation.

    Errors: 400 when the ARN is not a replicator ARN; 404 when the replicator does not exist; 401, 403, 429 and
    503 as for every signed call."""
    async with reading(request) as session:
        tags = await replicator_service.list_tags(session, account_id=caller.account_id, arn=resourceArn)
    return ListTagsForResourceResponse(tags=tags)
