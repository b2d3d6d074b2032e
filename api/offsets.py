"""Ferry extensions for moving consumers between clusters (issue 6).

- ``GET /replication/v1/replicators/{replicatorArn}/offset-translation?topic=&partition=&offset=``: where a
  consumer that does not use consumer groups (Flink, Spark) resumes on the target, and how many records at
  most it re-reads there (0 inside copied data).
- ``POST /replication/v1/replicators/{replicatorArn}/failover``: start a planned failover of consumer groups;
  the replicator's metadata unit runs it (``workers/fleet/groups.py:FailoverDriver``).
- ``GET /replication/v1/replicators/{replicatorArn}/failover/{operationId}``: its state, a progress line while
  it waits, the reason when it failed, and per group and partition where each resumes on the target.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, Field

from api import examples
from api.deps import id_in_path, spec_of, transaction
from api.errors import error_responses
from api.identity import CallerDep
from api.links import ARN_IN_BODY, link, on_success
from api.replicators import ReplicatorArn
from models import group_store, offset_store, replicator_service
from models.errors import InvalidRequestError, ResourceNotFoundError
from models.offsets import FAILOVER_ACTIVE_STATES, FailoverOperation, FailoverState
from models.replicator import ReplicatorState

router = APIRouter(tags=["consumer groups"])

_BASE = "/replication/v1/replicators/{replicatorArn:path}"

# Kafka's partition ids are 32-bit and its offsets 64-bit, signed, as the columns that keep them: a larger number
# is refused naming the parameter, not a database error.
MAX_PARTITION = 2**31 - 1
MAX_OFFSET = 2**63 - 1


class OffsetTranslation(BaseModel):
    """Where a consumer that read a source partition up to `sourceOffset` resumes on the target."""

    sourceTopic: str = Field(description="The source topic asked about.")
    partition: int = Field(description="The partition asked about (the same number on both clusters).")
    sourceOffset: int = Field(description="The source offset asked about: the next one the consumer would read.")
    targetTopic: str = Field(description="The topic the replicator copies sourceTopic to on the target.")
    targetOffset: int = Field(description="Where to resume reading on the target.")
    maxRecordsReread: int = Field(description="At most this many records before the true position (0 = exact).")
    withinCopiedData: bool = Field(
        description="False when the source offset is past everything copied so far: targetOffset is then where "
        "the next copied record goes."
    )
    translatedBy: str = Field(description="forward (this replicator's map) or reverse (ENHANCED partner's map).")


@router.get(
    f"{_BASE}/offset-translation",
    operation_id="TranslateOffset",
    summary="Translate a source offset to the target (Ferry extension)",
    responses=error_responses(400, 401, 403, 404, 429, 500, 503),
)
async def offset_translation(
    replicatorArn: ReplicatorArn,
    request: Request,
    caller: CallerDep,
    *,
    topic: Annotated[str, Query(min_length=1, max_length=249, description="Source topic name.", examples=["orders"])],
    partition: Annotated[int, Query(ge=0, le=MAX_PARTITION, description="The partition number.", examples=[0])],
    offset: Annotated[
        int,
        Query(ge=0, le=MAX_OFFSET, description="The next source offset the consumer would read.", examples=[1500]),
    ],
) -> OffsetTranslation:
    """Where a consumer that keeps its own source positions (Flink, Spark, no consumer group) resumes on the
    target: the target offset of the first copied record at or after `offset`, and how many records at most it
    reads again there (0 inside copied data). With ENHANCED offset sync, positions copied back by the partner
    replicator are translated through its map (`translatedBy: reverse`).

    Errors: 400 when a parameter is missing or out of range, or the ARN is not a replicator ARN; 404 when the
    replicator does not exist or nothing of this topic partition has been copied yet (`invalidParameter`:
    `topic`); 401, 403, 429 and 503 as for every signed call."""
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        spec = spec_of(row)
        target_topic = spec.target_topic(topic)
        reverse = await offset_store.reverse_replicator(session, str(row.id)) if spec.groups.enhanced else None
        found = await offset_store.translate_position(
            session, str(row.id), topic, partition, offset, reverse_replicator_id=reverse, target_topic=target_topic
        )
    if found is None:
        raise ResourceNotFoundError(
            f"topic: nothing of {topic}:{partition} has been copied by this replicator yet", "topic"
        )
    return OffsetTranslation(
        sourceTopic=topic,
        partition=partition,
        sourceOffset=offset,
        targetTopic=target_topic,
        targetOffset=found.offset,
        maxRecordsReread=found.max_reread,
        withinCopiedData=found.covered,
        translatedBy=found.via,
    )


class StartFailoverRequest(BaseModel):
    """The consumer groups to move to the target, and how long to wait for the source to go quiet."""

    consumerGroups: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1,
        max_length=100,
        description="The consumer groups to move (1 to 100; repeats are ignored). Each must be Empty on the source "
        "(its consumers stopped) before the last sync.",
    )
    gracePeriodSeconds: float = Field(
        default=10.0, ge=0, le=3600, description="How long the source must see no new record (producers stopped)."
    )
    timeoutSeconds: float = Field(default=600.0, gt=0, le=86400, description="Give up (FAILED) after this long.")


class GroupPartitionResume(BaseModel):
    """Where a group resumes on the target for one partition, as the failover's last sync decided."""

    topic: str = Field(description="The source topic.")
    partition: int = Field(description="The partition (the same number on both clusters).")
    sourceOffset: int = Field(description="The group's committed offset on the source.")
    targetTopic: str = Field(description="The topic the replicator copies it to on the target.")
    targetOffset: int | None = Field(
        description="The offset committed for the group on the target: where its consumers resume. Null when "
        "nothing was committed (see status)."
    )
    maxReread: int | None = Field(
        description="At most this many records the group reads again on the target (0 inside copied data); null "
        "when targetOffset is."
    )
    status: str = Field(
        description="What the sync did: SYNCED, SYNCED_AHEAD_OF_REPLICATION (committed where the next copied record "
        "goes), UNCHANGED (already there), TARGET_AHEAD (the target group is further on: not moved back), "
        "ACTIVE_ON_TARGET (the group has members on the target: not touched), NOT_MAPPED (nothing of the partition "
        "copied yet) or SYNC_DISABLED (synchroniseConsumerGroupOffsets is off). The last three fail the failover."
    )


class FailoverResult(BaseModel):
    """The last sync's decisions, per consumer group."""

    groups: dict[str, list[GroupPartitionResume]] = Field(
        description="Per consumer group, per source partition it has committed offsets on: where it resumes."
    )


class FailoverStatus(BaseModel):
    """A planned failover: its state, what it waits for, and when done where each group resumes on the target."""

    operationId: str = Field(description="The failover's id (DescribeFailover's operationId).")
    replicatorArn: str = Field(description="The replicator whose metadata unit runs it.")
    consumerGroups: list[str] = Field(description="The consumer groups it moves.")
    state: FailoverState = Field(
        description="PENDING, WAITING_FOR_PRODUCERS, WAITING_FOR_LAG, WAITING_FOR_GROUPS and SYNCING while it runs; "
        "SUCCEEDED or FAILED when done (docs/failover-runbook.md)."
    )
    progress: str | None = Field(default=None, description="What it is waiting for now, with numbers.")
    error: str | None = Field(default=None, description="Why it failed.")
    result: FailoverResult | None = Field(
        default=None,
        description="When the last sync ran (SUCCEEDED, or FAILED by that sync): where each group resumes.",
    )
    createdAt: str = Field(description="When it was started (ISO 8601 with its UTC offset).")
    updatedAt: str = Field(description="When it last changed (ISO 8601 with its UTC offset).")


# An open operation nobody advanced for this long after its timeout: no metadata unit runs it (no live worker).
ABANDONED_AFTER_SECONDS = 30.0


def _status(op: FailoverOperation, arn: str) -> FailoverStatus:
    state, error = op.state, op.error
    now = datetime.now(UTC)
    if (
        state in FAILOVER_ACTIVE_STATES
        and (now - op.created_at).total_seconds() > op.timeout_seconds
        and (now - op.updated_at).total_seconds() > ABANDONED_AFTER_SECONDS
    ):
        state = FailoverState.FAILED
        error = (
            f"timed out after {op.timeout_seconds:g}s while {op.progress or 'pending'}; no worker has advanced it "
            f"for {(now - op.updated_at).total_seconds():.0f}s (is the replicator's metadata unit running?)"
        )
    return FailoverStatus(
        operationId=str(op.id),
        replicatorArn=arn,
        consumerGroups=list(op.groups),
        state=state,
        progress=op.progress,
        error=error,
        result=None if op.result is None else FailoverResult.model_validate(op.result),
        createdAt=op.created_at.isoformat(),
        updatedAt=op.updated_at.isoformat(),
    )


@router.post(
    f"{_BASE}/failover",
    operation_id="StartFailover",
    summary="Start a planned failover of consumer groups (Ferry extension)",
    responses={
        **error_responses(400, 401, 403, 404, 429, 500, 503, body=True),
        **on_success(
            200,
            {
                "DescribeFailover": link(
                    "DescribeFailover",
                    "The failover's progress",
                    {"path.replicatorArn": ARN_IN_BODY, "path.operationId": "$response.body#/operationId"},
                )
            },
        ),
    },
)
async def start_failover(
    replicatorArn: ReplicatorArn,
    body: Annotated[StartFailoverRequest, Body(openapi_examples=examples.START_FAILOVER)],
    request: Request,
    caller: CallerDep,
) -> FailoverStatus:
    """Starts moving consumer groups to the target (docs/failover-runbook.md); the replicator's metadata unit runs
    it: it waits until no new record reaches the source for `gracePeriodSeconds` (producers stopped), until the
    copy has no lag, and until every group is Empty on the source (consumers stopped), then syncs the groups' offsets
    one last time and reports, per group and partition, where each resumes on the target. Follow it with
    DescribeFailover; it fails after `timeoutSeconds`.

    Errors: 400 when the body is invalid or the replicator is DELETING or FAILED; 404 when the replicator does not
    exist; 401, 403, 429 and 503 as for every signed call."""
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        if row.state in (ReplicatorState.DELETING, ReplicatorState.FAILED):
            raise InvalidRequestError(f"replicatorArn: the replicator is {row.state}", "replicatorArn")
        op = await group_store.start_failover(
            session,
            row.id,
            groups=list(dict.fromkeys(body.consumerGroups)),
            grace_seconds=body.gracePeriodSeconds,
            timeout_seconds=body.timeoutSeconds,
        )
        return _status(op, row.arn)


@router.get(
    f"{_BASE}/failover/{{operationId}}",
    operation_id="DescribeFailover",
    summary="Progress and result of a planned failover (Ferry extension)",
    responses=error_responses(400, 401, 403, 404, 429, 500, 503),
)
async def describe_failover(
    replicatorArn: ReplicatorArn,
    operationId: Annotated[str, Path(description="The failover's id, as StartFailover returned it.")],
    request: Request,
    caller: CallerDep,
) -> FailoverStatus:
    """The failover's state, what it waits for now (`progress`), why it failed (`error`), and when its last sync
    ran, where each group resumes on the target (`result`). An operation no worker advanced for a while after its
    timeout reads FAILED with the reason (is the replicator's metadata unit running?).

    Errors: 400 when operationId is not an operation id or the ARN not a replicator ARN; 404 when the replicator
    or the operation (of this replicator) does not exist; 401, 403, 429 and 503 as for every signed call."""
    op_id = id_in_path(operationId, "operationId", "an operation id")
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        op = await group_store.failover_of(session, row.id, op_id)
        if op is None:
            raise ResourceNotFoundError(f"operationId: no failover {operationId} for this replicator", "operationId")
        return _status(op, row.arn)
