"""The web console in headless Chromium: sign-in, the account's replicators, the detail page, create, update,
delete, failover preconditions, CSRF, read-only keys, escaping; each page photographed at desktop and phone size."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import botocore.exceptions
import httpx
import pytest
from playwright.sync_api import Page, expect
from redis import Redis
from sqlalchemy import Engine, delete, select, update

from cli.admin import revoke_access_key
from models.access_keys import IssuedKey
from models.db import make_async_engine
from models.fleet_reports import METRICS_KEY, STATUS_KEY, PartitionReport, StatusField
from models.replicator import ReplicatorRow
from models.settings import FerrySettings
from models.usage_store import UsageIncrement, add_usage
from tests.api.conftest import create_request, kafka_client

from .conftest import capture, issue, sign_in


@pytest.fixture(autouse=True)
def _remove_this_tests_replicators(unique: str, db_engine: Engine) -> Iterator[None]:
    """Delete the rows a test created (every name it uses contains its ``unique`` value) once it is done."""
    yield
    with db_engine.begin() as connection:
        connection.execute(delete(ReplicatorRow).where(ReplicatorRow.name.contains(unique, autoescape=True)))


def detail_url(api_url: str, arn: str, action: str = "") -> str:
    return f"{api_url}/console/replicator{action}?arn={quote(arn, safe='')}"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


def test_sign_in_list_and_detail(
    page: Page, api_url: str, key: IssuedKey, kafka: Any, clusters: dict[str, Any], unique: str, artifacts: Path
) -> None:
    created = kafka.create_replicator(**create_request(f"{unique}-a", clusters))
    page.goto(f"{api_url}/console/replicators")
    expect(page).to_have_url(re.compile(r".*/console/sign-in$"))  # not signed in yet
    capture(page, artifacts, "sign-in")

    sign_in(page, api_url, key)
    expect(page.get_by_role("heading", name="Replicators")).to_be_visible()
    row = page.locator("#replicator-rows tr", has_text=f"{unique}-a")
    expect(row).to_contain_text("CREATING")
    expect(page.get_by_text(f"account {key.account_id}")).to_be_visible()
    capture(page, artifacts, "list")

    row.get_by_role("link").click()
    expect(page.get_by_role("heading", name=f"{unique}-a")).to_be_visible()
    expect(page.locator("#state")).to_have_text("CREATING")
    expect(page.get_by_text(created["ReplicatorArn"])).to_be_visible()
    expect(page.get_by_text("orders.*, payments")).to_be_visible()
    # The live section is polled: a swap keeps the state and feeds the charts their first reading.
    with page.expect_response(lambda response: "/console/replicator/live" in response.url) as polled:
        pass
    assert polled.value.status == 200
    expect(page.locator("#state")).to_have_text("CREATING")
    capture(page, artifacts, "detail")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r".*/console/sign-in$"))
    page.goto(f"{api_url}/console/replicators")
    expect(page).to_have_url(re.compile(r".*/console/sign-in$"))


def test_session_cookie_is_http_only_strict_and_expires(page: Page, api_url: str, key: IssuedKey) -> None:
    sign_in(page, api_url, key)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "ferry_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    assert cookie["expires"] > 0  # a session with an end, not one that lives as long as the browser


def test_wrong_secret_is_refused(page: Page, api_url: str, key: IssuedKey) -> None:
    page.goto(f"{api_url}/console/sign-in")
    page.locator("[name=access_key_id]").fill(key.access_key_id)
    page.locator("[name=secret_access_key]").fill(
        key.secret_access_key[:-1] + ("A" if key.secret_access_key[-1] != "A" else "B")
    )
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.goto(f"{api_url}/console/replicators")
    expect(page).to_have_url(re.compile(r".*/console/sign-in$"))


def test_revoked_key_is_signed_out(page: Page, api_url: str, test_settings: FerrySettings, account: str) -> None:
    doomed = issue(test_settings, account)
    sign_in(page, api_url, doomed)
    # The command line's revocation, as an operator runs it (on a thread: it runs an event loop of its own).
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, revoke_access_key(test_settings, doomed.access_key_id)).result()
    # The API forgets the key when PostgreSQL's notification reaches it (docs/security.md): within moments of the
    # commit, not at it, so the next page may still be served. A second is generous; once signed out, it stays so.
    deadline = time.monotonic() + 1.0
    while True:
        page.goto(f"{api_url}/console/replicators")
        if page.url.endswith("/console/sign-in"):
            break
        assert time.monotonic() < deadline, "the revoked key's session was still served a second after revocation"
    page.goto(f"{api_url}/console/replicators")
    expect(page).to_have_url(re.compile(r".*/console/sign-in$"))


def test_posts_without_the_csrf_token_change_nothing(
    api_url: str, key: IssuedKey, kafka: Any, clusters: dict[str, Any], unique: str
) -> None:
    arn = kafka.create_replicator(**create_request(f"{unique}-c", clusters))["ReplicatorArn"]
    with httpx.Client(base_url=api_url, timeout=30) as browser:
        token = csrf_of(browser.get("/console/sign-in").text)
        refused = browser.post(
            "/console/sign-in", data={"access_key_id": key.access_key_id, "secret_access_key": key.secret_access_key}
        )
        assert refused.status_code == 403
        signed_in = browser.post(
            "/console/sign-in",
            data={"access_key_id": key.access_key_id, "secret_access_key": key.secret_access_key, "csrf_token": token},
        )
        assert signed_in.status_code == 303
        page = browser.get(detail_url("", arn, "/delete"))
        assert page.status_code == 200
        name = f"{unique}-c"
        for token_sent in (None, token, "forged"):  # the sign-in page's token is not the new session's
            data = {"confirm_name": name}
            if token_sent:
                data["csrf_token"] = token_sent
            assert browser.post(detail_url("", arn, "/delete"), data=data).status_code == 403
        # The same post with the page's own token works: what was refused was the token only.
        kept = kafka.describe_replicator(ReplicatorArn=arn)
        assert kept["ReplicatorState"] == "CREATING"
        deleted = browser.post(
            detail_url("", arn, "/delete"), data={"confirm_name": name, "csrf_token": csrf_of(page.text)}
        )
        assert deleted.status_code == 303
    assert kafka.describe_replicator(ReplicatorArn=arn)["ReplicatorState"] == "DELETING"


def test_create_form_shows_the_apis_error_and_creates_nothing(
    page: Page, api_url: str, key: IssuedKey, kafka: Any, clusters: dict[str, Any], unique: str, artifacts: Path
) -> None:
    sign_in(page, api_url, key)
    page.get_by_role("link", name="Create replicator").click()
    page.locator("[name=name]").fill(f"{unique}-bad")
    page.locator("[name=source_bootstrap]").fill(clusters["source_bootstrap"])
    page.locator("[name=target_bootstrap]").fill(clusters["target_bootstrap"])
    page.locator("[name=topics]").fill("orders\n(?<=x)payments")  # a lookbehind: RE2 cannot run it
    capture(page, artifacts, "create")
    page.get_by_role("button", name="Create").click()

    wire = create_request(
        f"{unique}-bad",
        {**clusters, "source_id": "source", "target_id": "target"},
        ReplicationInfoList=[
            {
                "SourceKafkaClusterId": "source",
                "TargetKafkaClusterId": "target",
                "TargetCompressionType": "NONE",
                "TopicReplication": {"TopicsToReplicate": ["orders", "(?<=x)payments"]},
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": [".*"]},
            }
        ],
    )
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        kafka.create_replicator(**wire)
    api_message = refused.value.response["Error"]["Message"]
    expect(page.locator("#form-error")).to_have_text(api_message)
    expect(page.locator(".field-error")).to_have_text(api_message)  # next to the topics field
    expect(page.locator("[name=topics]")).to_have_value("orders\n(?<=x)payments")  # nothing typed is lost
    capture(page, artifacts, "create-error")
    assert kafka.list_replicators(ReplicatorNameFilter=unique)["Replicators"] == []


def test_create_update_topics_and_delete(
    page: Page, api_url: str, key: IssuedKey, kafka: Any, clusters: dict[str, Any], unique: str, artifacts: Path
) -> None:
    sign_in(page, api_url, key)
    page.goto(f"{api_url}/console/replicators/new")
    page.locator("[name=name]").fill(f"{unique}-new")
    page.locator("[name=source_bootstrap]").fill(clusters["source_bootstrap"])
    page.locator("[name=target_bootstrap]").fill(clusters["target_bootstrap"])
    page.locator("[name=topics]").fill("orders.*")
    page.locator("[name=topics_exclude]").fill("orders-internal")
    page.locator("[name=naming]").select_option("IDENTICAL")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name=f"{unique}-new")).to_be_visible()
    (summary,) = kafka.list_replicators(ReplicatorNameFilter=f"{unique}-new")["Replicators"]
    arn = summary["ReplicatorArn"]
    described = kafka.describe_replicator(ReplicatorArn=arn)
    topics = described["ReplicationInfoList"][0]["TopicReplication"]
    assert topics["TopicsToReplicate"] == ["orders.*"]
    assert topics["TopicsToExclude"] == ["orders-internal"]
    assert topics["TopicNameConfiguration"]["Type"] == "IDENTICAL"

    page.get_by_role("link", name="Update topics").click()
    expect(page.locator("[name=topics]")).to_have_value("orders.*")
    page.locator("[name=topics]").fill("orders.*\npayments")
    capture(page, artifacts, "topics")
    page.get_by_role("button", name="Update").click()
    expect(page.get_by_role("heading", name=f"{unique}-new")).to_be_visible()
    updated = kafka.describe_replicator(ReplicatorArn=arn)["ReplicationInfoList"][0]["TopicReplication"]
    assert updated["TopicsToReplicate"] == ["orders.*", "payments"]

    page.get_by_role("link", name="Failover").click()
    preconditions = page.locator("#preconditions")
    expect(preconditions).to_contain_text("The replicator is not DELETING or FAILED")
    expect(preconditions).to_contain_text("lag unknown")  # no worker reports it: not shown as caught up
    capture(page, artifacts, "failover")
    page.locator("[name=groups]").fill("billing\nbilling")  # repeats are ignored, as the API ignores them
    page.get_by_role("button", name="Start failover").click()
    expect(page.get_by_role("heading", name="Failover PENDING")).to_be_visible()
    expect(page.locator(".facts")).to_contain_text("billing")
    capture(page, artifacts, "failover-started")

    page.goto(detail_url(api_url, arn))
    page.get_by_role("link", name="Delete").click()
    page.locator("[name=confirm_name]").fill("not its name")
    page.get_by_role("button", name="Delete replicator").click()
    expect(page.locator("#form-error")).to_contain_text("Type the replicator's name")
    assert kafka.describe_replicator(ReplicatorArn=arn)["ReplicatorState"] != "DELETING"
    capture(page, artifacts, "delete")
    page.locator("[name=confirm_name]").fill(f"{unique}-new")
    page.get_by_role("button", name="Delete replicator").click()
    expect(page).to_have_url(re.compile(r".*/console/replicators$"))
    assert kafka.describe_replicator(ReplicatorArn=arn)["ReplicatorState"] == "DELETING"


def test_another_accounts_replicator_is_not_visible(
    page: Page, api_url: str, key: IssuedKey, test_settings: FerrySettings, clusters: dict[str, Any], unique: str
) -> None:
    other = kafka_client(api_url, issue(test_settings, "8" + key.account_id[1:]))
    theirs = other.create_replicator(**create_request(f"{unique}-theirs", clusters))["ReplicatorArn"]
    sign_in(page, api_url, key)
    expect(page.locator("#replicator-rows")).to_contain_text("No replicators in this account yet")
    response = page.goto(detail_url(api_url, theirs))
    assert response is not None and response.status == 404
    expect(page.get_by_role("alert")).to_contain_text("does not exist")
    response = page.goto(detail_url(api_url, theirs, "/delete"))
    assert response is not None and response.status == 404
    assert other.describe_replicator(ReplicatorArn=theirs)["ReplicatorState"] == "CREATING"


def test_read_only_key_changes_nothing(
    page: Page,
    api_url: str,
    test_settings: FerrySettings,
    account: str,
    kafka: Any,
    clusters: dict[str, Any],
    unique: str,
) -> None:
    arn = kafka.create_replicator(**create_request(f"{unique}-ro", clusters))["ReplicatorArn"]
    reader = issue(test_settings, account, read_only=True)
    sign_in(page, api_url, reader)
    expect(page.locator(".who")).to_contain_text("read-only")
    expect(page.get_by_role("link", name="Create replicator")).to_have_count(0)
    page.goto(detail_url(api_url, arn, "/delete"))
    token = csrf_of(page.content())
    refused = page.request.post(
        detail_url(api_url, arn, "/delete"), form={"csrf_token": token, "confirm_name": f"{unique}-ro"}
    )
    assert refused.status == 403
    assert "read-only" in refused.text()
    assert kafka.describe_replicator(ReplicatorArn=arn)["ReplicatorState"] == "CREATING"


def test_hostile_text_is_escaped(
    page: Page,
    api_url: str,
    key: IssuedKey,
    kafka: Any,
    clusters: dict[str, Any],
    unique: str,
    db_engine: Engine,
    artifacts: Path,
) -> None:
    hostile = '<script>window.injected = 1</script><img src="x" onerror="window.injected = 2">'
    arn = kafka.create_replicator(**create_request(f"{unique}-x", clusters, Description=hostile))["ReplicatorArn"]
    # StateInfo is what workers write from what clusters answer: a topic or error text can carry anything.
    with db_engine.begin() as connection:
        connection.execute(
            update(ReplicatorRow)
            .where(ReplicatorRow.arn == arn)
            .values(state="FAILED", state_info={"code": "CLUSTER_UNREACHABLE", "message": hostile})
        )
    sign_in(page, api_url, key)
    page.goto(detail_url(api_url, arn))
    expect(page.locator("#description")).to_have_text(hostile)
    expect(page.locator("#state-info")).to_contain_text(hostile)  # shown as text, character for character
    assert page.locator("#state-info script, #state-info img, #description script, #description img").count() == 0
    assert page.evaluate("window.injected") is None
    # The name the create form echoes back is escaped too (names cannot hold "<", so the form's refusal shows it).
    page.goto(f"{api_url}/console/replicators/new")
    page.locator("[name=name]").fill(hostile)
    page.get_by_role("button", name="Create").click()
    expect(page.locator("[name=name]")).to_have_value(hostile)
    assert page.evaluate("window.injected") is None
    capture(page, artifacts, "escaped")


def test_live_readings_fill_the_tables_and_charts(
    page: Page,
    api_url: str,
    key: IssuedKey,
    kafka: Any,
    clusters: dict[str, Any],
    unique: str,
    db_engine: Engine,
    test_settings: FerrySettings,
    artifacts: Path,
) -> None:
    """What workers report to Redis (models/fleet_reports.py, written here as a worker writes it) reaches the list,
    the detail page's tables and, over successive polls, its charts."""
    arn = kafka.create_replicator(**create_request(f"{unique}-live", clusters))["ReplicatorArn"]
    with db_engine.connect() as connection:
        replicator_id = connection.execute(select(ReplicatorRow.id).where(ReplicatorRow.arn == arn)).scalar_one()
    redis = Redis.from_url(test_settings.redis_url)

    def report(records_per_second: float) -> None:
        now_ms = int(time.time() * 1000)
        reports = [
            PartitionReport(f"{unique}-orders", 0, f"src.{unique}-orders", "worker-1", 1, now_ms, "REPLICATING",
                            lag_records=5, latency_ms_max_recent=40.0, records_per_second=records_per_second,
                            bytes_per_second=records_per_second * 100, last_copied_timestamp_ms=now_ms - 500),
            PartitionReport(f"{unique}-orders", 1, f"src.{unique}-orders", "worker-1", 1, now_ms, "STALLED",
                            health_detail="no progress for 60 s", lag_records=7, latency_ms_max_recent=90.0,
                            records_per_second=1.0, last_copied_timestamp_ms=now_ms - 900),
        ]  # fmt: skip
        groups = {
            "billing": {
                "targetState": "Empty",
                "translationLagRecords": 3,
                "secondsSinceSync": 2.0,
                "error": None,
                "partitions": [
                    {
                        "topic": f"{unique}-orders",
                        "partition": 0,
                        "sourceOffset": 120,
                        "targetTopic": f"src.{unique}-orders",
                        "targetOffset": 118,
                        "maxReread": 0,
                        "status": "SYNCED",
                    },
                ],
            }
        }
        pipe = redis.pipeline()
        pipe.hset(METRICS_KEY.format(replicator_id=replicator_id), mapping={r.field_name: r.to_json() for r in reports})
        pipe.hset(
            STATUS_KEY.format(replicator_id=replicator_id),
            mapping={
                StatusField.GROUP_SYNC: json.dumps({"groupCount": 1, "failures": 0, "groups": groups}),
                StatusField.REPORTED_AT_MS: str(now_ms),
            },
        )
        pipe.expire(METRICS_KEY.format(replicator_id=replicator_id), 60)
        pipe.expire(STATUS_KEY.format(replicator_id=replicator_id), 60)
        pipe.execute()

    try:
        report(50.0)
        sign_in(page, api_url, key)
        row = page.locator("#replicator-rows tr", has_text=f"{unique}-live")
        expect(row).to_contain_text("12")  # lag: 5 + 7 records
        expect(row).to_contain_text("51.0 rec/s")
        expect(row).to_contain_text("(1 unhealthy)")
        row.get_by_role("link").click()
        topic = page.locator("#topics tr.topic", has_text=f"{unique}-orders")
        expect(topic).to_contain_text("2 (1 unhealthy)")
        expect(topic).to_contain_text("51.0")
        expect(page.locator("#partitions")).to_contain_text("STALLED")
        expect(page.locator("#groups")).to_contain_text(f"{unique}-orders:0 120 → src.{unique}-orders:118")
        report(80.0)  # the next poll reads this one: the chart gets a second point
        line = page.locator(f'[id="chart-{unique}-orders"] figure[data-metric="recordsPerSecond"]')
        expect(line.locator("figcaption")).to_have_text("records/s: 81", timeout=15_000)
        assert len(line.locator("polyline").get_attribute("points").split()) >= 2  # type: ignore[union-attr]
        capture(page, artifacts, "detail-live")
    finally:
        redis.delete(METRICS_KEY.format(replicator_id=replicator_id), STATUS_KEY.format(replicator_id=replicator_id))
        redis.close()


def test_usage_page_shows_the_accounts_usage_and_downloads_it_as_csv(
    page: Page,
    api_url: str,
    key: IssuedKey,
    kafka: Any,
    clusters: dict[str, Any],
    unique: str,
    test_settings: FerrySettings,
    db_engine: Engine,
    artifacts: Path,
) -> None:
    name = f"{unique}-usage"
    arn = kafka.create_replicator(**create_request(name, clusters))["ReplicatorArn"]
    with db_engine.connect() as connection:
        query = select(ReplicatorRow.id, ReplicatorRow.account_id).where(ReplicatorRow.arn == arn)
        row = connection.execute(query).one()
        replicator_id, account_id = str(row.id), row.account_id
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    # What a worker writes after copying (workers/fleet/usage.py), through the same store function.
    measured = UsageIncrement(replicator_id, hour, account_id, arn, name, records=123_456, bytes=7_654_321,
                              replicator_seconds=1800.0, partition_seconds=7200.0)  # fmt: skip

    async def record() -> None:
        engine = make_async_engine(test_settings)
        try:
            async with engine.begin() as conn:
                assert await add_usage(conn, f"console-test-{unique}", 1, [measured])
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:  # playwright's loop runs on this thread
        pool.submit(asyncio.run, record()).result()

    sign_in(page, api_url, key)
    page.get_by_role("link", name="Usage", exact=True).click()
    expect(page.get_by_role("heading", name="Usage")).to_be_visible()
    row_shown = page.locator("#usage-replicators tr", has_text=name)
    expect(row_shown).to_contain_text("123,456")
    expect(row_shown).to_contain_text("0.50")  # replicator-hours
    expect(row_shown).to_contain_text("2.00")  # partition-hours
    capture(page, artifacts, "usage")

    page.locator("[name=granularity]").select_option("HOUR")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#usage-periods")).to_contain_text(hour.isoformat().replace("+00:00", "Z"))

    answer = page.request.get(f"{api_url}/console/usage.csv?days=1&granularity=HOUR")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/csv")
    lines = answer.text().splitlines()
    assert lines[0].startswith("period_start,account_id,replicator_arn")
    assert any(arn in line and ",123456,7654321," in line for line in lines[1:]), lines
