"""The dashboard in a real headless Chromium (Debian's package), driven by Playwright.

Runs on SQLite only: the page talks to the same REST and WebSocket endpoints on
both backends, and those are covered on TimescaleDB by the other modules. The
async Playwright API runs on the test's event loop, next to the server fixture.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.conftest import ADMIN_EMAIL, wait_for
from tests.webapp_helpers import AppPage, browser, database_url, open_app  # noqa: F401 - fixtures
import webmacs
from webmacs.broadcast import FRONTEND

pytestmark = pytest.mark.browser

LATEST = "/api/v1/datapoints/latest"
TELEMETRY = "/ws/controller/telemetry"


class Page(AppPage):
    """The Overview page, with the count of its /datapoints/latest requests."""

    def latest_requests(self, since: float = 0.0) -> int:
        return sum(1 for t, url in self.requests if t > since and url.endswith(LATEST))

    def tile(self, event: str):
        return self.page.locator(f'.tile[data-event-id="{event}"]')


@pytest.fixture
async def dashboard(browser, server):  # noqa: F811
    async with open_app(browser, server, 1600, 1000, cls=Page) as app:
        yield app


async def make_events(server, specs: list[tuple[str, str]]) -> list[str]:
    """Events with these (name, unit), linked to one enabled plugin instance."""
    plugin = await server.request("POST", "/api/v1/plugins", {"plugin_id": "revpi", "instance_name": "Rig"})
    assert plugin.code == 201, plugin
    ids = []
    for i, (name, unit) in enumerate(specs):
        ev = await server.request("POST", "/api/v1/events", {"name": name, "type": "sensor", "unit": unit,
                                                             "min_value": 0, "max_value": 100})
        assert ev.code == 201, ev
        ids.append(ev.json["data"]["public_id"])
        ch = await server.request("POST", f"/api/v1/plugins/{plugin.json['data']['public_id']}/channels", {
            "channel_id": f"ch{i}", "channel_name": name, "direction": "input", "unit": unit,
            "event_public_id": ids[-1]})
        assert ch.code == 201, ch
    return ids


async def push_rest(server, points: list[dict]) -> None:
    for i in range(0, len(points), 500):
        resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": points[i:i + 500]})
        assert resp.code == 201, resp


# --- tests -------------------------------------------------------------------------------------

async def test_login_live_values_chart_and_logout(server, dashboard):
    specs = [("Inlet Temperature", "°C"), ("Chamber Pressure", "bar"), ("Flow Rate", "L/min"),
             ("Heater Power", "kW")]
    events = await make_events(server, specs)
    now = datetime.now(timezone.utc)
    history = []
    shapes = [(180.0, 6.0), (1.2, 0.08), (5.0, 0.6), (2.4, 0.5)]  # (level, swing) per event
    for n, event in enumerate(events):
        level, swing = shapes[n]
        for k in range(300, 0, -1):  # the last 5 minutes at 1 Hz
            history.append({"event_public_id": event, "timestamp": (now - timedelta(seconds=k)).isoformat(),
                            "value": round(level + swing * math.sin(k / (20 + 7 * n)), 3)})
    await push_rest(server, history)
    resp = await server.request("POST", "/api/v1/experiments", {"name": "Fluidised Bed Run 07"})
    assert resp.code == 201

    page = dashboard.page
    await dashboard.login()
    await expect(page.locator(".tile[data-event-id]")).to_have_count(4)
    await expect(dashboard.tile(events[0]).locator(".tile-name")).to_have_text("Inlet Temperature")
    await expect(dashboard.tile(events[1]).locator(".tile-unit")).to_have_text("bar")
    await expect(page.locator("#experiment")).to_have_attribute("data-state", "running")
    await expect(page.locator("#experiment-name")).to_have_text("Fluidised Bed Run 07")
    # history arrived: the charts have their series, the tiles the latest stored values
    for event, point in zip(events, history[299::300]):
        await expect(dashboard.tile(event).locator(".value")).to_have_attribute("data-value", str(point["value"]))
    await expect(dashboard.tile(events[0]).locator("canvas")).to_have_count(1)

    # a value pushed by the controller over the telemetry socket reaches the page
    telemetry = await server.ws(TELEMETRY)
    await telemetry.send({"datapoints": [{"event_public_id": events[0], "value": 187.126},
                                         {"event_public_id": events[2], "value": 5.5}]})
    value = dashboard.tile(events[0]).locator(".value")
    await expect(value).to_have_attribute("data-value", "187.126")
    await expect(value).to_have_text("187.13")  # shown to 5 significant digits
    await expect(dashboard.tile(events[2]).locator(".value")).to_have_attribute("data-value", "5.5")
    # Chromium offered permessage-deflate: those frames were compressed once for every
    # subscriber (webmacs.broadcast.deflate_frame) and the browser read them
    assert [c.variant for c in server.services.hub.groups[FRONTEND]] == [15]
    await expect(dashboard.tile(events[0]).locator(".age")).to_have_text("updated just now")
    # the age keeps counting
    await page.wait_for_function(
        "document.querySelector('.tile .age').dataset.ageSeconds >= 2", timeout=10_000)
    await expect(dashboard.tile(events[0]).locator(".age")).to_have_text("updated 2 s ago", timeout=5_000)

    # the unit is shown once per tile; the header says which is the role; fresh data is not stale
    assert (await dashboard.tile(events[1]).inner_text()).count("bar") == 1
    await expect(page.locator("#user-name")).to_have_text("admin")
    await expect(page.locator("#user-role")).to_have_text("admin")
    await expect(page.locator("#data-age")).to_have_attribute("data-stale", "false")
    await dashboard.shoot("overview")

    # logout revokes the token and shows the login form
    token = await dashboard.token()
    await page.click("#logout")
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#login-message")).to_have_text("You have been signed out.")
    assert await dashboard.token() is None
    assert (await server.request("GET", "/api/v1/auth/me", token=token)).code == 401
    await expect(page.locator(".tile")).to_have_count(0)


async def test_polling_fallback_and_back_to_websocket(server, dashboard, stream_refusal):
    [event] = await make_events(server, [("Inlet Temperature", "°C")])
    page = dashboard.page
    await dashboard.login()
    services = server.services
    value = dashboard.tile(event).locator(".value")

    # The stream refuses upgrades and the open sockets are dropped: three failed
    # attempts later the page polls /datapoints/latest.
    stream_refusal.on = True
    assert services.hub.disconnect(lambda c: c.group == FRONTEND, "Service restart", code=1012) == 1
    await expect(page.locator("#connection-mode")).to_have_text("polling", timeout=15_000)
    assert await page.evaluate("window.webmacs.failures") >= 3
    assert services.hub.count(FRONTEND) == 0
    polling_since = time.monotonic()

    for v in (11.5, 12.25):  # values still arrive, through polling
        await push_rest(server, [{"event_public_id": event, "value": v}])
        await expect(value).to_have_attribute("data-value", str(v), timeout=5_000)
    await page.wait_for_function("window.webmacs.stats.polls >= 3", timeout=10_000)
    assert dashboard.latest_requests(since=polling_since) >= 2

    # The stream is back: the retry connects, polling stops.
    stream_refusal.on = False
    await expect(page.locator("#connection-mode")).to_have_text("websocket", timeout=10_000)
    back = time.monotonic()
    assert services.hub.count(FRONTEND) == 1
    # the catch-up read of /latest on reconnect is issued with the switch; after
    # that, three polling periods pass without a single request to /latest
    await page.wait_for_function("performance.now() - window.webmacs.modeSince > 3 * 1500 + 500",
                                 timeout=10_000)
    assert dashboard.latest_requests(since=back + 0.5) == 0
    assert await page.evaluate("window.webmacs.polling") is False

    telemetry = await server.ws(TELEMETRY)
    await telemetry.send({"datapoints": [{"event_public_id": event, "value": 13.75}]})
    await expect(value).to_have_attribute("data-value", "13.75")
    assert dashboard.latest_requests(since=back + 0.5) == 0


async def test_revoked_token_closes_stream_and_shows_reason(server, dashboard):
    await make_events(server, [("Inlet Temperature", "°C")])
    page = dashboard.page
    await dashboard.login()
    token = await dashboard.token()
    # the same token is logged out elsewhere: the server closes the stream with 1008
    assert (await server.request("POST", "/api/v1/auth/logout", token=token)).code == 200
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#login-message")).to_have_text("Token has been revoked")
    assert await dashboard.token() is None
    # no retry after a 1008 close: nothing connects again
    await page.wait_for_function("performance.now() - window.webmacs.modeSince > 1500", timeout=10_000)
    assert server.services.hub.count(FRONTEND) == 0


async def test_rest_401_returns_to_login(server, dashboard):
    page = dashboard.page
    await page.evaluate("sessionStorage.setItem('webmacs.token', 'not-a-token')")
    await page.reload()
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#login-message")).to_have_text("Invalid or expired token")


async def test_wrong_password_stays_on_login(server, dashboard):
    page = dashboard.page
    await page.fill("#login-email", ADMIN_EMAIL)
    await page.fill("#login-password", "wrong-password")
    await page.click("#login-submit")
    await expect(page.locator("#login-message")).to_have_text("Invalid email or password.")
    await expect(page.locator("#dashboard-view")).to_be_hidden()


async def test_experiment_start_and_stop_by_role(server, dashboard):
    await server.create_user("operator", "op")
    await server.create_user("viewer", "watcher")
    page = dashboard.page
    await dashboard.login("op@example.com", "password-123")
    box = page.locator("#experiment")
    await expect(box).to_have_attribute("data-state", "none")
    await page.fill("#experiment-name-input", "Run 12")
    await page.click("#experiment-start")
    await expect(box).to_have_attribute("data-state", "running")
    await expect(page.locator("#experiment-name")).to_have_text("Run 12")
    await expect(page.locator("#experiment-started")).to_contain_text("since")
    running = (await server.request("GET", "/api/v1/experiments")).json["data"][0]
    assert running["name"] == "Run 12" and running["status"] == "running"
    await expect(box).to_have_attribute("data-experiment-id", running["public_id"])

    stop = page.locator("#experiment-stop")
    await stop.click()
    await expect(stop).to_have_text("Confirm stop")
    await stop.click()
    await expect(box).to_have_attribute("data-state", "none")
    assert (await server.request("GET", "/api/v1/experiments")).json["data"][0]["status"] == "stopped"

    # a viewer sees the experiment but gets no buttons
    await server.request("POST", "/api/v1/experiments", {"name": "Run 13"})
    await page.click("#logout")
    await dashboard.login("watcher@example.com", "password-123")
    await expect(page.locator("#experiment-name")).to_have_text("Run 13")
    await expect(page.locator("#experiment-start-form")).to_be_hidden()
    await expect(page.locator("#experiment-stop")).to_be_hidden()


async def test_page_and_assets_are_served(server):
    for path in ("/", "/index.html"):
        resp = await server.request("GET", path, token=None)
        assert resp.code == 200
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert b'id="app"' in resp.body and b'<script type="module" src="/static/app.js?v=' in resp.body
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    for asset in ("app.css", "vendor/uPlot.min.css", "vendor/uPlot.LICENSE", "vendor/htm.LICENSE",
                  "vendor/preact.LICENSE"):
        resp = await server.request("GET", f"/static/{asset}", token=None)
        assert resp.code == 200, asset
    # ES modules load only with a JavaScript MIME type
    static = Path(webmacs.STATIC_DIR)
    modules = sorted(str(p.relative_to(static)) for p in static.rglob("*.js"))
    assert "app.js" in modules and "vendor/htm-preact.module.js" in modules and "views/index.js" in modules
    for asset in modules:
        resp = await server.request("GET", f"/static/{asset}", token=None)
        assert resp.code == 200, asset
        assert resp.headers["Content-Type"].split(";")[0] == "text/javascript", asset


async def test_keepalive_ping_with_query_override(server, dashboard):
    """{"type":"ping"} every pingIntervalMs (25 s by default; 300 ms here via the query string)."""
    page = dashboard.page
    frames: list[tuple[str, str]] = []

    def on_socket(ws) -> None:
        ws.on("framesent", lambda payload: frames.append(("sent", payload)))
        ws.on("framereceived", lambda payload: frames.append(("received", payload)))

    page.on("websocket", on_socket)
    await page.goto(server.base_url + "/?pingIntervalMs=300")
    await dashboard.login()
    assert await page.evaluate("window.webmacs.config.pingIntervalMs") == 300
    await wait_for(lambda: sum(1 for d, p in frames if d == "received" and p == '{"type":"pong"}') >= 2,
                   timeout=10, message="two pongs")
    pings = [p for d, p in frames if d == "sent"]
    assert pings and all(p == '{"type":"ping"}' for p in pings)
    assert ("received", '{"type":"connected","message":"Subscribed to live datapoint stream."}') in frames
