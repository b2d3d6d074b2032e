"""Usage for chargeback (Ferry extension): what the caller's account replicated and ran, per hour or per UTC day.

``GET /replication/v1/usage?from=<ISO 8601>&to=<ISO 8601>&granularity=HOUR|DAY[&replicatorArn=...][&format=json|csv]``

Per period and replicator, per period for the whole account, per replicator over the range, and in total: records
and bytes replicated, replicator-hours (a replicator's metadata unit running) and partition-hours (copy units
holding its partitions). Read from ``usage_hours`` (``models/usage_store.py``), which workers fill
(``workers/fleet/usage.py``); a deleted replicator's usage stays. ``format=csv`` (or ``Accept: text/csv``) gives
the per period and replicator rows as CSV (docs/usage.md). Signed callers only, each seeing their own account.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import transaction
from api.errors import error_responses
from api.identity import CallerDep
from models import usage_store
from models.errors import InvalidRequestError
from models.usage_store import Granularity, UsageRow

router = APIRouter(tags=["usage"])

# The longest range one request may ask for: 744 hourly periods, 366 daily ones.
MAX_SPAN = {"HOUR": timedelta(days=31), "DAY": timedelta(days=366)}
CSV_COLUMNS = (
    "period_start",
    "account_id",
    "replicator_arn",
    "replicator_name",
    "records",
    "bytes",
    "replicator_hours",
    "partition_hours",
)


class UsageAmounts(BaseModel):
    """What was used: records and bytes copied, replicator-hours and partition-hours."""

    recordsReplicated: int = Field(description="Records the copiers wrote to the target (acknowledged).")
    bytesReplicated: int = Field(description="Bytes of those records as the copier counts them.")
    replicatorHours: float = Field(description="Hours a worker ran the replicator (its metadata unit).")
    partitionHours: float = Field(description="Partition-hours: hours each source partition was held for copying.")


class ReplicatorPeriodUsage(UsageAmounts):
    """One replicator's usage in one period."""

    periodStart: str = Field(description="Start of the hour or UTC day (ISO 8601, UTC).")
    replicatorArn: str = Field(description="The replicator's ARN.")
    replicatorName: str = Field(description="The replicator's name.")


class AccountPeriodUsage(UsageAmounts):
    """The account's usage in one period."""

    periodStart: str = Field(description="Start of the hour or UTC day (ISO 8601, UTC).")


class ReplicatorUsage(UsageAmounts):
    """One replicator's usage over the whole range."""

    replicatorArn: str = Field(description="The replicator's ARN.")
    replicatorName: str = Field(description="The replicator's name.")


class UsageReport(BaseModel):
    """The account's usage over a range, per period and replicator, per period, per replicator and in total."""

    model_config = ConfigDict(populate_by_name=True)

    accountId: str = Field(description="The caller's account, the only one reported.")
    from_: str = Field(alias="from", description="Start of the range (inclusive), UTC.")
    to: str = Field(description="End of the range (exclusive), UTC.")
    granularity: str = Field(description="HOUR or DAY (UTC days).")
    usage: list[ReplicatorPeriodUsage] = Field(description="Per period and replicator; periods without usage left out.")
    accountUsage: list[AccountPeriodUsage] = Field(description="Per period, the account's replicators together.")
    replicators: list[ReplicatorUsage] = Field(description="Per replicator, over the whole range.")
    total: UsageAmounts = Field(description="The account over the whole range.")


def _instant(value: str, member: str) -> datetime:
    """ISO 8601 with a timezone, or a bare date (UTC midnight)."""
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            raise InvalidRequestError(
                f"{member}: {value[:60]!r} has no timezone; add Z or an offset such as +02:00", member
            )
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{member}: {value[:60]!r} is not an ISO 8601 date-time with a timezone (e.g. 2026-01-31T00:00:00Z)",
            member,
        ) from None


def _on_boundary(instant: datetime, granularity: str, member: str) -> None:
    whole_hour = instant.minute == 0 and instant.second == 0 and instant.microsecond == 0
    if granularity == "HOUR" and not whole_hour:
        raise InvalidRequestError(f"{member}: must be a whole hour with granularity HOUR", member)
    if granularity == "DAY" and not (whole_hour and instant.hour == 0):
        raise InvalidRequestError(f"{member}: must be midnight UTC with granularity DAY", member)


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 6)


def _amounts(rows: list[UsageRow]) -> dict[str, Any]:
    return {
        "recordsReplicated": sum(r.records for r in rows),
        "bytesReplicated": sum(r.bytes for r in rows),
        "replicatorHours": _hours(sum(r.replicator_seconds for r in rows)),
        "partitionHours": _hours(sum(r.partition_seconds for r in rows)),
    }


def _wants_csv(request: Request, output: str | None) -> bool:
    if output is not None:
        return output == "csv"
    return "text/csv" in request.headers.get("accept", "")


def _csv(account_id: str, rows: list[UsageRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(
            [
                _iso(r.period_start),
                account_id,
                r.replicator_arn,
                r.replicator_name,
                r.records,
                r.bytes,
                _hours(r.replicator_seconds),
                _hours(r.partition_seconds),
            ]
        )
    return out.getvalue()


@router.get(
    "/replication/v1/usage",
    operation_id="GetUsage",
    summary="Usage for chargeback: records, bytes, replicator-hours and partition-hours (Ferry extension)",
    response_model=UsageReport,
    responses={
        **error_responses(400, 401, 403, 503),
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV on request."},
    },
)
async def get_usage(
    request: Request,
    caller: CallerDep,
    *,
    from_: Annotated[str, Query(alias="from", max_length=64, description="Start (inclusive), ISO 8601 with zone.")],
    to: Annotated[str, Query(max_length=64, description="End (exclusive), ISO 8601 with zone.")],
    granularity: Annotated[str, Query(max_length=8, description="HOUR (default) or DAY (UTC days).")] = "HOUR",
    replicatorArn: Annotated[str | None, Query(max_length=1024, description="Only this replicator.")] = None,
    output: Annotated[str | None, Query(alias="format", max_length=8, description="json (default) or csv.")] = None,
) -> UsageReport | Response:
    """Usage is stored per hour by the workers; a clean worker stop loses nothing, a SIGKILL loses at most the
    last ``FERRY_USAGE_FLUSH_SECONDS`` of that worker's counts (docs/usage.md)."""
    if granularity not in MAX_SPAN:
        raise InvalidRequestError(f"granularity: {granularity[:20]!r} is not HOUR or DAY", "granularity")
    if output is not None and output not in ("json", "csv"):
        raise InvalidRequestError(f"format: {output[:20]!r} is not json or csv", "format")
    kind: Granularity = "HOUR" if granularity == "HOUR" else "DAY"
    start, end = _instant(from_, "from"), _instant(to, "to")
    _on_boundary(start, kind, "from")
    _on_boundary(end, kind, "to")
    if end <= start:
        raise InvalidRequestError(f"to: {_iso(end)} is not after from ({_iso(start)})", "to")
    if end - start > MAX_SPAN[kind]:
        raise InvalidRequestError(
            f"to: the range spans {(end - start).days} days; at most {MAX_SPAN[kind].days} with granularity {kind}",
            "to",
        )
    async with transaction(request) as session:
        rows = await usage_store.usage_of(
            session, account_id=caller.account_id, start=start, end=end, granularity=kind, replicator_arn=replicatorArn
        )
    if _wants_csv(request, output):
        return Response(
            _csv(caller.account_id, rows),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="ferry-usage-{start:%Y%m%dT%H}.csv"'},
        )
    by_period: dict[datetime, list[UsageRow]] = defaultdict(list)
    by_replicator: dict[str, list[UsageRow]] = defaultdict(list)
    for row in rows:
        by_period[row.period_start].append(row)
        by_replicator[row.replicator_arn].append(row)
    return UsageReport(
        accountId=caller.account_id,
        from_=_iso(start),
        to=_iso(end),
        granularity=kind,
        usage=[
            ReplicatorPeriodUsage(
                periodStart=_iso(r.period_start),
                replicatorArn=r.replicator_arn,
                replicatorName=r.replicator_name,
                **_amounts([r]),
            )
            for r in rows
        ],
        accountUsage=[AccountPeriodUsage(periodStart=_iso(p), **_amounts(rs)) for p, rs in sorted(by_period.items())],
        replicators=[
            ReplicatorUsage(replicatorArn=arn, replicatorName=rs[0].replicator_name, **_amounts(rs))
            for arn, rs in sorted(by_replicator.items())
        ],
        total=UsageAmounts(**_amounts(rows)),
    )
