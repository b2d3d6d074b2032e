"""Issue 17's first break: a burst of replicators matching every topic of one source, created then deleted.

``python -m bench.metadata_burst [--replicators 120] [--topics 90] [--before PATH]`` creates the source topics
(one partition each, a configuration override each), then for each variant brings up a private control plane
(bench/fleet.py's ``PrivateFleet``: its own database, queue, API and beat) with ONE fleet worker running that
variant's code, creates the replicators at once (a `.*`-like pattern over the topics, copyTopicConfigurations on,
IDENTICAL naming so they share the target topics), and measures:

- seconds from the first create to every replicator RUNNING;
- DescribeConfigs and Metadata requests the worker sent per minute once they run (counted inside the worker by
  a ``sitecustomize`` hook on aiokafka's client, the same for both variants), and the worker's CPU meanwhile;
- seconds from the deletes to every replicator gone.

``--before PATH`` is a checkout of the code before the change (``git worktree add /tmp/ferry-before e88602a``):
its worker runs that code (the API and beat run this checkout's; the change is in the worker only). The variants
run one after the other in one invocation, so the ratio compares like with like on a noisy machine. Results go to
bench/results/<UTC>-metadata-burst.json with the machine noted. A variant that does not reach a state within
``--limit`` seconds is recorded as such (the time then says "more than").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import ROOT, BenchError, Stack, cpu_seconds, load_stack, loadavg, machine_info, say
from bench.control_plane import kafka_client
from bench.fleet import PrivateFleet
from dev.stack import celery_worker_argv

RESULTS = ROOT / "bench" / "results"

# Counts every request a worker's Kafka clients send, by API key, into <dir>/<pid>.json once a second.
REQUEST_COUNTER = """
import json, os, threading, time
from collections import Counter

_counts = Counter()
# By API key, so a request class of Ferry's own (aiokafka_hooks.py) counts under its request type.
_NAMES = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit", 9: "OffsetFetch",
    10: "FindCoordinator", 15: "DescribeGroups", 16: "ListGroups", 19: "CreateTopics", 22: "InitProducerId",
    23: "OffsetForLeaderEpoch", 29: "DescribeAcls", 30: "CreateAcls", 32: "DescribeConfigs", 33: "AlterConfigs",
    37: "CreatePartitions", 60: "DescribeCluster",
}
_folder = os.environ["FERRY_BENCH_REQUEST_COUNTS"]

def _install():
    from aiokafka.client import AIOKafkaClient
    original = AIOKafkaClient.send

    async def send(self, node_id, request, *args, **kwargs):
        key = getattr(request, "API_KEY", None)
        _counts[_NAMES.get(key, f"api-key-{key}")] += 1
        return await original(self, node_id, request, *args, **kwargs)

    AIOKafkaClient.send = send

def _dump():
    path = os.path.join(_folder, f"{os.getpid()}.json")
    while True:
        time.sleep(1.0)
        with open(path + ".tmp", "w") as out:
            json.dump(dict(_counts), out)
        os.replace(path + ".tmp", path)

try:
    _install()
    threading.Thread(target=_dump, daemon=True).start()
except Exception as exc:  # the benchmark says so; the worker still runs
    print("request counter not installed:", exc)
"""

API_KEYS = {"DescribeConfigs": "describe_configs", "Metadata": "metadata", "DescribeAcls": "describe_acls"}


def request_counts(folder: Path) -> dict[str, int]:
    total: dict[str, int] = {}
    for path in folder.glob("*.json"):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for name, count in counts.items():
            total[name] = total.get(name, 0) + int(count)
    return total


async def make_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await admin.start()
    try:
        for start in range(0, len(names), 50):
            await admin.create_topics(
                [NewTopic(n, 1, 1, topic_configs={"retention.ms": "86400000"}) for n in names[start : start + 50]]
            )
    finally:
        await admin.close()


async def drop_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await admin.start()
    try:
        present = sorted(set(await admin.list_topics()) & set(names))
        for start in range(0, len(present), 50):
            await admin.delete_topics(present[start : start + 50])
    finally:
        await admin.close()


def create(client: Any, stack: Stack, name: str, pattern: str) -> str:
    response = client.create_replicator(
        ReplicatorName=name,
        ServiceExecutionRoleArn="arn:aws:iam::000000000000:role/ferry-bench",
        KafkaClusters=[
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "burst-source", "BootstrapBrokerString": stack.source}},
            {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "burst-target", "BootstrapBrokerString": stack.target}},
        ],
        ReplicationInfoList=[
            {
                "SourceKafkaClusterId": "burst-source",
                "TargetKafkaClusterId": "burst-target",
                "TargetCompressionType": "NONE",
                "TopicReplication": {
                    "TopicsToReplicate": [pattern],
                    "CopyTopicConfigurations": True,
                    "TopicNameConfiguration": {"Type": "IDENTICAL"},
                },
                "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": [f"^{name}-no-groups$"]},
            }
        ],
    )
    return str(response["ReplicatorArn"])


def states(client: Any, arns: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for page in client.get_paginator("list_replicators").paginate():
        for entry in page["Replicators"]:
            if entry["ReplicatorArn"] in arns:
                counts[entry["ReplicatorState"]] = counts.get(entry["ReplicatorState"], 0) + 1
    return counts


async def wait_for(what: str, check: Any, limit_s: float) -> float | None:
    """Seconds until ``check()`` (run in a thread) holds, or None when it did not within ``limit_s``."""
    started = time.monotonic()
    next_note = started + 15
    while time.monotonic() - started < limit_s:
        done, detail = await asyncio.to_thread(check)
        if done:
            return time.monotonic() - started
        if time.monotonic() >= next_note:
            say(f"  waiting for {what}: {time.monotonic() - started:.0f}s, {detail}")
            next_note = time.monotonic() + 15
        await asyncio.sleep(1.0)
    return None


def start_worker(label: str, code: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        # cwd is the variant's checkout: `python -m` puts it first on sys.path.
        return subprocess.Popen(
            celery_worker_argv(f"burst-{label}@%h", "--without-gossip", "--without-mingle", loglevel="WARNING"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=code,
            env=env,
        )


async def run_variant(
    label: str,
    code: Path,
    stack: Stack,
    *,
    pattern: str,
    replicators: int,
    limit_s: float,
    window_s: float,
    log: Path,
) -> dict[str, Any]:
    token = secrets.token_hex(4)
    fleet = PrivateFleet(log / label, token)
    counts = Path(tempfile.mkdtemp(prefix=f"ferry-burst-{label}-"))
    hook = counts / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(REQUEST_COUNTER)
    say(f"{label}: private control plane (worker code from {code})")
    await asyncio.to_thread(fleet.start)  # it runs an event loop of its own
    result: dict[str, Any] = {"code": str(code), "replicators": replicators}
    try:
        env = {
            **fleet.env,
            "PYTHONPATH": f"{hook}{os.pathsep}{code}",
            "FERRY_BENCH_REQUEST_COUNTS": str(counts),
        }
        worker = start_worker(label, code, env, log / label / "worker.log")
        fleet.processes["worker"] = worker
        assert fleet.api is not None
        client = kafka_client(fleet.api, fleet.credentials)
        say(f"{label}: creating {replicators} replicators")
        created_at = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            arns = set(pool.map(lambda i: create(client, stack, f"burst-{token}-{i:03d}", pattern), range(replicators)))
        result["create_calls_s"] = round(time.monotonic() - created_at, 1)

        def all_running() -> tuple[bool, str]:
            seen = states(client, arns)
            return seen.get("RUNNING", 0) == len(arns), str(seen)

        waited = await wait_for(f"{label}: all RUNNING", all_running, limit_s)
        result["all_running_s"] = None if waited is None else round(waited + result["create_calls_s"], 1)
        result["running_at_end_of_wait"] = (await asyncio.to_thread(states, client, arns)).get("RUNNING", 0)

        say(f"{label}: counting the worker's requests for {window_s:.0f}s")
        before, cpu_before = request_counts(counts), cpu_seconds(worker.pid)
        await asyncio.sleep(window_s)
        after, cpu_after = request_counts(counts), cpu_seconds(worker.pid)
        per_minute = {
            name: round((after.get(name, 0) - before.get(name, 0)) * 60 / window_s, 1)
            for name in sorted(set(after) | set(before))
        }
        result["requests_per_minute"] = per_minute
        result["describe_configs_per_minute"] = per_minute.get("DescribeConfigs", 0.0)
        result["metadata_per_minute"] = per_minute.get("Metadata", 0.0)
        if cpu_before is not None and cpu_after is not None:
            result["worker_cpu_cores"] = round((cpu_after - cpu_before) / window_s, 2)

        say(f"{label}: deleting {replicators} replicators")
        deleted_at = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda arn: client.delete_replicator(ReplicatorArn=arn), sorted(arns)))
        result["delete_calls_s"] = round(time.monotonic() - deleted_at, 1)

        def all_gone() -> tuple[bool, str]:
            seen = states(client, arns)
            return not seen, str(seen)

        gone = await wait_for(f"{label}: all deleted", all_gone, limit_s)
        result["all_deleted_s"] = None if gone is None else round(gone + result["delete_calls_s"], 1)
        result["limit_s"] = limit_s
    finally:
        await fleet.stop()
    say(f"{label}: {json.dumps(result)}")
    return result


async def main(args: argparse.Namespace) -> Path:
    stack = load_stack()
    prefix = f"burst-{secrets.token_hex(4)}"
    topics = [f"{prefix}-{i:03d}" for i in range(args.topics)]
    log = Path(tempfile.mkdtemp(prefix="ferry-metadata-burst-"))
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report: dict[str, Any] = {
        "benchmark": "metadata-burst",
        "command": "python -m bench.metadata_burst " + " ".join(args.argv),
        "started_utc": started,
        "machine": machine_info(),
        "replicators": args.replicators,
        "source_topics": args.topics,
        "pattern": f"{prefix}-.*",
        "variants": {},
    }
    say(f"{args.topics} source topics {prefix}-* (logs in {log})")
    await make_topics(stack.source, topics)
    try:
        variants = [("after", ROOT)]
        if args.before is not None:
            variants.insert(0, ("before", args.before))
        for label, code in variants:
            report["variants"][label] = await run_variant(
                label,
                code,
                stack,
                pattern=f"{prefix}-.*",
                replicators=args.replicators,
                limit_s=args.limit,
                window_s=args.window,
                log=log,
            )
            report["variants"][label]["loadavg_after"] = loadavg()
    finally:
        await drop_topics(stack.source, topics)
        await drop_topics(stack.target, topics)
    before, after = report["variants"].get("before"), report["variants"]["after"]
    if before is not None:
        report["ratios_before_over_after"] = {
            key: round(before[key] / after[key], 1) if before.get(key) and after.get(key) else None
            for key in ("all_running_s", "all_deleted_s", "describe_configs_per_minute", "metadata_per_minute")
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{started}-metadata-burst.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {out}")
    return out


def cli(argv: list[str] | None = None) -> None:
    import sys  # noqa: PLC0415 - only the command line needs it

    parser = argparse.ArgumentParser(prog="python -m bench.metadata_burst", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicators", type=int, default=120)
    parser.add_argument("--topics", type=int, default=90)
    parser.add_argument("--before", help="a checkout of the code before the change, run as the first variant")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds to wait for RUNNING and for deletes")
    parser.add_argument("--window", type=float, default=60.0, help="seconds over which requests are counted")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.before = None if args.before is None else Path(args.before).resolve()
    if args.replicators < 1 or args.topics < 1 or args.limit <= 0 or args.window <= 0:
        parser.error("--replicators, --topics, --limit and --window must be positive")
    try:
        asyncio.run(main(args))
    except BenchError as exc:
        raise SystemExit(f"metadata burst: {exc}") from exc


if __name__ == "__main__":
    cli()
