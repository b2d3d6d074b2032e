"""The web console's pages (docs/console.md): server-rendered with Jinja2, refreshed in place with htmx.

Who is calling is decided by ``api/identity.py`` from the session cookie, exactly as a signature decides it for the
API: the caller's account scopes every read, and a read-only key's posts are refused there. Changes go through the
API's own operation handlers (``api/replicators.py``, ``api/offsets.py``), so the console validates as the API does
and shows the API's error message. Every form carries the session's CSRF token; a post without it changes nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from pydantic import ValidationError

from api import offsets, replicators, usage
from api.console import views
from api.console.session import ConsoleSession, SessionCodec, anonymous
from api.deps import transaction
from api.errors import validation_message
from api.identity import CALLER_SCOPE_KEY, CONSOLE_SESSION_SCOPE_KEY, Caller, check_access_key, secret_box_of
from api.metrics_exposition import HEALTHY
from api.replication_metrics import metrics_of, read_replicators
from models import fleet_store, replicator_service
from models.errors import FerryError
from models.replicator_shapes import CreateReplicatorRequest, UpdateReplicationInfoRequest

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
router = APIRouter(prefix="/console", include_in_schema=False)
_environment = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
_environment.filters["bytes"] = views.human_bytes
_environment.filters["number"] = views.number
templates = Jinja2Templates(env=_environment)

# Scripts and styles from the console's own static files only: nothing inline, nothing from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# ----- plumbing -----------------------------------------------------------------------------------------------

_NEW_SESSION_SCOPE_KEY = "ferry.console_session_new"


def _session(request: Request) -> tuple[ConsoleSession, bool]:
    """The visitor's session, and whether it is new (its cookie must be set)."""
    session = request.scope.get(CONSOLE_SESSION_SCOPE_KEY)
    if isinstance(session, ConsoleSession):
        return session, request.scope.get(_NEW_SESSION_SCOPE_KEY, False)
    # The first page of a visit: one anonymous session for the whole request (its token is in the page and cookie).
    session = anonymous()
    request.scope[CONSOLE_SESSION_SCOPE_KEY] = session
    request.scope[_NEW_SESSION_SCOPE_KEY] = True
    return session, True


def _caller(request: Request) -> Caller | None:
    caller = request.scope.get(CALLER_SCOPE_KEY)
    return caller if isinstance(caller, Caller) else None


def _finish(request: Request, response: Response, session: ConsoleSession | None = None) -> Response:
    """Security headers on every page, and the session cookie when it is new or changed."""
    response.headers.update(SECURITY_HEADERS)
    current, new = _session(request)
    if session is not None or new:
        codec: SessionCodec = request.app.state.console_sessions
        codec.write(response, session or current, secure=request.url.scheme == "https")
    return response


def _page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    session, _ = _session(request)
    caller = _caller(request)
    response = templates.TemplateResponse(
        request,
        template,
        {"csrf_token": session.csrf_token, "caller": caller, **context},
        status_code=status,
    )
    return _finish(request, response)


def _redirect(request: Request, url: str, session: ConsoleSession | None = None) -> Response:
    if request.headers.get("hx-request"):
        # htmx follows a redirect inside the swapped element; send the whole page there instead.
        response: Response = Response(status_code=204, headers={"HX-Redirect": url})
    else:
        response = RedirectResponse(url, status_code=303)
    return _finish(request, response, session)


def _to_sign_in(request: Request) -> Response:
    return _redirect(request, "/console/sign-in")


async def _form(request: Request) -> dict[str, str] | None:
    """The posted fields, or None when the CSRF token is missing or not the session's."""
    body = (await request.body()).decode("utf-8", errors="replace")
    fields = dict(parse_qsl(body, keep_blank_values=True))
    session, new = _session(request)
    if new or not session.accepts(fields.get("csrf_token")):
        return None
    return fields


def _csrf_refused(request: Request) -> Response:
    message = "The form's security token is missing or out of date: reload the page and try again."
    return _finish(request, PlainTextResponse(message, status_code=403))


def _replicator_url(arn: str, action: str = "") -> str:
    return f"/console/replicator{action}?arn={quote(arn, safe='')}"


_environment.globals["replicator_url"] = _replicator_url


async def _row(request: Request, caller: Caller, arn: str) -> Any:
    async with transaction(request) as session:
        return await replicator_service.get_replicator(session, account_id=caller.account_id, arn=arn)


def _problem(exc: Exception) -> tuple[str, str | None]:
    if isinstance(exc, ValidationError):
        message, member = validation_message(exc.errors())
        return message, member
    assert isinstance(exc, FerryError)
    return exc.message, exc.parameter


class _EarlyAnswer(Exception):
    """The route's answer was decided by a precondition: not signed in, a refused form, no such replicator."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


def _answers_early(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    @functools.wraps(route)
    async def answer(*args: Any, **kwargs: Any) -> Response:
        try:
            return await route(*args, **kwargs)
        except _EarlyAnswer as early:
            return early.response

    return answer


def _signed_in(request: Request) -> Caller:
    caller = _caller(request)
    if caller is None:
        raise _EarlyAnswer(_to_sign_in(request))
    return caller


async def _posted(request: Request) -> dict[str, str]:
    form = await _form(request)
    if form is None:
        raise _EarlyAnswer(_csrf_refused(request))
    return form


async def _existing_row(request: Request, caller: Caller, arn: str) -> Any:
    try:
        return await _row(request, caller, arn)
    except FerryError as exc:
        raise _EarlyAnswer(_page(request, "not_found.html", status=404, message=_problem(exc)[0])) from None


# ----- sign-in ------------------------------------------------------------------------------------------------


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return _redirect(request, "/console/replicators" if _caller(request) else "/console/sign-in")


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    return _page(request, "sign_in.html", error=None, access_key_id="")


@router.post("/sign-in")
@_answers_early
async def sign_in(request: Request) -> Response:
    form = await _posted(request)
    access_key_id = form.get("access_key_id", "").strip()
    settings = request.app.state.settings
    box = secret_box_of(settings)
    key = None
    if box is not None:
        key = await check_access_key(request.app.state.db_engine, box, access_key_id, form.get("secret_access_key", ""))
    if key is None:
        return _page(
            request,
            "sign_in.html",
            status=401,
            error="The access key id or secret access key is not valid (or the key was revoked).",
            access_key_id=access_key_id,
        )
    session, _ = _session(request)
    log.info("console sign-in with access key %s (account %s)", key.access_key_id, key.account_id)
    return _redirect(request, "/console/replicators", session.signed_in_as(key.access_key_id))


@router.post("/sign-out")
@_answers_early
async def sign_out(request: Request) -> Response:
    await _posted(request)
    session, _ = _session(request)
    return _redirect(request, "/console/sign-in", session.signed_out())


# ----- replicators --------------------------------------------------------------------------------------------


async def _list_rows(request: Request, caller: Caller) -> list[views.ReplicatorRowView]:
    async with transaction(request) as session:
        rows = await replicator_service.replicators_of(session, account_id=caller.account_id)
        scopes = await fleet_store.inventories(session, [str(row.id) for row in rows])
    readings = await read_replicators(request.app.state.redis, rows, scopes)
    return [views.ReplicatorRowView(reading.replicator, reading.totals) for reading in readings]


@router.get("/replicators")
@_answers_early
async def replicator_list(request: Request) -> Response:
    caller = _signed_in(request)
    return _page(request, "list.html", replicators=await _list_rows(request, caller))


@router.get("/replicators/rows")
@_answers_early
async def replicator_rows(request: Request) -> Response:
    caller = _signed_in(request)
    return _page(request, "_rows.html", replicators=await _list_rows(request, caller))


@router.get("/replicator")
@_answers_early
async def replicator_detail(request: Request, arn: str) -> Response:
    caller = _signed_in(request)
    row = await _existing_row(request, caller, arn)
    description = replicator_service.describe(row).model_dump(by_alias=True, exclude_none=True, mode="json")
    return _page(request, "detail.html", row=row, description=description, **await _live(request, caller, arn))


async def _live(request: Request, caller: Caller, arn: str) -> dict[str, Any]:
    metrics = await metrics_of(request, caller.account_id, arn)
    return {
        "metrics": metrics,
        "topics": views.topics_of(metrics.partitions, HEALTHY),
        "healthy": HEALTHY,
    }


@router.get("/replicator/live")
@_answers_early
async def replicator_live(request: Request, arn: str) -> Response:
    caller = _signed_in(request)
    try:
        live = await _live(request, caller, arn)
    except FerryError as exc:
        return _finish(request, PlainTextResponse(_problem(exc)[0], status_code=404))
    return _page(request, "_live.html", arn=arn, **live)


# ----- create -------------------------------------------------------------------------------------------------


def _create_defaults(caller: Caller) -> dict[str, str]:
    return {
        "source_id": "source",
        "target_id": "target",
        "role": views.DEFAULT_ROLE.format(account=caller.account_id),
        "starting_position": "LATEST",
        "naming": "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS",
        "compression": "NONE",
        "groups": ".*",
    }


def _create_page(request: Request, form: dict[str, str], status: int = 200, **context: Any) -> Response:
    return _page(
        request,
        "create.html",
        status=status,
        form=form,
        starting_positions=views.STARTING_POSITIONS,
        naming_modes=views.NAMING_MODES,
        compression_types=views.COMPRESSION_TYPES,
        **context,
    )


@router.get("/replicators/new")
@_answers_early
async def create_page(request: Request) -> Response:
    caller = _signed_in(request)
    return _create_page(request, _create_defaults(caller), error=None, error_field=None)


@router.post("/replicators/new")
@_answers_early
async def create(request: Request) -> Response:
    caller = _signed_in(request)
    form = await _posted(request)
    try:
        body = CreateReplicatorRequest.model_validate(views.create_request_of(form))
        created = await replicators.create_replicator(body, request, caller)
    except (ValidationError, FerryError) as exc:
        message, member = _problem(exc)
        return _create_page(request, form, status=400, error=message, error_field=views.field_of(member))
    return _redirect(request, _replicator_url(created.replicator_arn))


# ----- update topics, delete ----------------------------------------------------------------------------------


@router.get("/replicator/topics")
@_answers_early
async def topics_page(request: Request, arn: str) -> Response:
    caller = _signed_in(request)
    row = await _existing_row(request, caller, arn)
    stored = row.replication_info.get("topicReplication") or {}
    form = {
        "topics": "\n".join(stored.get("topicsToReplicate") or []),
        "topics_exclude": "\n".join(stored.get("topicsToExclude") or []),
        "current_version": row.current_version,
    }
    return _page(request, "topics.html", row=row, form=form, error=None)


@router.post("/replicator/topics")
@_answers_early
async def update_topics(request: Request, arn: str) -> Response:
    caller = _signed_in(request)
    form = await _posted(request)
    row = await _existing_row(request, caller, arn)
    try:
        body = UpdateReplicationInfoRequest.model_validate(
            views.topics_update_of(form, row.replication_info, form.get("current_version", ""))
        )
        await replicators.update_replication_info(arn, body, request, caller)
    except (ValidationError, FerryError) as exc:
        return _page(request, "topics.html", status=400, row=row, form=form, error=_problem(exc)[0])
    return _redirect(request, _replicator_url(arn))


@router.get("/replicator/delete")
@_answers_early
async def delete_page(request: Request, arn: str) -> Response:
    caller = _signed_in(request)
    row = await _existing_row(request, caller, arn)
    return _page(request, "delete.html", row=row, error=None)


@router.post("/replicator/delete")
@_answers_early
async def delete(request: Request, arn: str) -> Response:
    caller = _signed_in(request)
    form = await _posted(request)
    row = await _existing_row(request, caller, arn)
    if form.get("confirm_name", "") != row.name:
        return _page(request, "delete.html", status=400, row=row, error="Type the replicator's name to delete it.")
    try:
        await replicators.delete_replicator(arn, request, caller, current_version=form.get("current_version"))
    except FerryError as exc:
        return _page(request, "not_found.html", status=400, message=_problem(exc)[0])
    return _redirect(request, "/console/replicators")


# ----- failover -----------------------------------------------------------------------------------------------


@router.get("/replicator/failover")
@_answers_early
async def failover_page(request: Request, arn: str) -> Response:
    caller = _signed_in(request)
    try:
        row = await _row(request, caller, arn)
        metrics = await metrics_of(request, caller.account_id, arn)
    except FerryError as exc:
        return _page(request, "not_found.html", status=404, message=_problem(exc)[0])
    return _page(request, "failover.html", row=row, metrics=metrics, checks=_preconditions(row, metrics), error=None)


def _preconditions(row: Any, metrics: Any) -> list[tuple[str, bool, str]]:
    """What a planned failover needs (docs/failover-runbook.md), each with whether it holds now."""
    groups = row.replication_info.get("consumerGroupReplication") or {}
    sync_on = groups.get("synchroniseConsumerGroupOffsets", True) is not False
    lag = metrics.totals.lagRecords
    return [
        ("The replicator is not DELETING or FAILED", row.state not in ("DELETING", "FAILED"), f"state {row.state}"),
        ("Consumer group offsets are synchronised", sync_on, "synchroniseConsumerGroupOffsets"),
        ("The copy has no lag", lag == 0, "lag unknown" if lag is None else f"{lag:,} records behind"),
        (
            "Every partition is reported healthy",
            metrics.totals.unhealthyPartitions == 0 and metrics.totals.partitionsUnreported == 0,
            f"{metrics.totals.unhealthyPartitions} unhealthy, {metrics.totals.partitionsUnreported} unreported",
        ),
    ]


@router.post("/replicator/failover")
@_answers_early
async def failover(request: Request, arn: str) -> Response:
    caller = _signed_in(request)
    form = await _posted(request)
    row = await _existing_row(request, caller, arn)
    try:
        body = offsets.StartFailoverRequest.model_validate(
            {
                "consumerGroups": views.lines(form.get("groups", "")),
                "gracePeriodSeconds": float(form.get("grace", "10") or 10),
                "timeoutSeconds": float(form.get("timeout", "600") or 600),
            }
        )
        status = await offsets.start_failover(arn, body, request, caller)
    except (ValidationError, FerryError, ValueError) as exc:
        metrics = await metrics_of(request, caller.account_id, arn)
        message = _problem(exc)[0] if isinstance(exc, ValidationError | FerryError) else f"Not a number: {exc}"
        return _page(
            request, "failover.html", status=400, row=row, metrics=metrics, checks=_preconditions(row, metrics),
            error=message,
        )  # fmt: skip
    return _redirect(request, _replicator_url(arn, "/failover/status") + f"&operation={status.operationId}")


@router.get("/replicator/failover/status")
@_answers_early
async def failover_status(request: Request, arn: str, operation: str) -> Response:
    caller = _signed_in(request)
    try:
        found = await offsets.describe_failover(arn, operation, request, caller)
    except FerryError as exc:
        return _page(request, "not_found.html", status=404, message=_problem(exc)[0])
    return _page(request, "failover_status.html", arn=arn, operation=found)


# ----- usage --------------------------------------------------------------------------------------------------

USAGE_RANGES = {"1": "today", "7": "the last 7 days", "31": "the last 31 days"}


def _usage_range(days: str, granularity: str) -> tuple[str, str, str, str]:
    """(days, granularity, from, to): whole UTC days ending with today; anything unknown falls back to 7 days."""
    days = days if days in USAGE_RANGES else "7"
    granularity = granularity if granularity in ("HOUR", "DAY") else "DAY"
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    return days, granularity, (tomorrow - timedelta(days=int(days))).isoformat(), tomorrow.isoformat()


@router.get("/usage")
@_answers_early
async def usage_page(request: Request, days: str = "7", granularity: str = "DAY") -> Response:
    """The account's usage (the API's GetUsage, so the same figures as ``ferry usage`` and the CSV)."""
    caller = _signed_in(request)
    days, granularity, start, end = _usage_range(days, granularity)
    report = await usage.get_usage(request, caller, from_=start, to=end, granularity=granularity)
    return _page(
        request,
        "usage.html",
        report=report,
        days=days,
        granularity=granularity,
        ranges=USAGE_RANGES,
        csv_url=f"/console/usage.csv?days={days}&granularity={granularity}",
    )


@router.get("/usage.csv")
@_answers_early
async def usage_csv(request: Request, days: str = "7", granularity: str = "DAY") -> Response:
    caller = _signed_in(request)
    days, granularity, start, end = _usage_range(days, granularity)
    answer = await usage.get_usage(request, caller, from_=start, to=end, granularity=granularity, output="csv")
    assert isinstance(answer, Response)
    return _finish(request, answer)
