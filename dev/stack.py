"""Ferry's local stack: two Kafka clusters, PostgreSQL, Redis, the API, a Celery worker and beat.

    python -m dev.stack up [--infra]    start what is not running (idempotent); --infra: Kafka, PG, Redis only
    python -m dev.stack down [--purge]  stop what this tool started, by pid; nothing else (--purge: delete its data)
    python -m dev.stack status          one line per service; exit 1 when any is down
    python -m dev.stack restart         restart the API, worker and beat on this checkout's code

Everything lives in git-ignored folders of the checkout: jars in .cache/, data, logs and pid files in .run/.
Ports come from FERRY_DEV_* variables (see StackConfig). The endpoints of a running stack are written to
.run/stack.json, which the tests read.

PostgreSQL refuses to run as root, so as root its data folder is /var/lib/postgresql/ferry-dev-<port>, owned
by the 'postgres' user Debian's package creates; otherwise it is .run/postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[1]
POM = ROOT / "dev" / "kafka" / "pom.xml"
LOG4J_SERVER = ROOT / "dev" / "kafka" / "log4j2-server.properties"
LOG4J_TOOLS = ROOT / "dev" / "kafka" / "log4j2-tools.properties"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise SystemExit(f"{name}={raw!r} is not a port number")
    return value


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path = field(default_factory=lambda: Path(os.environ.get("FERRY_DEV_RUN_DIR", ROOT / ".run")))
    cache_dir: Path = field(default_factory=lambda: Path(os.environ.get("FERRY_DEV_CACHE_DIR", ROOT / ".cache")))
    source_port: int = field(default_factory=lambda: _env_int("FERRY_DEV_SOURCE_PORT", 19092))
    target_port: int = field(default_factory=lambda: _env_int("FERRY_DEV_TARGET_PORT", 29092))
    postgres_port: int = field(default_factory=lambda: _env_int("FERRY_DEV_POSTGRES_PORT", 15432))
    redis_port: int = field(default_factory=lambda: _env_int("FERRY_DEV_REDIS_PORT", 16379))
    api_port: int = field(default_factory=lambda: _env_int("FERRY_DEV_API_PORT", 8080))
    kafka_heap: str = field(default_factory=lambda: os.environ.get("FERRY_DEV_KAFKA_HEAP", "512m"))

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def pids(self) -> Path:
        return self.run_dir / "pids"

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://ferry:ferry@127.0.0.1:{self.postgres_port}/ferry"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def kafka_clusters(self) -> dict[str, str]:
        return {"source": f"127.0.0.1:{self.source_port}", "target": f"127.0.0.1:{self.target_port}"}

    def app_env(self) -> dict[str, str]:
        """Environment for the API, worker and beat: the FERRY_ settings pointing at this stack."""
        env = dict(os.environ)
        env.update(
            FERRY_DATABASE_URL=self.database_url,
            FERRY_REDIS_URL=self.redis_url,
            FERRY_KAFKA_PROBE_CLUSTERS=json.dumps(self.kafka_clusters),
            PYTHONUNBUFFERED="1",
        )
        return env


class StackError(RuntimeError):
    """A service could not be installed or started; the message names it and the log to read."""


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


# ---------------------------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class PidFile:
    """A pid we started, with a marker from its command line so a recycled pid is never mistaken for it."""

    def __init__(self, cfg: StackConfig, name: str) -> None:
        self.path = cfg.pids / f"{name}.json"

    def write(self, pid: int, marker: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"pid": pid, "marker": marker}))

    def live_pid(self) -> int | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        pid = int(data["pid"])
        if _pid_alive(pid) and data["marker"] in _cmdline(pid):
            return pid
        return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log written)"
    return "\n".join("    " + line for line in content[-lines:])


def wait_for(
    what: str,
    ready: Callable[[], bool],
    timeout: float,
    log: Path,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until ready() holds, failing fast if the process exits, and naming the log on failure."""
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 10
    while True:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{what} exited with code {proc.returncode} while starting; read its log: {log}\n{_tail(log)}"
            )
        now = time.monotonic()
        if now > deadline:
            raise StackError(f"{what} was not ready within {timeout:.0f}s; read its log: {log}\n{_tail(log)}")
        if now > next_note:
            say(f"  still waiting for {what} ({deadline - now:.0f}s left; log: {log})")
            next_note = now + 10
        time.sleep(0.25)


def spawn(
    cfg: StackConfig, name: str, argv: list[str], marker: str, *, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    cfg.logs.mkdir(parents=True, exist_ok=True)
    log = cfg.logs / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    PidFile(cfg, name).write(proc.pid, marker)
    return proc


def stop_pid(name: str, pid: int, grace: float = 30.0) -> None:
    say(f"stopping {name} (pid {pid})")
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.2)
    say(f"{name} did not stop within {grace:.0f}s; killing it")
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return


# ---------------------------------------------------------------------------------------------- installs


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        raise StackError(f"{', '.join(packages)} missing and this user is not root: install them with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say(f"installing {' '.join(packages)} from Debian's packages")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        say("apt-get install failed; refreshing the package lists and trying again")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            raise StackError(f"apt-get could not install {' '.join(packages)}")


def postgres_bin_dir() -> Path | None:
    candidates = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def ensure_packages() -> None:
    missing = []
    if postgres_bin_dir() is None:
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if missing:
        _apt_install(missing)


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    if not match:
        raise StackError(f"no <kafka.version> in {POM}")
    return match.group(1)


def kafka_lib(cfg: StackConfig) -> Path:
    return cfg.cache_dir / f"kafka-{kafka_version()}" / "lib"


def ensure_kafka_jars(cfg: StackConfig) -> Path:
    lib = kafka_lib(cfg)
    stamp = lib / ".complete"
    if stamp.exists() and stamp.read_text() == POM.read_text():
        return lib
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise StackError("Kafka needs Java 17+ and Maven on PATH (apt-get install openjdk-17-jre-headless maven)")
    say(f"resolving Apache Kafka {kafka_version()} jars from Maven Central into {lib} (first run: a minute or two)")
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    log = cfg.logs / "maven.log"
    cfg.logs.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "mvn",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lib}",
                "-DincludeScope=runtime",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        started = time.monotonic()
        while True:
            try:
                rc = proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                jars = sum(1 for _ in lib.glob("*.jar"))
                say(f"  still resolving ({time.monotonic() - started:.0f}s, {jars} jars so far; log: {log})")
    if rc != 0:
        raise StackError(f"maven could not resolve the Kafka jars (exit {rc}); read its log: {log}\n{_tail(log)}")
    stamp.write_text(POM.read_text())
    say(f"  {sum(1 for _ in lib.glob('*.jar'))} jars ready")
    return lib


# ---------------------------------------------------------------------------------------------- kafka

JVM_FLAGS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
    "-XX:+ExitOnOutOfMemoryError",
]

SERVER_PROPERTIES = """\
# Written by dev/stack.py: a single-node KRaft cluster (broker and controller in one process) for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}

default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Replicators create their target topics themselves; auto-creation would hide bugs.
auto.create.topics.enable=false
delete.topic.enable=true
num.partitions=1
group.initial.rebalance.delay.ms=0
# Retention tests use short topic retention; check often so they finish quickly.
log.retention.check.interval.ms=2000

# An authorizer, so topic ACLs can be created, read and copied; PLAINTEXT clients are ANONYMOUS super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=true

num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=8388608
"""


def _kafka_cluster_id() -> str:
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not candidate.startswith("-") and candidate not in ("AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAQ"):
            return candidate


@dataclass
class KafkaCluster:
    name: str
    port: int

    @property
    def controller_port(self) -> int:
        return self.port + 1

    def folder(self, cfg: StackConfig) -> Path:
        return cfg.run_dir / "kafka" / self.name

    def properties(self, cfg: StackConfig) -> Path:
        return self.folder(cfg) / "server.properties"

    def log(self, cfg: StackConfig) -> Path:
        return cfg.logs / f"kafka-{self.name}.log"

    def ensure_formatted(self, cfg: StackConfig, lib: Path) -> None:
        data = self.folder(cfg) / "data"
        props = self.properties(cfg)
        props.parent.mkdir(parents=True, exist_ok=True)
        props.write_text(SERVER_PROPERTIES.format(port=self.port, cport=self.controller_port, data=data))
        if (data / "meta.properties").exists():
            return
        say(f"formatting Kafka cluster '{self.name}' storage in {data}")
        result = subprocess.run(
            [
                "java",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                f"-Dlog4j2.configurationFile={LOG4J_TOOLS}",
                "-cp",
                f"{lib}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _kafka_cluster_id(),
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka '{self.name}' failed:\n{result.stdout}\n{result.stderr}")

    def start(self, cfg: StackConfig, lib: Path) -> subprocess.Popen[bytes] | None:
        pidfile = PidFile(cfg, f"kafka-{self.name}")
        pid = pidfile.live_pid()
        if pid is not None:
            say(f"Kafka '{self.name}' already running (pid {pid}) on 127.0.0.1:{self.port}")
            return None
        if _port_open(self.port):
            say(f"Kafka '{self.name}': something not started by this tool listens on {self.port}; using it")
            return None
        self.ensure_formatted(cfg, lib)
        heap = cfg.kafka_heap
        argv = [
            "java",
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:MaxDirectMemorySize=256m",
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={LOG4J_SERVER}",
            f"-Dkafka.logs.dir={self.folder(cfg)}",
            "-cp",
            f"{lib}/*",
            "kafka.Kafka",
            str(self.properties(cfg)),
        ]
        say(f"starting Kafka '{self.name}' on 127.0.0.1:{self.port}")
        return spawn(cfg, f"kafka-{self.name}", argv, marker=str(self.properties(cfg)))

    def stop(self, cfg: StackConfig) -> None:
        pidfile = PidFile(cfg, f"kafka-{self.name}")
        pid = pidfile.live_pid()
        if pid is not None:
            stop_pid(f"Kafka '{self.name}'", pid)
        pidfile.clear()

    def is_up(self, cfg: StackConfig) -> bool:
        return _port_open(self.port)


def group_coordinator_ready(bootstrap: str) -> bool:
    async def probe() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            await admin.find_coordinator("ferry-stack-readiness")
        finally:
            await admin.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 10))
    except (KafkaError, OSError, TimeoutError):
        return False
    return True


def kafka_clusters(cfg: StackConfig) -> list[KafkaCluster]:
    return [KafkaCluster("source", cfg.source_port), KafkaCluster("target", cfg.target_port)]


# ---------------------------------------------------------------------------------------------- postgres


class Postgres:
    """A PostgreSQL server of this stack's own on 127.0.0.1, with the 'ferry' role and database."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.as_root = os.geteuid() == 0
        if self.as_root:
            self.data = Path(f"/var/lib/postgresql/ferry-dev-{cfg.postgres_port}")
        else:
            self.data = cfg.run_dir / "postgres"
        self.socket_dir = self.data if len(str(self.data)) < 80 else Path(f"/tmp/ferry-pg-{cfg.postgres_port}")
        self.log = self.data / "postgres.log" if self.as_root else cfg.logs / "postgres.log"

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self.as_root else argv

    def _bin(self, tool: str) -> str:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise StackError("PostgreSQL is not installed")
        return str(bin_dir / tool)

    def _pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def is_up(self) -> bool:
        return _port_open(self.cfg.postgres_port)

    def _connect_as_owner(self, **options: Any) -> psycopg.Connection[Any]:
        """A session as the cluster's owner over its Unix socket (trust authentication, set by initdb)."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.cfg.postgres_port, user="postgres", dbname="postgres", **options
        )

    def _accepting_connections(self) -> bool:
        """The port opens before startup recovery ends ("the database system is starting up"); only a session counts."""
        if not self.is_up():
            return False
        try:
            self._connect_as_owner(connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def _up_or_failed(self) -> bool:
        """Up; or raise at once when the server already gave up (e.g. its port is taken) instead of waiting."""
        if self._accepting_connections():
            return True
        if self._pid() is None and "FATAL" in _tail(self.log, 10):
            raise StackError(f"PostgreSQL failed to start; read its log: {self.log}\n{_tail(self.log)}")
        return False

    def start(self) -> None:
        port = self.cfg.postgres_port
        marker = self.cfg.run_dir / "pids" / "postgres.json"
        if self._pid() is not None:
            say(f"PostgreSQL already running (pid {self._pid()}) on 127.0.0.1:{port}")
        elif self.is_up():
            say(f"PostgreSQL: something not started by this tool listens on {port}; using it")
            self._ensure_database(external=True)
            return
        else:
            self._init()
            say(f"starting PostgreSQL on 127.0.0.1:{port} (data {self.data})")
            result = subprocess.run(
                self._as_owner(
                    [
                        self._bin("pg_ctl"),
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.log),
                        "-W",
                        "-o",
                        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.socket_dir}",
                        "start",
                    ]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise StackError(
                    f"PostgreSQL did not start ({result.stderr.strip()}); read its log: {self.log}\n{_tail(self.log)}"
                )
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"data": str(self.data)}))
        wait_for("PostgreSQL", self._up_or_failed, 60, self.log)
        self._ensure_database(external=False)

    def _init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        say(f"initialising a PostgreSQL cluster in {self.data}")
        self.data.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.data, "postgres", "postgres")
        if self.socket_dir != self.data:
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            if self.as_root:
                shutil.chown(self.socket_dir, "postgres", "postgres")
        result = subprocess.run(
            self._as_owner(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def _ensure_database(self, external: bool) -> None:
        if external:
            try:
                psycopg.connect(self.cfg.database_url.replace("+psycopg", ""), connect_timeout=5).close()
            except psycopg.Error as exc:
                raise StackError(
                    f"the PostgreSQL on port {self.cfg.postgres_port} was not started by this tool and has no "
                    f"usable 'ferry' database ({exc}); stop it or set FERRY_DEV_POSTGRES_PORT"
                ) from None
            return
        with self._connect_as_owner(autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'ferry'").fetchone() is None:
                conn.execute("CREATE ROLE ferry LOGIN CREATEDB PASSWORD 'ferry'")
            for db in ("ferry", "ferry_test"):
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
                    say(f"creating database {db}")
                    conn.execute(f'CREATE DATABASE "{db}" OWNER ferry')

    def stop(self) -> None:
        marker = self.cfg.run_dir / "pids" / "postgres.json"
        if not marker.exists():
            return
        if self._pid() is not None:
            say(f"stopping PostgreSQL (pid {self._pid()})")
            subprocess.run(
                self._as_owner([self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                check=False,
            )
        marker.unlink(missing_ok=True)


def migrate(database_url: str) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


# ---------------------------------------------------------------------------------------------- redis


class Redis:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.pidfile = PidFile(cfg, "redis")
        self.log = cfg.logs / "redis.log"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.cfg.redis_port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        pid = self.pidfile.live_pid()
        if pid is not None:
            say(f"Redis already running (pid {pid}) on 127.0.0.1:{self.cfg.redis_port}")
            return
        if self.ping():
            say(f"Redis: something not started by this tool answers on {self.cfg.redis_port}; using it")
            return
        data = self.cfg.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        say(f"starting Redis on 127.0.0.1:{self.cfg.redis_port}")
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.cfg.redis_port),
            "--dir",
            str(data),
            "--daemonize",
            "no",
            "--save",
            "60 1000",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]
        proc = spawn(self.cfg, "redis", argv, marker=f"127.0.0.1:{self.cfg.redis_port}")
        wait_for("Redis", self.ping, 30, self.log, proc)

    def stop(self) -> None:
        pid = self.pidfile.live_pid()
        if pid is not None:
            stop_pid("Redis", pid)
        self.pidfile.clear()


# ---------------------------------------------------------------------------------------------- ferry


def _log_has(path: Path, needle: str, since: int) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(since)
            return needle.encode() in f.read()
    except OSError:
        return False


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def celery_worker_argv(hostname: str, *extra: str, loglevel: str = "INFO") -> list[str]:
    """A fleet worker: Celery with this checkout's app (the one command line the stack, tests and bench use)."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--loglevel", loglevel, "--hostname", hostname, *extra,
    ]  # fmt: skip


def celery_beat_argv(schedule: Path, pidfile: Path | None, *, loglevel: str = "INFO") -> list[str]:
    """Celery beat, which triggers the fleet's periodic reconcile; no pid file when ``pidfile`` is None."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
        "--loglevel", loglevel, "--schedule", str(schedule), "--pidfile", "" if pidfile is None else str(pidfile),
    ]  # fmt: skip


class FerryProcess:
    """The API, the Celery worker or beat: a child process running this checkout's code."""

    def __init__(self, cfg: StackConfig, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.pidfile = PidFile(cfg, name)
        self.log = cfg.logs / f"{name}.log"

    def argv(self) -> list[str]:
        py = sys.executable
        if self.name == "api":
            return [
                py,
                "-m",
                "uvicorn",
                "--factory",
                "api.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.cfg.api_port),
                "--no-access-log",
            ]
        if self.name == "worker":
            return celery_worker_argv(f"ferry-worker-{self.cfg.api_port}@%h", "--concurrency", "2")
        return celery_beat_argv(self.cfg.run_dir / "celerybeat-schedule", self.cfg.run_dir / "celerybeat.pid")

    def marker(self) -> str:
        """A piece of the command line unique to this stack, so a recycled pid is never taken for ours."""
        if self.name == "api":
            return f"--port {self.cfg.api_port}"
        if self.name == "worker":
            return f"ferry-worker-{self.cfg.api_port}@"
        return str(self.cfg.run_dir / "celerybeat-schedule")

    def healthy(self) -> bool:
        if self.name != "api":
            return self.pidfile.live_pid() is not None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.cfg.api_port}/healthz", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start(self) -> None:
        pid = self.pidfile.live_pid()
        if pid is not None:
            say(f"{self.name} already running (pid {pid})")
            return
        if self.name == "api" and _port_open(self.cfg.api_port):
            raise StackError(
                f"port {self.cfg.api_port} is taken by a process this tool did not start; "
                "stop it or set FERRY_DEV_API_PORT"
            )
        offset = _log_size(self.log)
        say(f"starting {self.name}")
        argv = self.argv()
        proc = spawn(self.cfg, self.name, argv, marker=self.marker(), env=self.cfg.app_env())
        ready_line = {"api": "Application startup complete", "worker": " ready.", "beat": "beat: Starting"}
        wait_for(self.name, lambda: _log_has(self.log, ready_line[self.name], offset), 90, self.log, proc)

    def stop(self) -> None:
        pid = self.pidfile.live_pid()
        if pid is not None:
            stop_pid(self.name, pid)
        self.pidfile.clear()


# ---------------------------------------------------------------------------------------------- commands


def write_endpoints(cfg: StackConfig) -> None:
    (cfg.run_dir / "stack.json").write_text(
        json.dumps(
            {
                "database_url": cfg.database_url,
                "test_database_url": cfg.database_url.rsplit("/", 1)[0] + "/ferry_test",
                "redis_url": cfg.redis_url,
                "kafka": cfg.kafka_clusters,
                "api": f"http://127.0.0.1:{cfg.api_port}",
                "kafka_lib": str(kafka_lib(cfg)),
                "logs": str(cfg.logs),
            },
            indent=2,
        )
    )


def up(cfg: StackConfig, infra_only: bool) -> None:
    started = time.monotonic()
    cfg.logs.mkdir(parents=True, exist_ok=True)
    ensure_packages()
    lib = ensure_kafka_jars(cfg)
    # The JVMs take longest: start both clusters first and wait for them after PostgreSQL and Redis.
    starting = [(cluster, cluster.start(cfg, lib)) for cluster in kafka_clusters(cfg)]
    pg = Postgres(cfg)
    pg.start()
    migrate(cfg.database_url)
    migrate(cfg.database_url.rsplit("/", 1)[0] + "/ferry_test")
    say("database migrations applied")
    Redis(cfg).start()
    for cluster, proc in starting:
        wait_for(f"Kafka '{cluster.name}'", lambda c=cluster: c.is_up(cfg), 90, cluster.log(cfg), proc)  # type: ignore[misc]
        # A fresh cluster creates its offsets topic on the first group request; until then every consumer
        # group call fails. Make that happen now, so the stack is ready for groups when `up` returns.
        wait_for(
            f"Kafka '{cluster.name}' group coordinator",
            lambda c=cluster: group_coordinator_ready(f"127.0.0.1:{c.port}"),  # type: ignore[misc]
            90,
            cluster.log(cfg),
            proc,
        )
        say(f"Kafka '{cluster.name}' up on 127.0.0.1:{cluster.port}")
    write_endpoints(cfg)
    if not infra_only:
        for name in ("api", "worker", "beat"):
            FerryProcess(cfg, name).start()
    say(f"stack up in {time.monotonic() - started:.0f}s")
    if not infra_only:
        say(f"  API      http://127.0.0.1:{cfg.api_port}  (docs /docs, health /healthz)")
    say(f"  Kafka    source {cfg.kafka_clusters['source']}, target {cfg.kafka_clusters['target']}")
    say(f"  Postgres {cfg.database_url}")
    say(f"  Redis    {cfg.redis_url}")
    say(f"  logs     {cfg.logs}")


def down(cfg: StackConfig, purge: bool) -> None:
    for name in ("beat", "worker", "api"):
        FerryProcess(cfg, name).stop()
    for cluster in kafka_clusters(cfg):
        cluster.stop(cfg)
    Redis(cfg).stop()
    pg = Postgres(cfg)
    pg.stop()
    if purge:
        # Only data this tool created: the run folder and its own PostgreSQL cluster, never a foreign server's.
        if pg.is_up():
            raise StackError(f"PostgreSQL on port {cfg.postgres_port} is still running; not purging its data")
        for folder in (cfg.run_dir, pg.data):
            if folder.exists():
                say(f"deleting {folder}")
                shutil.rmtree(folder)
    say("stack down")


def status(cfg: StackConfig) -> int:
    rows: list[tuple[str, bool, str]] = []
    for cluster in kafka_clusters(cfg):
        rows.append((f"kafka-{cluster.name}", cluster.is_up(cfg), f"127.0.0.1:{cluster.port}"))
    rows.append(("postgres", Postgres(cfg).is_up(), f"127.0.0.1:{cfg.postgres_port}"))
    rows.append(("redis", Redis(cfg).ping(), f"127.0.0.1:{cfg.redis_port}"))
    for name in ("api", "worker", "beat"):
        rows.append((name, FerryProcess(cfg, name).healthy(), str(cfg.logs / f"{name}.log")))
    for name, ok, where in rows:
        print(f"{name:14} {'up' if ok else 'DOWN':5} {where}")
    return 0 if all(ok for _, ok, _ in rows) else 1


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.stack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start everything that is not running")
    up_parser.add_argument("--infra", action="store_true", help="only Kafka, PostgreSQL and Redis")
    down_parser = sub.add_parser("down", help="stop what this tool started")
    down_parser.add_argument("--purge", action="store_true", help="also delete the stack's data and logs")
    sub.add_parser("status", help="show what is up")
    sub.add_parser("restart", help="restart the API, worker and beat (after a code change); infra keeps running")
    args = parser.parse_args(list(argv) if argv is not None else None)
    cfg = StackConfig()
    try:
        if args.command == "up":
            up(cfg, infra_only=args.infra)
        elif args.command == "down":
            down(cfg, purge=args.purge)
        elif args.command == "restart":
            for name in ("beat", "worker", "api"):
                FerryProcess(cfg, name).stop()
            up(cfg, infra_only=False)
        else:
            return status(cfg)
    except StackError as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
