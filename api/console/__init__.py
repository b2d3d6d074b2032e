"""The web console at ``/console`` (docs/console.md): pages for people, on the same app and the same identity."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.console.routes import router
from api.console.session import SessionCodec
from models.settings import FerrySettings


def install(app: FastAPI, settings: FerrySettings) -> None:
    """Serve the console's pages and static files (htmx, the stylesheet, the chart script) on ``app``."""
    app.state.console_sessions = SessionCodec(settings.secret_key_material(), settings.console_session_seconds)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static")
