"""The chaos scenarios. Each runs one replicator of its own through one fault while a producer writes to its source
topic, then lets the auditor decide: every acknowledged record must be on the target, nothing may differ, and
duplicates are allowed only where at-least-once delivery permits them (never after a graceful stop, never in
exactly-once mode).

A scenario is a function ``(lab, outcome) -> None`` that fills in the outcome; ``run_scenario`` gives it a fresh
outcome, catches what it raises as a failure with the logs that explain it, and puts the lab back in shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.errors import KafkaError
from botocore.exceptions import BotoCoreError, ClientError

from chaos.lab import Lab, LabError, say, wait_for
from chaos.traffic import Ack, AckedProducer, TargetTail

AT_LEAST_ONCE = "at-least-once"
EXACTLY_ONCE = "exactly-once"
PARTITIONS = 4
RATE = 300  # records a second written to each scenario's source topic
OUTAGE_S = 5.0  # how long a killed broker stays down
REDIS_OUTAGE_S = 20.0
RESUME_LIMIT_S = 120.0


@dataclass
class Outcome:
    scenario: str
    mode: str
    fault: str
    produced: int = 0
    acknowledged: int = 0
    found: int = 0
    lost: int = 0
    duplicated: int = 0
    duplicates_allowed: bool = False
    resumed_s: float | None = None
    worst_latency_s: float | None = None  # the longest any acknowledged record took to reach the target
    audit: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def line(self) -> str:
        resumed = "-" if self.resumed_s is None else f"{self.resumed_s:.1f}s"
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return (
            f"{self.scenario} [{self.mode}]: produced {self.produced}, acknowledged {self.acknowledged}, "
            f"found {self.found}, lost {self.lost}, duplicated {self.duplicated}, resumed {resumed} "
            f"({self.seconds:.0f}s) {verdict}"
        )


# ---------------------------------------------------------------------------------------------- workload


async def _admin(bootstrap: str, work: Callable[[AIOKafkaAdminClient], Any]) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20_000)
    await admin.start()
    try:
        return await work(admin)
    finally:
        await admin.close()


class Workload:
    """One scenario's data: a source topic, the replicator copying it, the producer and the target tail.
    Leaving the ``with`` block deletes the replicator and both topics, whatever happened."""

    def __init__(self, lab: Lab, outcome: Outcome) -> None:
        self.lab = lab
        self.outcome = outcome
        token = uuid.uuid4().hex[:6]
        self.topic = f"chaos-{outcome.scenario}-{token}"
        self.name = f"chaos-{outcome.scenario}-{'eos' if outcome.mode == EXACTLY_ONCE else 'alo'}-{token}"
        self.exactly_once = outcome.mode == EXACTLY_ONCE
        self.client = lab.kafka_client()
        self.arn: str | None = None
        self.target_topic: str | None = None
        self.producer = AckedProducer(lab.source.bootstrap, self.topic, PARTITIONS, RATE)
        self.tail: TargetTail | None = None
        # When copying ran on every partition (before the fault): worst latency counts records acknowledged since.
        self.steady_at: float | None = None
        # Source offsets below which a scenario deleted the records on purpose (retention), per partition.
        self.deleted_below: dict[int, int] = {}

    def __enter__(self) -> Workload:
        asyncio.run(
            _admin(
                self.lab.source.bootstrap,
                lambda admin: admin.create_topics([NewTopic(self.topic, PARTITIONS, replication_factor=1)]),
            )
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.producer.stop()
        if self.tail is not None:
            self.tail.stop()
        try:
            if self.arn is not None:
                self.lab.ensure_fleet()
                self.delete_and_wait()
        except (LabError, ClientError, BotoCoreError) as error:
            self.outcome.failures.append(f"cleanup: the replicator was not deleted ({error})")
        if self.outcome.failures and self.lab.keep_evidence:
            say(f"  kept {self.topic} and {self.target_topic} for inspection")
            return
        asyncio.run(_admin(self.lab.source.bootstrap, lambda admin: admin.delete_topics([self.topic])))
        if self.target_topic is not None:
            target = self.target_topic
            with contextlib.suppress(KafkaError):  # never created when the scenario failed before the first copy
                asyncio.run(_admin(self.lab.target.bootstrap, lambda admin: admin.delete_topics([target])))

    # -------------------------------------------------------------------------------------- the replicator

    def create_request(self) -> dict[str, Any]:
        source, target = self.lab.source.bootstrap, self.lab.target.bootstrap
        return {
            "ReplicatorName": self.name,
            "ServiceExecutionRoleArn": "arn:aws:iam::000000000000:role/ferry-chaos",
            "KafkaClusters": [
                {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "chaos-src", "BootstrapBrokerString": source}},
                {"ApacheKafkaCluster": {"ApacheKafkaClusterId": "chaos-tgt", "BootstrapBrokerString": target}},
            ],
            "ReplicationInfoList": [
                {
                    "SourceKafkaClusterId": "chaos-src",
                    "TargetKafkaClusterId": "chaos-tgt",
                    "TargetCompressionType": "NONE",
                    "TopicReplication": {"TopicsToReplicate": [self.topic], "StartingPosition": {"Type": "EARLIEST"}},
                    "ConsumerGroupReplication": {"ConsumerGroupsToReplicate": []},
                }
            ],
            "Tags": {"ferry:delivery": self.outcome.mode},
        }  # fmt: skip

    def create_replicator(self) -> str:
        self.arn = str(self.client.create_replicator(**self.create_request())["ReplicatorArn"])
        return self.arn

    def find_by_name(self) -> dict[str, Any] | None:
        for page in self.client.get_paginator("list_replicators").paginate(ReplicatorNameFilter=self.name):
            for replicator in page.get("Replicators", []):
                if replicator["ReplicatorName"] == self.name:
                    return dict(replicator)
        return None

    def describe(self) -> dict[str, Any] | None:
        assert self.arn is not None
        try:
            return dict(self.client.describe_replicator(ReplicatorArn=self.arn))
        except ClientError as error:
            if error.response["Error"]["Code"] == "NotFoundException":
                return None
            raise

    def wait_running(self, timeout: float = 60.0) -> None:
        def running() -> dict[str, Any] | None:
            described = self.describe()
            if described is not None and described["ReplicatorState"] == "FAILED":
                raise LabError(f"replicator FAILED: {described.get('StateInfo')}")
            return described if described is not None and described["ReplicatorState"] == "RUNNING" else None

        described = wait_for(f"{self.name} to be RUNNING", running, timeout)
        alias = described["ReplicationInfoList"][0]["SourceKafkaClusterAlias"]
        self.target_topic = f"{alias}.{self.topic}"

    def delete_and_wait(self, timeout: float = 60.0) -> None:
        assert self.arn is not None
        try:
            self.client.delete_replicator(ReplicatorArn=self.arn)
        except ClientError as error:
            if error.response["Error"]["Code"] != "NotFoundException":
                raise
        wait_for(f"{self.name} to be deleted", lambda: self.describe() is None, timeout, interval=0.5)
        self.arn = None

    # ------------------------------------------------------------------------------------------ the data

    def start_traffic(self) -> None:
        self.producer.start()

    def start_copying(self) -> str:
        """The usual start: traffic, the replicator created and RUNNING, the tail, copying on every partition."""
        self.start_traffic()
        arn = self.create_replicator()
        self.wait_running()
        self.start_tail()
        self.wait_copying()
        return arn

    def finish(self, seconds: float, *, duplicates_allowed: bool) -> None:
        """Write ``seconds`` more, stop the producer, wait for every acknowledged record, judge."""
        self.run_for(seconds)
        self.producer.stop()
        self.wait_delivered()
        self.judge(duplicates_allowed=duplicates_allowed)

    def start_tail(self) -> None:
        assert self.target_topic is not None
        self.tail = TargetTail(self.lab.target.bootstrap, self.target_topic, read_committed=self.exactly_once)
        self.tail.start()

    def run_for(self, seconds: float) -> None:
        """Let the producer write for ``seconds`` more: the workload's length, not a synchronisation."""
        time.sleep(seconds)

    def resumed_after(self, since: float, timeout: float = RESUME_LIMIT_S) -> float:
        """Seconds from ``since`` until every partition had a record acknowledged after ``since`` on the target:
        replication resumed everywhere. Computed from the producer's and the tail's clocks, so it can be asked
        for a moment long past."""
        assert self.tail is not None
        tail = self.tail

        def every_partition_resumed() -> list[float] | None:
            seen = tail.seen_snapshot()
            first: dict[int, float] = {}
            for value, ack in self.producer.acked_snapshot().items():
                arrived = seen.get(value)
                if ack.at >= since and arrived is not None:
                    first[ack.partition] = min(first.get(ack.partition, arrived), arrived)
            if len(first) < PARTITIONS:
                return None
            return [max(0.0, max(first.values()) - since)]

        return wait_for("replication to resume on every partition", every_partition_resumed, timeout)[0]

    def wait_copying(self) -> None:
        """Wait until every partition copies; from now on, the worst latency counts."""
        self.resumed_after(0.0)
        self.steady_at = time.monotonic()

    def wait_delivered(self, timeout: float = 90.0) -> None:
        """Wait until every acknowledged record (but the excused) is on the target; the judge counts any left."""
        assert self.tail is not None
        tail = self.tail

        def all_there() -> bool:
            seen = tail.seen_snapshot()
            acked = self.producer.acked_snapshot()
            excused = self.excused(acked, seen)
            return all(v in seen for v in acked if v not in excused)

        try:
            wait_for("every acknowledged record on the target", all_there, timeout, interval=0.5)
        except LabError as missing:
            say(str(missing))

    def excused(self, acked: dict[bytes, Ack], seen: dict[bytes, float]) -> set[bytes]:
        """Acknowledged records the scenario destroyed before their copy (never to arrive)."""
        return {
            v for v, ack in acked.items() if ack.offset < self.deleted_below.get(ack.partition, -1) and v not in seen
        }

    def audit(self, timeout: float = 180.0) -> dict[str, Any]:
        """Ferry's auditor over the whole topic, through the API; asked again while the offset map (about a
        second behind the copy) has not caught up with the last records."""
        assert self.arn is not None
        base = f"/replication/v1/replicators/{quote(self.arn, safe='')}/audits"
        deadline = time.monotonic() + timeout
        with self.lab.http() as http:
            while True:
                started = http.post(base, json={"topic": self.topic})
                if started.status_code != 200:
                    raise LabError(f"starting the audit: {started.status_code} {started.text[:300]}")
                audit_id = started.json()["auditId"]

                def finished(audit_id: str = audit_id) -> dict[str, Any] | None:
                    status: dict[str, Any] = http.get(f"{base}/{audit_id}").json()
                    return status if status.get("state") in ("SUCCEEDED", "FAILED") else None

                status = wait_for("the audit to finish", finished, max(1.0, deadline - time.monotonic()), 0.5)
                if status["state"] == "FAILED":
                    raise LabError(f"the audit failed: {status.get('error')}")
                behind = [
                    span
                    for partition in status["partitions"]
                    for span in partition["unchecked"]
                    if span["reason"].startswith("not copied yet")
                ]
                if not behind or time.monotonic() > deadline:
                    return status
                time.sleep(1.0)  # the offset map's flush interval: the next audit sees it

    # ----------------------------------------------------------------------------------------- the verdict

    def judge(self, *, duplicates_allowed: bool) -> None:
        """Count, audit, and decide. Fills the outcome; every broken promise is a failure with numbers."""
        assert self.tail is not None
        outcome = self.outcome
        acked = self.producer.acked_snapshot()
        seen = self.tail.seen_snapshot()
        outcome.produced = self.producer.sent
        outcome.acknowledged = len(acked)
        outcome.found = sum(1 for v in acked if v in seen)
        excused = self.excused(acked, seen)
        missing = [v for v in acked if v not in seen and v not in excused]
        outcome.lost = len(missing)
        outcome.duplicated = self.tail.records - len(seen)
        steady = self.steady_at if self.steady_at is not None else 0.0
        latencies = [seen[v] - ack.at for v, ack in acked.items() if v in seen and ack.at >= steady]
        if latencies:
            outcome.worst_latency_s = round(max(0.0, *latencies), 2)
        outcome.duplicates_allowed = duplicates_allowed
        if self.producer.failures:
            outcome.details["producerErrors"] = dict(self.producer.failures)
        if missing:
            first = sorted(missing, key=lambda v: (acked[v].partition, acked[v].offset))[:5]
            where = ", ".join(f"{v.decode()} (partition {acked[v].partition} offset {acked[v].offset})" for v in first)
            outcome.failures.append(f"{len(missing)} acknowledged records never reached the target: {where}")
        if outcome.duplicated and not duplicates_allowed:
            outcome.failures.append(f"{outcome.duplicated} duplicates on the target where none are allowed")

        status = self.audit()
        totals = {"sourceRecords": 0, "matched": 0, "missing": 0, "differing": 0, "duplicated": 0, "unexpected": 0}
        unchecked = []
        for partition in status["partitions"]:
            totals["sourceRecords"] += partition["sourceRecords"]
            totals["matched"] += partition["matched"]
            for kind in ("missing", "differing", "duplicated", "unexpected"):
                totals[kind] += partition[kind]["count"]
            unchecked += [{"partition": partition["partition"], **span} for span in partition["unchecked"]]
        outcome.audit = {"auditId": status["auditId"], "consistent": status["consistent"], **totals,
                         "unchecked": unchecked}  # fmt: skip
        for kind in ("missing", "differing", "unexpected"):
            if totals[kind]:
                outcome.failures.append(f"the auditor found {totals[kind]} {kind} records")
        if totals["duplicated"] and not duplicates_allowed:
            outcome.failures.append(f"the auditor found {totals['duplicated']} duplicated records")
        if unchecked:
            outcome.failures.append(f"the auditor could not check {unchecked}")
        in_log = sum(1 for v, ack in acked.items() if ack.offset >= self.deleted_below.get(ack.partition, -1))
        if totals["sourceRecords"] < in_log:
            outcome.failures.append(
                f"the auditor compared {totals['sourceRecords']} source records, fewer than the {in_log} acknowledged"
            )


def _owner_of_partition_zero(lab: Lab, arn: str) -> str:
    def owner() -> str | None:
        worker = lab.unit_owners(arn).get(0)
        return lab.process_of(worker) if worker else None

    return wait_for("an owner of partition 0", owner, 60)


Fault = Callable[[Lab, Workload], list[float]]


def _fault_scenario(fault: Fault, *, duplicates: bool) -> Callable[[Lab, Outcome], None]:
    """The common shape: replicate, inject the fault, measure the resumption, drain, judge."""

    def scenario(lab: Lab, outcome: Outcome) -> None:
        with Workload(lab, outcome) as work:
            work.start_copying()  # copying on every partition before the fault
            fault_ends = fault(lab, work)
            outcome.resumed_s = max(work.resumed_after(end) for end in fault_ends)
            work.finish(3.0, duplicates_allowed=duplicates and outcome.mode == AT_LEAST_ONCE)

    return scenario


# ---------------------------------------------------------------------------------------------- the faults


def _kill_workers(kills: int) -> Callable[[Lab, Workload], list[float]]:
    def fault(lab: Lab, work: Workload) -> list[float]:
        assert work.arn is not None
        ends = []
        for _ in range(kills):
            victim = _owner_of_partition_zero(lab, work.arn)
            ends.append(time.monotonic())
            lab.kill(victim, signal.SIGKILL)
            lab.start_worker()
            recovered = work.resumed_after(ends[-1])
            say(f"  SIGKILLed {victim}: every partition copying again after {recovered:.1f}s")
        work.outcome.details["recoveriesSeconds"] = [round(work.resumed_after(end), 2) for end in ends]
        return ends

    return fault


def _stop_worker(lab: Lab, work: Workload) -> list[float]:
    assert work.arn is not None
    victim = _owner_of_partition_zero(lab, work.arn)
    stopped = time.monotonic()
    lab.kill(victim, signal.SIGTERM)
    work.outcome.details["stopSeconds"] = round(time.monotonic() - stopped, 2)
    lab.start_worker()
    return [stopped]


def _broker(side: str) -> Callable[[Lab, Workload], list[float]]:
    def fault(lab: Lab, work: Workload) -> list[float]:
        cluster = lab.source if side == "source" else lab.target
        cluster.kill_broker(0)
        time.sleep(OUTAGE_S)  # the outage's length is the fault's parameter
        cluster.start_broker(0)
        return [time.monotonic()]

    return fault


def _redis(lab: Lab, work: Workload) -> list[float]:
    lab.kill_redis()
    time.sleep(REDIS_OUTAGE_S)  # the outage's length is the fault's parameter
    lab.start_redis_empty()
    return [time.monotonic()]


def _postgres(lab: Lab, work: Workload) -> list[float]:
    began = time.monotonic()
    lab.restart_postgres()
    work.outcome.details["outageSeconds"] = round(time.monotonic() - began, 2)
    return [time.monotonic()]


def _beat_and_worker(lab: Lab, work: Workload) -> list[float]:
    """Beat is killed and stays dead; then a worker is SIGKILLed: the fleet must reassign without beat."""
    assert work.arn is not None
    lab.kill("beat", signal.SIGKILL)
    victim = _owner_of_partition_zero(lab, work.arn)
    killed = time.monotonic()
    lab.kill(victim, signal.SIGKILL)
    lab.start_worker()
    work.resumed_after(killed)
    return [killed]


# ------------------------------------------------------------------------------ the API killed mid-request

KILL_DELAYS_S = (0.005, 0.02, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0)


def _request_then_kill_api(lab: Lab, call: Callable[[Any], Any], delay: float) -> dict[str, Any]:
    """Send one request with no retry and SIGKILL the API ``delay`` seconds later; start it again."""
    client = lab.kafka_client(attempts=1, read_timeout=30)
    answer: dict[str, Any] = {}

    def send() -> None:
        try:
            answer["response"] = call(client)
        except (ClientError, BotoCoreError) as error:
            answer["error"] = type(error).__name__

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(delay)  # where in the request the kill lands: the fault's parameter
    lab.kill("api", signal.SIGKILL)
    sender.join(60)
    lab.start_api()
    return answer


def _api_killed_mid_create(lab: Lab, outcome: Outcome) -> None:
    with Workload(lab, outcome) as work:
        work.start_traffic()
        attempts = []
        back = time.monotonic()
        for delay in KILL_DELAYS_S:
            answer = _request_then_kill_api(lab, lambda c: c.create_replicator(**work.create_request()), delay)
            back = time.monotonic()
            found = work.find_by_name()
            attempts.append({"killAfterSeconds": delay, "answered": "response" in answer, "created": bool(found)})
            if found is None:
                rows = lab.query("SELECT count(*) FROM replicators WHERE name = %s", work.name)
                if rows[0][0]:
                    outcome.failures.append(f"the API lists no {work.name} but the database holds {rows[0][0]}")
                continue
            work.arn = found["ReplicatorArn"]
            if "response" not in answer:
                # Committed but unanswered: the user's retry must be told it exists, not create a second one.
                try:
                    work.client.create_replicator(**work.create_request())
                    outcome.failures.append("a retried create after an unanswered one created a second replicator")
                except ClientError as error:
                    attempts[-1]["retry"] = error.response["Error"]["Code"]
            break
        outcome.details["attempts"] = attempts
        if not any(not a["answered"] for a in attempts):
            outcome.failures.append("no kill landed before the create's answer")
        if work.arn is None:
            work.create_replicator()
        work.wait_running(timeout=60)  # never left half-created: it runs
        work.start_tail()
        outcome.resumed_s = work.resumed_after(back)
        work.steady_at = time.monotonic()  # records written before the replicator existed waited for it
        work.finish(2.0, duplicates_allowed=False)


def _api_killed_mid_delete(lab: Lab, outcome: Outcome) -> None:
    with Workload(lab, outcome) as work:
        arn = work.start_copying()
        work.finish(2.0, duplicates_allowed=False)
        replicator_id = lab.query("SELECT id FROM replicators WHERE arn = %s", arn)[0][0]
        attempts = []
        back = time.monotonic()
        for delay in KILL_DELAYS_S:
            answer = _request_then_kill_api(lab, lambda c: c.delete_replicator(ReplicatorArn=arn), delay)
            back = time.monotonic()
            described = work.describe()
            state = "GONE" if described is None else described["ReplicatorState"]
            attempts.append({"killAfterSeconds": delay, "answered": "response" in answer, "stateAfter": state})
            if state in ("GONE", "DELETING"):
                break
        outcome.details["attempts"] = attempts
        if not any(not a["answered"] for a in attempts):
            outcome.failures.append("no kill landed before the delete's answer")
        work.delete_and_wait()  # the user's retry when the delete was lost; the wait when it landed
        outcome.resumed_s = time.monotonic() - back  # here: from the API's return to the replicator gone
        left = lab.query("SELECT count(*) FROM fleet_units WHERE replicator_id = %s", replicator_id)[0][0]
        if left:
            outcome.failures.append(f"{left} fleet units of the deleted replicator are left")
        # Nothing copies any more: records written now never reach the target.
        after = AckedProducer(lab.source.bootstrap, work.topic, PARTITIONS, RATE)
        after.sent = 10_000_000
        after.start()
        work.run_for(8.0)  # a window of several reconcile passes in which an orphaned copier would show
        after.stop()
        assert work.tail is not None
        seen = work.tail.seen_snapshot()
        leaked = sum(1 for v in after.acked_snapshot() if v in seen)
        outcome.details["writtenAfterDelete"] = len(after.acked)
        if leaked:
            outcome.failures.append(f"{leaked} records written after the delete were still copied")
        topics = asyncio.run(_admin(lab.target.bootstrap, lambda admin: admin.list_topics()))
        strays = sorted(t for t in topics if work.topic in t and t != work.target_topic)
        if strays:
            outcome.failures.append(f"topics left on the target: {strays}")


def _source_retention(lab: Lab, outcome: Outcome) -> None:
    """The fleet is stopped; retention (DeleteRecords) removes records it had not copied; the fleet comes back.
    The loss must be reported on the replicator (health SOURCE_TRUNCATED, truncatedOffsets) and match."""
    with Workload(lab, outcome) as work:
        arn = work.start_copying()
        for name in lab.workers():
            lab.kill(name, signal.SIGTERM)
        work.run_for(3.0)  # records pile up, uncopied
        topic_partitions = [TopicPartition(work.topic, p) for p in range(PARTITIONS)]

        async def delete_to_end(admin: AIOKafkaAdminClient) -> dict[TopicPartition, int]:
            consumer_ends = await _end_offsets(lab.source.bootstrap, topic_partitions)
            await admin.delete_records({tp: RecordsToDelete(before_offset=end) for tp, end in consumer_ends.items()})
            return consumer_ends

        ends = asyncio.run(_admin(lab.source.bootstrap, delete_to_end))
        work.deleted_below = {tp.partition: end for tp, end in ends.items()}
        assert work.tail is not None
        tail = work.tail

        def lost_on_purpose() -> int:
            return len(work.excused(work.producer.acked_snapshot(), tail.seen_snapshot()))

        back = time.monotonic()
        lab.ensure_fleet()
        outcome.resumed_s = work.resumed_after(back)

        def reported() -> dict[str, Any] | None:
            with lab.http() as http:
                metrics = http.get(f"/replication/v1/replicators/{quote(arn, safe='')}/metrics").json()
            truncated = sum(p.get("truncatedOffsets") or 0 for p in metrics.get("partitions", []))
            health = sorted({p["health"] for p in metrics.get("partitions", [])})
            return {"truncatedOffsets": truncated, "health": health} if truncated >= lost_on_purpose() else None

        try:
            report = wait_for("the loss to be reported on the replicator", reported, 60, interval=1.0)
            outcome.details["reported"] = report
            if "SOURCE_TRUNCATED" not in report["health"]:
                outcome.failures.append(f"partitions read {report['health']}, not SOURCE_TRUNCATED")
        except LabError as error:
            outcome.failures.append(f"the loss of {lost_on_purpose()} records was not reported: {error}")
        work.finish(2.0, duplicates_allowed=outcome.mode == AT_LEAST_ONCE)
        outcome.details["deletedBeforeCopy"] = lost_on_purpose()


async def _end_offsets(bootstrap: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415 (only this fault needs one)

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


# ---------------------------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str  # for the table
    run: Callable[[Lab, Outcome], None]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("worker-sigkill-x3", "a worker SIGKILLed (its process tree) three times in a row, another alive",
                 _fault_scenario(_kill_workers(3), duplicates=True)),
        Scenario("worker-sigterm", "a worker stopped with SIGTERM (graceful hand-off)",
                 _fault_scenario(_stop_worker, duplicates=False)),
        Scenario("source-broker-kill", f"the source broker SIGKILLed, restarted after {OUTAGE_S:g} s",
                 _fault_scenario(_broker("source"), duplicates=True)),
        Scenario("target-broker-kill", f"the target broker SIGKILLed, restarted after {OUTAGE_S:g} s",
                 _fault_scenario(_broker("target"), duplicates=True)),
        Scenario("redis-restart-empty", f"Redis SIGKILLed, restarted empty after {REDIS_OUTAGE_S:g} s",
                 _fault_scenario(_redis, duplicates=True)),
        Scenario("postgres-restart", "PostgreSQL restarted", _fault_scenario(_postgres, duplicates=True)),
        Scenario("beat-killed", "Celery beat SIGKILLed (left dead), then a worker SIGKILLed",
                 _fault_scenario(_beat_and_worker, duplicates=True)),
        Scenario("api-killed-mid-create", "the API SIGKILLed during CreateReplicator", _api_killed_mid_create),
        Scenario("api-killed-mid-delete", "the API SIGKILLed during DeleteReplicator", _api_killed_mid_delete),
        Scenario("source-retention", "fleet stopped; DeleteRecords removes uncopied source records; fleet back",
                 _source_retention),
    )
}  # fmt: skip


def run_scenario(lab: Lab, scenario: Scenario, mode: str) -> Outcome:
    outcome = Outcome(scenario=scenario.name, mode=mode, fault=scenario.fault)
    started = time.monotonic()
    say(f"{scenario.name} [{mode}]: {scenario.fault}")
    try:
        lab.ensure_fleet()
        scenario.run(lab, outcome)
    except Exception as error:  # noqa: BLE001 - any error is this scenario's failure, with what explains it
        outcome.failures.append(f"{type(error).__name__}: {error}")
        outcome.details["traceback"] = traceback.format_exc(limit=8)
        outcome.details["logs"] = {name: lab.log_tail(name, 15) for name in lab.processes}
    finally:
        outcome.seconds = round(time.monotonic() - started, 1)
        try:
            lab.ensure_fleet()
        except LabError as error:
            outcome.failures.append(f"the lab did not come back: {error}")
    say(outcome.line())
    return outcome
