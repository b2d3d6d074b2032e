"""Replicator operations: everything the control plane does to the ``replicators`` table, scoped by account.

Functions take an ``AsyncSession`` inside a transaction the caller owns (the API commits once per request);
they only add, flush and lock. They write desired state only: a new replicator is CREATING, an update bumps
``generation`` (and RUNNING becomes UPDATING), a delete marks DELETING. The worker fleet moves states on.

``describe`` is the single place a row becomes the DescribeReplicator shape; ``summarize`` derives the
ListReplicators entry from it. The API's reads (``describe_json``, ``list_json``) answer from ``RenderedShapes``, each
row's JSON rendered once per row version: a read first fetches each row's version (PostgreSQL's ``xmin``, which
every write of the row changes), and only rows written since they were rendered are read whole and rendered again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, func, literal_column, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import load_only
from sqlalchemy.sql.elements import Label

from models.bootstrap import AddressPolicy
from models.errors import ConflictError, InvalidRequestError, LimitExceededError, ResourceNotFoundError
from models.msk import resolve_msk_bootstrap
from models.replicator import ReplicatorRow, ReplicatorState
from models.replicator_shapes import (
    CreateReplicatorRequest,
    DescribeReplicatorResponse,
    KafkaClusterDescription,
    KafkaClusterSummary,
    LogDelivery,
    ReplicationInfoDescription,
    ReplicationInfoSummary,
    ReplicationStateInfo,
    ReplicatorSummary,
    UpdateReplicationInfoRequest,
)
from models.replicator_spec import (
    AT_LEAST_ONCE,
    DELIVERY_TAG,
    AcceptedCreate,
    ClusterPlan,
    accept_create,
    accept_delivery_tag,
    accept_tags,
    accept_update,
    is_replicator_arn,
)

NAME_CONSTRAINT = "uq_replicators_account_id_name"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 100
_VERSION_ALPHABET = string.ascii_uppercase + string.digits
_PAGE_TOKEN_PREFIX = "ferry-list-v1:"


def new_current_version() -> str:
    """An opaque 12-character version like MSK's (``CKEVKO7DR4RA``); random, so every update changes it."""
    return "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(12))


# ----- create -------------------------------------------------------------------------------------------------


async def create_replicator(
    session: AsyncSession,
    *,
    account_id: str,
    region: str,
    request: CreateReplicatorRequest,
    address_policy: AddressPolicy,
    max_replicators: int,
    default_delivery: str = AT_LEAST_ONCE,
) -> ReplicatorRow:
    # Pattern compilation and MSK look-ups are blocking work; they must not stall the event loop.
    accepted = await asyncio.to_thread(accept_create, request, address_policy)
    delivery = accept_delivery_tag(accepted.tags, "tags") or default_delivery
    await _check_replicator_quota(session, account_id, max_replicators)
    clusters = [await _stored_cluster(plan) for plan in accepted.clusters]
    row = _new_row(accepted, clusters, account_id=account_id, region=region)
    row.delivery = delivery
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        if _violated_constraint(exc) == NAME_CONSTRAINT:
            raise ConflictError(
                f"replicatorName: a replicator named {accepted.name!r} already exists", "replicatorName"
            ) from None
        raise
    return row


async def _check_replicator_quota(session: AsyncSession, account_id: str, limit: int) -> None:
    """Refuse a replicator beyond the account's quota. Creates of one account are serialised by a transaction
    lock on the account, so two concurrent creates cannot both take the last place."""
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(f"replicators:{account_id}", 0))))
    count = (
        await session.execute(
            select(func.count()).select_from(ReplicatorRow).where(ReplicatorRow.account_id == account_id)
        )
    ).scalar_one()
    if count >= limit:
        raise LimitExceededError(
            f"Limit exceeded: the account has {count} replicators and may have at most {limit} "
            "(an operator can raise FERRY_MAX_REPLICATORS_PER_ACCOUNT); delete one first"
        )


async def _stored_cluster(plan: ClusterPlan) -> dict[str, Any]:
    ferry: dict[str, Any] = {"kind": plan.kind, "reference": plan.reference}
    if plan.bootstrap_servers is not None:
        ferry["bootstrapServers"] = plan.bootstrap_servers
    else:
        msk = await asyncio.to_thread(resolve_msk_bootstrap, plan.reference, plan.wire, plan.parameter)
        ferry["bootstrapServers"] = msk.bootstrap_servers
        ferry["securityProtocol"] = msk.security_protocol
        if msk.authentication is not None:
            ferry["authentication"] = msk.authentication
        ferry["mskBootstrapBrokerStrings"] = msk.all_strings
    return {**plan.wire, "kafkaClusterAlias": plan.alias, "ferry": ferry}


def _new_row(
    accepted: AcceptedCreate, clusters: list[dict[str, Any]], *, account_id: str, region: str
) -> ReplicatorRow:
    return ReplicatorRow(
        id=uuid.uuid4(),
        account_id=account_id,
        name=accepted.name,
        arn=f"arn:aws:kafka:{region}:{account_id}:replicator/{accepted.name}/{uuid.uuid4()}",
        description=accepted.description,
        service_execution_role_arn=accepted.service_execution_role_arn,
        kafka_clusters=clusters,
        replication_info=accepted.replication_info,
        log_delivery=accepted.log_delivery,
        tags=accepted.tags,
        current_version=new_current_version(),
        generation=1,
        observed_generation=0,
        state=ReplicatorState.CREATING.value,
    )


def _violated_constraint(exc: IntegrityError) -> str | None:
    diag = getattr(exc.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    return str(name) if name else None


# ----- read ---------------------------------------------------------------------------------------------------


async def get_replicator(
    session: AsyncSession, *, account_id: str, arn: str, parameter: str = "replicatorArn", for_update: bool = False
) -> ReplicatorRow:
    _check_arn(arn, parameter)
    statement = select(ReplicatorRow).where(ReplicatorRow.account_id == account_id, ReplicatorRow.arn == arn)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).scalar_one_or_none()
    if row is None:
        raise ResourceNotFoundError(f"{parameter}: replicator {arn!r} does not exist", parameter)
    return row


def _check_arn(arn: str, parameter: str) -> None:
    if not is_replicator_arn(arn):
        raise InvalidRequestError(
            f"{parameter}: {arn[:300]!r} is not a replicator ARN "
            "(arn:aws:kafka:<region>:<account>:replicator/<name>/<id>)",
            parameter,
        )


def _page_size(max_results: int | None) -> int:
    page_size = DEFAULT_PAGE_SIZE if max_results is None else max_results
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequestError(f"maxResults: must be between 1 and {MAX_PAGE_SIZE}, got {page_size}", "maxResults")
    return page_size


def _page(account_id: str, next_token: str | None, name_filter: str | None) -> list[ColumnElement[bool]]:
    """Which rows a page lists from (in ``seq`` order): the account's after ``next_token`` whose name starts with
    ``name_filter``."""
    where = [ReplicatorRow.account_id == account_id]
    if next_token:
        where.append(ReplicatorRow.seq > _decode_page_token(next_token))
    if name_filter:
        # MSK documents the filter as "replicators starting with given name": a prefix, taken literally.
        where.append(ReplicatorRow.name.startswith(name_filter, autoescape=True))
    return where


async def list_replicators(
    session: AsyncSession,
    *,
    account_id: str,
    max_results: int | None,
    next_token: str | None,
    name_filter: str | None,
) -> tuple[Sequence[ReplicatorRow], str | None]:
    """One page in creation order, and the token of the next page (None on the last page)."""
    page_size = _page_size(max_results)
    statement = select(ReplicatorRow).where(*_page(account_id, next_token, name_filter)).order_by(ReplicatorRow.seq)
    rows = (await session.execute(statement.limit(page_size + 1))).scalars().all()
    if len(rows) <= page_size:
        return rows, None
    page = rows[:page_size]
    return page, _encode_page_token(page[-1].seq)


async def replicators_of(
    session: AsyncSession, *, account_id: str | None, heads_only: bool = False
) -> Sequence[ReplicatorRow]:
    """Every replicator of one account (None: of every account, for the platform's metrics scraper). With
    ``heads_only``, only id, ARN, account, name and state are loaded (``/metrics`` needs no more, and decoding every
    row's JSONB was a large part of a scrape); touching another column then raises rather than loading it."""
    statement = select(ReplicatorRow).order_by(ReplicatorRow.seq)
    if heads_only:
        statement = statement.options(
            load_only(
                ReplicatorRow.id,
                ReplicatorRow.arn,
                ReplicatorRow.account_id,
                ReplicatorRow.name,
                ReplicatorRow.state,
                raiseload=True,
            )
        )
    if account_id is not None:
        statement = statement.where(ReplicatorRow.account_id == account_id)
    return (await session.execute(statement)).scalars().all()


_MAX_SEQ = 2**63 - 1


def _encode_page_token(last_seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_PAGE_TOKEN_PREFIX}{last_seq}".encode()).decode()


def _decode_page_token(token: str) -> int:
    try:
        decoded = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        if not decoded.startswith(_PAGE_TOKEN_PREFIX):
            raise ValueError(decoded)
        last_seq = int(decoded.removeprefix(_PAGE_TOKEN_PREFIX))
        if not 0 <= last_seq <= _MAX_SEQ:  # seq is a bigint: a larger number is a forged token, not a 500
            raise ValueError(decoded)
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidRequestError(
            "nextToken: the token is not one this service issued; pass the nextToken of the previous response",
            "nextToken",
        ) from None
    return last_seq


# ----- rendered reads ------------------------------------------------------------------------------------------

# The transaction id that wrote the row's current version: any write of the row (the API's, the reconcile loop's,
# a migration's) changes it, so a rendering made at one xmin is the row's rendering while its xmin stays.
_ROW_VERSION: Label[str] = literal_column("replicators.xmin::text").label("row_version")
_RENDERED_LIMIT = 100_000


@dataclass
class _Rendered:
    version: str
    summary: bytes | None = None
    description: bytes | None = None


class RenderedShapes:
    """Per process: each replicator's ListReplicators entry and DescribeReplicator body as JSON, with the row
    version they were rendered from. Rendering (JSONB decoding, pydantic validation and serialisation) was most of
    a page's cost; a row's version is one small column."""

    def __init__(self, limit: int = _RENDERED_LIMIT) -> None:
        self._rows: dict[uuid.UUID, _Rendered] = {}
        self._limit = limit

    def _entry(self, row_id: uuid.UUID, version: str) -> _Rendered:
        entry = self._rows.get(row_id)
        if entry is None or entry.version != version:
            if len(self._rows) >= self._limit:  # deleted replicators' entries: start afresh rather than grow
                self._rows.clear()
            entry = self._rows[row_id] = _Rendered(version)
        return entry

    def summary(self, row_id: uuid.UUID, version: str) -> bytes | None:
        entry = self._rows.get(row_id)
        return entry.summary if entry is not None and entry.version == version else None

    def description(self, row_id: uuid.UUID, version: str) -> bytes | None:
        entry = self._rows.get(row_id)
        return entry.description if entry is not None and entry.version == version else None

    def latest_summary(self, row_id: uuid.UUID) -> bytes | None:
        entry = self._rows.get(row_id)
        return entry.summary if entry is not None else None

    def keep_summary(self, row_id: uuid.UUID, version: str, rendered: bytes) -> None:
        self._entry(row_id, version).summary = rendered

    def keep_description(self, row_id: uuid.UUID, version: str, rendered: bytes) -> None:
        self._entry(row_id, version).description = rendered

    def __len__(self) -> int:
        return len(self._rows)


def _json(shape: BaseModel) -> bytes:
    """The wire JSON of a response shape, as FastAPI renders a response model (wire names, nulls left out)."""
    return shape.model_dump_json(by_alias=True, exclude_none=True).encode()


async def describe_json(session: AsyncSession, rendered: RenderedShapes, *, account_id: str, arn: str) -> bytes:
    """The DescribeReplicator body of the account's replicator ``arn`` (errors as ``get_replicator``)."""
    _check_arn(arn, "replicatorArn")
    this_one = (ReplicatorRow.account_id == account_id, ReplicatorRow.arn == arn)
    found = (await session.execute(select(ReplicatorRow.id, _ROW_VERSION).where(*this_one))).one_or_none()
    if found is not None and (body := rendered.description(found.id, found.row_version)) is not None:
        return body
    row = (await session.execute(select(ReplicatorRow, _ROW_VERSION).where(*this_one))).one_or_none()
    if row is None:
        raise ResourceNotFoundError(f"replicatorArn: replicator {arn!r} does not exist", "replicatorArn")
    body = _json(describe(row[0]))
    rendered.keep_description(row[0].id, row.row_version, body)
    return body


async def list_json(
    session: AsyncSession,
    rendered: RenderedShapes,
    *,
    account_id: str,
    max_results: int | None,
    next_token: str | None,
    name_filter: str | None,
) -> bytes:
    """One ListReplicators page as JSON (as ``list_replicators`` selects it): each row's version is read, and only
    the rows written since they were last rendered are read whole."""
    page_size = _page_size(max_results)
    statement = (
        select(ReplicatorRow.id, ReplicatorRow.seq, _ROW_VERSION)
        .where(*_page(account_id, next_token, name_filter))
        .order_by(ReplicatorRow.seq)
    )
    versions = (await session.execute(statement.limit(page_size + 1))).all()
    page, token = versions[:page_size], None
    if len(versions) > page_size:
        token = _encode_page_token(page[-1].seq)
    stale = [r.id for r in page if rendered.summary(r.id, r.row_version) is None]
    if stale:
        rows = await session.execute(select(ReplicatorRow, _ROW_VERSION).where(ReplicatorRow.id.in_(stale)))
        for row, version in rows:
            rendered.keep_summary(row.id, version, _json(summarize(row)))
    # A row written between the two reads was rendered at its newer version: shown as it is now. One deleted in
    # between (the fleet removes a DELETING replicator) is left out, as a read a moment later would.
    entries = [entry for r in page if (entry := rendered.latest_summary(r.id)) is not None]
    members = [b'"replicators":[' + b",".join(entries) + b"]"]
    if token is not None:
        members.insert(0, b'"nextToken":' + json.dumps(token).encode())
    return b"{" + b",".join(members) + b"}"


# ----- update and delete --------------------------------------------------------------------------------------


async def update_replication_info(
    session: AsyncSession, *, account_id: str, arn: str, request: UpdateReplicationInfoRequest
) -> ReplicatorRow:
    row = await get_replicator(session, account_id=account_id, arn=arn, for_update=True)
    _check_current_version(row, request.current_version)
    # A FAILED replicator may be updated: the fix can be in the topic lists (e.g. excluding a topic whose
    # creation is denied). It stays FAILED until the new generation runs (docs/replicator-states.md).
    if row.state == ReplicatorState.DELETING:
        raise InvalidRequestError(
            f"replicatorArn: a replicator in state {row.state} cannot be updated", "replicatorArn"
        )
    clusters_by_alias = {cluster["kafkaClusterAlias"]: cluster for cluster in row.kafka_clusters}
    accepted = await asyncio.to_thread(
        accept_update,
        request,
        stored_info=row.replication_info,
        stored_log_delivery=row.log_delivery,
        clusters_by_alias=clusters_by_alias,
    )
    row.replication_info = accepted.replication_info
    row.log_delivery = accepted.log_delivery
    row.generation += 1
    row.current_version = new_current_version()
    if row.state == ReplicatorState.RUNNING:
        row.state = ReplicatorState.UPDATING.value
    await session.flush()
    return row


async def delete_replicator(
    session: AsyncSession, *, account_id: str, arn: str, current_version: str | None
) -> ReplicatorRow:
    row = await get_replicator(session, account_id=account_id, arn=arn, for_update=True)
    if current_version is not None:
        _check_current_version(row, current_version)
    if row.state != ReplicatorState.DELETING:
        row.state = ReplicatorState.DELETING.value
        row.generation += 1
        await session.flush()
    return row


def _check_current_version(row: ReplicatorRow, current_version: str) -> None:
    if current_version != row.current_version:
        raise InvalidRequestError(
            f"currentVersion: {current_version[:100]!r} is not the replicator's current version "
            "(it changed since you read it); describe the replicator and retry with its currentVersion",
            "currentVersion",
        )


# ----- tags ---------------------------------------------------------------------------------------------------


async def tag_resource(session: AsyncSession, *, account_id: str, arn: str, tags: dict[str, str]) -> None:
    row = await get_replicator(session, account_id=account_id, arn=arn, parameter="resourceArn", for_update=True)
    if not tags:
        raise InvalidRequestError("tags: at least one tag is required", "tags")
    if DELIVERY_TAG in tags and tags[DELIVERY_TAG] != row.tags.get(DELIVERY_TAG):
        raise InvalidRequestError(
            f"tags: {DELIVERY_TAG!r} is chosen when a replicator is created and cannot change "
            f"(this one delivers {row.delivery}); create a new replicator instead",
            "tags",
        )
    row.tags = accept_tags({**row.tags, **tags}, "tags")
    await session.flush()


async def untag_resource(session: AsyncSession, *, account_id: str, arn: str, tag_keys: list[str]) -> None:
    row = await get_replicator(session, account_id=account_id, arn=arn, parameter="resourceArn", for_update=True)
    if not tag_keys:
        raise InvalidRequestError("tagKeys: at least one tag key is required", "tagKeys")
    removed = set(tag_keys)
    if DELIVERY_TAG in removed and DELIVERY_TAG in row.tags:
        raise InvalidRequestError(
            f"tagKeys: {DELIVERY_TAG!r} is chosen when a replicator is created and cannot be removed "
            f"(this one delivers {row.delivery})",
            "tagKeys",
        )
    row.tags = {key: value for key, value in row.tags.items() if key not in removed}
    await session.flush()


async def list_tags(session: AsyncSession, *, account_id: str, arn: str) -> dict[str, str]:
    row = await get_replicator(session, account_id=account_id, arn=arn, parameter="resourceArn")
    return dict(row.tags)


# ----- shapes -------------------------------------------------------------------------------------------------


def describe(row: ReplicatorRow) -> DescribeReplicatorResponse:
    """The DescribeReplicator shape of a row: the one conversion every read goes through."""
    clusters = [
        KafkaClusterDescription.model_validate(_members_of(KafkaClusterDescription, cluster))
        for cluster in row.kafka_clusters
    ]
    return DescribeReplicatorResponse(
        creation_time=row.created_at,
        current_version=row.current_version,
        is_replicator_reference=False,
        kafka_clusters=clusters,
        replication_info_list=[
            ReplicationInfoDescription.model_validate(_members_of(ReplicationInfoDescription, row.replication_info))
        ],
        replicator_arn=row.arn,
        replicator_description=row.description,
        replicator_name=row.name,
        replicator_resource_arn=row.arn,
        replicator_state=row.state,
        service_execution_role_arn=row.service_execution_role_arn,
        state_info=ReplicationStateInfo.model_validate(row.state_info) if row.state_info else None,
        tags=dict(row.tags),
        log_delivery=LogDelivery.model_validate(row.log_delivery) if row.log_delivery else None,
    )


def _members_of(shape: type[BaseModel], stored: dict[str, Any]) -> dict[str, Any]:
    """The stored members that belong to ``shape``: Ferry's own annotations (``ferry``) never reach clients."""
    members = {field.alias or name for name, field in shape.model_fields.items()}
    return {key: value for key, value in stored.items() if key in members}


def summarize(row: ReplicatorRow) -> ReplicatorSummary:
    """The ListReplicators shape of a row, built from the members it shows only: a page holds up to 100 rows, and
    validating each one's whole description (patterns, nested shapes) made listing 5x slower than describing."""
    return ReplicatorSummary(
        creation_time=row.created_at,
        current_version=row.current_version,
        is_replicator_reference=False,
        kafka_clusters_summary=[
            KafkaClusterSummary.model_validate(_members_of(KafkaClusterSummary, cluster))
            for cluster in row.kafka_clusters
        ],
        replication_info_summary_list=[
            ReplicationInfoSummary.model_validate(_members_of(ReplicationInfoSummary, row.replication_info))
        ],
        replicator_arn=row.arn,
        replicator_name=row.name,
        replicator_resource_arn=row.arn,
        replicator_state=row.state,
    )
