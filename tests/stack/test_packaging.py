"""What ships: the wheel holds what production runs (api, models with its migrations, workers) and nothing else,
an installed copy migrates a database from anywhere, and the API process never loads the copier."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from models.migrate import head_revision
from models.settings import FerrySettings
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the sources: setuptools leaves build/ behind, and a stale build/ in the checkout could
    # put deleted modules into the wheel.
    source = tmp_path_factory.mktemp("source") / "ferry"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", ".run", ".cache", "build", "*.egg-info", "__pycache__"),
    )
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


@pytest.fixture
def scratch_database(test_settings: FerrySettings) -> Iterator[str]:
    name = f"ferry_wheel_{uuid.uuid4().hex[:10]}"
    dsn = test_settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield test_settings.database_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_installed_ferry_migrates_its_database_from_anywhere(
    wheel: Path, tmp_path: Path, scratch_database: str
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
            f"{scratch_database!r}]))",
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
    with psycopg.connect(scratch_database.replace("postgresql+psycopg://", "postgresql://")) as conn:
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
