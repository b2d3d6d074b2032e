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
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

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
    sourceTopic: str
    partition: int
    sourceOffset: int
    targetTopic: str
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
    responses=error_responses(400, 404, 500),
)
async def offset_translation(
    replicatorArn: ReplicatorArn,
    request: Request,
    caller: CallerDep,
    *,
    topic: Annotated[str, Query(min_length=1, max_length=249, description="Source topic name.")],
    partition: Annotated[int, Query(ge=0, le=MAX_PARTITION)],
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="The next source offset the consumer would read.")],
) -> OffsetTranslation:
    """The target offset of the first copied record at or after ``offset``, and the re-read bound."""
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
    consumerGroups: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=100)
    gracePeriodSeconds: float = Field(
        default=10.0, ge=0, le=3600, description="How long the source must see no new record (producers stopped)."
    )
    timeoutSeconds: float = Field(default=600.0, gt=0, le=86400, description="Give up (FAILED) after this long.")


class FailoverStatus(BaseModel):
    operationId: str
    replicatorArn: str
    consumerGroups: list[str]
    state: str = Field(
        description="PENDING, WAITING_FOR_PRODUCERS, WAITING_FOR_LAG, WAITING_FOR_GROUPS, SUCCEEDED or FAILED."
    )
    progress: str | None = Field(default=None, description="What it is waiting for now, with numbers.")
    error: str | None = Field(default=None, description="Why it failed.")
    result: dict[str, Any] | None = Field(
        default=None, description="groups -> [{topic, partition, sourceOffset, targetTopic, targetOffset, maxReread}]"
    )
    createdAt: str
    updatedAt: str


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
        result=op.result,
        createdAt=op.created_at.isoformat(),
        updatedAt=op.updated_at.isoformat(),
    )


@router.post(
    f"{_BASE}/failover",
    operation_id="StartFailover",
    summary="Start a planned failover of consumer groups (Ferry extension)",
    responses={
        **error_responses(400, 404, 500),
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
    replicatorArn: ReplicatorArn, body: StartFailoverRequest, request: Request, caller: CallerDep
) -> FailoverStatus:
    """Checks producers stopped, waits for zero lag, syncs the groups one last time, reports resume positions."""
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
    responses=error_responses(400, 404, 500),
)
async def describe_failover(
    replicatorArn: ReplicatorArn, operationId: str, request: Request, caller: CallerDep
) -> FailoverStatus:
    op_id = id_in_path(operationId, "operationId", "an operation id")
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        op = await group_store.failover_of(session, row.id, op_id)
        if op is None:
            raise ResourceNotFoundError(f"operationId: no failover {operationId} for this replicator", "operationId")
        return _status(op, row.arn)
