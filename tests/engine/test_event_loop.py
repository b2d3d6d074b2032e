"""FERRY_EVENT_LOOP chooses the loop the engine and the fleet agent run on."""

from __future__ import annotations

import asyncio

import pytest

from workers.engine import event_loop


async def running_loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_by_default_and_the_standard_loop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    assert event_loop.run(running_loop_module()).startswith("uvloop")
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")
    assert event_loop.run(running_loop_module()).startswith("asyncio")


def test_an_unknown_loop_is_refused_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "tokio")
    with pytest.raises(ValueError, match="FERRY_EVENT_LOOP must be uvloop or asyncio, not 'tokio'"):
        event_loop.run(running_loop_module())
