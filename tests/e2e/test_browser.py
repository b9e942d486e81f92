"""The front end at /home/ in a real headless Chromium (Debian's), through nginx on the native stack.

Every test's page also records Content-Security-Policy violations and uncaught script errors, and fails on any
(the `page` fixture); axe-core (npm, pinned in tests/e2e/axe/, installed by `make axe`) checks each state the
page can be in, and must find nothing.
"""
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import factories
from tests.support.http import post
from tests.support.processes import REPO_DIR
from tests.support.smtp import code_from_email
from tests.support.twilio_standin import code_from_sms

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What Chromium needs here: root, no GPU, and no background calls to Google on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
AXE_JS = REPO_DIR / "var" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
STRICT_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
              "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# Runs in every document before its own scripts (through the DevTools protocol, so the page's policy does not
# apply to it): hands each violation to the test.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportViolation(`${event.effectiveDirective} blocked ${event.blockedURI || "inline"} (${event.sourceFile}:${event.lineNumber})`);
});
"""

pytestmark = pytest.mark.django_db(transaction=True)


class Watched:
    """A Chromium page and what went wrong on it: CSP violations (events and console lines) and script errors."""

    def __init__(self, page):
        self.page = page
        self.violations: list[str] = []
        self.script_errors: list[str] = []
        page.on("console", lambda message: self.violations.append(message.text)
                if message.type == "error" and "Content Security Policy" in message.text else None)
        page.on("pageerror", lambda error: self.script_errors.append(str(error)))

    def __getattr__(self, name):
        return getattr(self.page, name)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        watched = Watched(context.new_page())
        context.expose_function("reportViolation", lambda text: watched.violations.append(text))
        context.add_init_script(REPORT_VIOLATIONS)
        watched.page.set_default_timeout(20_000)
        yield watched
        browser.close()
    assert watched.violations == [], "Content-Security-Policy violations"
    assert watched.script_errors == [], "uncaught errors in the page's script"


def axe_violations(page) -> list[dict]:
    """axe-core's violations on the page as it is now (every rule axe runs by default: WCAG 2.x A and AA, and
    best practices), each as {id, impact, help, nodes}. Injected through the DevTools protocol, which the
    page's Content-Security-Policy does not govern, so the policy stays as strict as it is for people."""
    assert AXE_JS.exists(), f"{AXE_JS} is missing: `make axe` installs it (npm, the version tests/e2e/axe/ pins)"
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate("() => {\n" + AXE_JS.read_text() + "\n}")
    return page.evaluate("""async () => (await window.axe.run(document)).violations.map(
        (v) => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" "))}))""")


def assert_accessible(page, state: str) -> None:
    violations = axe_violations(page)
    assert violations == [], f"axe-core on /home/ ({state}):\n{json.dumps(violations, indent=1)}"


def focused(page) -> str:
    return page.evaluate("() => document.activeElement ? document.activeElement.id || document.activeElement.tagName : null")


def bodies(page, path: str) -> list[dict]:
    """The JSON bodies the page sends to `path`, appended as they go."""
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith(path) else None)
    return sent


def send_code(page, stack, address: str) -> None:
    page.fill("#address", address)
    page.click("#send-code")
    page.wait_for_selector("#step-code:not([hidden])")


def type_code(page, code: str) -> None:
    page.fill("#code", code)
    page.click("#verify")
    page.wait_for_selector("#step-profile:not([hidden])")


def _signed_in(stack, inbox, page, address):
    """Through the page, as a person: ask for a code for `address`, type the emailed one; returns the tokens the
    page got."""
    tokens = {}
    page.on("response", lambda r: tokens.update(r.json()) if r.url.endswith("/verify-otp/") and r.ok else None)
    page.goto(f"{stack.url}/home/")
    send_code(page, stack, address)
    type_code(page, code_from_email(inbox.wait_for_message(address)))
    return tokens


# --- the one flow ----------------------------------------------------------------------------------------------


def test_a_new_address_gets_a_code_signs_in_and_logs_out(stack, inbox, page):
    response = page.goto(f"{stack.url}/home/")
    assert response.headers["content-security-policy"] == STRICT_CSP  # through nginx, unchanged
    assert page.inner_text("#heading") == "Sign in or create an account"
    assert page.inner_text("#product") == "OTP Login"  # SERVICE_NAME
    assert page.locator("#mode-register, #mode-login, [aria-pressed]").count() == 0  # no mode to pick
    assert_accessible(page, "initial")

    registers = bodies(page, "/register/")
    send_code(page, stack, "browser@example.com")
    assert registers == [{"email": "browser@example.com"}]
    assert page.inner_text("#heading") == "Check your email"
    assert "browser@example.com" in page.inner_text("#sent-to")
    assert focused(page) == "code"
    assert_accessible(page, "code sent")

    code = code_from_email(inbox.wait_for_message("browser@example.com"))
    type_code(page, code)
    assert page.inner_text("#profile-email") == "browser@example.com"
    assert page.inner_text("#heading") == "Your account"  # no longer "Sign in"
    assert focused(page) == "heading"  # not <body>: a screen reader reads where the person is now
    assert page.title() == "OTP Login: your account"
    assert_accessible(page, "signed in with profile")
    page.screenshot(path=str(stack.stack_dir / "log" / "home-profile.png"))  # for a person to look at

    page.click("#logout")
    page.wait_for_selector("#step-address:not([hidden])")
    assert page.inner_text("#message") == "You are logged out."
    assert page.get_attribute("#message", "role") == "alert"
    assert page.inner_text("#heading") == "Sign in or create an account" and focused(page) == "heading"
    assert_accessible(page, "signed out")


def test_an_existing_account_signs_in_through_the_same_flow(stack, inbox, page):
    from users.models import User

    account = outside_the_browser(lambda: factories.user(email="existing@example.com"))
    _signed_in(stack, inbox, page, "existing@example.com")
    assert page.inner_text("#profile-email") == "existing@example.com"
    accounts = outside_the_browser(lambda: list(User.objects.filter(email="existing@example.com")))
    assert [(found.id, found.last_login is not None) for found in accounts] == [(account.id, True)]
    assert page.inner_text("#heading") == "Your account" and focused(page) == "heading"


def test_a_mobile_number_signs_in_with_the_code_from_the_sms(stack, sms, page):
    page.goto(f"{stack.url}/home/")
    send_code(page, stack, "+1 415 555 2688")
    assert page.inner_text("#heading") == "Check your phone"
    assert "+1 415 555 2688" in page.inner_text("#sent-to") and focused(page) == "code"
    type_code(page, code_from_sms(sms.wait_for_message("+14155552688")))
    assert page.inner_text("#profile-mobile") == "+14155552688"
    assert page.inner_text("#heading") == "Your account" and focused(page) == "heading"


def outside_the_browser(work):
    """Runs `work` (database access) in a thread of its own: Playwright's sync API keeps an event loop running in
    the test's thread, where Django refuses synchronous database calls."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result(timeout=30)


def test_input_and_button_boundaries_have_3_to_1_contrast(stack, page):
    # WCAG 2.1 SC 1.4.11 (non-text contrast): a control's boundary against what surrounds it. axe-core does not
    # check it, so it is measured here from the colours Chromium computed.
    page.goto(f"{stack.url}/home/")
    page.evaluate("() => document.querySelectorAll('[hidden]').forEach((e) => { e.hidden = false; })")
    for selector in ("#address", "#code", "#resend", "#start-over", "#reload-profile", "#send-code"):
        border, around = page.evaluate("""(selector) => {
            const element = document.querySelector(selector);
            return [getComputedStyle(element).borderTopColor, getComputedStyle(element.closest("main")).backgroundColor];
        }""", selector)
        assert contrast(border, around) >= 3, (selector, border, around, contrast(border, around))


def contrast(first: str, second: str) -> float:
    """WCAG 2.x contrast ratio of two CSS rgb()/rgba() colours (opaque ones)."""
    def luminance(css):
        channels = [int(value) / 255 for value in re.findall(r"[\d.]+", css)[:3]]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# --- errors and waits ------------------------------------------------------------------------------------------


def test_a_wrong_code_is_announced_and_a_resend_too_soon_shows_the_wait(stack, inbox, page):
    page.goto(f"{stack.url}/home/")
    send_code(page, stack, "typo@example.com")
    inbox.wait_for_message("typo@example.com")
    page.fill("#code", "000000")
    page.click("#verify")
    page.wait_for_selector("#message.error")
    assert page.inner_text("#message") == "That code is wrong or has expired. Check it, or ask for a new one."
    assert page.get_attribute("#code", "aria-invalid") == "true" and focused(page) == "code"
    assert_accessible(page, "error shown")

    page.click("#resend")  # within the 30 s cooldown of the first send
    page.wait_for_function("() => /Try again in/.test(document.getElementById('message').textContent)")
    assert re.fullmatch(r"Too many tries for now\. Try again in ([12]?\d|30) seconds?\.", page.inner_text("#message"))
    assert page.locator("#step-code").is_visible()
    assert_accessible(page, "throttled wait")


def test_a_long_wait_reads_in_minutes_and_hours(stack, page):
    page.goto(f"{stack.url}/home/")
    for retry_after, text in (("3396", "about 57 minutes"), ("26", "26 seconds"), ("7200", "2 hours"),
                              ("10000", "about 3 hours")):
        page.route("**/register/", throttled(retry_after))
        page.fill("#address", "waiting@example.com")
        page.click("#send-code")
        page.wait_for_function("(text) => document.getElementById('message').textContent.includes(text)", arg=text)
        assert page.inner_text("#message") == f"Too many tries for now. Try again in {text}."
        assert focused(page) == "address" and page.get_attribute("#address", "aria-invalid") == "true"
        page.unroute("**/register/")
    assert_accessible(page, "throttled wait, long")


def throttled(retry_after: str):
    """A route handler answering 429 with `Retry-After: retry_after`, as the API does."""
    return lambda route: route.fulfill(status=429, content_type="application/json",
                                       headers={"Retry-After": retry_after},
                                       body='{"detail": "Request was throttled.", "code": "throttled"}')


def test_codes_typed_with_spaces_dashes_or_other_digits_are_read_by_the_page(stack, inbox, page):
    page.goto(f"{stack.url}/home/")
    assert page.get_attribute("#code", "pattern") is None
    assert page.get_attribute("#code", "inputmode") == "numeric"
    assert page.get_attribute("#code", "autocomplete") == "one-time-code"
    send_code(page, stack, "arabic@example.com")
    code = code_from_email(inbox.wait_for_message("arabic@example.com"))
    verifies = bodies(page, "/verify-otp/")

    page.fill("#code", "12a456")  # not a code: said on the page, nothing sent
    page.click("#verify")
    page.wait_for_selector("#message.error")
    assert page.inner_text("#message").startswith("Enter the 6-digit code")
    assert verifies == []

    arabic_indic = "".join(chr(0x660 + int(digit)) for digit in code)
    type_code(page, f" {arabic_indic[:3]}\u2009-\u2009{arabic_indic[3:]} ")  # thin spaces and a hyphen between
    assert verifies == [{"email": "arabic@example.com", "code": code}]
    assert page.inner_text("#profile-email") == "arabic@example.com"


# --- device tokens, logout and refresh ---------------------------------------------------------------------------


def test_the_device_token_is_kept_sent_back_and_revoked_at_logout(stack, inbox, page):
    # Until /verify-otp/ returns device tokens the answer gets one added here; the API ignores a token it did not
    # issue (contract: "Any other token ... is ignored"), so the page's part is tested either way.
    def with_device_token(route):
        answer = route.fetch()
        body = answer.json() if answer.ok else None
        if body is not None and "device_token" not in body:
            body["device_token"] = "page-test-device-token"
        route.fulfill(response=answer, json=body) if body is not None else route.fulfill(response=answer)

    page.route("**/verify-otp/", with_device_token)
    tokens = _signed_in(stack, inbox, page, "returning@example.com")
    device = tokens["device_token"]
    stored = json.loads(page.evaluate("() => localStorage.getItem('otp-login.device-tokens')"))
    assert stored == {"email:returning@example.com": device}

    # The tab closes (the access and refresh tokens go with it), the device token stays for the next visit,
    # after the first code's cooldown (the stack's throttle state cleared, as between tests).
    page.goto(f"{stack.url}/home/")
    registers, verifies, logouts = bodies(page, "/register/"), bodies(page, "/verify-otp/"), bodies(page, "/logout/")
    inbox.reset()
    stack_redis_cooldown_clear()
    send_code(page, stack, "Returning@Example.COM")  # typed otherwise, the same address
    type_code(page, code_from_email(inbox.wait_for_message("returning@example.com")))
    assert registers == [{"email": "Returning@Example.COM", "device_token": device}]
    assert verifies[0]["device_token"] == device
    # A verify may hand out a new token in place of the one sent (the API rotates them): the page keeps the newest.
    latest = tokens["device_token"]
    stored = json.loads(page.evaluate("() => localStorage.getItem('otp-login.device-tokens')"))
    assert stored == {"email:returning@example.com": latest}

    page.click("#logout")
    page.wait_for_selector("#step-address:not([hidden])")
    assert logouts == [{"refresh": tokens["refresh"], "device_token": latest}]
    assert page.evaluate("() => localStorage.getItem('otp-login.device-tokens')") == "{}"


def stack_redis_cooldown_clear():
    """Lets a second code be sent at once: the stack's throttle state, as between tests."""
    import redis

    from tests.e2e.conftest import stack_redis_url
    from tests.support.redis_state import redis_flush

    client = redis.Redis.from_url(stack_redis_url())
    redis_flush(client)
    client.close()


def test_logout_says_logged_out_only_when_the_server_confirmed_it(stack, inbox, page):
    tokens = _signed_in(stack, inbox, page, "leaving@example.com")
    page.route("**/logout/", lambda route: route.fulfill(
        status=503, content_type="application/json", headers={"Retry-After": "5"},
        body='{"detail": "Service temporarily unavailable (database).", "code": "service_unavailable"}'))
    page.click("#logout")
    page.wait_for_selector("#message.error")
    assert page.inner_text("#message").startswith("You are still signed in: ")
    assert page.locator("#step-profile").is_visible() and focused(page) == "logout"

    page.unroute("**/logout/")
    sent = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/logout/") else None)
    page.click("#logout")
    page.wait_for_selector("#step-address:not([hidden])")
    assert page.inner_text("#message") == "You are logged out."
    assert sent[-1].headers.get("authorization") is None  # the refresh token alone is the credential
    assert json.loads(sent[-1].post_data)["refresh"] == tokens["refresh"]
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


# --- the Content-Security-Policy is enforced, and the page keeps to it ------------------------------------------


def test_the_policy_is_enforced_so_a_clean_run_means_something(stack, page):
    page.goto(f"{stack.url}/home/")
    ran = page.evaluate("""() => new Promise((resolve) => {
        window.injected = false;
        const script = document.createElement("script");
        script.textContent = "window.injected = true";
        document.head.appendChild(script);
        setTimeout(() => resolve(window.injected), 200);
    })""")
    assert ran is False
    for _ in range(40):  # the event and the console line arrive on their own; wait_for_timeout lets them in
        if len(page.violations) >= 2:
            break
        page.wait_for_timeout(50)
    assert any("script-src" in violation and "inline" in violation for violation in page.violations), page.violations
    assert any("inline script violates" in violation for violation in page.violations), page.violations
    page.violations.clear()  # seen and expected: the fixture's own check is for the page's doing


def test_axe_runs_and_finds_what_it_should(stack, page):
    # The zero-violation checks above mean something only if axe ran on the page: unlabel the address input and
    # it must say so.
    page.goto(f"{stack.url}/home/")
    page.evaluate("""() => {
        document.querySelector("label[for=address]").remove();
        document.getElementById("address").removeAttribute("aria-describedby");
    }""")
    found = {violation["id"] for violation in axe_violations(page)}
    assert "label" in found, found
