"""The front end at /home/ in a real headless Chromium (Debian's), through nginx on the native stack."""
import shutil

import pytest

from tests.support.smtp import code_from_email

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What Chromium needs here: root, no GPU, and no background calls to Google on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        browser.close()


def test_register_read_the_email_type_the_code_see_the_profile_and_log_out(stack, inbox, page):
    page.goto(f"{stack.url}/home/")
    page.click("#mode-register")
    page.fill("#address", "browser@example.com")
    page.click("#send-code")
    page.wait_for_selector("#step-code:not([hidden])")
    assert "browser@example.com" in page.inner_text("#sent-to")

    code = code_from_email(inbox.wait_for_message("browser@example.com"))
    page.fill("#code", code)
    page.click("#verify")
    page.wait_for_selector("#step-profile:not([hidden])")
    assert page.inner_text("#profile-email") == "browser@example.com"
    page.screenshot(path=str(stack.stack_dir / "log" / "home-profile.png"))  # for a person to look at

    page.click("#logout")
    page.wait_for_selector("#step-address:not([hidden])")
    assert page.inner_text("#message") == "You are logged out."


def test_a_wrong_code_and_throttling_are_explained(stack, inbox, page):
    page.goto(f"{stack.url}/home/")
    page.click("#mode-register")
    page.fill("#address", "typo@example.com")
    page.click("#send-code")
    page.wait_for_selector("#step-code:not([hidden])")
    inbox.wait_for_message("typo@example.com")
    page.fill("#code", "000000")
    page.click("#verify")
    page.wait_for_selector("#message.error")
    assert page.inner_text("#message") == "That code is wrong or has expired. Check it, or ask for a new one."

    page.click("#start-over")
    page.click("#send-code")  # the same address again, within the cooldown
    page.wait_for_selector("#message.error")
    assert page.inner_text("#message").startswith("Too many attempts. Try again in ")
    assert page.locator("#step-address").is_visible()
