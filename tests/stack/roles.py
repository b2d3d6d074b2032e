"""``ferry api``, ``ferry worker`` and ``ferry beat`` as the real processes a deployment runs, from this checkout,
with stdout and stderr each in a file of their own (tests/stack/test_json_logs.py, test_api_drain.py)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.conftest import ROOT

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepts_connections(port: int) -> bool:
    """Whether a server listens on the port: uvicorn logs "Application startup complete" before it binds."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


class Role:
    """One ``ferry <role>`` process (``python -m cli``, so this checkout's code runs)."""

    def __init__(self, argv: list[str], env: dict[str, str], logs: Path, name: str) -> None:
        self.stdout = logs / f"{name}.stdout"
        self.stderr = logs / f"{name}.stderr"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *argv], cwd=ROOT, env=env, stdout=out, stderr=err
            )

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait_until(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Poll ``probe`` until it returns something truthy; fail with the process's output if it exits first or
        the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found:
                return found
            assert self.proc.poll() is None, f"{what}: the process exited ({self.proc.returncode}):\n{self.tail()}"
            assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s:\n{self.tail()}"
            time.sleep(0.1)

    def tail(self) -> str:
        return self.output()[-4000:]

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, and the exit status once it stopped (killed if it does not within ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"did not stop within {timeout:.0f}s of SIGTERM:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
