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
from typing import Annotated

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, Field, model_validator

from api import examples
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
    """The source range to compare with its copy: a topic, and optionally one partition and an offset range."""

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


class MissingRecords(BaseModel):
    """Source records with no copy on the target."""

    count: int = Field(
        description="Source records with no copy: the map skips them (never copied), or their target record is gone."
    )
    sourceOffsets: list[int] = Field(description="The source offsets of the first of them (at most 100).")


class DifferingPair(BaseModel):
    """A source record and the target record the offset map points to, which differs from it."""

    sourceOffset: int = Field(description="The source record's offset.")
    targetOffset: int = Field(description="The offset of its copy on the target.")


class DifferingRecords(BaseModel):
    """Source records whose copy differs."""

    count: int = Field(description="Source records whose target record, where the offset map points, is another.")
    offsets: list[DifferingPair] = Field(description="The first of them, source and target offset (at most 100).")


class TargetRecords(BaseModel):
    """Target records of one kind (duplicated or unexpected)."""

    count: int = Field(description="How many there are.")
    targetOffsets: list[int] = Field(description="The target offsets of the first of them (at most 100).")


class UncheckedRange(BaseModel):
    """A source range that could not be compared."""

    fromOffset: int = Field(description="First source offset of the range.")
    toOffset: int = Field(description="Source offset the range ends before.")
    reason: str = Field(
        description="Why it could not be compared: deleted from the source before the audit, before the replicator's "
        "first copied record, or not copied yet."
    )


class PartitionAuditResult(BaseModel):
    """One partition's comparison of the source range with its copy (docs/auditor.md)."""

    topic: str = Field(description="The source topic.")
    targetTopic: str = Field(description="The topic it is copied to on the target.")
    partition: int = Field(description="The partition (the same number on both clusters).")
    fromOffset: int = Field(description="First source offset compared.")
    toOffset: int = Field(description="Source offset the comparison ended before.")
    consistent: bool = Field(description="True when no record is missing, duplicated, differing or unexpected.")
    sourceRecords: int = Field(description="Source records in the range.")
    matched: int = Field(description="Source records whose copy, where the offset map says it went, is identical.")
    filtered: int = Field(
        description="Source records the replicator does not copy by design: with IDENTICAL naming, records whose "
        "origin is the target cluster."
    )
    missing: MissingRecords = Field(description="Source records of the range with no copy on the target.")
    differing: DifferingRecords = Field(description="Copies that differ from their source record.")
    duplicated: TargetRecords = Field(
        description="Target records no run of the offset map points to whose content is a source record's (an "
        "at-least-once re-copy after a crash)."
    )
    unexpected: TargetRecords = Field(
        description="Target records no run of the offset map points to that match no source record (written by "
        "something other than this replicator)."
    )
    unchecked: list[UncheckedRange] = Field(description="Source ranges that could not be compared, with why.")
    bytesCompared: int = Field(description="Key and value bytes of the source records compared.")
    seconds: float = Field(description="How long the partition's comparison took.")


class AuditStatus(BaseModel):
    """An audit job: its state, what it is doing, and per partition what it found."""

    auditId: str = Field(description="The audit's id (DescribeAudit's auditId).")
    replicatorArn: str = Field(description="The replicator whose copy is audited.")
    topic: str = Field(description="The source topic audited.")
    targetTopic: str = Field(description="The topic the replicator copies it to on the target.")
    partition: int | None = Field(description="The partition audited; null: every partition of the topic.")
    fromOffset: int | None = Field(description="First source offset to compare; null: each partition's log start.")
    toOffset: int | None = Field(
        description="Source offset to stop before; null: each partition's end when the audit starts."
    )
    state: audits.AuditState = Field(description="PENDING, RUNNING, SUCCEEDED or FAILED.")
    consistent: bool | None = Field(
        default=None,
        description="When SUCCEEDED: true when no record is missing, duplicated, differing or unexpected (ranges "
        "that could not be checked are listed per partition, not counted).",
    )
    progress: str | None = Field(default=None, description="What it is doing now, with numbers.")
    error: str | None = Field(default=None, description="Why it failed.")
    partitions: list[PartitionAuditResult] | None = Field(
        default=None,
        description="The partitions compared so far (all of them when SUCCEEDED); null before the first is done.",
    )
    createdAt: str = Field(description="When it was started (ISO 8601 with its UTC offset).")
    updatedAt: str = Field(description="When it last changed (ISO 8601 with its UTC offset).")


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
        partitions=None if partitions is None else [PartitionAuditResult.model_validate(p) for p in partitions],
        createdAt=job.created_at.isoformat(),
        updatedAt=job.updated_at.isoformat(),
    )


@router.post(
    f"{_BASE}/audits",
    operation_id="StartAudit",
    summary="Start comparing a topic's copy with its source (Ferry extension)",
    responses={
        **error_responses(400, 401, 403, 404, 429, 500, 503, body=True),
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
    replicatorArn: ReplicatorArn,
    body: Annotated[StartAuditRequest, Body(openapi_examples=examples.START_AUDIT)],
    request: Request,
    caller: CallerDep,
) -> AuditStatus:
    """Records an audit job (state PENDING): the replicator's metadata unit compares the source range with its copy
    on the target, record by record, following the offset map (docs/auditor.md). A range of any size streams
    through in one pass; follow it with DescribeAudit.

    Errors: 400 when the body is invalid (a reversed range, an unknown member), the topic is not one the
    replicator copies, or the replicator is DELETING; 404 when the replicator does not exist; 401, 403, 429 and
    503 as for every signed call."""
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
    responses=error_responses(400, 401, 403, 404, 429, 500, 503),
)
async def describe_audit(
    replicatorArn: ReplicatorArn,
    auditId: Annotated[str, Path(description="The audit's id, as StartAudit returned it.")],
    request: Request,
    caller: CallerDep,
) -> AuditStatus:
    """The audit's state, a progress line while it runs, the reason when it failed, and per partition compared so
    far the records matched, missing, duplicated, differing and unexpected (with their first offsets) and the
    ranges that could not be checked, with why. An audit no worker advanced for two minutes says so in `error`
    (a live worker picks it up again).

    Errors: 400 when auditId is not an audit id or the ARN not a replicator ARN; 404 when the replicator or the
    audit (of this replicator) does not exist; 401, 403, 429 and 503 as for every signed call."""
    audit_id = id_in_path(auditId, "auditId", "an audit id")
    async with transaction(request) as session:
        row = await replicator_service.get_replicator(session, account_id=caller.account_id, arn=replicatorArn)
        job = await audits.audit_of(session, row.id, audit_id)
        if job is None:
            raise ResourceNotFoundError(f"auditId: no audit {auditId} for this replicator", "auditId")
        spec = spec_of(row)
        return _status(job, row.arn, spec.target_topic(job.topic))
