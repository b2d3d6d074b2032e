"""The auditor, offered to users (Ferry extension): compare a replicator's target with its source.

- ``POST /replication/v1/replicators/{replicatorArn}/audits`` with ``{"topic", "partition"?, "fromOffset"?,
  "toOffset"?}`` starts an audit job (a source range of any size: it streams); the replicator's metadata unit
  runs it (``workers/fleet/audits.py``, ``workers/engine/audit.py``).
- ``GET /replication/v1/replicators/{replicatorArn}/audits/{auditId}``: its state, a progress line while it
  runs, and per partition the records matched, missing, duplicated, differing and unexpected (with their first
  offsets), and the ranges that could not be checked, with why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, model_validator

from api.deps import id_in_path, spec_of, transaction
from api.errors import error_responses
from api.identity import CallerDep
from api.links import ARN_IN_BODY, link, on_success
from api.replicators import ReplicatorArn
from models import audits, replicator_service
from models.errors import InvalidRequestError, ResourceNotFoundError
from models.replicator import ReplicatorState

router = APIRouter(tags=["audits"])

_BASE = "/replication/v1/replicators/{replicatorArn:path}"

# A job nobody advanced for this long: no metadata unit runs it (no live worker, or the replicator is stuck).
ABANDONED_AFTER_SECONDS = 120.0

# Kafka offsets are signed 64-bit, and so is the column that keeps them: a larger number is refused, not a 500.
MAX_OFFSET = 2**63 - 1

TopicName = Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]


class StartAuditRequest(BaseModel):
    topic: TopicName = Field(description="Source topic to audit.")
    partition: int | None = Field(default=None, ge=0, le=1_000_000, description="One partition; default: all.")
    fromOffset: int | None = Field(
        default=None, ge=0, le=MAX_OFFSET, description="First source offset; default: the log start."
    )
    toOffset: int | None = Field(
        default=None,
        ge=0,
        le=MAX_OFFSET,
        description="Source offset to stop before; default: the end when the audit starts.",
    )

    @model_validator(mode="after")
    def _range(self) -> StartAuditRequest:
        if self.fromOffset is not None and self.toOffset is not None and self.toOffset < self.fromOffset:
            raise ValueError(f"toOffset ({self.toOffset}) is below fromOffset ({self.fromOffset})")
        return self


class AuditStatus(BaseModel):
    auditId: str
    replicatorArn: str
    topic: str
    targetTopic: str
    partition: int | None
    fromOffset: int | None
    toOffset: int | None
    state: str = Field(description="PENDING, RUNNING, SUCCEEDED or FAILED.")
    consistent: bool | None = Field(
        default=None,
        description="When SUCCEEDED: true when no record is missing, duplicated, differing or unexpected (ranges "
        "that could not be checked are listed per partition, not counted).",
    )
    progress: str | None = Field(default=None, description="What it is doing now, with numbers.")
    error: str | None = Field(default=None, description="Why it failed.")
    partitions: list[dict[str, Any]] | None = Field(
        default=None,
        description="Per partition: fromOffset, toOffset, sourceRecords, matched, filtered, missing, differing, "
        "duplicated, unexpected (count and first offsets), unchecked [{fromOffset, toOffset, reason}], "
        "bytesCompared, seconds.",
    )
    createdAt: str
    updatedAt: str


def _status(job: audits.AuditJob, arn: str, target_topic: str) -> AuditStatus:
    state, error = job.state, job.error
    idle = (datetime.now(UTC) - job.updated_at).total_seconds()
    if state in (audits.AuditState.PENDING, audits.AuditState.RUNNING) and idle > ABANDONED_AFTER_SECONDS:
        # Still claimable by a worker that comes back; until then the caller reads why nothing moves.
        error = (
            f"no worker has advanced this audit for {idle:.0f}s (is the replicator's metadata unit running? "
            "a live worker picks it up again)"
        )
    result = job.result or {}
    partitions = result.get("partitions")
    return AuditStatus(
        auditId=str(job.id),
        replicatorArn=arn,
        topic=job.topic,
        targetTopic=target_topic,
        partition=job.partition,
        fromOffset=job.from_offset,
        toOffset=job.to_offset,
        state=state,
        consistent=result.get("consistent") if state == audits.AuditState.SUCCEEDED else None,
        progress=job.progress,
        error=error,
        partitions=partitions,
        createdAt=job.created_at.isoformat(),
        updatedAt=job.updated_at.isoformat(),
    )


@router.post(
    f"{_BASE}/audits",
    operation_id="StartAudit",
    summary="Start comparing a topic's copy with its source (Ferry extension)",
    responses={
        **error_responses(400, 404, 500),
        **on_success(
            200,
            {
                "DescribeAudit": link(
                    "DescribeAudit",
                    "The audit's progress and result",
                    {"path.replicatorArn": ARN_IN_BODY, "path.auditId": "$response.body#/auditId"},
                )
            },
        ),
    },
)
async def start_audit(
    replicatorArn: ReplicatorArn, body: StartAuditRequest, request: Request, caller: CallerDep
) -> AuditStatus:
    """Records an audit job; the replicator's metadata unit runs it. Read its progress and result with
    DescribeAudit."""
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        if row.state == ReplicatorState.DELETING:
            raise InvalidRequestError("replicatorArn: the replicator is being deleted", "replicatorArn")
        spec = spec_of(row)
        if not spec.should_replicate(body.topic):
            raise InvalidRequestError(
                f"topic: {body.topic} is not replicated by this replicator (topicsToReplicate / topicsToExclude)",
                "topic",
            )
        job = await audits.start_audit(
            session,
            row.id,
            topic=body.topic,
            partition=body.partition,
            from_offset=body.fromOffset,
            to_offset=body.toOffset,
        )
        return _status(job, row.arn, spec.target_topic(body.topic))


@router.get(
    f"{_BASE}/audits/{{auditId}}",
    operation_id="DescribeAudit",
    summary="Progress and result of an audit (Ferry extension)",
    responses=error_responses(400, 404, 500),
)
async def describe_audit(
    replicatorArn: ReplicatorArn, auditId: str, request: Request, caller: CallerDep
) -> AuditStatus:
    audit_id = id_in_path(auditId, "auditId", "an audit id")
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        job = await audits.audit_of(session, row.id, audit_id)
        if job is None:
            raise ResourceNotFoundError(f"auditId: no audit {auditId} for this replicator", "auditId")
        spec = spec_of(row)
        return _status(job, row.arn, spec.target_topic(job.topic))
