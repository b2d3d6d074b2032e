"""Settings that depend on each other are checked together when a process starts: a lease too short for its
tick, or a dead-worker timeout shorter than the heartbeat, stops the process with a message naming the
variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.settings import FerrySettings


def test_the_lease_margin_covers_the_write_timeout_and_grows_with_the_lease() -> None:
    # A write that passed the lease check is abandoned after the write timeout: the margin must outlast it.
    assert FerrySettings(fleet_lease_seconds=10).fleet_lease_margin_seconds == 5.5
    assert FerrySettings(fleet_lease_seconds=60).fleet_lease_margin_seconds == 12.0
    short = FerrySettings(fleet_lease_seconds=3, fleet_tick_seconds=0.5, fleet_write_timeout_seconds=0.5)
    assert short.fleet_lease_margin_seconds == 1.0


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
