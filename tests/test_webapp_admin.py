"""The web app's administration views in real headless Chromium: for each, create, edit
(where the API can) and delete through the page, and one refusal of the API shown next
to the action with the server's detail. On SQLite, like the other browser tests."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.test_plugins import build_wheel, server_settings  # noqa: F401 - fixture: packages in tmp_path
from tests.webapp_helpers import admin, browser, database_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


def row(page, table: str, text: str):
    return page.locator(f"#{table} tbody tr", has_text=text)


async def confirm(locator, label: str) -> None:
    """A two-step destructive button: press, then press "Confirm ..."."""
    await locator.get_by_role("button", name=label).click()
    await locator.get_by_role("button", name="Confirm " + label.split(" ")[0].lower()).click()


async def test_rules_create_edit_delete_and_error(server, admin):
    [event] = await server.linked_events(1, prefix="Boiler")
    page = admin.page
    await admin.go("rules")
    await page.click("#rule-new")
    await page.fill("#rule-name", "Too hot")
    await page.select_option("#rule-operator", "between")
    await page.fill("#rule-threshold", "80")
    await page.fill("#rule-threshold-high", "20")  # below the low bound: the server says no
    dialog = page.locator("#rule-dialog")
    await dialog.get_by_role("button", name="Create rule").click()
    await expect(dialog.locator(".error")).to_have_text("threshold_high: must be >= threshold")
    await page.fill("#rule-threshold-high", "120")
    await dialog.get_by_role("button", name="Create rule").click()
    r = row(page, "rules-table", "Too hot")
    await expect(r).to_contain_text("between 80 and 120")
    await r.get_by_role("button", name="Edit Too hot").click()
    await page.select_option("#rule-operator", "gt")
    await page.fill("#rule-threshold", "95")
    await page.locator("#rule-dialog").get_by_role("button", name="Save").click()
    await expect(r).to_contain_text("> 95")
    stored = (await server.request("GET", "/api/v1/rules")).json["data"][0]
    assert stored["operator"] == "gt" and stored["threshold"] == 95 and stored["event_public_id"] == event
    await admin.shoot("rules")
    await confirm(r, "Delete Too hot")
    await expect(r).to_have_count(0)
    assert (await server.request("GET", "/api/v1/rules")).json["total"] == 0


async def test_webhooks_create_edit_deliveries_delete_and_error(server, admin):
    page = admin.page
    await server.request("POST", "/api/v1/webhooks", {"url": "http://127.0.0.1:9/taken", "events": ["sensor.reading"]})
    await admin.go("webhooks")
    await page.click("#webhook-new")
    await page.fill("#webhook-url", "http://127.0.0.1:9/taken")
    dialog = page.locator("#webhook-dialog")
    await dialog.get_by_role("button", name="Create webhook").click()
    await expect(dialog.locator(".error")).to_have_text("A webhook with this URL already exists.")
    await page.fill("#webhook-url", "http://127.0.0.1:9/lab-alerts")
    await dialog.get_by_role("checkbox", name="experiment.started").check()
    await dialog.get_by_role("button", name="Create webhook").click()
    r = row(page, "webhooks-table", "lab-alerts")
    await expect(r).to_contain_text("sensor.threshold_exceeded, experiment.started")
    await r.get_by_role("button", name="Edit http://127.0.0.1:9/lab-alerts").click()
    await page.uncheck("#webhook-enabled")
    await page.locator("#webhook-dialog").get_by_role("button", name="Save").click()
    await expect(r.locator(".pill")).to_have_text("disabled")
    await r.get_by_role("button", name="Deliveries of http://127.0.0.1:9/lab-alerts").click()
    await expect(page.locator("#deliveries-dialog")).to_contain_text("Nothing delivered yet.")
    await page.keyboard.press("Escape")
    await expect(page.locator("#deliveries-dialog")).to_have_count(0)
    await admin.shoot("webhooks")
    await confirm(r, "Delete http://127.0.0.1:9/lab-alerts")
    await expect(r).to_have_count(0)
    assert (await server.request("GET", "/api/v1/webhooks")).json["total"] == 1


async def test_users_create_edit_delete_and_error(server, admin):
    page = admin.page
    await admin.go("users")
    await page.click("#user-new")
    await page.fill("#user-email", "tech@lab.example")
    await page.fill("#user-username", "tech")
    await page.fill("#user-password", "short")
    dialog = page.locator("#user-dialog")
    await dialog.get_by_role("button", name="Create user").click()
    await expect(dialog.locator(".error")).to_contain_text("password:")
    await page.fill("#user-password", "long-enough-1")
    await dialog.get_by_role("button", name="Create user").click()
    r = row(page, "users-table", "tech@lab.example")
    await expect(r.locator(".pill")).to_have_text("viewer")
    await r.get_by_role("button", name="Edit tech").click()
    await page.select_option("#user-role-select", "operator")
    await page.locator("#user-dialog").get_by_role("button", name="Save").click()
    await expect(r.locator(".pill")).to_have_text("operator")
    # the server refuses to delete the signed-in admin, and the page says why
    me = row(page, "users-table", "admin@example.com")
    await confirm(me, "Delete admin")
    await expect(page.locator("#users-error")).to_have_text("You cannot delete your own account.")
    await admin.shoot("users")
    await confirm(r, "Delete tech")
    await expect(r).to_have_count(0)


async def test_tokens_create_once_delete_and_error(server, admin):
    page = admin.page
    await admin.go("tokens")
    await page.click("#token-new")
    await page.fill("#token-name", "old")
    await page.fill("#token-expires", "2001-01-01T00:00")
    dialog = page.locator("#token-dialog")
    await dialog.get_by_role("button", name="Create token").click()
    await expect(dialog.locator(".error")).to_have_text("expires_at: must be in the future")
    await page.fill("#token-expires", "")
    await page.fill("#token-name", "bench")
    await dialog.get_by_role("button", name="Create token").click()
    plaintext = (await page.locator("#token-plaintext").inner_text()).strip()
    # the token works, and the page shows it once only
    assert (await server.request("GET", "/api/v1/auth/me", token=plaintext)).code == 200
    await admin.shoot("tokens-created")
    await page.locator("#token-created").get_by_role("button", name="Done").click()
    r = row(page, "tokens-table", "bench")
    await expect(r).to_have_count(1)
    assert plaintext not in await page.content()
    await confirm(r, "Delete token bench")
    await expect(r).to_have_count(0)
    assert (await server.request("GET", "/api/v1/auth/me", token=plaintext)).code == 401


async def test_ota_register_upload_delete_and_error(server, admin, tmp_path):
    page = admin.page
    await admin.go("ota")
    await page.click("#ota-new")
    await page.fill("#ota-version", "one.two")
    dialog = page.locator("#ota-dialog")
    await dialog.get_by_role("button", name="Register").click()
    await expect(dialog.locator(".error")).to_contain_text("version")
    await page.fill("#ota-version", "1.4.0")
    await page.fill("#ota-changelog", "Faster sampling")
    await dialog.get_by_role("button", name="Register").click()
    r = row(page, "ota-table", "1.4.0")
    await expect(r.locator(".pill")).to_have_text("pending")
    # deploying before a firmware file is there: refused, with the reason shown
    await r.get_by_role("button", name="Deploy 1.4.0").click()
    await expect(page.locator("#ota-error")).to_have_text("Upload a firmware file before deploying this update.")
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"\x7fELF" + bytes(4096))
    await r.get_by_role("button", name="Upload firmware for 1.4.0").click()
    await page.set_input_files("#ota-file", str(firmware))
    await page.locator("#ota-upload-dialog").get_by_role("button", name="Upload").click()
    await expect(r).to_contain_text("4,100 bytes")
    await admin.shoot("ota")
    # apply, as in WebMACS: the file verified, the update marked completed
    await r.get_by_role("button", name="Apply 1.4.0").click()
    await expect(r.locator(".pill")).to_have_text("completed")
    await confirm(r, "Delete 1.4.0")
    await expect(r).to_have_count(0)
    assert (await server.request("GET", "/api/v1/ota")).json["total"] == 0


async def test_packages_upload_uninstall_and_error(server, admin, tmp_path):
    page = admin.page
    await admin.go("plugins")
    bad = tmp_path / "webmacs_plugin_echo-1.0.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip" * 100)
    await page.set_input_files("#package-file", str(bad))
    await page.click("#package-upload")
    await expect(page.locator("#package-error")).to_contain_text("ZIP")
    wheel = build_wheel(tmp_path / "dist")  # a real one, same file name
    await page.set_input_files("#package-file", str(wheel))
    await page.click("#package-upload")
    r = page.locator("#packages tbody tr", has_text="webmacs-plugin-echo")
    await expect(r).to_contain_text("echo-sensor")
    await expect(page.locator("#packages .notice")).to_contain_text("installed")
    await admin.shoot("packages")
    await confirm(r, "Uninstall webmacs-plugin-echo")
    await expect(r).to_have_count(0)
    assert [p["source"] for p in (await server.request("GET", "/api/v1/plugins/packages")).json] == ["bundled"]


async def test_logs_filter_and_mark_read(server, admin):
    """(No refusal to show here: every filter is a choice list and marking is always allowed
    to an operator; the viewer's page offers no marking at all.)"""
    page = admin.page
    for content, kind in (("Pump restarted", "info"), ("Pressure high", "warning"), ("Sensor lost", "error")):
        assert (await server.request("POST", "/api/v1/logging", {"content": content, "logging_type": kind})).code == 201
    await admin.go("logs")
    for content in ("Pump restarted", "Pressure high", "Sensor lost"):
        await expect(row(page, "logs-table", content)).to_have_count(1)
    await page.select_option("#log-type", "warning")
    await expect(page.locator("#logs-table tbody tr")).to_have_count(1)
    r = row(page, "logs-table", "Pressure high")
    await r.get_by_role("button", name="Mark read: Pressure high").click()
    await expect(r.locator(".log-state")).to_have_text("read")
    await page.select_option("#log-type", "")
    await page.select_option("#log-state", "unread")
    await expect(row(page, "logs-table", "Pressure high")).to_have_count(0)
    await expect(row(page, "logs-table", "Sensor lost")).to_have_count(1)
    await page.select_option("#log-state", "read")
    r = row(page, "logs-table", "Pressure high")
    await r.get_by_role("button", name="Mark unread: Pressure high").click()
    await expect(page.locator("#logs-table tbody tr", has_text="Pressure high")).to_have_count(0)  # left the filter
    entries = (await server.request("GET", "/api/v1/logging?status_type=unread")).json["data"]
    assert "Pressure high" in {e["content"] for e in entries}
    await admin.shoot("logs")
    # a viewer reads the log but gets no marking buttons
    await admin.logout()
    await server.create_user("viewer", "reader")
    await admin.login("reader@example.com", "password-123")
    await admin.go("logs")
    await expect(row(page, "logs-table", "Sensor lost")).to_have_count(1)
    await expect(page.get_by_role("button", name="Mark read: Sensor lost")).to_have_count(0)
