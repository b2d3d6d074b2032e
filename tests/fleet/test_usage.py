"""Usage for chargeback on real brokers and real workers (docs/usage.md): what the copiers copied is counted
exactly, across a worker's clean restart, kept in PostgreSQL (a flushed Redis changes nothing) and after the
replicator is deleted; per hour or per day, as JSON, CSV and through ``ferry usage``; each account sees its own.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine

from models.access_keys import IssuedKey
from models.db import make_async_engine
from models.settings import FerrySettings
from models.usage_store import UsageIncrement, add_usage
from tests.conftest import REGION, SigV4HttpxAuth, issue_key
from tests.fleet.conftest import Fleet, wait_until
from tests.fleet.test_fleet_lifecycle import create_request, create_topic, describe, produce

USAGE = "/replication/v1/usage"


@pytest.fixture(scope="module")
def redis_db(fleet_settings: FerrySettings) -> Iterator[str]:
    """A Redis database of this module's own (found empty and claimed), so flushing it disturbs no other test."""
    base = fleet_settings.redis_url.rsplit("/", 1)[0]
    claim = f"ferry-test-usage-{uuid.uuid4().hex}"
    for number in range(15, 7, -1):
        client = Redis.from_url(f"{base}/{number}")
        try:
            if client.dbsize() == 0 and client.set("ferry-test-claim", claim, nx=True):
                yield f"{base}/{number}"
                client.flushdb()
                return
        finally:
            client.close()
    pytest.skip("no free Redis database (8-15) for the usage test")


@pytest.fixture(scope="module")
def fleet_settings(fleet_settings: FerrySettings, redis_db: str) -> FerrySettings:
    # Its own Redis database, and usage stored every 2 s rather than 10 s so the test waits less.
    return FerrySettings(**{**fleet_settings.model_dump(), "redis_url": redis_db, "usage_flush_seconds": 2.0})


def usage(http: httpx.Client, **params: str) -> dict[str, Any]:
    response = http.get(USAGE, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def hours_around_now() -> dict[str, str]:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return {"from": (hour - timedelta(hours=1)).isoformat(), "to": (hour + timedelta(hours=2)).isoformat()}


def days_around_now() -> dict[str, str]:
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "from": (day - timedelta(days=1)).strftime("%Y-%m-%d"),
        "to": (day + timedelta(days=2)).strftime("%Y-%m-%d"),
    }


def replicator_total(http: httpx.Client, arn: str) -> dict[str, Any]:
    return usage(http, **hours_around_now(), granularity="HOUR", replicatorArn=arn)["total"]


def copied_by_current_copiers(http: httpx.Client, arn: str) -> dict[str, Any]:
    response = http.get(f"/replication/v1/replicators/{quote(arn, safe='')}/metrics")
    response.raise_for_status()
    totals: dict[str, Any] = response.json()["totals"]
    return totals


def ferry_usage(api: str, key: IssuedKey, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key.access_key_id, "AWS_SECRET_ACCESS_KEY": key.secret_access_key}
    env["AWS_REGION"] = REGION
    env.pop("AWS_PROFILE", None)
    return subprocess.run(
        [sys.executable, "-m", "cli", "usage", "--endpoint-url", api, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


@pytest.mark.slow
def test_usage_is_exact_across_a_restart_and_lives_in_postgresql(
    fleet: Fleet,
    fleet_http: httpx.Client,
    fleet_kafka: Any,
    fleet_api: str,
    fleet_key: IssuedKey,
    fleet_settings: FerrySettings,
    fleet_redis: Redis,
    unique: str,
    source_bootstrap: str,
    target_bootstrap: str,
) -> None:
    # The first worker stores nothing until it stops: what its SIGTERM stores is all there is.
    fleet.start_worker("us1", env={"FERRY_USAGE_FLUSH_SECONDS": "300"})
    topic = f"{unique}-u"
    asyncio.run(create_topic(source_bootstrap, topic, 2))
    asyncio.run(produce(source_bootstrap, topic, 300, 2, "first"))
    started = time.monotonic()
    arn = fleet_kafka.create_replicator(**create_request(unique, source_bootstrap, target_bootstrap, [topic]))[
        "ReplicatorArn"
    ]
    wait_until("RUNNING", lambda: describe(fleet_kafka, arn)["ReplicatorState"] == "RUNNING", 60)
    copied = wait_until(
        "the copier to report 300 records",
        lambda: (c := copied_by_current_copiers(fleet_http, arn))["recordsCopied"] == 300 and c,
        60,
    )
    assert replicator_total(fleet_http, arn)["recordsReplicated"] == 0  # not stored yet

    # 1. A clean stop (SIGTERM) stores everything: exactly the copier's records, and its bytes as it counts them.
    fleet.stop("us1")
    first = replicator_total(fleet_http, arn)
    assert first["recordsReplicated"] == 300
    assert first["bytesReplicated"] == copied["bytesCopied"] > 0
    assert first["replicatorHours"] > 0 and first["partitionHours"] > 0

    # 2. The restarted worker (storing every 2 s) adds only what it copies itself.
    fleet.start_worker("us2")
    asyncio.run(produce(source_bootstrap, topic, 200, 2, "second"))
    second_copy = wait_until(
        "the new copier to report the 200 new records",
        lambda: (c := copied_by_current_copiers(fleet_http, arn))["recordsCopied"] == 200 and c,
        90,
    )
    both = wait_until(
        "usage to show 500 records",
        lambda: (t := replicator_total(fleet_http, arn))["recordsReplicated"] >= 500 and t,
        30,
    )
    # A later flush (time run goes on being added) must not bring a late double count.
    later = wait_until(
        "a later flush",
        lambda: (t := replicator_total(fleet_http, arn))["replicatorHours"] > both["replicatorHours"] and t,
        30,
    )
    assert both["recordsReplicated"] == later["recordsReplicated"] == 500
    assert both["bytesReplicated"] == first["bytesReplicated"] + second_copy["bytesCopied"]
    elapsed_hours = (time.monotonic() - started) / 3600
    assert 0 < both["replicatorHours"] <= elapsed_hours
    assert 0 < both["partitionHours"] <= 2 * elapsed_hours

    # 3. Redis lost: the usage is PostgreSQL's, unchanged.
    fleet_redis.flushdb()
    lost = replicator_total(fleet_http, arn)
    assert (lost["recordsReplicated"], lost["bytesReplicated"]) == (500, both["bytesReplicated"])

    # 4. Per hour and per day agree; the account's totals include the replicator.
    hourly = usage(fleet_http, **hours_around_now(), granularity="HOUR", replicatorArn=arn)
    daily = usage(fleet_http, **days_around_now(), granularity="DAY", replicatorArn=arn)
    assert sum(r["recordsReplicated"] for r in hourly["usage"]) == 500
    assert [r["recordsReplicated"] for r in daily["usage"]] == [500]
    assert daily["usage"][0]["periodStart"].endswith("T00:00:00Z")
    assert all(r["periodStart"].endswith(":00:00Z") for r in hourly["usage"])
    assert sum(r["bytesReplicated"] for r in hourly["usage"]) == daily["total"]["bytesReplicated"]
    account = usage(fleet_http, **days_around_now(), granularity="DAY")
    assert arn in {r["replicatorArn"] for r in account["replicators"]}
    assert account["total"]["recordsReplicated"] >= 500
    assert account["accountId"] == fleet_key.account_id

    # 5. CSV, asked for by parameter or by Accept, and through the CLI.
    for response in (
        fleet_http.get(
            USAGE, params={**days_around_now(), "granularity": "DAY", "replicatorArn": arn, "format": "csv"}
        ),
        fleet_http.get(
            USAGE,
            params={**days_around_now(), "granularity": "DAY", "replicatorArn": arn},
            headers={"Accept": "text/csv"},
        ),
    ):
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [(r["replicator_arn"], int(r["records"]), int(r["bytes"])) for r in rows] == [
            (arn, 500, both["bytesReplicated"])
        ]
        assert list(rows[0]) == [
            "period_start", "account_id", "replicator_arn", "replicator_name", "records", "bytes",
            "replicator_hours", "partition_hours",
        ]  # fmt: skip
    days = days_around_now()
    cli_csv = ferry_usage(
        fleet_api, fleet_key, "--from", days["from"], "--to", days["to"], "--replicator-arn", arn, "--output", "csv"
    )
    assert cli_csv.returncode == 0, cli_csv.stderr
    assert [int(r["records"]) for r in csv.DictReader(io.StringIO(cli_csv.stdout))] == [500]
    table = ferry_usage(fleet_api, fleet_key, "--from", days["from"], "--to", days["to"], "--replicator-arn", arn)
    assert table.returncode == 0, table.stderr
    assert unique in table.stdout and "500" in table.stdout.splitlines()[-1]

    # 6. Another account sees none of it.
    other = issue_key(fleet_settings, "111122223333")
    with httpx.Client(base_url=fleet_api, timeout=30, auth=SigV4HttpxAuth(other)) as stranger:
        theirs = usage(stranger, **days_around_now(), granularity="DAY")
        assert theirs["usage"] == [] and theirs["total"]["recordsReplicated"] == 0
        assert usage(stranger, **days_around_now(), granularity="DAY", replicatorArn=arn)["usage"] == []

    # 7. Deleting the replicator keeps its usage (it is what gets billed).
    fleet_kafka.delete_replicator(ReplicatorArn=arn)

    def gone() -> bool:
        try:
            describe(fleet_kafka, arn)
        except fleet_kafka.exceptions.NotFoundException:
            return True
        return False

    wait_until("the replicator to be deleted", gone, 60)
    kept = replicator_total(fleet_http, arn)
    assert (kept["recordsReplicated"], kept["bytesReplicated"]) == (500, both["bytesReplicated"])


@pytest.mark.parametrize(
    ("params", "member"),
    [
        ({"to": "2026-01-02T00:00:00Z"}, "from"),
        ({"from": "yesterday", "to": "2026-01-02T00:00:00Z"}, "from"),
        ({"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00Z"}, "from"),  # no timezone
        ({"from": "2026-01-01T00:30:00Z", "to": "2026-01-02T00:00:00Z"}, "from"),  # not a whole hour
        ({"from": "2026-01-01T05:00:00Z", "to": "2026-01-02T00:00:00Z", "granularity": "DAY"}, "from"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),  # not after from
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "to"),  # 59 days by the hour
        ({"from": "2025-01-01", "to": "2026-03-01", "granularity": "DAY"}, "to"),  # 424 days
        ({"from": "2026-01-01", "to": "2026-01-02", "granularity": "WEEK"}, "granularity"),
        ({"from": "2026-01-01", "to": "2026-01-02", "format": "xml"}, "format"),
        ({"from": "0001-01-01T00:00:00+01:00", "to": "2026-01-02T00:00:00Z"}, "from"),  # before year 1 in UTC
    ],
)
def test_bad_queries_get_aws_style_400s(fleet_http: httpx.Client, params: dict[str, str], member: str) -> None:
    response = fleet_http.get(USAGE, params=params)
    assert response.status_code == 400, response.text
    assert response.headers["x-amzn-ErrorType"] == "BadRequestException"
    body = response.json()
    assert body["invalidParameter"] == member and body["message"].startswith(member), body


def test_unsigned_callers_are_refused(fleet_api: str) -> None:
    response = httpx.get(f"{fleet_api}{USAGE}", params={"from": "2026-01-01", "to": "2026-01-02"})
    assert response.status_code in (401, 403) and response.headers["x-amzn-ErrorType"]


def test_a_batch_sent_again_is_added_once(
    fleet_settings: FerrySettings, fleet_db: Engine, fleet_http: httpx.Client
) -> None:
    """A batch whose commit went unanswered comes again under its number: stored once, never twice."""
    replicator_id = str(uuid.uuid4())
    arn = f"arn:aws:kafka:{REGION}:000000000000:replicator/batch-test/{replicator_id}"
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    increment = UsageIncrement(replicator_id, hour, "000000000000", arn, "batch-test", records=7, bytes=70)
    writer = f"test/{uuid.uuid4().hex}"

    async def send(batch: int) -> bool:
        engine = make_async_engine(fleet_settings)
        try:
            async with engine.begin() as conn:
                return await add_usage(conn, writer, batch, [increment])
        finally:
            await engine.dispose()

    assert asyncio.run(send(1)) is True
    assert asyncio.run(send(1)) is False  # the same batch again
    assert asyncio.run(send(2)) is True
    total = replicator_total(fleet_http, arn)
    assert (total["recordsReplicated"], total["bytesReplicated"]) == (14, 140)
