"""``ferry replicators`` (alias ``ferry replicator``): replicators from a CI pipeline or a terminal (docs/cli.md).

    ferry replicators create -f replicator.yaml [--name NAME] [--wait] [--timeout S]
    ferry replicators list [--name-prefix P]
    ferry replicators describe NAME_OR_ARN
    ferry replicators update NAME_OR_ARN -f update.yaml [--wait] [--timeout S]
    ferry replicators delete NAME_OR_ARN [--wait] [--timeout S]
    ferry replicators wait NAME_OR_ARN [--state RUNNING] [--timeout 300] [--ignore-failed]
    ferry replicators tag NAME_OR_ARN KEY=VALUE...  |  untag NAME_OR_ARN KEY...  |  tags NAME_OR_ARN
    ferry replicators metrics NAME_OR_ARN
    ferry replicators translate-offsets NAME_OR_ARN --topic T --partition N --offset O
    ferry replicators failover NAME_OR_ARN --group G... [--no-wait]  |  failover NAME_OR_ARN --operation-id ID
    ferry replicators audit NAME_OR_ARN --topic T [--partition N] [--no-wait]  |  audit NAME_OR_ARN --audit-id ID

Every command takes ``--endpoint-url`` (default ``FERRY_ENDPOINT_URL``, then the AWS CLI's
``AWS_ENDPOINT_URL_KAFKA``), ``--region``, ``--profile`` and ``--output json|yaml|table`` (default
``FERRY_OUTPUT``, else json); credentials come from where the AWS CLI reads them (``cli/api_client.py``). A name
is accepted wherever an ARN is: it is looked up with ListReplicators (every page) and must match exactly one
replicator. Input files (``-f``, ``-`` for standard input) hold the request as ``aws kafka create-replicator
--cli-input-yaml`` / ``--cli-input-json`` take it: boto3's PascalCase member names, YAML or JSON.

Results go to standard output (one document); progress and errors go to standard error, an error as one line
``ferry: <Code>: <message>``. Exit status, for CI to branch on:

    0  success
    1  any other error
    2  usage: a bad option or argument (argparse), an unreadable input file, no endpoint configured
    3  not found (NotFoundException, or no replicator has that name)
    4  validation: the request was refused as invalid (BadRequestException, boto3's parameter validation,
       a malformed input file)
    5  conflict (ConflictException: e.g. a replicator with that name exists)
    6  authentication or authorisation (UnauthorizedException, ForbiddenException, no credentials)
    7  timeout: the awaited state was not reached within --timeout
    8  what was awaited cannot come: the replicator is FAILED (or DELETING) while waiting for another state,
       a failover or audit ended FAILED
    9  service unavailable: throttled (TooManyRequestsException), ServiceUnavailableException, unreachable
    10 an audit finished and found differences
    130 interrupted (Ctrl-C)

argparse, not click or typer, to stay one ``ferry`` command with the server roles (cli/main.py); rich draws the
tables and the live status line on a terminal (imported only then).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cli.api_client import UNREACHABLE, ApiClient, ApiError, EndpointMissing, connect, endpoint_from_environment

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_VALIDATION = 4
EXIT_CONFLICT = 5
EXIT_AUTH = 6
EXIT_TIMEOUT = 7
EXIT_FAILED = 8
EXIT_UNAVAILABLE = 9
EXIT_DIFFERENCES = 10
EXIT_INTERRUPTED = 130

OUTPUTS = ("json", "yaml", "table")
STATES = ("RUNNING", "CREATING", "UPDATING", "DELETING", "FAILED", "DELETED")
DELETED = "DELETED"  # not a ReplicatorState: Describe answers NotFound
FIRST_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 10.0
TRANSIENT_STATUSES = (UNREACHABLE, 429, 500, 502, 503, 504)
_UNSET: Any = object()


class CliError(Exception):
    """A failure to report in one line and exit with ``exit_code``."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = " ".join(message.split())


def exit_code_of(error: ApiError) -> int:
    if error.status == 404 or error.code in ("NotFoundException", "ResourceNotFoundException"):
        return EXIT_NOT_FOUND
    if error.status == 409 or error.code == "ConflictException":
        return EXIT_CONFLICT
    if error.status in (401, 403) or error.code in ("UnauthorizedException", "ForbiddenException"):
        return EXIT_AUTH
    if error.status in (429, 503) or error.code == "EndpointConnectionError":
        return EXIT_UNAVAILABLE
    if 400 <= error.status < 500:
        return EXIT_VALIDATION
    return EXIT_ERROR


# ----- the command line -----------------------------------------------------------------------------------------


def add_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint-url", help="the Ferry API (default: FERRY_ENDPOINT_URL, AWS_ENDPOINT_URL_KAFKA)")
    common.add_argument("--region", help="signing region (default: AWS_REGION or the profile's, else us-east-1)")
    common.add_argument("--profile", help="AWS CLI profile for credentials and region (default: AWS_PROFILE)")
    common.add_argument(
        "--output", "-o", choices=OUTPUTS, default=None, help="json (default, or FERRY_OUTPUT), yaml or table"
    )
    common.add_argument(
        "--page-size", type=int, default=100, metavar="N", help="replicators per ListReplicators call (1-100)"
    )
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="give up waiting (exit 7)")

    group = sub.add_parser(
        "replicators",
        aliases=["replicator"],
        help="create, list, change, wait for and delete replicators through the API (docs/cli.md)",
        description="Replicators through the API, signed as the AWS CLI signs. Exit status: 0 ok, 1 error, "
        "2 usage, 3 not found, 4 validation, 5 conflict, 6 auth, 7 timeout, 8 FAILED while waiting, "
        "9 unavailable, 10 audit found differences.",
    )
    commands = group.add_subparsers(dest="replicators_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, wait: bool = False, target: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common, waiting] if wait else [common]
        )
        if target:
            parser.add_argument("replicator", metavar="NAME_OR_ARN", help="a replicator's name or ARN")
        return parser

    create = command("create", "create a replicator from a CreateReplicator request file", wait=True, target=False)
    create.add_argument(
        "-f", "--file", required=True, help="YAML or JSON, the AWS CLI's --cli-input shape; - reads stdin"
    )
    create.add_argument("--name", help="the replicator's name (replaces the file's ReplicatorName)")
    create.add_argument("--wait", action="store_true", help="then wait until it is RUNNING")

    listing = command("list", "list replicators", target=False)
    listing.add_argument("--name-prefix", help="only replicators whose name starts with this")

    command("describe", "describe a replicator")

    update = command("update", "change what a replicator copies (UpdateReplicationInfo)", wait=True)
    update.add_argument("-f", "--file", required=True, help="YAML or JSON UpdateReplicationInfo request; - for stdin")
    update.add_argument("--wait", action="store_true", help="then wait until it is RUNNING")

    delete = command("delete", "delete a replicator", wait=True)
    delete.add_argument("--wait", action="store_true", help="then wait until it is gone (Describe: NotFound)")

    wait = command("wait", "wait until a replicator reaches a state", wait=True)
    wait.add_argument("--state", choices=STATES, default="RUNNING", help="the state to wait for (DELETED: gone)")
    wait.add_argument(
        "--ignore-failed", action="store_true", help="keep waiting through FAILED (it recovers once its cause is gone)"
    )
    # The common default is a CI job's patience; a bare `wait` says 300 s in the issue and the docs.
    wait.set_defaults(timeout=300.0)

    tag = command("tag", "add or replace tags")
    tag.add_argument("tags", nargs="+", metavar="KEY=VALUE")
    untag = command("untag", "remove tags")
    untag.add_argument("keys", nargs="+", metavar="KEY")
    command("tags", "list a replicator's tags")

    command("metrics", "lag, throughput, health per partition (Ferry extension)")

    translate = command("translate-offsets", "where a consumer of the source resumes on the target (Ferry extension)")
    translate.add_argument("--topic", required=True, help="source topic")
    translate.add_argument("--partition", type=int, required=True)
    translate.add_argument("--offset", type=int, required=True, help="the next source offset the consumer would read")

    failover = command("failover", "planned failover of consumer groups to the target (Ferry extension)", wait=True)
    failover.add_argument("--group", action="append", dest="groups", metavar="GROUP", help="a consumer group (repeat)")
    failover.add_argument("--grace-period", type=float, help="seconds the source must see no new record")
    failover.add_argument("--failover-timeout", type=float, help="the failover gives up (FAILED) after this long")
    failover.add_argument("--operation-id", help="follow a failover started before instead of starting one")
    failover.add_argument("--no-wait", action="store_true", help="print the started failover and return")

    audit = command("audit", "compare a topic's copy with its source (Ferry extension)", wait=True)
    audit.add_argument("--topic", help="source topic to audit")
    audit.add_argument("--partition", type=int, help="one partition (default: all)")
    audit.add_argument("--from-offset", type=int)
    audit.add_argument("--to-offset", type=int)
    audit.add_argument("--audit-id", help="follow an audit started before instead of starting one")
    audit.add_argument("--no-wait", action="store_true", help="print the started audit and return")


def main(argv: list[str]) -> int:
    """``ferry replicators ...`` (argv from the group's name on) with a parser of this group only: the same
    options and help as in the whole ``ferry`` parser, which would also load the server roles' modules."""
    top = argparse.ArgumentParser(prog="ferry")
    add_commands(top.add_subparsers(dest="command", required=True))
    return run(top.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    output = args.output or os.environ.get("FERRY_OUTPUT") or "json"
    if output not in OUTPUTS:
        return _fail(EXIT_USAGE, f"--output (or FERRY_OUTPUT) must be one of {', '.join(OUTPUTS)}, not {output!r}")
    if not 1 <= args.page_size <= 100:
        return _fail(EXIT_USAGE, f"--page-size must be between 1 and 100, not {args.page_size}")
    api: ApiClient | None = None
    try:
        api = connect(args.endpoint_url or endpoint_from_environment(), args.region, args.profile)
        handler = _HANDLERS[args.replicators_command]
        return handler(_Context(api, args, output))
    except EndpointMissing as exc:
        return _fail(EXIT_USAGE, str(exc))
    except ApiError as exc:
        return _fail(exit_code_of(exc), f"{exc.code}: {exc.message}")
    except CliError as exc:
        return _fail(exc.exit_code, exc.message)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    finally:
        if api is not None:
            api.close()


def _fail(code: int, message: str) -> int:
    print(f"ferry: {' '.join(message.split())}", file=sys.stderr)
    return code


class _Context:
    def __init__(self, api: ApiClient, args: argparse.Namespace, output: str) -> None:
        self.api = api
        self.args = args
        self.output = output

    def arn(self) -> str:
        return resolve(self.api, self.args.replicator, self.args.page_size)

    def emit(self, document: dict[str, Any], table: Callable[[dict[str, Any]], list[Any]] | None = None) -> None:
        emit(document, self.output, table or _key_value_tables)


# ----- names ------------------------------------------------------------------------------------------------------


def list_all(api: ApiClient, page_size: int, prefix: str | None = None) -> Iterator[dict[str, Any]]:
    """Every replicator's summary (each page of ListReplicators), optionally those whose name starts with prefix."""
    token: str | None = None
    while True:
        params: dict[str, Any] = {"MaxResults": page_size}
        if prefix:
            params["ReplicatorNameFilter"] = prefix
        if token:
            params["NextToken"] = token
        page = api.call("list_replicators", **params)
        yield from page.get("Replicators", [])
        token = page.get("NextToken")
        if not token:
            return


def resolve(api: ApiClient, name_or_arn: str, page_size: int = 100) -> str:
    """The ARN of a replicator given by ARN (as it is) or by name (exactly one replicator has it)."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    matches = [s for s in list_all(api, page_size, name_or_arn) if s.get("ReplicatorName") == name_or_arn]
    if not matches:
        raise CliError(EXIT_NOT_FOUND, f"NotFoundException: no replicator is named {name_or_arn!r}")
    if len(matches) > 1:
        arns = ", ".join(str(s.get("ReplicatorArn")) for s in matches)
        raise CliError(EXIT_ERROR, f"AmbiguousName: {len(matches)} replicators are named {name_or_arn!r} ({arns}): "
                                   "give the ARN")  # fmt: skip
    return str(matches[0]["ReplicatorArn"])


# ----- input files ------------------------------------------------------------------------------------------------


def read_request(path: str, operation: str, api: ApiClient) -> dict[str, Any]:
    """A request document from a YAML or JSON file (``-``: standard input), in boto3's member names."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(EXIT_USAGE, f"{path}: cannot be read: {exc}") from None
    import yaml  # noqa: PLC0415 (only the commands that read a file need it)

    try:
        # YAML 1.1 reads JSON too (standard input may be either); a .json file gets JSON's own error messages.
        document = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
    except ValueError as exc:
        raise CliError(EXIT_VALIDATION, f"{path}: not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(EXIT_VALIDATION, f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise CliError(EXIT_VALIDATION, f"{path}: expected a mapping of {operation}'s members, got "
                                        f"{type(document).__name__}")  # fmt: skip
    members = set(api.kafka.meta.service_model.operation_model(operation).input_shape.members)
    rest_names = [key for key in document if isinstance(key, str) and key[:1].upper() + key[1:] in members - {key}]
    if rest_names:
        first = rest_names[0]
        raise CliError(
            EXIT_VALIDATION,
            f"{path}: member names are the AWS CLI's (PascalCase, as aws kafka {_cli_name(operation)} "
            f"--cli-input-yaml takes them), not the REST body's: {first} -> {first[:1].upper() + first[1:]}",
        )
    return document


def _cli_name(operation: str) -> str:
    return "".join(f"-{ch.lower()}" if ch.isupper() else ch for ch in operation).lstrip("-")


# ----- commands ---------------------------------------------------------------------------------------------------


def _create(ctx: _Context) -> int:
    request = read_request(ctx.args.file, "CreateReplicator", ctx.api)
    if ctx.args.name:
        request["ReplicatorName"] = ctx.args.name
    created = ctx.api.call("create_replicator", **request)
    # Printed before any waiting, so a pipeline has the ARN even when the wait times out.
    ctx.emit(created)
    sys.stdout.flush()
    if ctx.args.wait:
        wait_for_state(ctx.api, created["ReplicatorArn"], str(created.get("ReplicatorName")), "RUNNING",
                       ctx.args.timeout)  # fmt: skip
    return EXIT_OK


def _list(ctx: _Context) -> int:
    replicators = list(list_all(ctx.api, ctx.args.page_size, ctx.args.name_prefix))
    ctx.emit({"Replicators": replicators}, _list_tables)
    return EXIT_OK


def _describe(ctx: _Context) -> int:
    ctx.emit(ctx.api.call("describe_replicator", ReplicatorArn=ctx.arn()))
    return EXIT_OK


def _update(ctx: _Context) -> int:
    request = read_request(ctx.args.file, "UpdateReplicationInfo", ctx.api)
    arn = ctx.arn()
    if request.get("ReplicatorArn") not in (None, arn):
        raise CliError(EXIT_VALIDATION, f"{ctx.args.file}: ReplicatorArn {request['ReplicatorArn']} is not {arn}")
    request["ReplicatorArn"] = arn
    partial = _partial_members(ctx.api, request)
    if partial or not request.get("CurrentVersion"):
        current = ctx.api.call("describe_replicator", ReplicatorArn=arn)
        request.setdefault("CurrentVersion", current["CurrentVersion"])
        infos = current.get("ReplicationInfoList") or [{}]
        for member, missing in partial.items():
            # What the file leaves out keeps its current value: boto3 requires every member of these.
            now = infos[0].get(member) or {}
            request[member].update({name: now[name] for name in missing if name in now})
    ctx.emit(ctx.api.call("update_replication_info", **request))
    sys.stdout.flush()
    if ctx.args.wait:
        wait_for_state(ctx.api, arn, ctx.args.replicator, "RUNNING", ctx.args.timeout)
    return EXIT_OK


def _partial_members(api: ApiClient, request: dict[str, Any]) -> dict[str, list[str]]:
    """The members of the request's TopicReplication and ConsumerGroupReplication it leaves out."""
    shape = api.kafka.meta.service_model.operation_model("UpdateReplicationInfo").input_shape
    partial: dict[str, list[str]] = {}
    for member in ("TopicReplication", "ConsumerGroupReplication"):
        given = request.get(member)
        if isinstance(given, dict):
            missing = [name for name in shape.members[member].members if name not in given]
            if missing:
                partial[member] = missing
    return partial


def _delete(ctx: _Context) -> int:
    arn = ctx.arn()
    ctx.emit(ctx.api.call("delete_replicator", ReplicatorArn=arn))
    sys.stdout.flush()
    if ctx.args.wait:
        wait_for_state(ctx.api, arn, ctx.args.replicator, DELETED, ctx.args.timeout)
    return EXIT_OK


def _wait(ctx: _Context) -> int:
    arn = ctx.arn()
    final = wait_for_state(
        ctx.api, arn, ctx.args.replicator, ctx.args.state, ctx.args.timeout, ignore_failed=ctx.args.ignore_failed
    )
    if final is not None:
        ctx.emit(final)
    return EXIT_OK


def _tag(ctx: _Context) -> int:
    tags: dict[str, str] = {}
    for item in ctx.args.tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(EXIT_USAGE, f"tag {item!r} is not KEY=VALUE")
        tags[key] = value
    arn = ctx.arn()
    ctx.api.call("tag_resource", ResourceArn=arn, Tags=tags)
    ctx.emit(ctx.api.call("list_tags_for_resource", ResourceArn=arn))
    return EXIT_OK


def _untag(ctx: _Context) -> int:
    arn = ctx.arn()
    ctx.api.call("untag_resource", ResourceArn=arn, TagKeys=list(ctx.args.keys))
    ctx.emit(ctx.api.call("list_tags_for_resource", ResourceArn=arn))
    return EXIT_OK


def _tags(ctx: _Context) -> int:
    ctx.emit(ctx.api.call("list_tags_for_resource", ResourceArn=ctx.arn()))
    return EXIT_OK


def _extension_path(arn: str, *parts: str) -> str:
    return "/".join(["/replication/v1/replicators", quote(arn, safe=""), *(quote(p, safe="") for p in parts)])


def _metrics(ctx: _Context) -> int:
    ctx.emit(ctx.api.request("GET", _extension_path(ctx.arn(), "metrics")), _metrics_tables)
    return EXIT_OK


def _translate(ctx: _Context) -> int:
    params = {"topic": ctx.args.topic, "partition": ctx.args.partition, "offset": ctx.args.offset}
    ctx.emit(ctx.api.request("GET", _extension_path(ctx.arn(), "offset-translation"), params=params))
    return EXIT_OK


def _run_operation(
    ctx: _Context,
    collection: str,
    *,
    id_key: str,
    operation_id: str | None,
    start_body: Callable[[], dict[str, Any]],
    label: str,
) -> dict[str, Any] | None:
    """Start a long operation (or look up the one named) and follow it to SUCCEEDED or FAILED.

    Returns its last status, or None when --no-wait printed the started one; FAILED exits with EXIT_FAILED.
    """
    arn = ctx.arn()
    if operation_id:
        status = ctx.api.request("GET", _extension_path(arn, collection, operation_id))
    else:
        status = ctx.api.request("POST", _extension_path(arn, collection), body=start_body())
        if ctx.args.no_wait:
            ctx.emit(status)
            return None
    path = _extension_path(arn, collection, status[id_key])
    status = follow(
        f"{label.lower()} {status[id_key]}",
        lambda: ctx.api.request("GET", path),
        lambda s: (str(s["state"]), s.get("error") or s.get("progress")),
        lambda state: state in ("SUCCEEDED", "FAILED"),
        ctx.args.timeout,
        first=status,
    )
    ctx.emit(status)
    if status["state"] == "FAILED":
        raise CliError(EXIT_FAILED, f"{label}Failed: {status.get('error') or 'no reason given'}")
    return dict(status)


def _failover(ctx: _Context) -> int:
    def start_body() -> dict[str, Any]:
        if not ctx.args.groups:
            raise CliError(EXIT_USAGE, "failover: --group is required to start a failover (or --operation-id)")
        body: dict[str, Any] = {"consumerGroups": ctx.args.groups}
        if ctx.args.grace_period is not None:
            body["gracePeriodSeconds"] = ctx.args.grace_period
        if ctx.args.failover_timeout is not None:
            body["timeoutSeconds"] = ctx.args.failover_timeout
        return body

    _run_operation(
        ctx,
        "failover",
        id_key="operationId",
        operation_id=ctx.args.operation_id,
        start_body=start_body,
        label="Failover",
    )
    return EXIT_OK


def _audit(ctx: _Context) -> int:
    def start_body() -> dict[str, Any]:
        if not ctx.args.topic:
            raise CliError(EXIT_USAGE, "audit: --topic is required to start an audit (or --audit-id)")
        wanted = {
            "topic": ctx.args.topic,
            "partition": ctx.args.partition,
            "fromOffset": ctx.args.from_offset,
            "toOffset": ctx.args.to_offset,
        }
        return {key: value for key, value in wanted.items() if value is not None}

    status = _run_operation(
        ctx, "audits", id_key="auditId", operation_id=ctx.args.audit_id, start_body=start_body, label="Audit"
    )
    if status is not None and not status.get("consistent"):
        raise CliError(EXIT_DIFFERENCES, "AuditDifferences: the copy differs from its source (see partitions)")
    return EXIT_OK


_HANDLERS: dict[str, Callable[[_Context], int]] = {
    "create": _create,
    "list": _list,
    "describe": _describe,
    "update": _update,
    "delete": _delete,
    "wait": _wait,
    "tag": _tag,
    "untag": _untag,
    "tags": _tags,
    "metrics": _metrics,
    "translate-offsets": _translate,
    "failover": _failover,
    "audit": _audit,
}


# ----- waiting ----------------------------------------------------------------------------------------------------


def wait_for_state(
    api: ApiClient, arn: str, label: str, target: str, timeout: float, *, ignore_failed: bool = False
) -> dict[str, Any] | None:
    """Poll DescribeReplicator until the replicator is in ``target`` (DELETED: Describe answers NotFound); the
    last description (None once deleted). A state from which ``target`` cannot come ends the wait (exit 8)."""

    def describe() -> dict[str, Any] | None:
        try:
            return api.call("describe_replicator", ReplicatorArn=arn)
        except ApiError as exc:
            if exit_code_of(exc) == EXIT_NOT_FOUND:
                return None
            raise

    def state_of(described: dict[str, Any] | None) -> tuple[str, str | None]:
        if described is None:
            return DELETED, None
        info = described.get("StateInfo") or {}
        detail = ": ".join(str(info[k]) for k in ("Code", "Message") if info.get(k)) or None
        return str(described["ReplicatorState"]), detail

    def hopeless(state: str) -> bool:
        if state == DELETED:
            return target != DELETED
        if state == "DELETING":
            return target not in ("DELETING", DELETED)
        return state == "FAILED" and target not in ("FAILED", "DELETING", DELETED) and not ignore_failed

    final: dict[str, Any] | None = follow(
        label, describe, state_of, lambda state: state == target or hopeless(state), timeout
    )
    state, detail = state_of(final)
    if state == target:
        return final
    if state == DELETED:
        raise CliError(EXIT_NOT_FOUND, f"NotFoundException: {label} was deleted while waiting for {target}")
    raise CliError(EXIT_FAILED, f"ReplicatorFailed: {label} is {state} while waiting for {target}"
                                + (f": {detail}" if detail else ""))  # fmt: skip


def follow(
    label: str,
    fetch: Callable[[], Any],
    state_of: Callable[[Any], tuple[str, str | None]],
    finished: Callable[[str], bool],
    timeout: float,
    *,
    first: Any = _UNSET,
) -> Any:
    """Poll ``fetch`` with backoff until ``finished(state)``; show each state on standard error (a live line on a
    terminal, a plain line per change otherwise). Raises ``CliError`` (exit 7) at the deadline. After a first
    answer, errors a retry cures (throttling, 5xx, a dropped connection) are shown and retried."""
    started = time.monotonic()
    deadline = started + timeout
    delay = FIRST_POLL_SECONDS
    with _StatusLine(label, started) as line:
        current = fetch() if first is _UNSET else first
        while True:
            state, detail = state_of(current)
            line.show(state, detail)
            if finished(state):
                line.finish()
                return current
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CliError(EXIT_TIMEOUT, f"Timeout: {label} still {state} after {timeout:g}s")
                line.sleep(min(delay, remaining))
                delay = min(delay * 1.5, MAX_POLL_SECONDS)
                try:
                    current = fetch()
                    break
                except ApiError as exc:
                    if exc.status not in TRANSIENT_STATUSES:
                        raise
                    line.show(state, f"retrying after {exc.code}: {exc.message}")


class _StatusLine:
    """Progress on standard error: rich's live status line on a terminal, a plain line per change otherwise."""

    def __init__(self, label: str, started: float) -> None:
        self.label = label
        self.started = started
        self.shown: tuple[str, str | None] | None = None
        self.status: Any = None  # rich's Status while it is live
        self.console: Any = None

    def __enter__(self) -> _StatusLine:
        if sys.stderr.isatty():
            from rich.console import Console  # noqa: PLC0415 (only a terminal needs it)

            self.console = Console(stderr=True, highlight=False)
            self.status = self.console.status(self.label)
            self.status.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.status is not None:
            self.status.stop()

    def _text(self) -> str:
        state, detail = self.shown or ("?", None)
        elapsed = time.monotonic() - self.started
        return f"{self.label}: {state} after {elapsed:.0f}s" + (f" ({detail})" if detail else "")

    def show(self, state: str, detail: str | None) -> None:
        changed = (state, detail) != self.shown
        self.shown = (state, detail)
        if self.status is not None:
            from rich.text import Text  # noqa: PLC0415

            self.status.update(Text(self._text()))
        elif changed:
            print(self._text(), file=sys.stderr, flush=True)

    def sleep(self, seconds: float) -> None:
        if self.status is None:
            time.sleep(seconds)
            return
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(0.25, left))  # the elapsed time ticks on the live line
            if self.shown is not None:
                self.show(*self.shown)

    def finish(self) -> None:
        """On a terminal, the live line becomes a lasting one."""
        if self.status is not None:
            self.status.stop()
            self.status = None
            self.console.print(self._text(), markup=False)


# ----- output -----------------------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """JSON's and YAML's types only: timestamps as ISO 8601 text."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def emit(document: dict[str, Any], output: str, tables: Callable[[dict[str, Any]], list[Any]]) -> None:
    document = plain(document)
    if output == "json":
        print(json.dumps(document, indent=2))
    elif output == "yaml":
        import yaml  # noqa: PLC0415

        print(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), end="")
    else:
        from rich.console import Console  # noqa: PLC0415

        # Off a terminal (a CI log, a pipe), rows stay whole whatever their length: rich would fold at 80 columns.
        wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 4096
        console = Console(width=wide, highlight=False, soft_wrap=False)
        for table in tables(document):
            console.print(table)


def _cell(value: Any) -> Any:
    from rich.text import Text  # noqa: PLC0415

    if value is None:
        return Text("-")
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return Text(", ".join(str(v) for v in value))
    if isinstance(value, dict | list):
        return Text(json.dumps(value, separators=(",", ":")))
    return Text(str(value))


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for index, inner in enumerate(value):
            yield from _flatten(inner, f"{prefix}[{index}]")
    else:
        yield prefix, value


def _key_value_tables(document: dict[str, Any]) -> list[Any]:
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in _flatten(document):
        table.add_row(Text(key), _cell(value))
    return [table]


def _rows_table(title: str | None, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title)
    for header, _ in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for _, key in columns))
    return table


def _list_tables(document: dict[str, Any]) -> list[Any]:
    columns = [
        ("Name", "ReplicatorName"),
        ("State", "ReplicatorState"),
        ("Version", "CurrentVersion"),
        ("Created", "CreationTime"),
        ("ARN", "ReplicatorArn"),
    ]
    return [_rows_table(None, columns, document.get("Replicators", []))]


def _metrics_tables(document: dict[str, Any]) -> list[Any]:
    summary = {key: document.get(key) for key in ("replicatorName", "replicatorState", "stateInfo", "totals")}
    columns = [
        ("Topic", "sourceTopic"),
        ("Partition", "partition"),
        ("Health", "health"),
        ("Lag (records)", "lagRecords"),
        ("Lag (s)", "lagSeconds"),
        ("Copied", "recordsCopied"),
        ("Bytes/s", "bytesPerSecond"),
        ("Owner", "owner"),
    ]
    return [*_key_value_tables(summary), _rows_table("partitions", columns, document.get("partitions") or [])]
