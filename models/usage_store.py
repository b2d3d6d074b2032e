"""Usage for chargeback: what each replicator replicated and ran, per hour, kept in PostgreSQL.

- ``usage_hours``: one row per replicator per UTC hour: records and bytes copied, seconds a metadata unit ran the
  replicator (replicator-hours) and seconds copy units held its partitions (partition-hours). Workers add what
  they measured (``workers/fleet/usage.py``); several workers add to the same row. The account, ARN and name are
  kept with each row and there is no foreign key to ``replicators``: usage outlives the replicator it bills.
- ``usage_writers``: per worker process, the number of the last batch of increments it stored, written in the
  same transaction as the increments. A batch whose commit went unanswered is sent again under its number and
  recognised as stored, so an increment is never added twice.

The API reads it (``api/usage.py``) per hour or per UTC day, scoped to one account.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import BigInteger, DateTime, Double, Index, String, Text, delete, func, select, text
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# A worker process's batch number is forgotten this long after its last batch (it has long stopped by then).
WRITER_MEMORY_DAYS = 30

Granularity = Literal["HOUR", "DAY"]


class UsageHour(Base):
    __tablename__ = "usage_hours"
    __table_args__ = (Index("ix_usage_hours_account_id_hour", "account_id", "hour"),)

    replicator_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    # The start of the UTC hour.
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(12), nullable=False)
    replicator_arn: Mapped[str] = mapped_column(Text, nullable=False)
    replicator_name: Mapped[str] = mapped_column(String(128), nullable=False)
    records: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    replicator_seconds: Mapped[float] = mapped_column(Double, nullable=False, server_default="0")
    partition_seconds: Mapped[float] = mapped_column(Double, nullable=False, server_default="0")


class UsageWriter(Base):
    __tablename__ = "usage_writers"

    writer_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_batch: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


@dataclass(frozen=True)
class UsageIncrement:
    """What one worker measured for one replicator in one hour since its previous batch."""

    replicator_id: str
    hour: datetime
    account_id: str
    replicator_arn: str
    replicator_name: str
    records: int = 0
    bytes: int = 0
    replicator_seconds: float = 0.0
    partition_seconds: float = 0.0


async def add_usage(conn: AsyncConnection, writer_id: str, batch: int, increments: Sequence[UsageIncrement]) -> bool:
    """Add one batch of increments, at most once per (writer, batch): False when this batch was stored before
    (its commit went unanswered and it is sent again). Batches of one writer must be numbered in increasing
    order and each stored before the next is sent. The caller commits."""
    claim = insert(UsageWriter).values(writer_id=writer_id, last_batch=batch)
    claimed = await conn.execute(
        claim.on_conflict_do_update(
            index_elements=[UsageWriter.writer_id],
            set_={"last_batch": claim.excluded.last_batch, "updated_at": func.now()},
            where=UsageWriter.last_batch < claim.excluded.last_batch,
        ).returning(UsageWriter.writer_id)
    )
    if claimed.first() is None:
        return False
    # Rows in one order, so two workers adding to the same hours never deadlock.
    ordered = sorted(increments, key=lambda i: (i.replicator_id, i.hour))
    if ordered:
        statement = insert(UsageHour).values(
            [
                {
                    "replicator_id": uuid.UUID(i.replicator_id),
                    "hour": i.hour,
                    "account_id": i.account_id,
                    "replicator_arn": i.replicator_arn,
                    "replicator_name": i.replicator_name,
                    "records": i.records,
                    "bytes": i.bytes,
                    "replicator_seconds": i.replicator_seconds,
                    "partition_seconds": i.partition_seconds,
                }
                for i in ordered
            ]
        )
        excluded = statement.excluded
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[UsageHour.replicator_id, UsageHour.hour],
                set_={
                    "records": UsageHour.records + excluded.records,
                    "bytes": UsageHour.bytes + excluded.bytes,
                    "replicator_seconds": UsageHour.replicator_seconds + excluded.replicator_seconds,
                    "partition_seconds": UsageHour.partition_seconds + excluded.partition_seconds,
                },
            )
        )
    return True


async def forget_old_writers(conn: AsyncConnection) -> None:
    await conn.execute(
        delete(UsageWriter).where(UsageWriter.updated_at < func.now() - text(f"interval '{WRITER_MEMORY_DAYS} days'"))
    )


@dataclass(frozen=True)
class UsageRow:
    """One replicator's usage in one period (an hour or a UTC day)."""

    period_start: datetime
    replicator_id: uuid.UUID
    replicator_arn: str
    replicator_name: str
    records: int
    bytes: int
    replicator_seconds: float
    partition_seconds: float


async def usage_of(
    session: AsyncSession | AsyncConnection,
    *,
    account_id: str,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    replicator_arn: str | None = None,
) -> list[UsageRow]:
    """An account's usage in [start, end) per period and replicator, in period then ARN order. ``start`` and
    ``end`` are on period boundaries (the caller checks), so every hour counted lies wholly inside."""
    period = (
        UsageHour.hour
        if granularity == "HOUR"
        else func.timezone("UTC", func.date_trunc("day", func.timezone("UTC", UsageHour.hour)))
    ).label("period_start")
    conditions = [UsageHour.account_id == account_id, UsageHour.hour >= start, UsageHour.hour < end]
    if replicator_arn is not None:
        conditions.append(UsageHour.replicator_arn == replicator_arn)
    statement = (
        select(
            period,
            UsageHour.replicator_id,
            # A replicator's name and ARN never change; max() only picks the one value.
            func.max(UsageHour.replicator_arn),
            func.max(UsageHour.replicator_name),
            func.sum(UsageHour.records),
            func.sum(UsageHour.bytes),
            func.sum(UsageHour.replicator_seconds),
            func.sum(UsageHour.partition_seconds),
        )
        .where(*conditions)
        .group_by(period, UsageHour.replicator_id)
        .order_by(period, func.max(UsageHour.replicator_arn))
    )
    result = await session.execute(statement)
    return [
        UsageRow(
            period_start=row[0],
            replicator_id=row[1],
            replicator_arn=row[2],
            replicator_name=row[3],
            records=int(row[4]),
            bytes=int(row[5]),
            replicator_seconds=float(row[6]),
            partition_seconds=float(row[7]),
        )
        for row in result.all()
    ]
