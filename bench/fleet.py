"""Fleet-worker CPU and memory at N replicated partitions, and create-to-RUNNING with many replicators present.

The stack's own workers are shared (other engineers' replicators run in them), so this step brings up a
private control plane: its own PostgreSQL database, Celery queue and Redis database, this checkout's API on a
free port and Celery beat, and one fleet worker per measurement, started fresh so its memory holds nothing but
the benchmark's replicator. The replicator is created through the API with boto3, as a user would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    MB,
    RESULTS_DIR,
    ROOT,
    BenchError,
    Stack,
    load_stack,
    machine_info,
    memory_kib,
    say,
    spawn,
    stop_process,
    tree_cpu_seconds,
    versions,
    wait_until,
)
from bench.control_plane import create_replicator, create_to_running, kafka_client, start_private_api
from bench.kafka import Cluster
from bench.measure import TargetWatch, copy_under_load, fixed_rate_load, percentile
from cli.admin import create_access_key
from dev.scratch_database import drop_database
from dev.stack import DEV_ACCOUNT, StackConfig, celery_beat_argv, celery_worker_argv, migrate


class PrivateFleet:
    def __init__(self, log_dir: Path, token: str) -> None:
        self.log_dir = log_dir
        self.cfg = StackConfig()
        self.database = f"ferry_bench_{token}"
        self.database_url = self.cfg.database_url.rsplit("/", 1)[0] + f"/{self.database}"
        self._dsn = self.database_url.replace("postgresql+psycopg://", "postgresql://")
        self.env = self.cfg.app_env()
        self.env.update(
            FERRY_DATABASE_URL=self.database_url,
            FERRY_REDIS_URL=self.cfg.redis_url.rsplit("/", 1)[0] + "/3",
            FERRY_CELERY_QUEUE=f"bench-{token}",
            # Creating a thousand replicators at once is the measurement, not abuse: the API's limits stand aside.
            FERRY_MAX_REPLICATORS_PER_ACCOUNT="100000",
            FERRY_API_REQUESTS_PER_SECOND="100000",
            FERRY_API_REQUEST_BURST="100000",
        )
        self.api: str | None = None
        self.credentials: tuple[str, str] | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _admin_dsn(self) -> str:
        return self.cfg.database_url.replace("postgresql+psycopg://", "postgresql://")

    def start(self) -> None:
        with psycopg.connect(self._admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        migrate(self.database_url)
        settings = self.cfg.settings().model_copy(update={"database_url": self.database_url})
        issued = asyncio.run(create_access_key(settings, DEV_ACCOUNT, "bench private control plane"))
        self.credentials = (issued.access_key_id, issued.secret_access_key)
        self.api, self.processes["api"] = start_private_api(self.log_dir / "fleet-api.log", env=self.env)
        self.processes["beat"] = spawn(
            celery_beat_argv(self.log_dir / "fleet-celerybeat-schedule", None, loglevel="WARNING"),
            self.log_dir / "fleet-beat.log",
            env=self.env,
        )

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        proc = spawn(
            celery_worker_argv(f"{name}@%h", "--without-gossip", "--without-mingle", loglevel="WARNING"),
            self.log_dir / f"{name}.log",
            env=self.env,
        )
        self.processes[name] = proc
        return proc

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self._dsn) as conn:
            return conn.execute(sql, params).fetchall()

    async def stop(self) -> None:
        for name, proc in reversed(list(self.processes.items())):
            await stop_process(proc, name)
        drop_database(self._admin_dsn(), self.database)


async def create_to_running_fleet(stack: Stack, *, count: int, limit_s: float, log_dir: Path) -> dict[str, Any]:
    """Create-to-RUNNING on a private control plane with one fleet worker (the stack's own API and workers are
    shared, or not running under ``make bench``), the replicators created one after another through the API."""
    fleet = PrivateFleet(log_dir, secrets.token_hex(4))
    await asyncio.to_thread(fleet.start)
    try:
        fleet.start_worker("c2r-w1")
        assert fleet.api is not None
        client = kafka_client(fleet.api, fleet.credentials)
        out = await asyncio.to_thread(create_to_running, client, stack, count, limit_s)
        out["api"] = f"a private control plane (API, beat and one fleet worker of this checkout) at {fleet.api}"
        return out
    finally:
        await fleet.stop()


async def create_to_running_with_present(
    stack: Stack,
    out: dict[str, Any],
    *,
    present: int,
    count: int,
    workers: int,
    limit_s: float,
    create_limit_s: float,
    log_dir: Path,
) -> None:
    """Create-to-RUNNING of ``count`` replicators, one after another, with ``present`` replicators already RUNNING
    on a private fleet of ``workers`` workers. Every replicator's topic regex matches nothing, so what is measured is
    the control plane and each replicator's metadata unit (probes, topic listing and sync, group sync), not copying.
    Fills ``out`` as it goes, so a failed run still records what it saw (the states every 15 s among it)."""
    fleet = PrivateFleet(log_dir, secrets.token_hex(4))
    out.update(present=present, workers=workers, measured=count, states_over_time=[])
    await asyncio.to_thread(fleet.start)
    try:
        names = [f"c2r-w{i + 1}" for i in range(workers)]
        procs = [fleet.start_worker(name) for name in names]
        assert fleet.api is not None
        api, credentials = fleet.api, fleet.credentials
        token = secrets.token_hex(3)

        clients = [kafka_client(api, credentials) for _ in range(8)]  # built here: boto3 builds none safely in threads

        def create(index: int) -> float:
            began = time.monotonic()
            create_replicator(clients[index % 8], stack, f"present-{token}-{index:05d}")
            return time.monotonic() - began

        say(f"creating {present} replicators (8 at a time) on a private fleet of {workers} workers")
        began = time.monotonic()
        cpu_before = [tree_cpu_seconds(p.pid) or 0.0 for p in procs]
        with ThreadPoolExecutor(8) as pool:
            create_s = sorted(await asyncio.to_thread(lambda: list(pool.map(create, range(present)))))
        out["create_all_s"] = round(time.monotonic() - began, 1)
        out["create_p50_ms"] = round(percentile(create_s, 0.5) * 1000, 1) if create_s else None
        say(f"  created in {out['create_all_s']}s; waiting for every one to be RUNNING")

        def states() -> dict[str, int]:
            return {
                str(state): int(n) for state, n in fleet.query("SELECT state, count(*) FROM replicators GROUP BY 1")
            }

        async def all_running() -> bool:
            return states().get("RUNNING", 0) >= present

        def progress() -> str:
            now = states()
            out["states_over_time"].append([round(time.monotonic() - began), now])
            return f"states {now}"

        await wait_until(
            f"{present} replicators RUNNING", all_running, limit_s, interval=1.0,
            progress=progress, progress_every=15.0, proc=procs[0], log=log_dir / f"{names[0]}.log",
        )  # fmt: skip
        elapsed = time.monotonic() - began
        out["create_to_all_running_s"] = round(elapsed, 1)
        cpu_after = [tree_cpu_seconds(p.pid) or 0.0 for p in procs]
        out["worker_cores_while_starting"] = round((sum(cpu_after) - sum(cpu_before)) / elapsed, 2)
        say(f"  all {present} RUNNING {elapsed:.0f}s after the first create")

        settle_began, settle_cpu = time.monotonic(), sum(cpu_after)
        client = kafka_client(api, credentials)
        out["create_to_running"] = await asyncio.to_thread(create_to_running, client, stack, count, create_limit_s)
        settle_s = time.monotonic() - settle_began
        out["worker_cores_while_measuring"] = round(
            (sum(tree_cpu_seconds(p.pid) or 0.0 for p in procs) - settle_cpu) / settle_s, 2
        )
        out["worker_rss_mib"] = [round(memory_kib(p.pid).get("VmRSS", 0) / 1024) for p in procs]
        out["states_after"] = states()
        out["api"] = f"a private control plane (API, beat and {workers} fleet workers of this checkout) at {api}"
        say(f"  create-to-RUNNING with {present} present: {out['create_to_running']}")
    finally:
        await fleet.stop()


def _create_replicator(client: Any, stack: Stack, name: str, topic: str) -> tuple[str, str]:
    """The replicator of one topic, from its start; returns its ARN and its target topic's name."""
    arn = create_replicator(client, stack, name, topic_pattern=f"^{re.escape(topic)}$", starting_position="EARLIEST")
    info = client.describe_replicator(ReplicatorArn=arn)["ReplicationInfoList"][0]
    return arn, f"{info['SourceKafkaClusterAlias']}.{topic}"


async def fleet_worker_scale(
    *,
    stack: Stack,
    source: Cluster,
    target: Cluster,
    counts: tuple[int, ...],
    record_size: int,
    rate_bytes_per_s: float,
    seconds: float,
    log_dir: Path,
    startup_limit_s: float = 300.0,
) -> dict[str, Any]:
    """Per partition count: a fresh fleet worker's RSS idle, then with one replicator of that many partitions
    running under a fixed produce rate (CPU over the load, RSS after it)."""
    token = secrets.token_hex(4)
    fleet = PrivateFleet(log_dir, token)
    out: dict[str, Any] = {}
    await asyncio.to_thread(fleet.start)
    try:
        assert fleet.api is not None
        client = kafka_client(fleet.api, fleet.credentials)
        for count in counts:
            say(f"-- fleet worker on {count} partitions")
            out[str(count)] = await _one_count(
                fleet, client, stack, source, target, count, record_size, rate_bytes_per_s, seconds, log_dir,
                startup_limit_s, token,
            )  # fmt: skip
    finally:
        await fleet.stop()
    return out


async def _one_count(  # noqa: PLR0917 - one measurement's parameters, passed straight through
    fleet: PrivateFleet,
    client: Any,
    stack: Stack,
    source: Cluster,
    target: Cluster,
    count: int,
    record_size: int,
    rate_bytes_per_s: float,
    seconds: float,
    log_dir: Path,
    startup_limit_s: float,
    token: str,
) -> dict[str, Any]:
    result = fixed_rate_load(count, record_size, rate_bytes_per_s, seconds)
    name = f"bench-fleet-{count}-{token}"
    topic = f"bench-fleet-{count}-{token}"
    worker = fleet.start_worker(name)
    log = log_dir / f"{name}.log"
    arn: str | None = None
    watch: TargetWatch | None = None
    try:

        async def registered() -> bool:
            return bool(fleet.query("SELECT 1 FROM fleet_workers WHERE pid = %s", worker.pid))

        await wait_until(f"{name} registered", registered, 120.0, proc=worker, log=log)
        result["memory_kib_idle_worker"] = memory_kib(worker.pid)
        await source.create_topic(topic, count)
        arn, target_topic = await asyncio.to_thread(_create_replicator, client, stack, name, topic)
        watch = TargetWatch(target, target_topic)

        async def all_partitions_owned() -> bool:
            rows = fleet.query(
                "SELECT count(*) FROM fleet_units u JOIN replicators r ON r.id = u.replicator_id "
                "WHERE r.arn = %s AND u.partition >= 0 AND u.owner_worker IS NOT NULL AND u.lease_expires_at > now()",
                arn,
            )
            return bool(rows) and int(rows[0][0]) >= count

        started = asyncio.get_running_loop().time()
        await wait_until(
            f"{name}: {count} partitions leased to the worker",
            all_partitions_owned,
            startup_limit_s,
            interval=0.5,
            progress=lambda: "",
            proc=worker,
            log=log,
        )
        result["create_to_all_partitions_owned_s"] = round(asyncio.get_running_loop().time() - started, 2)
        result["memory_kib_running_idle"] = memory_kib(worker.pid)
        result |= await copy_under_load(
            result,
            stack=stack,
            source_topic=topic,
            watch=watch,
            proc=worker,
            pid=worker.pid,
            what=name,
            log=log,
            load_log=log_dir / f"fleet-load-{count}-{token}.log",
        )
        result["worker_cores"] = result["cpu_during_load"].get("replicator_cores")
        result["status"] = "ok"
        say(
            f"  fleet worker on {count} partitions: RSS {result['memory_kib'].get('VmRSS', 0) / 1024:.0f} MiB "
            f"(idle worker {result['memory_kib_idle_worker'].get('VmRSS', 0) / 1024:.0f} MiB), "
            f"{result['worker_cores']} cores at {rate_bytes_per_s / MB:.2f} MB/s"
        )
    except BenchError as exc:
        result.update(status="failed", reason=str(exc))
        say(f"  fleet worker on {count} partitions: FAILED: {str(exc).splitlines()[0]}")
    finally:
        if watch is not None:
            await watch.close()
        if arn is not None:
            await asyncio.to_thread(client.delete_replicator, ReplicatorArn=arn)

            async def deleted() -> bool:
                return not fleet.query("SELECT 1 FROM replicators WHERE arn = %s", arn)

            try:
                await wait_until(f"{name} deleted", deleted, 120.0, proc=worker, log=log)
            except BenchError as exc:
                say(f"  warning: {exc}")
        await stop_process(worker, name)
        fleet.processes.pop(name, None)
        await source.delete_topics([topic])
        await target.delete_matching(topic)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="Create-to-RUNNING with many replicators present on a private fleet (issue 17's target: p50 < "
        "5 s with 1,000 present). Needs the dev stack (python -m dev.stack up --infra).",
    )
    parser.add_argument("--present", type=int, default=1000, help="replicators created (and RUNNING) first")
    parser.add_argument("--count", type=int, default=20, help="replicators then timed, one after another")
    parser.add_argument("--workers", type=int, default=2, help="fleet workers")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds allowed for every replicator to run")
    parser.add_argument("--create-limit", type=float, default=120.0, help="seconds allowed each timed replicator")
    args = parser.parse_args(argv)
    stack = load_stack()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result: dict[str, Any] = {"kind": "create-to-running-with-present", "started": stamp, "machine": machine_info(),
                              "versions": versions(stack.kafka_lib)}  # fmt: skip
    log_dir = ROOT / ".run" / "bench" / f"{stamp}-create-to-running"
    try:
        asyncio.run(
            create_to_running_with_present(
                stack, result, present=args.present, count=args.count, workers=args.workers, limit_s=args.limit,
                create_limit_s=args.create_limit, log_dir=log_dir,
            )
        )  # fmt: skip
        result["status"] = result["create_to_running"].get("status", "failed")
    except (BenchError, psycopg.Error, OSError) as exc:
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}", logs=str(log_dir))
        say(f"FAILED: {exc}")
    out = RESULTS_DIR / f"{stamp}-create-to-running.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"{result['status']}: {out.relative_to(ROOT)}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
