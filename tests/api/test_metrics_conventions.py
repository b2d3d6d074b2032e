"""``GET /metrics`` follows Prometheus conventions and exports every series the dashboard and alert rules use.

A real API on a database of this module's own (so the worker heartbeat written here reaches no other test's
fleet), a replicator created through it, and its workers' reports written to Redis through
``models.fleet_reports``: the reports are the contract between workers and the API, so they are this test's input.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import promql_parser
import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from sqlalchemy import Connection, insert, select

from api.app import create_app
from api.metrics_exposition import _Families
from dev.scratch_database import scratch_database
from models.db import make_async_engine, make_sync_engine
from models.fleet import ReplicatorMetadata
from models.fleet_reports import METRICS_KEY, STATUS_KEY, PartitionReport, StatusField
from models.fleet_store import LoadSample, heartbeat, record_reconcile
from models.replicator import ReplicatorRow, ReplicatorState
from models.settings import FerrySettings
from tests.api.conftest import RunningServer, create_request, kafka_client
from tests.conftest import ACCOUNT, ROOT, SigV4HttpxAuth, issue_key
from tests.exposition import metric_value

MONITORING = ROOT / "deploy" / "monitoring"
LAG = 1_234_567
BYTES = 123_456_789_012
RECONCILE_SECONDS = 0.25
TRUNCATED = 7


@pytest.fixture(scope="module")
def scratch_settings(test_settings: FerrySettings) -> Iterator[FerrySettings]:
    with scratch_database(test_settings.database_url, "ferry_metrics") as url:
        yield test_settings.model_copy(update={"database_url": url})


@pytest.fixture(scope="module")
def monitored_api(scratch_settings: FerrySettings) -> Iterator[str]:
    with RunningServer(create_app(scratch_settings)) as server:
        yield server.url


@pytest.fixture(scope="module")
def redis_client(scratch_settings: FerrySettings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(scratch_settings.redis_url)
    yield client
    client.close()


@contextmanager
def database(settings: FerrySettings) -> Iterator[Connection]:
    engine = make_sync_engine(settings)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def scrape(url: str, settings: FerrySettings) -> httpx.Response:
    assert settings.metrics_token is not None
    token = settings.metrics_token.get_secret_value()
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def create_replicators(url: str, settings: FerrySettings, clusters: dict[str, Any], names: list[str]) -> list[str]:
    """Creates them through the API; their ids, in order."""
    kafka = kafka_client(url, issue_key(settings))
    arns = [kafka.create_replicator(**create_request(name, clusters))["ReplicatorArn"] for name in names]
    with database(settings) as conn:
        ids = dict(conn.execute(select(ReplicatorRow.arn, ReplicatorRow.id).where(ReplicatorRow.arn.in_(arns))).all())
    return [str(ids[arn]) for arn in arns]


def report_as_workers_do(client: redis.Redis, replicator_id: str) -> None:
    """Partition 0 replicating with a large lag, partition 1 after retention deleted records before their copy
    (in scope, the metadata unit also lists partition 2, which nobody reports), and the metadata unit's status."""
    now_ms = int(time.time() * 1000)
    common: dict[str, Any] = {"source_topic": "orders", "target_topic": "src.orders", "owner": "w-1", "epoch": 3}
    reports = [
        PartitionReport(
            **common,
            partition=0,
            reported_at_ms=now_ms,
            health="REPLICATING",
            records_copied=LAG * 3,
            bytes_copied=BYTES,
            next_source_offset=10,
            source_end_offset=10 + LAG,
            lag_records=LAG,
            latency_ms_max_recent=1500.0,
            last_copied_timestamp_ms=now_ms - 2000,
            records_per_second=250.0,
            bytes_per_second=256_000.0,
            errors={"FETCH_FAILED": 3, "AUTH_DENIED": 1},
        ),
        PartitionReport(
            **common,
            partition=1,
            reported_at_ms=now_ms,
            health="SOURCE_TRUNCATED",
            health_detail="retention deleted 7 offsets before they were copied",
            lag_records=0,
            truncated_offsets=TRUNCATED,
            errors={"SOURCE_TRUNCATED": 1},
        ),
    ]
    key = METRICS_KEY.format(replicator_id=replicator_id)
    client.hset(key, mapping={r.field_name: r.to_json() for r in reports})
    status = STATUS_KEY.format(replicator_id=replicator_id)
    group_sync = {
        "groupCount": 1,
        "failures": 2,
        "mode": "LEGACY",
        "groups": {"billing": {"translationLagRecords": 40}},
    }
    client.hset(
        status,
        mapping={
            StatusField.CLUSTER_PING: json.dumps({"src": 1, "tgt": 0}),
            StatusField.TOPICS: json.dumps({"orders": "src.orders"}),
            StatusField.TOPIC_ERRORS: json.dumps({}),
            StatusField.GROUP_SYNC: json.dumps(group_sync),
            StatusField.AUTH_FAILURES: json.dumps(2),
            StatusField.REPORTED_AT_MS: str(now_ms),
        },
    )
    for name in (key, status):
        client.expire(name, 120)


def store_scope_and_fleet(settings: FerrySettings, replicator_id: str, worker_id: str) -> None:
    """The metadata unit's inventory, a worker's heartbeat and a reconcile pass, as the fleet writes them."""
    with database(settings) as conn:
        scope = [["orders", 0], ["orders", 1], ["orders", 2]]
        conn.execute(insert(ReplicatorMetadata).values(replicator_id=uuid.UUID(replicator_id), partitions=scope))
        record_reconcile(conn, "test", took_seconds=RECONCILE_SECONDS)

    async def beat() -> None:
        engine = make_async_engine(settings)
        async with engine.begin() as conn:
            await heartbeat(conn, worker_id, "host", 1, LoadSample(cpu_cores=0.25, bytes_per_second=1e6, lag_bytes=LAG))
        await engine.dispose()

    asyncio.run(beat())


# ----- the names the dashboard and the rules use ---------------------------------------------------------------

# Grafana's interval variables are not PromQL; any duration stands in for them.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\)$")


def metric_names(expression: str) -> set[str]:
    """The metric names an expression selects (functions, labels, and Grafana variables inside label values aside)."""
    expression = GRAFANA_INTERVALS.sub("5m", expression.strip())
    if match := LABEL_VALUES.match(expression):
        expression = match["selector"]
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expression), pre_visit=visit)
    assert names, f"no metric in {expression!r}"
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            expressions.append(variable["query"]["query"])
    return expressions


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_monitoring_files_use_real_promql() -> None:
    assert len(dashboard_expressions()) >= 20
    assert len(rule_expressions()) >= 10
    assert metric_names('max by (a) (rate(x_total{b=~"$v"}[$__rate_interval])) > on() group_left y') == {"x_total", "y"}
    assert metric_names('label_values(ferry_replicator_state{account_id=~"$account"}, replicator_name)') == {
        "ferry_replicator_state"
    }


# ----- the exposition ------------------------------------------------------------------------------------------


def exported(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_follow_prometheus_conventions(
    monitored_api: str,
    scratch_settings: FerrySettings,
    redis_client: redis.Redis,
    clusters: dict[str, Any],
    unique: str,
) -> None:
    (replicator_id,) = create_replicators(monitored_api, scratch_settings, clusters, [unique])
    worker_id = f"{unique}-worker"
    store_scope_and_fleet(scratch_settings, replicator_id, worker_id)
    report_as_workers_do(redis_client, replicator_id)

    response = scrape(monitored_api, scratch_settings)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    families = exported(text)
    samples: list[Sample] = [s for family in families.values() for s in family.samples]
    names_with_samples = {s.name for s in samples}

    # Every metric the dashboard and the alert rules use is exported (with a value, for this replicator and fleet).
    for source, expressions in (("dashboard", dashboard_expressions()), ("rules", rule_expressions())):
        used = set().union(*(metric_names(e) for e in expressions))
        assert used <= names_with_samples, f"{source} uses {sorted(used - names_with_samples)}, not exported"
    # The Helm chart's autoscaling follows this name: it stays.
    assert metric_value(text, "ferry_fleet_desired_workers") is not None

    # Conventions: HELP everywhere, counters and only counters end in _total, time in seconds.
    for name, family in families.items():
        assert family.documentation.strip(), f"{name} has no HELP"
        if not name.startswith("ferry_"):
            continue
        assert "millis" not in name and not name.endswith("_ms"), name
        if family.type == "counter":
            assert all(s.name == f"{name}_total" for s in family.samples), name
        else:
            assert family.type == "gauge" and not name.endswith("_total"), name
        if any(word in name for word in ("latency", "age", "lag")):
            assert name.endswith(("_seconds", "_records", "_bytes")), f"{name} does not say its unit"
    assert families["ferry_replicated_bytes"].type == "counter"
    assert families["ferry_replication_errors"].type == "counter"

    # Exact integers: a lag of 1,234,567 is 1234567, not 1.23457e+06.
    mine = {"account_id": ACCOUNT, "replicator_name": unique}
    p0 = {**mine, "topic": "orders", "partition": 0}
    assert metric_value(text, "MessageLag", **p0) == LAG
    assert metric_value(text, "ferry_replication_lag_records", **p0) == LAG
    assert metric_value(text, "ferry_replicated_bytes_total", **p0) == BYTES
    assert metric_value(text, "ferry_replicated_records_total", **p0) == 3 * LAG
    assert "1.23457e+06" not in text

    # MSK's names keep their units; the conventional ones are in base units.
    assert metric_value(text, "ReplicationLatency", **p0) == 1500
    assert metric_value(text, "ferry_replication_latency_seconds", **p0) == 1.5
    lag_seconds = metric_value(text, "ferry_replication_lag_seconds", **p0)
    assert lag_seconds is not None and lag_seconds >= 2

    # Health, data loss and partitions nobody reports.
    p1 = {**mine, "topic": "orders", "partition": 1}
    p2 = {**mine, "topic": "orders", "partition": 2}
    assert metric_value(text, "ferry_partition_healthy", **p0) == 1
    assert metric_value(text, "ferry_partition_healthy", **p1) == 0
    assert metric_value(text, "ferry_source_truncated_offsets_total", **p1) == TRUNCATED
    assert metric_value(text, "ferry_partition_healthy", **p2) == 0
    assert metric_value(text, "ferry_replication_lag_records", **p2) is None, "no value without a report"
    assert metric_value(text, "ferry_unreported_partitions", **mine) == 1
    assert metric_value(text, "FerryUnreportedPartitions", **mine) == 1

    # Per replicator: state (one series per state), errors by kind, auth, pings, groups.
    for state in ReplicatorState:
        expected = 1 if state == ReplicatorState.CREATING else 0
        assert metric_value(text, "ferry_replicator_state", **mine, state=state.value) == expected
    assert metric_value(text, "ferry_replication_errors_total", **mine, kind="FETCH_FAILED") == 3
    assert metric_value(text, "ReplicationErrors", **mine) == 5
    assert metric_value(text, "ferry_auth_failures_total", **mine) == 3
    assert metric_value(text, "AuthError", **mine) == 3
    assert metric_value(text, "ferry_cluster_ping_success", **mine, cluster_alias="tgt") == 0
    assert metric_value(text, "KafkaClusterPingSuccessCount", **mine, cluster_alias="src") == 1
    assert metric_value(text, "ferry_consumer_group_offset_sync_failures_total", **mine) == 2
    group = {**mine, "consumer_group": "billing"}
    assert metric_value(text, "ferry_consumer_group_translation_lag_records", **group) == 40

    # The fleet.
    assert metric_value(text, "ferry_worker_lag_bytes", worker_id=worker_id) == LAG
    assert metric_value(text, "ferry_worker_cpu_cores", worker_id=worker_id) == 0.25
    age = metric_value(text, "ferry_fleet_last_reconcile_age_seconds")
    assert age is not None and 0 <= age < 60
    assert metric_value(text, "ferry_fleet_last_reconcile_duration_seconds") == RECONCILE_SECONDS


def test_the_metrics_endpoint_answers_its_documented_model(
    monitored_api: str,
    scratch_settings: FerrySettings,
    redis_client: redis.Redis,
    clusters: dict[str, Any],
    unique: str,
) -> None:
    (replicator_id,) = create_replicators(monitored_api, scratch_settings, clusters, [unique])
    store_scope_and_fleet(scratch_settings, replicator_id, f"{unique}-worker")
    report_as_workers_do(redis_client, replicator_id)
    key = issue_key(scratch_settings)
    with database(scratch_settings) as conn:
        arn = conn.execute(select(ReplicatorRow.arn).where(ReplicatorRow.id == uuid.UUID(replicator_id))).scalar_one()
    with httpx.Client(base_url=monitored_api, timeout=30, auth=SigV4HttpxAuth(key)) as http:
        body = http.get(f"/replication/v1/replicators/{quote(arn, safe='')}/metrics").json()
        schema = http.get("/openapi.json").json()["components"]["schemas"]["ReplicatorMetrics"]
        fleet = http.get("/replication/v1/fleet").json()
    assert fleet["lastReconcileSeconds"] == RECONCILE_SECONDS
    assert set(body) == set(schema["properties"])
    assert [(p["partition"], p["health"]) for p in body["partitions"]] == [
        (0, "REPLICATING"),
        (1, "SOURCE_TRUNCATED"),
        (2, "UNKNOWN"),
    ]
    assert body["partitions"][0]["lagRecords"] == LAG and body["partitions"][0]["bytesCopied"] == BYTES
    assert body["partitions"][2]["lagRecords"] is None
    totals = body["totals"]
    assert totals["partitions"] == 3 and totals["partitionsUnreported"] == 1
    assert totals["lagRecords"] is None, "no total lag while a partition is unreported"
    assert totals["errors"] == {"FETCH_FAILED": 3, "AUTH_DENIED": 1, "SOURCE_TRUNCATED": 1}
    assert totals["unhealthyPartitions"] == 2
    assert body["clusterPing"] == {"src": 1, "tgt": 0}
    # Fields of the group sync summary the model does not name are passed on as they are.
    assert body["consumerGroups"]["mode"] == "LEGACY"
    assert body["consumerGroups"]["groups"]["billing"]["translationLagRecords"] == 40


def test_a_scrape_reads_each_replicator_once_in_one_pipeline(
    monitored_api: str,
    scratch_settings: FerrySettings,
    redis_client: redis.Redis,
    clusters: dict[str, Any],
    unique: str,
) -> None:
    """Redis's MONITOR shows every command; a marker sent after the scrape closes the window (the shared Redis
    serves other tests meanwhile, so only this test's keys count)."""
    ids = create_replicators(monitored_api, scratch_settings, clusters, [f"{unique}-{i}" for i in range(3)])
    for replicator_id in ids:
        report_as_workers_do(redis_client, replicator_id)
    marker = f"ferry:test-marker:{unique}"
    with redis_client.monitor() as monitor:
        scrape(monitored_api, scratch_settings)
        redis_client.get(marker)
        commands = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            command = monitor.next_command()["command"]
            if marker in command:
                break
            if any(i in command for i in ids):
                commands.append(command.split()[0].upper())
        else:
            pytest.fail("the marker never showed in MONITOR")
    # Both hashes of each replicator, read once (not the status hash twice, not field by field).
    assert sorted(commands) == ["HGETALL"] * 6, commands


def test_counts_render_exactly() -> None:
    """Whole numbers are written with every digit (not 1.23457e+06 nor 1.234567e+06), other floats exactly."""
    families = _Families()
    for value in (LAG, BYTES, 2**53 - 1, 0, 2.0):
        families.gauge("ferry_test_records", "a count", {"n": value}, value)
    text = families.render().decode()
    assert f'ferry_test_records{{n="{LAG}"}} {LAG}\n' in text
    assert 'ferry_test_records{n="2.0"} 2\n' in text
    parsed = next(text_string_to_metric_families(text))
    assert {float(s.labels["n"]): s.value for s in parsed.samples} == {v: v for v in (LAG, BYTES, 2**53 - 1, 0, 2.0)}


def test_rendering_reads_as_prometheus_clients_own() -> None:
    """The direct rendering parses to the same families, types, HELP, samples and values as prometheus_client's
    rendering of the same metrics, escapes and special values included."""
    awkward = {"replicator_name": 'a "quoted"\\name\nwith a newline', "partition": 3}
    values = [0.1, 1e-9, 123456789.25, float("nan"), float("inf"), float("-inf"), True, -7]
    ours = _Families()
    gauge = GaugeMetricFamily(
        "ferry_test_value", "help with a \\ and a\nnewline", labels=["replicator_name", "partition", "i"]
    )
    counter = CounterMetricFamily("ferry_test_things", "things", labels=["replicator_name", "partition"])
    for i, value in enumerate(values):
        ours.gauge("ferry_test_value", "help with a \\ and a\nnewline", {**awkward, "i": i}, value)
        gauge.add_metric([str(v) for v in awkward.values()] + [str(i)], value)
    ours.counter("ferry_test_things", "things", awkward, 5)
    counter.add_metric([str(v) for v in awkward.values()], 5)
    ours.gauge("ferry_test_empty", "declared, no current value", awkward, None)
    empty = GaugeMetricFamily("ferry_test_empty", "declared, no current value", labels=list(awkward))
    ours.gauge("ferry_test_plain", "no labels", {}, 4.5)
    plain = GaugeMetricFamily("ferry_test_plain", "no labels", value=4.5)

    class Fixed(Collector):
        def collect(self) -> Iterator[Metric]:
            return iter([gauge, counter, empty, plain])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())

    def families(text: str) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], str]]]]:
        return [
            (f.name, f.type, f.documentation, [(s.name, s.labels, repr(float(s.value))) for s in f.samples])
            for f in text_string_to_metric_families(text)
        ]

    assert families(ours.render().decode()) == families(generate_latest(registry).decode())
