"""A throwaway Kafka cluster of several brokers, for tests that take brokers down.

The dev stack's clusters have one node each (``dev/stack.py``). Leader changes, unclean leader elections and
broker outages need replicas on more than one broker and a controller that outlives them, so this starts one
KRaft controller and N brokers, each a JVM of its own from the jars the dev stack resolved, with their data in
a folder the caller owns. Each broker can be stopped (SIGTERM), killed (SIGKILL) and started again.

    with LocalCluster(kafka_lib, tmp_path, brokers=2) as cluster:
        cluster.stop_broker(1)
        ...

The benchmark's multi-broker step runs two of these with three brokers each and production-like broker
settings (``broker_properties``, e.g. ``min.insync.replicas=2``), and reads each JVM's pid for its CPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from dev.stack import JVM_FLAGS, LOG4J_SERVER, LOG4J_TOOLS, new_kafka_cluster_id

_COMMON = """\
controller.quorum.voters=1@127.0.0.1:{cport}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=8388608
# Brokers leave and return within seconds in these tests.
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=500
replica.lag.time.max.ms=5000
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class _Node:
    def __init__(self, node_id: int, port: int, properties: str, folder: Path) -> None:
        self.node_id = node_id
        self.port = port
        self.folder = folder
        self.properties = folder / "server.properties"
        self.log = folder / "server.log"
        folder.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(properties)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, lib: Path, heap: str) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        argv = [
            "java",
            f"-Xms{heap}",
            f"-Xmx{heap}",
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={LOG4J_SERVER}",
            f"-Dkafka.logs.dir={self.folder}",
            "-cp",
            f"{lib}/*",
            "kafka.Kafka",
            str(self.properties),
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def signal(self, signum: int, timeout_s: float = 60.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signum)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalCluster:
    """One KRaft controller (node 1) and ``brokers`` brokers (nodes 2..), PLAINTEXT on 127.0.0.1.

    ``broker_properties`` are added to every broker's properties (after the defaults above, so they win)."""

    def __init__(
        self,
        lib: Path,
        folder: Path,
        *,
        brokers: int = 2,
        heap: str = "256m",
        broker_properties: Mapping[str, str] | None = None,
    ) -> None:
        self.lib = Path(lib)
        self.folder = Path(folder)
        self.heap = heap
        controller_port = free_port()
        common = _COMMON.replace("{cport}", str(controller_port))
        self.controller = _Node(
            1,
            controller_port,
            "process.roles=controller\nnode.id=1\n"
            f"listeners=CONTROLLER://127.0.0.1:{controller_port}\n"
            + common.replace("{data}", str(self.folder / "controller" / "data")),
            self.folder / "controller",
        )
        extra = "".join(f"{key}={value}\n" for key, value in (broker_properties or {}).items())
        self.brokers: list[_Node] = []
        for index in range(brokers):
            port = free_port()
            node_folder = self.folder / f"broker-{index}"
            self.brokers.append(
                _Node(
                    index + 2,
                    port,
                    f"process.roles=broker\nnode.id={index + 2}\n"
                    f"listeners=PLAINTEXT://127.0.0.1:{port}\nadvertised.listeners=PLAINTEXT://127.0.0.1:{port}\n"
                    "inter.broker.listener.name=PLAINTEXT\n"
                    + common.replace("{data}", str(node_folder / "data"))
                    + extra,
                    node_folder,
                )
            )

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{broker.port}" for broker in self.brokers)

    def pids(self) -> dict[str, int]:
        """The running JVMs' pids by node name (``controller``, ``broker-2``, ...)."""
        nodes = {"controller": self.controller, **{f"broker-{b.node_id}": b for b in self.brokers}}
        return {
            name: node.process.pid
            for name, node in nodes.items()
            if node.process is not None and node.process.poll() is None
        }

    def broker_id(self, index: int) -> int:
        return self.brokers[index].node_id

    def start(self, timeout_s: float = 120.0) -> None:
        cluster_id = new_kafka_cluster_id()
        for node in (self.controller, *self.brokers):
            self._format(node, cluster_id)
        self.controller.start(self.lib, self.heap)
        for broker in self.brokers:
            broker.start(self.lib, self.heap)
        for node in (self.controller, *self.brokers):
            self._wait_listening(node, timeout_s)

    def _format(self, node: _Node, cluster_id: str) -> None:
        result = subprocess.run(
            [
                "java",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={LOG4J_TOOLS}",
                "-cp",
                f"{self.lib}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(node.properties),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"formatting node {node.node_id} failed:\n{result.stdout}\n{result.stderr}")

    def _wait_listening(self, node: _Node, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not _port_open(node.port):
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"node {node.node_id} exited:\n{node.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.node_id} not listening within {timeout_s:g}s:\n{node.tail()}")
            time.sleep(0.2)

    def stop_broker(self, index: int) -> None:
        """A clean shutdown (SIGTERM): the broker hands its leaderships over first."""
        self.brokers[index].signal(signal.SIGTERM)

    def kill_broker(self, index: int) -> None:
        self.brokers[index].signal(signal.SIGKILL)

    def start_broker(self, index: int, timeout_s: float = 120.0) -> None:
        self.brokers[index].start(self.lib, self.heap)
        self._wait_listening(self.brokers[index], timeout_s)

    def run_tool(self, main_class: str, *args: str, timeout_s: float = 120.0) -> str:
        """Run one of Kafka's command-line tools (its Java main class) against this cluster."""
        result = subprocess.run(
            [
                "java",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={LOG4J_TOOLS}",
                "-cp",
                f"{self.lib}/*",
                main_class,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{main_class} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def close(self) -> None:
        for node in (*self.brokers, self.controller):
            node.signal(signal.SIGKILL)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
