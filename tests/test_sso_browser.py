"""Single sign-on in real headless Chromium, through our login page and the test
provider's login form (tests/oidc_provider.py), on SQLite (the HTTP flow runs on
both backends in tests/test_sso.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import expect

# fixtures: Chromium, and a fresh SQLite database (browser tests run on one backend)
from tests.test_dashboard import browser, database_url  # noqa: F401
from tests.test_sso import provider, provider_process, server_settings, sso  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture
async def page(sso, browser):
    context = await browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-US")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
        assert errors == [], errors
    finally:
        await context.close()


async def test_sign_in_with_sso_in_chromium(sso, page):
    await page.goto(sso.server.base_url + "/")
    button = page.locator("#sso-button")
    await expect(button).to_have_text("Sign in with Test IdP")
    await expect(button).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "sso-login.png"))
    await button.click()
    # the provider's own login form
    await expect(page.locator("#idp-login")).to_be_visible()
    assert page.url.startswith(sso.provider.issuer + "/authorize?")
    await page.fill("#idp-login", "alice")
    await page.click("#idp-submit")
    # back on our page: /sso-callback?code=... exchanged, then the dashboard
    await expect(page.locator("#dashboard-view")).to_be_visible(timeout=10_000)
    await expect(page.locator("#user-name")).to_have_text("Alice.Smith")
    await expect(page.locator("#user-role")).to_have_text("viewer")
    assert page.url == sso.server.base_url + "/"  # the one-time code is not left in the address bar
    token = await page.evaluate("() => sessionStorage.getItem('webmacs.token')")
    me = await sso.server.request("GET", "/api/v1/auth/me", token=token)
    assert me.code == 200 and me.json["email"] == "alice@lab.example"
    await page.screenshot(path=str(ARTIFACTS / "sso-dashboard.png"))


async def test_sso_refusal_and_spent_code_in_chromium(sso, page):
    await sso.provider.control({"users": {"eve": {"sub": "eve-sub", "email": "eve@lab.example",
                                                  "email_verified": False}}})
    await page.goto(sso.server.base_url + "/")
    await page.click("#sso-button")
    await page.fill("#idp-login", "eve")
    await page.click("#idp-submit")
    await expect(page.locator("#sso-error")).to_contain_text("Email not verified")
    # a spent or made-up code: back to the login form with the server's answer
    await page.goto(sso.server.base_url + "/sso-callback?code=made-up")
    await expect(page.locator("#login-message")).to_have_text(
        "Single sign-on failed: Invalid or expired code.")
    await expect(page.locator("#sso-button")).to_be_visible()
