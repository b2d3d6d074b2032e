"""``ferry usage``: usage for chargeback (records, bytes, replicator-hours, partition-hours) from the API.

    ferry usage --endpoint-url URL --from 2026-01-01 --to 2026-02-01 [--granularity HOUR|DAY]
                [--replicator-arn ARN] [--output table|json|csv]

Requests are signed like ``ferry audit``'s (SigV4 with the AWS CLI's credentials chain, service ``kafka``), so
each caller sees their own account's usage (``api/usage.py``, docs/usage.md). ``--output csv`` prints the API's
CSV as it came (one row per period and replicator); ``json`` the whole report; ``table`` (the default) one line
per period and replicator and the totals.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import httpx

from cli.audit import signed_client

COMMAND = "ferry usage"


def add_commands(sub: Any) -> None:
    usage = sub.add_parser("usage", help="usage for chargeback: records, bytes, replicator- and partition-hours")
    usage.add_argument("--endpoint-url", default=os.environ.get("FERRY_ENDPOINT_URL"), help="the Ferry API")
    usage.add_argument("--region", default=None, help="signing region (default: AWS_REGION or the profile's)")
    usage.add_argument("--from", dest="start", required=True, help="start, ISO 8601 with a zone, or a date (UTC)")
    usage.add_argument("--to", dest="end", required=True, help="end (exclusive), ISO 8601 with a zone, or a date")
    usage.add_argument("--granularity", choices=("HOUR", "DAY"), default="DAY", type=str.upper)
    usage.add_argument("--replicator-arn", help="only this replicator (also one deleted since)")
    usage.add_argument("--output", choices=("table", "json", "csv"), default="table")


def _refusal(response: httpx.Response) -> str:
    try:
        message = response.json().get("message")
    except ValueError:
        message = response.text[:500]
    kind = response.headers.get("x-amzn-ErrorType", "")
    return f"{COMMAND}: {response.status_code} {kind} {message or response.reason_phrase}".replace("  ", " ")


def _table(report: dict[str, Any]) -> str:
    header = ("period", "replicator", "records", "bytes", "replicator-h", "partition-h")
    lines = [
        (
            row["periodStart"],
            row["replicatorName"],
            str(row["recordsReplicated"]),
            str(row["bytesReplicated"]),
            f"{row['replicatorHours']:.3f}",
            f"{row['partitionHours']:.3f}",
        )
        for row in report["usage"]
    ]
    total = report["total"]
    lines.append(
        (
            "total",
            f"account {report['accountId']}",
            str(total["recordsReplicated"]),
            str(total["bytesReplicated"]),
            f"{total['replicatorHours']:.3f}",
            f"{total['partitionHours']:.3f}",
        )
    )
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = []
    for line in [header, *lines]:
        cells = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(line)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def run(args: Any) -> int:
    if not args.endpoint_url:
        print(f"{COMMAND}: --endpoint-url (or FERRY_ENDPOINT_URL) is required", file=sys.stderr)
        return 2
    params = {"from": args.start, "to": args.end, "granularity": args.granularity}
    if args.replicator_arn:
        params["replicatorArn"] = args.replicator_arn
    if args.output == "csv":
        params["format"] = "csv"
    try:
        with signed_client(args.endpoint_url, args.region, COMMAND) as client:
            response = client.get("/replication/v1/usage", params=params)
    except SystemExit as stop:
        print(stop.code, file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"{COMMAND}: {args.endpoint_url}: {exc}", file=sys.stderr)
        return 2
    if response.status_code >= 400:
        print(_refusal(response), file=sys.stderr)
        return 2
    if args.output == "csv":
        sys.stdout.write(response.text)
    elif args.output == "json":
        print(json.dumps(response.json(), indent=2))
    else:
        print(_table(response.json()))
    return 0
