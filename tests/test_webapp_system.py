"""The System view in real headless Chromium: /health, and key /metrics counters after
the admin pastes the metrics token (kept in the page only). On SQLite."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.conftest import make_settings
from tests.webapp_helpers import admin, browser, database_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

METRICS_TOKEN = "metrics-token-for-the-test-0123"


@pytest.fixture
def server_settings(database_url):  # noqa: F811
    return make_settings(database_url, WEBMACS_METRICS_TOKEN=METRICS_TOKEN)


async def test_health_and_counters_with_the_metrics_token(server, admin):  # noqa: F811
    [event] = await server.linked_events(1, prefix="Meter")
    resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": [
        {"event_public_id": event, "value": v} for v in (1.0, 2.0, 3.0, 4.0)] + [
        {"event_public_id": "no-such-event", "value": 1.0}]})
    assert resp.code == 201 and resp.json["accepted"] == 4
    page = admin.page
    await admin.go("system")
    await expect(page.locator("#health-status")).to_have_text("ok")
    # /metrics wants its own token: a wrong one is refused, the right one shows the counters
    await page.fill("#metrics-token", "wrong-token-wrong-token")
    await page.click("#metrics-unlock")
    await expect(page.locator("#metrics .error")).to_have_text("The metrics token was refused.")
    await page.fill("#metrics-token", METRICS_TOKEN)
    await page.click("#metrics-unlock")
    # the counters are the process's (they add up over earlier tests): compare with /metrics
    accepted = page.locator('#metrics-table [data-metric="webmacs_datapoints_accepted_total"] td')
    rejected = page.locator('#metrics-table [data-metric="webmacs_datapoints_rejected_total"] td')
    await expect(accepted).to_have_text(f"{await counter(server, 'webmacs_datapoints_accepted_total'):,}")
    await expect(rejected).to_have_text(f"{await counter(server, 'webmacs_datapoints_rejected_total'):,}")
    await admin.shoot("system")
    before = await counter(server, "webmacs_datapoints_accepted_total")
    await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": [{"event_public_id": event, "value": 5.0}]})
    await expect(accepted).to_have_text(f"{before + 1:,}", timeout=10_000)  # refreshed every 5 s


async def counter(server, name: str) -> int:
    resp = await server.request("GET", "/metrics", token=METRICS_TOKEN)
    assert resp.code == 200, resp
    values = [float(line.split()[-1]) for line in resp.body.decode().splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    assert values, name
    return int(sum(values))
