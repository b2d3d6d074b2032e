"""What ships: the wheel holds what production runs (api, models with its migrations, workers) and nothing else,
an installed copy migrates a database from anywhere, the API process never loads the copier, and a fresh
virtualenv installed with the image's own steps runs every role with the ``ferry`` command."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import psycopg
import pytest

from dev.scratch_database import scratch_database
from models.migrate import head_revision
from models.settings import FerrySettings
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A copy of the sources: setuptools leaves build/ behind, and a stale build/ in the checkout could put deleted
    # modules into a wheel.
    copy = tmp_path_factory.mktemp("source") / "ferry"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".run",
            ".cache",
            "build",
            "*.egg-info",
            "__pycache__",
            "*.so",  # built anew
        ),
    )
    return copy


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("ferry-*.whl")
    return built


def test_the_wheel_holds_what_production_runs_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert packages == {"api", "cli", "models", "workers"}, "dev/, bench/ and tests/ stay out of the wheel"
    assert "models/migrations/alembic.ini" in names
    assert "models/migrations/env.py" in names
    assert "models/migrations/script.py.mako" in names
    revisions = [name for name in names if name.startswith("models/migrations/versions/0")]
    assert len(revisions) >= 6
    assert "workers/engine/aiokafka_hooks.py" in names
    assert any(name.startswith("workers/engine/_splice.") and name.endswith(".so") for name in names), (
        "the engine's compiled record splice is built into the wheel"
    )


@pytest.fixture
def empty_database(test_settings: FerrySettings) -> Iterator[str]:
    """A database with no schema yet: the installed package's own migration creates it."""
    with scratch_database(test_settings.database_url, "ferry_wheel", migrate=False) as url:
        yield url


def test_an_installed_ferry_migrates_its_database_from_anywhere(
    wheel: Path, tmp_path: Path, empty_database: str
) -> None:
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy first on the path, run from a folder with no checkout in it.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, models.migrate as m; print(m.__file__); sys.exit(m.main(['upgrade', '--database-url', "
            f"{empty_database!r}]))",
        ],
        cwd=elsewhere,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(installed)), "the installed copy ran, not the checkout"
    with psycopg.connect(empty_database.replace("postgresql+psycopg://", "postgresql://")) as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone() or (None,)
    assert version == head_revision()


def test_the_api_process_loads_neither_the_copier_nor_the_fleet() -> None:
    probe = (
        "import sys, api.app; "
        "loaded = [m for m in ('workers.engine.copier', 'workers.engine.aiokafka_hooks', 'workers.fleet', "
        "'workers.celery_app') if m in sys.modules]; print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "", f"the API imported {result.stdout.strip()}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(what: str, probe: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert proc.poll() is None, f"{what}: the process exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.25)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


@pytest.mark.slow
def test_a_fresh_virtualenv_runs_every_role_with_the_ferry_command(
    source: Path, tmp_path: Path, empty_database: str, test_settings: FerrySettings
) -> None:
    """No OCI builder can pull a base image on this machine, so the image's install steps (Dockerfile: the
    dependencies from pyproject.toml, then the package without them) run here in a fresh virtualenv."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    requirements = tmp_path / "requirements.txt"
    with (source / "pyproject.toml").open("rb") as pyproject:
        requirements.write_text("\n".join(tomllib.load(pyproject)["project"]["dependencies"]))
    subprocess.run([*pip, "-r", str(requirements)], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", str(source)], check=True, timeout=300)
    ferry = str(venv / "bin" / "ferry")
    elsewhere = tmp_path / "elsewhere"  # no checkout on the path: the installed package runs
    elsewhere.mkdir()
    bare = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    version = subprocess.run([ferry, "--version"], cwd=elsewhere, env=bare, capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"ferry {metadata.version('ferry')}"

    # Production defaults point at nothing: the missing settings are named, and nothing is contacted.
    refused = subprocess.run(
        [ferry, "api"], cwd=elsewhere, env=bare, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2
    assert "FERRY_DATABASE_URL is required" in refused.stderr and "FERRY_REDIS_URL is required" in refused.stderr

    settings = test_settings.model_copy(update={"database_url": empty_database})
    env = {**bare, **settings.as_environment(), "FERRY_WORKER_LIVENESS_FILE": str(tmp_path / "worker.live")}
    migrated = subprocess.run(
        [ferry, "migrate"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(empty_database.replace("postgresql+psycopg://", "postgresql://")) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone() or (None,)
    assert revision == head_revision()

    port = _free_port()
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    with api_log.open("wb") as out:
        api = subprocess.Popen([ferry, "api", "--host", "127.0.0.1", "--port", str(port)], cwd=elsewhere, env=env,
                               stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(
            [ferry, "worker", "--hostname", f"packaging-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "WARNING"],
            cwd=elsewhere, env={**env, "FERRY_CELERY_QUEUE": f"packaging-{uuid.uuid4().hex[:8]}"},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def api_live() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        _wait("ferry api serving /livez", api_live, api, api_log, 60)
        probe = [ferry, "healthcheck", "--pid"]
        _wait("ferry worker live", lambda: subprocess.run([*probe, str(worker.pid)], cwd=elsewhere, env=env,
                                                          capture_output=True, check=False).returncode == 0,
              worker, worker_log, 90)  # fmt: skip
        api_check = subprocess.run([*probe, str(api.pid)], cwd=elsewhere, env=env, capture_output=True, check=False)
        assert api_check.returncode == 0, api_check.stderr
        fleet = subprocess.run([ferry, "fleet", "status", "--json"], cwd=elsewhere, env=env, capture_output=True,
                               text=True, check=False)  # fmt: skip
        assert fleet.returncode == 0, fleet.stderr
        assert worker.pid in {w["pid"] for w in json.loads(fleet.stdout)["liveWorkers"]}, fleet.stdout
    finally:
        api_exit = _stop(api)
        worker_exit = _stop(worker)
    # uvicorn finishes the requests in flight, then re-raises the SIGTERM (exit by that signal, as a supervisor
    # expects of a process it terminated).
    assert api_exit in (0, -signal.SIGTERM), api_log.read_text()[-2000:]
    assert "Finished server process" in api_log.read_text()
    assert worker_exit == 0, worker_log.read_text()[-2000:]
