"""Shared plumbing: the stack's endpoints, logging, condition waits with deadlines, processes, machine facts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# The dev stack's JVM flags: brokers, MM2 and the perf tools all run with the same ones.
from dev.stack import JVM_FLAGS

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"

MB = 1_000_000  # every MB/s figure of the harness is 10^6 bytes per second


class BenchError(RuntimeError):
    """A step failed; the message says why and names the log to read."""


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Stack:
    source: str
    target: str
    api: str
    kafka_lib: Path


def load_stack() -> Stack:
    # A git worktree has no stack of its own: FERRY_DEV_RUN_DIR names the checkout's that runs it (as for tests).
    path = Path(os.environ.get("FERRY_DEV_RUN_DIR", ROOT / ".run")) / "stack.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {path} ({exc}); start the local stack first: python -m dev.stack up") from exc
    lib = Path(data["kafka_lib"])
    if not any(lib.glob("connect-mirror-*.jar")) or not any(lib.glob("kafka-tools-*.jar")):
        raise BenchError(f"{lib} lacks connect-mirror or kafka-tools jars; run python -m dev.stack up")
    return Stack(
        source=data["kafka"]["source"],
        target=data["kafka"]["target"],
        api=data.get("api", "http://127.0.0.1:8080"),
        kafka_lib=lib,
    )


async def wait_until(
    what: str,
    check: Callable[[], Awaitable[bool]],
    limit_s: float,
    *,
    interval: float = 0.25,
    progress: Callable[[], str] | None = None,
    progress_every: float = 5.0,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> float:
    """Poll ``check`` until it holds; raise BenchError after ``limit_s`` seconds or when ``proc`` exits.

    Prints a progress line every ``progress_every`` seconds. Returns the monotonic time at which it held.
    """
    start = time.monotonic()
    deadline = start + limit_s
    next_note = start + progress_every
    while True:
        if await check():
            return time.monotonic()
        now = time.monotonic()
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: process exited with code {proc.returncode}; {tail_hint(log)}")
        if now > deadline:
            raise BenchError(f"{what}: not reached within {limit_s:.0f}s; {tail_hint(log)}")
        if now >= next_note:
            extra = progress() if progress else ""
            say(f"  waiting for {what}: {now - start:.0f}s elapsed, {deadline - now:.0f}s left {extra}".rstrip())
            next_note = now + progress_every
        await asyncio.sleep(interval)


def tail_hint(log: Path | None, lines: int = 12) -> str:
    if log is None:
        return "no log"
    try:
        content = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"log {log} (not written)"
    tail = "\n".join("    " + line[:300] for line in content[-lines:])
    return f"read its log: {log}\n{tail}"


# ---------------------------------------------------------------------------------------------- processes


def spawn(argv: list[str], log: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a process in its own session with stdout and stderr to ``log`` (never an unread pipe)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
            env=env,
        )


async def stop_process(
    proc: subprocess.Popen[bytes], name: str, grace: float = 30.0, sig: signal.Signals = signal.SIGTERM
) -> int | None:
    """Signal the process we started (by its pid; SIGTERM by default), wait up to ``grace`` s, then SIGKILL."""
    if proc.poll() is not None:
        return proc.returncode
    os.kill(proc.pid, sig)
    try:
        await asyncio.to_thread(proc.wait, grace)
    except subprocess.TimeoutExpired:
        say(f"{name} (pid {proc.pid}) ignored {sig.name} for {grace:.0f}s; sending SIGKILL")
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
    return proc.returncode


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (its threads included), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu_seconds(pid: int) -> float | None:
    """``cpu_seconds`` of a process and of its live descendants (uvicorn's supervisor and its worker processes)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in _descendants(pid))


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            pending.extend(children)
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def system_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (all cores: user, nice, system, irq, softirq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def broker_pids() -> dict[str, int]:
    """The brokers' pids from the stack's pid files (for their CPU share during a measurement)."""
    out: dict[str, int] = {}
    for name in ("kafka-source", "kafka-target"):
        try:
            data = json.loads((ROOT / ".run" / "pids" / f"{name}.json").read_text())
        except (OSError, ValueError):
            continue
        pid = int(data["pid"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if data.get("marker", "") in cmdline:
            out[name] = pid
    return out


class CpuWindow:
    """CPU use over a time window: the replicator, the brokers, this harness, the whole machine, the rest."""

    def __init__(
        self, replicator_pid: int, *, extra_replicator_pids: tuple[int, ...] = (), brokers: dict[str, int] | None = None
    ) -> None:
        """``extra_replicator_pids``: further processes of the same replicator (counted in replicator_cores);
        ``brokers``: the brokers' pids by name (default: the stack's two)."""
        self.pids = {"replicator": replicator_pid, **(broker_pids() if brokers is None else brokers)}
        self.pids |= {f"replicator-{i + 2}": pid for i, pid in enumerate(extra_replicator_pids)}
        self.pids["harness"] = os.getpid()
        self.start_wall = time.monotonic()
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.start_machine = system_busy_seconds()

    def finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self.start_wall
        out: dict[str, Any] = {"window_s": round(wall, 3)}
        if wall <= 0:
            return out
        known = 0.0
        for name, pid in self.pids.items():
            before, after = self.start[name], cpu_seconds(pid)
            if before is not None and after is not None:
                out[f"{name}_cores"] = round((after - before) / wall, 2)
                known += after - before
        parts = [v for k, v in out.items() if k.startswith("replicator-")]
        if parts and "replicator_cores" in out:
            out["replicator_cores"] = round(out["replicator_cores"] + sum(parts), 2)
        machine = system_busy_seconds()
        if machine is not None and self.start_machine is not None:
            busy = machine - self.start_machine
            out["machine_busy_cores"] = round(busy / wall, 2)
            out["other_processes_cores"] = round(max(0.0, busy - known) / wall, 2)
        return out


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def java_argv(
    lib: Path, main_class: str, args: list[str], *, heap: str, log4j: Path, extra: list[str] | None = None
) -> list[str]:
    return [
        "java",
        f"-Xmx{heap}",
        *JVM_FLAGS,
        *(extra or []),
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{lib}/*",
        main_class,
        *args,
    ]


# ---------------------------------------------------------------------------------------------- machine


def read_ahead_kib(path: Path) -> int | None:
    """The read-ahead of the block device holding ``path`` (None where /sys does not say).

    Brokers map every partition's two index files; each first write into one faults in up to this much of the
    (sparse) file. This VM's disk came with 8,192 KiB: with 10,000 partitions the page cache filled with zeros,
    kswapd took half a core and the source broker stalled (docs/performance.md, "2026-12-02, fourth")."""
    try:
        device = os.stat(path).st_dev
        block = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}").resolve()
        for queue in (block / "queue", block.parent / "queue"):  # a partition's queue is its disk's
            if (queue / "read_ahead_kb").exists():
                return int((queue / "read_ahead_kb").read_text())
    except (OSError, ValueError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    model = "unknown"
    cpus = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("processor"):
                cpus += 1
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_count": cpus or os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "hostname": platform.node(),
        "loadavg_at_start": loadavg(),
        "disk_read_ahead_kib": read_ahead_kib(ROOT),
        "note": "shared 2-core box: other engineers run tests against the same brokers; runs are noisy",
    }


def versions(lib: Path) -> dict[str, Any]:
    java = "unknown"
    try:
        result = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60, check=False)
        java = (result.stderr or result.stdout).splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    kafka = "unknown"
    for jar in lib.glob("kafka-clients-*.jar"):
        match = re.match(r"kafka-clients-(.+)\.jar", jar.name)
        if match:
            kafka = match.group(1)
    packages: dict[str, str] = {}
    for name in ("aiokafka", "boto3", "cramjam"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=30, check=False
        ).stdout.strip()
    return {
        "python": sys.version.split()[0],
        "java": java,
        "kafka": kafka,
        "kafka_lib": str(lib),
        **packages,
        "git_commit": commit,
    }
