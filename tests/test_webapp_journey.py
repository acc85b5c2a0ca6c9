"""The first-sensor journey through the web app only, in real headless Chromium: a new
lab engineer goes from a fresh install to live values, a dashboard, an exported
experiment, an alert rule and a read-only colleague without touching the API.

The test itself only *checks* through the API (and starts the controller program the
engineer would start on the lab PC). On SQLite, like the other browser tests."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import sys

import pytest
from playwright.async_api import expect

from tests.conftest import wait_for
from tests.webapp_helpers import browser, database_url, open_app  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

INSTANCE = "Rig"
REACTOR = f"{INSTANCE} Reactor Temperature"
# buttons a viewer may use: reading, paging, exporting, and leaving
READ_ONLY_BUTTONS = {"Log out", "Refresh", "Newer", "Older", "CSV"}


def controller_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
    env.update({"PYTHONUNBUFFERED": "1", "WEBMACS_LOG_LEVEL": "INFO"})
    env.update(extra)
    return env


async def enabled_buttons(page) -> set[str]:
    return set(await page.evaluate("""() => Array.from(document.querySelectorAll('#dashboard-view button'))
        .filter(b => !b.disabled && b.offsetParent !== null).map(b => b.textContent.trim())"""))


@pytest.mark.timeout(240)
async def test_first_sensor_journey(server, browser, tmp_path):  # noqa: F811
    async with open_app(browser, server) as app:
        page = app.page
        await app.login()

        # 1. a simulated plugin instance, in demo mode, with an event per channel
        await app.go("plugins")
        await page.click("#create-simulated")
        dialog = page.locator("#instance-dialog")
        await expect(dialog).to_be_visible()
        await page.fill("#instance-name", INSTANCE)
        await expect(page.locator("#instance-demo")).to_be_checked()
        await expect(page.locator("#instance-auto-events")).to_be_checked()
        await dialog.get_by_role("button", name="Create instance").click()
        card = page.locator(".instance", has_text=INSTANCE)
        await expect(card.locator(".linked-event")).to_have_count(9)
        await expect(card.locator(".linked-event").first).to_have_text(REACTOR)
        # unlink a channel, then link it to a new event made on the spot
        await card.get_by_role("button", name="Unlink Valve Position").click()
        await expect(card.locator(".linked-event")).to_have_count(8)
        await card.get_by_role("button", name="Link Valve Position").click()
        await page.select_option("#link-event", "__new")
        await page.locator("#link-dialog").get_by_role("button", name="Link").click()
        await expect(page.locator("#event-name")).to_have_value(f"{INSTANCE} Valve Position")
        await page.fill("#event-name", "Main Valve")
        await page.locator("#event-dialog").get_by_role("button", name="Create event").click()
        await expect(card.locator(".linked-event", has_text="Main Valve")).to_have_count(1)
        await app.shoot("plugins-instance")

        # 2. an API token for the controller: the plaintext is shown once
        await app.go("tokens")
        await page.click("#token-new")
        await page.fill("#token-name", "lab-pc")
        await page.locator("#token-dialog").get_by_role("button", name="Create token").click()
        token = (await page.locator("#token-plaintext").inner_text()).strip()
        assert token
        await page.click("#token-copy")
        await expect(page.locator("#token-created [role=status]")).not_to_have_text("")
        await page.keyboard.press("Escape")  # the dialog closes with Escape
        await expect(page.locator("#token-created")).to_have_count(0)
        await expect(page.locator("#tokens-table tbody tr")).to_have_count(1)
        assert token not in await page.content()  # gone from the page for good

        # 3. the engineer starts the controller on the lab PC with that token
        log_path = tmp_path / "controller.log"
        env = controller_env(WEBMACS_SERVER_URL=server.base_url, WEBMACS_API_TOKEN=token,
                             WEBMACS_POLL_INTERVAL="0.3", WEBMACS_SYNC_INTERVAL="1",
                             WEBMACS_SPOOL_PATH=str(tmp_path / "spool.db"))
        with open(log_path, "ab") as fh:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "webmacs", "controller", env=env,
                                                        stdout=fh, stderr=fh, cwd=str(tmp_path))
        try:
            # 4. live values appear on the Overview
            await app.go("overview")
            tile = page.locator(".tile", has_text=REACTOR)
            await expect(tile.locator(".value")).not_to_have_attribute("data-value", "", timeout=20_000)
            first = await tile.locator(".value").get_attribute("data-timestamp")
            await expect(tile.locator(".value")).not_to_have_attribute("data-timestamp", first, timeout=10_000)
            await expect(page.locator("#data-age")).to_have_attribute("data-stale", "false")
            await app.shoot("overview-live")

            # 5. a global dashboard with a gauge and a line chart, both updating
            await app.go("dashboards")
            await page.click("#dashboard-new")
            await page.fill("#dashboard-name", "Reactor")
            await page.check("#dashboard-global")
            await page.locator("#dashboard-dialog").get_by_role("button", name="Create dashboard").click()
            await expect(page.locator("#view h1")).to_have_text("Reactor")
            for kind in ("gauge", "line_chart"):
                await page.click("#widget-add")
                await page.select_option("#widget-type", kind)
                await page.select_option("#widget-event", label=REACTOR)
                await page.locator("#widget-dialog").get_by_role("button", name="Add widget").click()
            gauge = page.locator('.widget[data-type="gauge"] svg')
            chart = page.locator('.widget[data-type="line_chart"] .chart')
            await expect(gauge).to_have_count(1)
            await expect(chart).to_have_count(1)
            label = await gauge.get_attribute("aria-label")
            await expect(gauge).not_to_have_attribute("aria-label", label, timeout=10_000)
            points = int(await chart.get_attribute("data-points"))
            await wait_for(lambda: _more(chart, points), timeout=10, message="new points on the line chart")
            # the layout: make the chart wider and move the gauge down
            widget = page.locator('.widget[data-type="line_chart"]')
            width = int(await widget.get_attribute("data-w"))
            await page.click("#layout-edit")
            await page.get_by_role("button", name=f"Make {REACTOR} wider").last.click()
            await expect(widget).to_have_attribute("data-w", str(width + 1))
            await page.click("#layout-edit")
            await app.shoot("dashboard")

            # 6. an experiment: start, stop, download its CSV
            await app.go("experiments")
            await page.fill("#new-experiment-name", "Journey Run")
            await page.click("#new-experiment-start")
            row = page.locator("#experiments-table tbody tr", has_text="Journey Run")
            await expect(row.locator(".pill")).to_have_text("running")
            exp_id = await row.get_attribute("data-id")

            async def exported() -> bool:
                resp = await server.request("GET", f"/api/v1/datapoints?experiment_public_id={exp_id}&page_size=1")
                return resp.json["total"] >= 20
            await wait_for(exported, timeout=20, message="readings during the experiment")
            stop = row.get_by_role("button", name="Stop Journey Run")
            await stop.click()
            await row.get_by_role("button", name="Confirm stop").click()
            await expect(row.locator(".pill")).to_have_text("stopped")
            async with page.expect_download() as info:
                await row.get_by_role("button", name="Download CSV of Journey Run").click()
            download = await info.value
            path = tmp_path / "export.csv"
            await download.save_as(path)
            with open(path, encoding="utf-8-sig", newline="") as fh:
                rows = list(csv.DictReader(fh))
            stored = (await server.request("GET", f"/api/v1/datapoints?experiment_public_id={exp_id}&page_size=1"))
            assert len(rows) == stored.json["total"] >= 20
            assert {r["event_name"] for r in rows} >= {REACTOR, f"{INSTANCE} Chamber Pressure"}
            assert all(float(r["value"]) == float(r["value"]) for r in rows)
            await app.shoot("experiments-done")

            # 7. a rule whose log action fires, and its log entry
            await app.go("rules")
            await page.click("#rule-new")
            await page.fill("#rule-name", "Reactor warm")
            await page.select_option("#rule-event", label=REACTOR)
            await page.select_option("#rule-operator", "gt")
            await page.fill("#rule-threshold", "0")
            await page.select_option("#rule-action", "log")
            await page.locator("#rule-dialog").get_by_role("button", name="Create rule").click()
            await expect(page.locator("#rules-table tbody tr", has_text="Reactor warm")).to_have_count(1)
            await app.go("logs")
            entry = page.locator("#logs-table tbody tr", has_text="Rule 'Reactor warm' triggered")
            for _ in range(20):  # the page reloads on request, as a user would
                if await entry.count():
                    break
                await page.get_by_role("button", name="Refresh").click()
                await page.wait_for_timeout(500)
            await expect(entry.first).to_be_visible()
            await entry.first.get_by_role("button", name="Mark read").click()
            await expect(entry.first.locator(".log-state")).to_have_text("read")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log_path.read_text()

        # 8. a viewer colleague: sees the lab, changes nothing
        await app.go("users")
        await page.click("#user-new")
        await page.fill("#user-email", "viewer@lab.example")
        await page.fill("#user-username", "colleague")
        await page.select_option("#user-role-select", "viewer")
        await page.fill("#user-password", "password-123")
        await page.locator("#user-dialog").get_by_role("button", name="Create user").click()
        await expect(page.locator("#users-table tbody tr", has_text="colleague")).to_have_count(1)
        await app.logout()
        await app.login("viewer@lab.example", "password-123")
        await expect(page.locator("#user-role")).to_have_text("viewer")
        nav = await page.locator("nav a").all_inner_texts()
        assert not {"Rules", "Webhooks", "Users", "OTA updates", "System", "API tokens"} & set(nav), nav
        for link in await page.locator("nav a").evaluate_all("els => els.map(e => e.id.slice(4))"):
            await app.go(link)
            await page.wait_for_load_state("networkidle")
            assert await enabled_buttons(page) <= READ_ONLY_BUTTONS, (link, await enabled_buttons(page))
        # the global dashboard is shown, with no layout or widget buttons
        await app.go("dashboards")
        await page.get_by_role("link", name="Reactor").click()
        await expect(page.locator('.widget[data-type="gauge"]')).to_have_count(1)
        assert await enabled_buttons(page) <= READ_ONLY_BUTTONS
        await app.shoot("viewer-dashboard")


async def _more(chart, points: int) -> bool:
    return int(await chart.get_attribute("data-points")) > points
