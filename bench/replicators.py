"""The replicators under test: MirrorMaker 2 (dedicated mode, default and tuned) and Ferry's engine CLI.

Each run gets unique cluster aliases / topic names built from a random token, so nothing resumes from an
earlier run's state, and its cleanup deletes only topics whose names contain that token.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench.common import ROOT, Stack, say, spawn, stop_process
from bench.kafka import Cluster
from dev.stack import JVM_FLAGS, LOG4J_SERVER

# The settings shared by tuned MirrorMaker 2, Ferry and the limit producer: Ferry's own, so that tuned MM2
# gets the same acks, batching, linger, in-flight, compression, fetch sizes and parallelism. The numeric
# options are read from the engine's CopierOptions when it is importable (see tuned_settings()); the rest
# is what workers/engine/copier.py hard-codes. Every results JSON records them as they were.
TUNED: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    # aiokafka's Sender keeps at most one produce request in flight per broker connection
    "max_in_flight_requests_per_connection": 1,
    "batch_size_bytes": 512 * 1024,
    # Ferry closes every data batch it hands to its producer (each poll's records are complete), so its data
    # never waits for linger; CopierOptions.producer_linger_ms applies only to its progress records.
    "linger_ms": 0,
    "max_request_size_bytes": 16 * 1024 * 1024,
    "compression": "none",
    "parallelism": 1,  # MM2 tasks.max = Ferry engine processes
    "fetch_min_bytes": 1,
    "fetch_max_wait_ms": 200,
    "max_partition_fetch_bytes": 2 * 1024 * 1024,
    "fetch_max_bytes": 64 * 1024 * 1024,
    # Ferry polls 16 to 64 source batches at a time (CopierOptions.max_batches_per_poll, records_per_poll); MM2
    # counts records.
    "max_poll_records": 10_000,
    "check_crcs": True,
    "isolation_level": "read_committed",
}


def tuned_settings() -> tuple[dict[str, Any], str]:
    """TUNED, with the numeric options taken from Ferry's engine (CopierOptions) when it can be imported."""
    tuned = dict(TUNED)
    try:
        from workers.engine.copier import CopierOptions  # noqa: PLC0415 (the engine may not exist yet)
    except ImportError as exc:
        return tuned, f"static defaults of bench/replicators.py (engine not importable: {exc})"
    options = CopierOptions()
    mapping = {
        "batch_size_bytes": "producer_batch_bytes",
        "max_request_size_bytes": "producer_max_request_bytes",
        "fetch_max_bytes": "fetch_max_bytes",
        "max_partition_fetch_bytes": "max_partition_fetch_bytes",
    }
    for key, attribute in mapping.items():
        value = getattr(options, attribute, None)
        if isinstance(value, int):
            tuned[key] = value
    return tuned, "workers.engine.copier.CopierOptions() defaults plus the settings copier.py hard-codes"


def java_producer_props(tuned: dict[str, Any]) -> dict[str, str]:
    """The TUNED producer settings as Java producer properties (ProducerPerformance, MM2's producer)."""
    return {
        "acks": str(tuned["acks"]),
        "enable.idempotence": str(tuned["enable_idempotence"]).lower(),
        "max.in.flight.requests.per.connection": str(tuned["max_in_flight_requests_per_connection"]),
        "batch.size": str(tuned["batch_size_bytes"]),
        "linger.ms": str(tuned["linger_ms"]),
        "max.request.size": str(tuned["max_request_size_bytes"]),
        "compression.type": str(tuned["compression"]),
    }


def java_consumer_props(tuned: dict[str, Any]) -> dict[str, str]:
    return {
        "fetch.min.bytes": str(tuned["fetch_min_bytes"]),
        "fetch.max.wait.ms": str(tuned["fetch_max_wait_ms"]),
        "max.partition.fetch.bytes": str(tuned["max_partition_fetch_bytes"]),
        "fetch.max.bytes": str(tuned["fetch_max_bytes"]),
        "max.poll.records": str(tuned["max_poll_records"]),
        "check.crcs": str(tuned["check_crcs"]).lower(),
        "isolation.level": str(tuned["isolation_level"]),
    }


def new_token() -> str:
    return secrets.token_hex(5)


class BenchedReplicator(ABC):
    """One replicator under benchmark (MirrorMaker 2 or a Ferry engine process), for one run: start it on
    source topics, name its target topics, stop it, clean up."""

    kind: str

    def __init__(self, stack: Stack, log_dir: Path, label: str) -> None:
        self.stack = stack
        self.token = new_token()
        self.label = label
        self.log = log_dir / f"{label}-{self.token}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings: dict[str, Any] = {}
        self.source_topics: list[str] = []

    def unavailable(self) -> str | None:
        """Why this replicator cannot run here, or None when it can."""
        return None

    @abstractmethod
    def argv(self, source_topics: list[str]) -> list[str]: ...

    @abstractmethod
    def target_topic(self, source_topic: str) -> str: ...

    def start(self, source_topics: list[str]) -> subprocess.Popen[bytes]:
        self.source_topics = list(source_topics)
        argv = self.argv(source_topics)
        (self.log.parent / f"{self.log.stem}.cmd").write_text(" ".join(argv) + "\n")
        say(f"starting {self.label} (log: {self.log})")
        self.proc = spawn(argv, self.log, env=self.env())
        return self.proc

    def env(self) -> dict[str, str] | None:
        return None

    def extra_pids(self) -> tuple[int, ...]:
        """Processes of this replicator besides ``proc`` (their CPU counts as the replicator's)."""
        return ()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = await stop_process(self.proc, self.label)
        say(f"stopped {self.label} (pid {self.proc.pid}, exit code {code})")
        return code

    async def cleanup(self, source: Cluster, target: Cluster) -> dict[str, list[str]]:
        """Delete this run's topics on both clusters: names containing its unique token, and its target topics."""
        deleted = {
            "source": await source.delete_matching(self.token),
            "target": await target.delete_matching(self.token),
        }
        deleted["target"] += await target.delete_topics([self.target_topic(t) for t in self.source_topics])
        return deleted

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "token": self.token, "log": str(self.log), **self.settings}


# ---------------------------------------------------------------------------------------------- MirrorMaker 2


class MirrorMaker2(BenchedReplicator):
    """MirrorMaker 2 in dedicated mode (org.apache.kafka.connect.mirror.MirrorMaker), one JVM."""

    kind = "mm2"
    # of the topics MM2 creates (target topics, its internal topics): 1 on the stack's single-broker clusters
    replication_factor = 1

    def __init__(self, stack: Stack, log_dir: Path, label: str, tuned: dict[str, Any] | None) -> None:
        super().__init__(stack, log_dir, label)
        self.tuned = tuned
        self.source_alias = f"s{self.token}"
        self.target_alias = f"t{self.token}"
        self.properties_path = log_dir / f"{label}-{self.token}.properties"

    def properties(self, source_topics: list[str]) -> dict[str, str]:
        src, tgt = self.source_alias, self.target_alias
        props: dict[str, str] = {
            "clusters": f"{src}, {tgt}",
            f"{src}.bootstrap.servers": self.stack.source,
            f"{tgt}.bootstrap.servers": self.stack.target,
            f"{src}->{tgt}.enabled": "true",
            f"{src}->{tgt}.topics": ",".join(source_topics),
            f"{tgt}->{src}.enabled": "false",
            # The heartbeats topic is always named 'heartbeats' (shared by every MM2 on the target cluster), so
            # no heartbeats are written into it (1 record/s: no load worth measuring); see cleanup().
            "emit.heartbeats.enabled": "false",
            # Single-broker clusters: every replication factor must be 1 (the defaults of 2-3 would fail).
            **{
                key: str(self.replication_factor)
                for key in (
                    "replication.factor",
                    "checkpoints.topic.replication.factor",
                    "heartbeats.topic.replication.factor",
                    "offset-syncs.topic.replication.factor",
                    "offset.storage.replication.factor",
                    "status.storage.replication.factor",
                    "config.storage.replication.factor",
                )
            },
        }
        if self.tuned is not None:
            props["tasks.max"] = str(self.tuned["parallelism"])
            # Ferry emits no checkpoints; keep the background work alike (offset syncs stay at defaults).
            props["emit.checkpoints.enabled"] = "false"
            for key, value in java_producer_props(self.tuned).items():
                props[f"{tgt}.producer.{key}"] = value
            for key, value in java_consumer_props(self.tuned).items():
                props[f"{src}.consumer.{key}"] = value
        return props

    def argv(self, source_topics: list[str]) -> list[str]:
        props = self.properties(source_topics)
        self.properties_path.parent.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text("".join(f"{k} = {v}\n" for k, v in props.items()))
        self.settings = {
            "mode": "tuned" if self.tuned is not None else "default",
            "main_class": "org.apache.kafka.connect.mirror.MirrorMaker",
            "jvm": "-Xms256m -Xmx1g " + " ".join(JVM_FLAGS),
            "mm2_properties": props,
            "properties_file": str(self.properties_path),
            "deviations_from_defaults": [
                f"replication factors {self.replication_factor}"
                + (" (single-broker clusters)" if self.replication_factor == 1 else ""),
                "emit.heartbeats.enabled=false (the 'heartbeats' topic name is shared on the target cluster)",
                "--clusters <target alias> (one-way: no reverse herder)",
            ]
            + ([] if self.tuned is None else ["tuned client settings, tasks.max, emit.checkpoints.enabled=false"]),
        }
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            "-XX:MaxDirectMemorySize=256m",
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={LOG4J_SERVER}",
            f"-Dkafka.logs.dir={self.log.parent}",
            "-cp",
            f"{self.stack.kafka_lib}/*",
            "org.apache.kafka.connect.mirror.MirrorMaker",
            str(self.properties_path),
            "--clusters",
            self.target_alias,
        ]

    def target_topic(self, source_topic: str) -> str:
        return f"{self.source_alias}.{source_topic}"

    async def cleanup(self, source: Cluster, target: Cluster) -> dict[str, list[str]]:
        deleted = await super().cleanup(source, target)
        # MM2's heartbeat connector creates the target's 'heartbeats' topic even with emission off; delete it
        # only when this very process created it (its log says so), never one that other users had before.
        try:
            created_here = "Created topic 'heartbeats'" in self.log.read_text(errors="replace")
        except OSError:
            created_here = False
        if created_here:
            deleted["target"] += await target.delete_topics(["heartbeats"])
        return deleted

    def effective_producer_config(self) -> dict[str, str]:
        """What MM2's task producer really used, read back from the 'ProducerConfig values' block in its log."""
        wanted = ("acks", "batch.size", "linger.ms", "max.in.flight.requests.per.connection",
                  "enable.idempotence", "compression.type")  # fmt: skip
        # the source task's data producer has client.id "connector-producer-MirrorSourceConnector-0"
        return _logged_config(self.log, "ProducerConfig values", "MirrorSourceConnector", wanted)

    def effective_consumer_config(self) -> dict[str, str]:
        """What MM2's replication consumer really used (its client.id ends in 'replication-consumer')."""
        wanted = ("fetch.min.bytes", "fetch.max.wait.ms", "max.partition.fetch.bytes", "fetch.max.bytes",
                  "max.poll.records", "check.crcs", "isolation.level")  # fmt: skip
        return _logged_config(self.log, "ConsumerConfig values", "replication-consumer", wanted)


def _logged_config(log: Path, header: str, client_marker: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The chosen keys of the first logged config block (e.g. 'ProducerConfig values') whose client.id
    contains ``client_marker``; {} when the log has none."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for i, line in enumerate(lines):
        if header not in line:
            continue
        block: dict[str, str] = {}
        for entry in lines[i + 1 : i + 200]:
            key, sep, value = entry.strip().partition(" = ")
            if not sep:
                break
            block[key] = value
        if client_marker in block.get("client.id", ""):
            return {"client.id": block["client.id"], **{k: block[k] for k in keys if k in block}}
    return {}


# ---------------------------------------------------------------------------------------------- Ferry

ENGINE_MAIN = ROOT / "workers" / "engine" / "__main__.py"


class FerryEngine(BenchedReplicator):
    """Ferry's replication engine through its CLI: python -m workers.engine --source --target --spec spec.json."""

    kind = "ferry"

    def __init__(
        self,
        stack: Stack,
        log_dir: Path,
        label: str,
        tuned: dict[str, Any],
        *,
        forward_batches: bool = True,
        code_root: Path | None = None,
    ) -> None:
        super().__init__(stack, log_dir, label)
        self.tuned = tuned
        self.forward_batches = forward_batches
        # Another checkout whose engine runs instead of this one's (``ferry-baseline``: before/after in one run).
        self.code_root = code_root
        self.alias = f"f{self.token}"
        self.spec_path = log_dir / f"{label}-{self.token}.spec.json"
        self.metrics_path = log_dir / f"{label}-{self.token}.metrics.json"

    def unavailable(self) -> str | None:
        if self.code_root is not None and not (self.code_root / "workers" / "engine" / "__main__.py").exists():
            return f"no engine in the baseline checkout {self.code_root} (--baseline)"
        if not ENGINE_MAIN.exists():
            return (
                "engine not available: workers/engine/__main__.py does not exist yet "
                "(the replication engine of issue 4 is being written)"
            )
        return None

    def spec(self, source_topics: list[str]) -> dict[str, Any]:
        """The engine CLI's spec document: one MSK replicationInfo entry plus aliases and a replicator id."""
        return {
            "replicationInfo": {
                "sourceKafkaClusterArn": "bench-source",
                "targetKafkaClusterArn": "bench-target",
                "targetCompressionType": str(self.tuned["compression"]).upper(),
                "topicReplication": {
                    "topicsToReplicate": [f"^{re.escape(t)}$" for t in source_topics],
                    "topicsToExclude": [],
                    "copyTopicConfigurations": True,
                    "detectAndCopyNewTopics": True,
                    "copyAccessControlListsForTopics": False,
                    "startingPosition": {"type": "EARLIEST"},
                    "topicNameConfiguration": {"type": "PREFIXED_WITH_SOURCE_CLUSTER_ALIAS"},
                },
                "consumerGroupReplication": {"consumerGroupsToReplicate": []},
            },
            "sourceAlias": self.alias,
            "targetAlias": f"g{self.token}",
            "replicatorId": f"bench-{self.token}",
            "exactlyOnce": False,
        }

    def argv(self, source_topics: list[str]) -> list[str]:
        spec = self.spec(source_topics)
        self.spec_path.parent.mkdir(parents=True, exist_ok=True)
        self.spec_path.write_text(json.dumps(spec, indent=2))
        self.settings = {
            "spec": spec,
            "spec_file": str(self.spec_path),
            "metrics_file": str(self.metrics_path),
            "processes": self.tuned["parallelism"],
            "forward_batches": self.forward_batches,
            "code_root": str(self.code_root or ROOT),
            "client_settings": "the engine's own (CopierOptions); mirrored in settings.tuned",
            "shared_state": "progress records go to the engine's shared __ferry_progress topic on the target "
            "(keyed by the unique replicator id; the topic is not deleted)",
        }
        return [
            sys.executable,
            # -P: the baseline's code from PYTHONPATH, not this checkout's from the working directory.
            *(["-P"] if self.code_root is not None else []),
            "-m",
            "workers.engine",
            "--source",
            self.stack.source,
            "--target",
            self.stack.target,
            "--spec",
            str(self.spec_path),
            "--metrics-file",
            str(self.metrics_path),
            "--metrics-interval",
            "5",
            *([] if self.forward_batches else ["--no-forward-batches"]),
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if self.code_root is not None:
            env["PYTHONPATH"] = str(self.code_root)
        return env

    def target_topic(self, source_topic: str) -> str:
        return f"{self.alias}.{source_topic}"


def make_replicator(
    kind: str, stack: Stack, log_dir: Path, tuned: dict[str, Any], *, baseline: Path | None = None
) -> BenchedReplicator:
    """The one place that builds a replicator run by name: mm2-default, mm2-tuned, ferry, ferry-decode (the
    engine with batch forwarding off: every record decoded and re-encoded) or ferry-baseline (the engine of the
    ``baseline`` checkout, e.g. main, for a before/after in one run)."""
    if kind == "mm2-default":
        return MirrorMaker2(stack, log_dir, kind, None)
    if kind == "mm2-tuned":
        return MirrorMaker2(stack, log_dir, kind, tuned)
    if kind == "ferry":
        return FerryEngine(stack, log_dir, kind, tuned)
    if kind == "ferry-decode":
        return FerryEngine(stack, log_dir, kind, tuned, forward_batches=False)
    if kind == "ferry-baseline":
        if baseline is None:
            raise ValueError("ferry-baseline needs --baseline (a checkout to compare with)")
        return FerryEngine(stack, log_dir, kind, tuned, code_root=baseline)
    raise ValueError(f"unknown replicator {kind!r}")
