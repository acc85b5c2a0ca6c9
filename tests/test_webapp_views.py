"""Every view of the web app in real headless Chromium, as an admin: it opens from the
navigation without a page error, shows its content, and is written to artifacts/ at
1366x768 and 390x844. On SQLite, like the other browser tests."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.webapp_helpers import browser, database_url, open_app  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

VIEWS = {  # nav id -> something the view shows once loaded
    "overview": "#experiment",
    "dashboards": "#dashboards-table, .empty",
    "plugins": "#available-plugins [data-plugin='simulated']",
    "events": "#events-table",
    "experiments": "#experiments-table",
    "datapoints": "#datapoints-table, .empty",
    "logs": "#logs-table, .empty",
    "tokens": "#tokens-table, .empty",
    "rules": "#rules-table, .empty",
    "webhooks": "#webhooks-table, .empty",
    "users": "#users-table",
    "ota": "#ota-table, .empty",
    "system": "#health-status:text('ok')",
}


UNNAMED = """() => Array.from(document.querySelectorAll('nav a, input, select, textarea, button'))
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
    .map(el => el.outerHTML)"""


async def test_every_view_opens_and_is_captured(server, browser):  # noqa: F811
    await server.linked_events(2, prefix="Probe")
    await server.request("POST", "/api/v1/experiments", {"name": "A rather long experiment name for a phone screen"})
    async with open_app(browser, server) as app:
        await app.login()
        for view, shows in VIEWS.items():
            await app.go(view)
            await expect(app.page.locator(shows).first).to_be_visible()
            # every link of the navigation, every form field and every button has an accessible name
            assert await app.page.evaluate(UNNAMED) == [], view
            await app.shoot(view)
