"""The dev stack tool on a second, private stack: `up` twice is harmless, FERRY_DEV_WORKERS and `scale` set how many
workers run, `down` leaves no process behind."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports() -> dict[str, int]:
    """Kafka needs port to port+5 (controller and secured listeners), so pick from a quiet range and check each."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000, 30)  # below Linux's ephemeral range, where clients' ports come from
        ports = {"source": base, "target": base + 10, "postgres": base + 20, "redis": base + 21, "api": base + 22,
                 "idp": base + 23, "secrets": base + 24}  # fmt: skip
        kafka = [cluster + offset for cluster in (base, base + 10) for offset in range(6)]
        if all(_free(p) for p in {*ports.values(), *kafka}):
            return ports
    raise RuntimeError("no free port range found")


def stack_pids(run_dir: Path) -> dict[str, int]:
    pids = {}
    for path in (run_dir / "pids").glob("*.json"):
        data = json.loads(path.read_text())
        if "pid" in data:
            pids[path.stem] = int(data["pid"])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(proc.name) != os.getpid():
                found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_up_twice_is_harmless_scale_sets_the_workers_and_down_leaves_nothing(tmp_path: Path) -> None:
    ports = free_ports()
    run_dir = tmp_path / "run"
    env = dict(
        os.environ,
        FERRY_DEV_RUN_DIR=str(run_dir),
        FERRY_DEV_SOURCE_PORT=str(ports["source"]),
        FERRY_DEV_TARGET_PORT=str(ports["target"]),
        FERRY_DEV_POSTGRES_PORT=str(ports["postgres"]),
        FERRY_DEV_REDIS_PORT=str(ports["redis"]),
        FERRY_DEV_API_PORT=str(ports["api"]),
        FERRY_DEV_IDP_PORT=str(ports["idp"]),
        FERRY_DEV_SECRETS_PORT=str(ports["secrets"]),
        FERRY_DEV_KAFKA_HEAP="256m",
        FERRY_DEV_WORKERS="2",
    )

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dev.stack", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    try:
        first = stack("up")
        assert first.returncode == 0, first.stdout + first.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['api']}/healthz", timeout=10) as resp:
            health = json.loads(resp.read())
        assert health["status"] == "up", health
        pids = stack_pids(run_dir)
        assert set(pids) >= {
            "kafka-source", "kafka-target", "redis", "api", "worker", "worker-2", "beat", "idp", "secrets-manager"
        }  # fmt: skip

        second = stack("up")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
        assert stack_pids(run_dir) == pids, "a second `up` must not start anything again"
        assert stack("status").returncode == 0

        more = stack("scale", "3")
        assert more.returncode == 0, more.stdout + more.stderr
        scaled = stack_pids(run_dir)
        assert {name: pid for name, pid in scaled.items() if name != "worker-3"} == pids
        assert alive(scaled["worker-3"])
        assert "worker-3" in stack("status").stdout
        fewer = stack("scale", "1")
        assert fewer.returncode == 0, fewer.stdout + fewer.stderr
        assert "stopping worker-3" in fewer.stdout and "stopping worker-2" in fewer.stdout
        assert not alive(scaled["worker-2"]) and not alive(scaled["worker-3"])
        assert alive(pids["worker"])
        pids = scaled
    finally:
        down = stack("down", "--purge")
    assert down.returncode == 0, down.stdout + down.stderr
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert processes_mentioning(str(run_dir)) == []
    assert processes_mentioning(f"ferry-dev-{ports['postgres']}") == []
    assert stack("status").returncode == 1
