"""The console under test: the real app in a real uvicorn server (tests/api/conftest.py's), driven by headless
Chromium through playwright. Debian's chromium is used as it is installed (``apt-get install chromium``); playwright
never downloads a browser. Screenshots of every page go to ``.run/artifacts/console`` (or ``$FERRY_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright
from sqlalchemy import Engine

from api.app import create_app
from models.access_keys import IssuedKey
from models.db import make_sync_engine
from models.settings import FerrySettings
from tests.api.conftest import RunningServer, kafka_client
from tests.conftest import ROOT, issue_key

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/lib/chromium/chromium")
# What runs Chromium on a CI machine without a display, GPU or user namespaces (security-and-ops.md, section 8).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def api_url(test_settings: FerrySettings, migrated_test_database: str) -> Iterator[str]:
    with RunningServer(create_app(test_settings)) as server:
        yield server.url


@pytest.fixture(scope="session")
def db_engine(test_settings: FerrySettings, migrated_test_database: str) -> Iterator[Engine]:
    engine = make_sync_engine(test_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def clusters(source_bootstrap: str, target_bootstrap: str, unique: str) -> dict[str, Any]:
    return {
        "source_id": f"{unique}-src",
        "target_id": f"{unique}-tgt",
        "source_bootstrap": source_bootstrap,
        "target_bootstrap": target_bootstrap,
    }


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("FERRY_TEST_ARTIFACTS", ROOT / ".run" / "artifacts")) / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# Package scope, not session: playwright's sync driver keeps an event loop running on this thread while it is open,
# and every later test that calls asyncio.run() would fail; it is closed once the console's tests are done.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH")
    launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test (no cookies from another test)."""
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def account() -> str:
    """An account of this test's own: what it lists is only what it made."""
    return "9" + "".join(secrets.choice("0123456789") for _ in range(11))


def issue(settings: FerrySettings, account: str, *, read_only: bool = False) -> IssuedKey:
    """``issue_key`` on a thread of its own: it runs an event loop, and playwright's is current on this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(issue_key, settings, account, read_only=read_only).result()


@pytest.fixture
def key(test_settings: FerrySettings, migrated_test_database: str, account: str) -> IssuedKey:
    return issue(test_settings, account)


@pytest.fixture
def kafka(api_url: str, key: IssuedKey) -> Any:
    return kafka_client(api_url, key)


def sign_in(page: Page, api_url: str, key: IssuedKey) -> None:
    page.goto(f"{api_url}/console/sign-in")
    page.locator("[name=access_key_id]").fill(key.access_key_id)
    page.locator("[name=secret_access_key]").fill(key.secret_access_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console/replicators$"))


def capture(page: Page, artifacts: Path, name: str) -> None:
    """Screenshots at 1280x800 and 390x844; at the phone's width nothing may scroll sideways."""
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=str(artifacts / f"{name}-{label}.png"), full_page=True)
        scroll_width, inner_width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll_width <= inner_width, f"{name} overflows sideways at {label} width: {scroll_width}px"
    page.set_viewport_size(DESKTOP)
