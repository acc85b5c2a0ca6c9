"""Helpers for the web app's browser tests (real headless Chromium, Debian's package,
driven by Playwright's async API on the test's event loop).

- ``launch()``: the browser, with the flags every test uses;
- ``open_app(browser, server, ...)``: a new context and page on the app, recording the
  page's uncaught errors (a test ends asserting there were none);
- ``AppPage.login()``, ``AppPage.go(view)``, ``AppPage.shoot(view)``: sign in through the
  form, open a view through its navigation link, and write screenshots to
  ``artifacts/<view>-1366x768.png`` and ``artifacts/<view>-390x844.png`` (not committed);
- fixtures (import them into a test module): ``database_url`` (browser tests run on a
  fresh SQLite database: the page talks to the same REST and WebSocket endpoints on both
  backends, and those are covered on TimescaleDB by the other modules), ``browser``, and
  ``admin`` (a page signed in as the admin).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
# Fast reconnects for tests; the spec's values (3 failures, 1500 ms polling, 25 s ping) stay.
TEST_CONFIG = "window.WEBMACS_CONFIG = {backoffBaseMs: 200, backoffMaxMs: 500};"
SIZES = ((1366, 768), (390, 844))
# the machine running the suite may be busy: page assertions wait up to 10 s (not 5)
expect.set_options(timeout=10_000)


@contextlib.asynccontextmanager
async def launch():
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class AppPage:
    """A page on the app, with the requests it made and its uncaught errors."""

    def __init__(self, page, server) -> None:
        self.page = page
        self.server = server
        self.requests: list[tuple[float, str]] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append((time.monotonic(), r.url)))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> None:
        page = self.page
        await expect(page.locator("#login-form")).to_be_visible()
        await page.fill("#login-email", email)
        await page.fill("#login-password", password)
        await page.click("#login-submit")
        await expect(page.locator("#dashboard-view")).to_be_visible()
        await expect(page.locator("#connection-mode")).to_have_text("websocket", timeout=10_000)

    async def logout(self) -> None:
        await self.page.click("#logout")
        await expect(self.page.locator("#login-form")).to_be_visible()

    async def go(self, view: str) -> None:
        """Open a view through its navigation link (as a user would)."""
        link = self.page.locator(f"#nav-{view}")
        await link.click()
        await expect(self.page.locator("#view")).to_have_attribute("data-view", view)

    async def token(self) -> str | None:
        return await self.page.evaluate("sessionStorage.getItem('webmacs.token')")

    async def shoot(self, name: str) -> None:
        """Screenshots at a laptop's and a phone's size; the viewport is restored after."""
        ARTIFACTS.mkdir(exist_ok=True)
        before = self.page.viewport_size
        for width, height in SIZES:
            await self.page.set_viewport_size({"width": width, "height": height})
            await self.page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            await self.page.screenshot(path=str(ARTIFACTS / f"{name}-{width}x{height}.png"), full_page=True)
            # nothing sticks out sideways (wide tables scroll inside their own box)
            overflow = await self.page.evaluate("document.documentElement.scrollWidth")
            assert overflow <= width, (name, width, overflow)
        if before:
            await self.page.set_viewport_size(before)


@contextlib.asynccontextmanager
async def open_app(browser, server, width: int = 1366, height: int = 768, path: str = "/", cls=AppPage):
    # bypass_csp: wait_for_function evaluates strings, which the page's CSP forbids (as it should)
    context = await browser.new_context(viewport={"width": width, "height": height}, locale="en-US",
                                        bypass_csp=True, accept_downloads=True)
    await context.add_init_script(TEST_CONFIG)
    page = await context.new_page()
    wrapped = cls(page, server)
    await page.goto(server.base_url + path)
    try:
        yield wrapped
        assert wrapped.errors == [], wrapped.errors
    finally:
        await context.close()


@pytest.fixture
def database_url(sqlite_template, tmp_path) -> str:
    """Browser tests run on a fresh SQLite database (overrides the two-backend fixture)."""
    path = tmp_path / "webmacs.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
async def browser():
    async with launch() as browser:
        yield browser


@pytest.fixture
async def admin(server, browser):
    async with open_app(browser, server) as app:
        await app.login()
        yield app
