"""``ferry audit``: compare a replicator's target with its source, from any machine that can reach the API.

    ferry audit --endpoint-url URL --replicator-arn ARN --topic T [--partition N] [--from-offset N]
                [--to-offset N] [--no-wait] [--timeout SECONDS]
    ferry audit --endpoint-url URL --replicator-arn ARN --audit-id ID      (an audit started before)

Requests are signed with SigV4 like the AWS CLI's (the same credentials chain: ``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``..., service ``kafka``, ``--region`` or ``AWS_REGION``). While the audit runs, its
progress goes to standard error; the final status (``api/audits.py``) is printed as JSON on standard output.
Exit status: 0 when the audit found the copy consistent, 1 when it found differences, 2 when it could not
run (or ``--no-wait``: 0 once started).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any
from urllib.parse import quote

import botocore.session
import httpx

from cli.api_client import KafkaSigV4

POLL_SECONDS = 2.0


def add_commands(sub: Any) -> None:
    audit = sub.add_parser("audit", help="compare a replicator's target with its source (through the API)")
    audit.add_argument("--endpoint-url", default=os.environ.get("FERRY_ENDPOINT_URL"), help="the Ferry API")
    audit.add_argument("--region", default=None, help="signing region (default: AWS_REGION or the profile's)")
    audit.add_argument("--replicator-arn", required=True)
    audit.add_argument("--topic", help="source topic to audit")
    audit.add_argument("--partition", type=int, help="one partition (default: every partition of the topic)")
    audit.add_argument("--from-offset", type=int, help="first source offset (default: the log start)")
    audit.add_argument("--to-offset", type=int, help="source offset to stop before (default: the current end)")
    audit.add_argument("--audit-id", help="follow an audit started before instead of starting one")
    audit.add_argument("--no-wait", action="store_true", help="print the started audit and return")
    audit.add_argument("--timeout", type=float, default=3600.0, help="give up waiting after this many seconds")


def signed_client(endpoint: str, region: str | None, command: str = "ferry audit") -> httpx.Client:
    """An HTTP client to the Ferry API whose requests are SigV4-signed with the AWS CLI's credentials chain."""
    session = botocore.session.get_session()
    credentials = session.get_credentials()
    if credentials is None:
        raise SystemExit(f"{command}: no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID/...)")
    region = region or os.environ.get("AWS_REGION") or session.get_config_variable("region") or "us-east-1"
    return httpx.Client(base_url=endpoint, timeout=30, auth=KafkaSigV4(credentials.get_frozen_credentials(), region))


def _answer(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any]
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:500]}
    if response.status_code >= 400:
        message = body.get("message") or body.get("Message") or response.reason_phrase
        raise SystemExit(f"ferry audit: {response.status_code} {body.get('__type', '')} {message}".strip())
    return body


def run(args: Any) -> int:
    if not args.endpoint_url:
        print("ferry audit: --endpoint-url (or FERRY_ENDPOINT_URL) is required", file=sys.stderr)
        return 2
    base = f"/replication/v1/replicators/{quote(args.replicator_arn, safe='')}/audits"
    try:
        with signed_client(args.endpoint_url, args.region) as client:
            if args.audit_id:
                status = _answer(client.get(f"{base}/{quote(args.audit_id, safe='')}"))
            else:
                if not args.topic:
                    print("ferry audit: --topic is required to start an audit", file=sys.stderr)
                    return 2
                request = {
                    "topic": args.topic,
                    "partition": args.partition,
                    "fromOffset": args.from_offset,
                    "toOffset": args.to_offset,
                }
                status = _answer(client.post(base, json={k: v for k, v in request.items() if v is not None}))
                if args.no_wait:
                    print(json.dumps(status, indent=2))
                    return 0
            status = _follow(client, f"{base}/{status['auditId']}", status, args.timeout)
    except SystemExit as stop:
        print(stop.code, file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"ferry audit: {args.endpoint_url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2))
    if status["state"] != "SUCCEEDED":
        return 2
    return 0 if status.get("consistent") else 1


def _follow(client: httpx.Client, path: str, status: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    shown = None
    while status["state"] in ("PENDING", "RUNNING"):
        line = status.get("error") or status.get("progress")
        if line and line != shown:
            print(f"{status['state']}: {line}", file=sys.stderr)
            shown = line
        if time.monotonic() > deadline:
            raise SystemExit(f"ferry audit: still {status['state']} after {timeout:g}s (audit {status['auditId']})")
        time.sleep(POLL_SECONDS)
        status = _answer(client.get(path))
    return status
