"""Settings are read once when a process starts and checked together: a missing database or Redis URL, a lease
too short for its tick, or a dead-worker timeout shorter than the heartbeat stops the process with a message naming
the variables. They come from ``FERRY_*`` variables or from files in ``FERRY_SETTINGS_DIR``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.settings import FerrySettings, SettingsError, read_settings


@pytest.fixture(autouse=True)
def _services(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the database and Redis are: required, and never defaulted (to a developer's ports or otherwise)."""
    for name in [n for n in os.environ if n.startswith("FERRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FERRY_DATABASE_URL", "postgresql+psycopg://ferry:secret@db.internal:5432/ferry")
    monkeypatch.setenv("FERRY_REDIS_URL", "redis://redis.internal:6379/0")


def test_the_lease_margin_covers_the_write_timeout_and_grows_with_the_lease() -> None:
    # A write that passed the lease check is abandoned after the write timeout: the margin must outlast it.
    assert FerrySettings(fleet_lease_seconds=10).fleet_lease_margin_seconds == 5.5
    assert FerrySettings(fleet_lease_seconds=60).fleet_lease_margin_seconds == 12.0
    short = FerrySettings(fleet_lease_seconds=3, fleet_tick_seconds=0.5, fleet_write_timeout_seconds=0.5)
    assert short.fleet_lease_margin_seconds == 1.0
    # What is left is how long a worker trusts a lease after renewing it.
    assert FerrySettings(fleet_lease_seconds=10).fleet_lease_validity_seconds == 4.5
    assert short.fleet_lease_validity_seconds == 2.0


def test_a_lease_must_span_three_ticks_after_its_margin() -> None:
    with pytest.raises(ValidationError, match=r"FERRY_FLEET_LEASE_SECONDS .* three ticks of FERRY_FLEET_TICK_SECONDS"):
        FerrySettings(fleet_lease_seconds=10, fleet_tick_seconds=2)
    with pytest.raises(ValidationError, match="FERRY_FLEET_WRITE_TIMEOUT_SECONDS"):
        FerrySettings(fleet_lease_seconds=10, fleet_write_timeout_seconds=8)
    FerrySettings(fleet_lease_seconds=12, fleet_tick_seconds=2, worker_dead_after_seconds=8)


def test_a_worker_is_declared_dead_only_after_three_missed_heartbeats() -> None:
    with pytest.raises(ValidationError, match="FERRY_WORKER_DEAD_AFTER_SECONDS"):
        FerrySettings(fleet_tick_seconds=2, fleet_lease_seconds=30, worker_dead_after_seconds=5)


def test_the_environment_drives_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_FLEET_LEASE_SECONDS", "20")
    monkeypatch.setenv("FERRY_FLEET_WRITE_TIMEOUT_SECONDS", "4")
    monkeypatch.setenv("FERRY_FLEET_TICK_SECONDS", "0.5")
    settings = FerrySettings()
    assert (settings.fleet_lease_seconds, settings.fleet_tick_seconds) == (20.0, 0.5)
    assert settings.fleet_write_timeout_seconds == 4.0 and settings.fleet_lease_margin_seconds == 4.5


def test_a_missing_database_or_redis_url_stops_the_process_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_DATABASE_URL")
    monkeypatch.delenv("FERRY_REDIS_URL")
    with pytest.raises(SettingsError) as refused:
        read_settings()
    assert str(refused.value) == "FERRY_DATABASE_URL is required (not set); FERRY_REDIS_URL is required (not set)"


def test_no_default_points_at_the_development_stack() -> None:
    settings = read_settings()
    assert settings.kafka_probe_clusters == {}
    rendered = str(settings.as_environment())
    assert "15432" not in rendered and "16379" not in rendered and "19092" not in rendered


def test_settings_come_from_files_where_no_variable_is_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As a Kubernetes Secret mounted as files: one file per variable, named after it."""
    (tmp_path / "FERRY_DATABASE_URL").write_text("postgresql+psycopg://ferry:from-file@db:5432/ferry\n")
    (tmp_path / "FERRY_FLEET_LEASE_SECONDS").write_text("20")
    (tmp_path / "FERRY_KAFKA_PROBE_CLUSTERS").write_text('{"target": "kafka-0.internal:9092"}')
    monkeypatch.delenv("FERRY_DATABASE_URL")
    monkeypatch.setenv("FERRY_SETTINGS_DIR", str(tmp_path))
    monkeypatch.setenv("FERRY_FLEET_LEASE_SECONDS", "30")  # a variable wins over a file
    settings = read_settings()
    assert settings.database_url == "postgresql+psycopg://ferry:from-file@db:5432/ferry"
    assert settings.fleet_lease_seconds == 30.0
    assert settings.kafka_probe_clusters == {"target": "kafka-0.internal:9092"}


def test_a_settings_dir_that_is_not_a_folder_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FERRY_SETTINGS_DIR", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=r"FERRY_SETTINGS_DIR=.*missing: not a folder"):
        read_settings()


def test_a_bad_value_is_named_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_FLEET_LEASE_SECONDS", "not-a-number")
    with pytest.raises(SettingsError, match="FERRY_FLEET_LEASE_SECONDS") as refused:
        read_settings()
    assert "not-a-number" not in str(refused.value)
