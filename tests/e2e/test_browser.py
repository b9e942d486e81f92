"""The front end at /home/ in a real headless Chromium (Debian's), through nginx on the native stack."""
import shutil

import pytest

from tests.support.http import post
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


def _signed_in(stack, inbox, page, address):
    """Through the page, as a person: register `address`, type the emailed code; returns the tokens the page got."""
    tokens = {}
    page.on("response", lambda r: tokens.update(r.json()) if r.url.endswith("/verify-otp/") and r.ok else None)
    page.goto(f"{stack.url}/home/")
    page.click("#mode-register")
    page.fill("#address", address)
    page.click("#send-code")
    page.wait_for_selector("#step-code:not([hidden])")
    page.fill("#code", code_from_email(inbox.wait_for_message(address)))
    page.click("#verify")
    page.wait_for_selector("#step-profile:not([hidden])")
    return tokens


def test_logout_says_logged_out_only_when_the_server_confirmed_it(stack, inbox, page):
    tokens = _signed_in(stack, inbox, page, "leaving@example.com")
    page.route("**/logout/", lambda route: route.fulfill(
        status=503, content_type="application/json", headers={"Retry-After": "5"},
        body='{"detail": "Service temporarily unavailable (database).", "code": "service_unavailable"}'))
    page.click("#logout")
    page.wait_for_selector("#message.error")
    assert page.inner_text("#message").startswith("You are still signed in: ")
    assert page.locator("#step-profile").is_visible()

    page.unroute("**/logout/")
    sent = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/logout/") else None)
    page.click("#logout")
    page.wait_for_selector("#step-address:not([hidden])")
    assert page.inner_text("#message") == "You are logged out."
    assert sent[-1].headers.get("authorization") is None  # the refresh token alone is the credential
    assert post(stack, "/token/refresh/", {"refresh": tokens["refresh"]}).status_code == 401


def test_an_expired_access_token_is_refreshed_once_and_the_page_carries_on(stack, inbox, page):
    _signed_in(stack, inbox, page, "lingering@example.com")
    refreshes, profiles = [], []
    page.on("request", lambda r: refreshes.append(r) if r.url.endswith("/token/refresh/") else None)

    def profile(route):  # the first reload meets an expired access token
        profiles.append(route.request.headers.get("authorization"))
        if len(profiles) == 1:
            return route.fulfill(status=401, content_type="application/json",
                                 body='{"detail": "Given token not valid for any token type", "code": "token_not_valid"}')
        return route.continue_()

    page.route("**/profile/", profile)
    page.click("#reload-profile")
    page.wait_for_function("() => !document.getElementById('reload-profile').disabled")
    assert len(refreshes) == 1 and len(profiles) == 2 and profiles[0] != profiles[1]
    assert page.locator("#step-profile").is_visible() and page.inner_text("#message") == ""
    assert page.inner_text("#profile-email") == "lingering@example.com"
