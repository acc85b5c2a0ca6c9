"""The web app's lab views in real headless Chromium: events (with the datapoint count
before a delete), a dashboard's actuator toggle and layout, the datapoint browser. On
SQLite, like the other browser tests."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.conftest import wait_for
from tests.webapp_helpers import admin, browser, database_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


async def test_events_create_edit_delete_with_count_and_error(server, admin):
    [probe] = await server.linked_events(1, prefix="Probe")
    resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": [
        {"event_public_id": probe, "value": v} for v in (1.0, 2.0, 3.0)]})
    assert resp.code == 201
    page = admin.page
    await admin.go("events")
    await page.click("#event-new")
    dialog = page.locator("#event-dialog")
    # the dialog holds the focus: it starts on the first field and Tab / Shift+Tab stay inside
    await expect(page.locator("#event-name")).to_be_focused()
    for key in ["Tab"] * 9 + ["Shift+Tab"] * 12:
        await page.keyboard.press(key)
        assert await page.evaluate("document.activeElement.closest('#event-dialog') !== null"), key
    await page.fill("#event-name", "Probe 0")  # taken
    await page.fill("#event-unit", "K")
    await dialog.get_by_role("button", name="Create event").click()
    await expect(dialog.locator(".error")).to_have_text("An event with this name already exists.")
    await page.fill("#event-name", "Jacket Temperature")
    await dialog.get_by_role("button", name="Create event").click()
    row = page.locator("#events-table tbody tr", has_text="Jacket Temperature")
    await expect(row).to_contain_text("K")
    await row.get_by_role("button", name="Edit Jacket Temperature").click()
    await page.fill("#event-max", "450")
    await page.locator("#event-dialog").get_by_role("button", name="Save").click()
    await expect(row).to_contain_text("0 – 450")
    # deleting says how many datapoints the event has first
    probe_row = page.locator("#events-table tbody tr", has_text="Probe 0")
    await probe_row.get_by_role("button", name="Delete Probe 0").click()
    await expect(page.locator("#event-delete-warning")).to_contain_text("It has 3 datapoints.")
    await page.keyboard.press("Escape")  # changed my mind
    await expect(page.locator("#event-delete-dialog")).to_have_count(0)
    await expect(probe_row).to_have_count(1)
    await row.get_by_role("button", name="Delete Jacket Temperature").click()
    await expect(page.locator("#event-delete-warning")).to_have_text("It has no datapoints.")
    await page.click("#event-delete-confirm")
    await expect(row).to_have_count(0)
    names = {e["name"] for e in (await server.request("GET", "/api/v1/events")).json["data"]}
    assert names == {"Probe 0"}
    await admin.shoot("events")


async def test_dashboard_actuator_toggle_layout_and_remove(server, admin):
    resp = await server.request("POST", "/api/v1/plugins", {"plugin_id": "simulated", "instance_name": "Rig",
                                                           "demo_mode": True})
    heater = next(m["event_public_id"] for m in resp.json["data"]["channel_mappings"]
                  if m["channel_id"] == "heater_power")
    page = admin.page
    await admin.go("dashboards")
    await page.click("#dashboard-new")
    await page.fill("#dashboard-name", "Controls")
    await page.locator("#dashboard-dialog").get_by_role("button", name="Create dashboard").click()
    await expect(page.locator("#view h1")).to_have_text("Controls")
    await page.click("#widget-add")
    await page.select_option("#widget-type", "actuator_toggle")
    await page.select_option("#widget-event", label="Rig Heater Power")
    await page.fill("#widget-title", "Heater")
    await page.keyboard.press("Enter")  # submits the form from the keyboard
    switch = page.get_by_role("switch", name="Heater")
    await expect(switch).to_have_attribute("aria-checked", "false")
    await switch.focus()
    await page.keyboard.press("Enter")
    await expect(switch).to_have_attribute("aria-checked", "true")  # back from the live stream

    async def heater_value():
        latest = (await server.request("GET", "/api/v1/datapoints/latest")).json
        return next((p["value"] for p in latest if p["event_public_id"] == heater), None)
    assert await wait_for(heater_value) == 100.0  # the event's maximum
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "false")
    assert await heater_value() == 0.0

    # a stat card beside it, moved right and made taller, then removed
    await page.click("#widget-add")
    await page.select_option("#widget-type", "stat_card")
    await page.select_option("#widget-event", label="Rig Heater Power")
    await page.locator("#widget-dialog").get_by_role("button", name="Add widget").click()
    card = page.locator('.widget[data-type="stat_card"]')
    await expect(card.locator(".stat-value")).to_have_attribute("data-value", "0")
    await page.click("#layout-edit")
    await card.get_by_role("button", name="Move Rig Heater Power right").click()
    await expect(card).to_have_attribute("data-x", "1")
    await card.get_by_role("button", name="Make Rig Heater Power taller").click()
    await expect(card).to_have_attribute("data-h", "4")
    dash = (await server.request("GET", "/api/v1/dashboards")).json["data"][0]
    stored = next(w for w in dash["widgets"] if w["widget_type"] == "stat_card")
    assert (stored["x"], stored["h"]) == (1, 4)
    await admin.shoot("dashboard-controls")
    await card.get_by_role("button", name="Remove Rig Heater Power").click()
    await expect(card).to_have_count(0)
    dash = (await server.request("GET", "/api/v1/dashboards")).json["data"][0]
    assert [w["widget_type"] for w in dash["widgets"]] == ["actuator_toggle"]


async def test_datapoint_browser_filters_and_charts(server, admin):
    a, b = await server.linked_events(2, prefix="Line")
    resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints":
        [{"event_public_id": a, "value": float(i)} for i in range(30)] +
        [{"event_public_id": b, "value": 7.0}]})
    assert resp.code == 201
    page = admin.page
    await admin.go("datapoints")
    await page.select_option("#dp-event", label="Line 1")
    await expect(page.locator("#datapoints-table tbody tr")).to_have_count(1)
    await expect(page.locator(".dp-chart")).to_have_attribute("data-points", "1")
    await page.select_option("#dp-event", label="Line 0")
    await page.select_option("#dp-range", "15")
    await expect(page.locator("#datapoints-table tbody tr")).to_have_count(25)  # one page
    await expect(page.locator("#dp-count")).to_contain_text("30 point(s)")
    await expect(page.locator(".dp-chart")).to_have_attribute("data-points", "30")
    await page.get_by_role("button", name="Older").click()
    await expect(page.locator("#datapoints-table tbody tr")).to_have_count(5)
    await admin.shoot("datapoints")


async def test_plugin_channel_linked_to_an_existing_event_and_disabled(server, admin):
    resp = await server.request("POST", "/api/v1/plugins", {"plugin_id": "revpi", "instance_name": "Press"})
    instance = resp.json["data"]["public_id"]
    ch = await server.request("POST", f"/api/v1/plugins/{instance}/channels", {
        "channel_id": "AI_1", "channel_name": "Ram force", "direction": "input", "unit": "kN", "event_public_id": None})
    assert ch.code == 201
    ev = await server.request("POST", "/api/v1/events", {"name": "Ram Force", "type": "sensor", "unit": "kN",
                                                         "min_value": 0, "max_value": 500})
    page = admin.page
    await admin.go("plugins")
    card = page.locator(".instance", has_text="Press")
    await expect(card).to_contain_text("not linked")
    await card.get_by_role("button", name="Link Ram force").click()
    await page.select_option("#link-event", label="Ram Force (kN)")
    await page.locator("#link-dialog").get_by_role("button", name="Link").click()
    await expect(card.locator(".linked-event")).to_have_text("Ram Force")
    mapping = (await server.request("GET", f"/api/v1/plugins/{instance}/channels")).json[0]
    assert mapping["event_public_id"] == ev.json["data"]["public_id"]
    await card.get_by_role("button", name="Disable Press").click()
    await expect(card.locator(".pill")).to_have_text("inactive")
    assert (await server.request("GET", f"/api/v1/plugins/{instance}")).json["enabled"] is False
    await card.get_by_role("button", name="Enable Press").click()
    await expect(card.locator(".pill")).to_have_text("connected")


async def test_experiments_error_and_delete(server, admin):
    assert (await server.request("POST", "/api/v1/experiments", {"name": "Old Run"})).code == 201
    page = admin.page
    await admin.go("experiments")
    row = page.locator("#experiments-table tbody tr", has_text="Old Run")
    await confirm_press(row, "Stop Old Run", "Confirm stop")
    await expect(row.locator(".pill")).to_have_text("stopped")
    await page.click("#new-experiment-start")  # no name: the server's answer is shown by the form
    await expect(page.locator("#experiments-error")).to_contain_text("name:")
    await confirm_press(row, "Delete Old Run", "Confirm delete")
    await expect(row).to_have_count(0)
    assert (await server.request("GET", "/api/v1/experiments")).json["total"] == 0


async def confirm_press(row, label: str, confirm: str) -> None:
    await row.get_by_role("button", name=label).click()
    await row.get_by_role("button", name=confirm).click()
