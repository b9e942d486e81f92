"""The browser client of docs/examples/otp-client.js in headless Chromium, against the native stack through nginx.

The module and an empty page are served on the stack's own origin (by Playwright, from the checkout), so the
client's calls are same-origin, as the cross-origin rule requires by default; every API call reaches nginx.
"""
import time

import jwt
import pytest
from django.conf import settings

from tests.e2e.test_browser import page  # noqa: F401 (the Chromium fixture)
from tests.support.http import post
from tests.support.processes import REPO_DIR
from tests.support.smtp import code_from_email

pytestmark = pytest.mark.django_db(transaction=True)

MODULE = (REPO_DIR / "docs" / "examples" / "otp-client.js").read_text()


@pytest.fixture
def client_page(stack, page):  # noqa: F811
    """A page on the stack's origin with `window.client`, an OtpClient, and the /token/refresh/ requests seen."""
    page.route(f"{stack.url}/examples/otp-client.js",
               lambda route: route.fulfill(status=200, content_type="text/javascript", body=MODULE))
    page.route(f"{stack.url}/examples/",
               lambda route: route.fulfill(status=200, content_type="text/html",
                                           body="<!doctype html><title>client</title>"))
    page.goto(f"{stack.url}/examples/")
    page.evaluate("""async () => {
        const { OtpClient } = await import("/examples/otp-client.js");
        window.signedOut = 0;
        window.client = new OtpClient({ onSignedOut: () => { window.signedOut += 1; } });
    }""")
    refreshes = []
    page.on("request", lambda request: refreshes.append(request) if request.url.endswith("/token/refresh/") else None)
    page.refreshes = refreshes
    return page


def sign_in(page, inbox, address: str) -> dict:
    sent = page.evaluate("address => client.sendCode(address)", address)
    assert sent["channel"] == "email"
    code = code_from_email(inbox.wait_for_message(address))
    page.evaluate("([address, code]) => client.verify(address, code)", [address, code])
    return page.evaluate("() => client.tokens")


def expired(access: str) -> str:
    """The same access token, signed with the same key, but expired a minute ago: what a tab left open holds."""
    claims = jwt.decode(access, settings.SIMPLE_JWT["SIGNING_KEY"], algorithms=["HS256"])
    claims.update(iat=int(time.time()) - 400, exp=int(time.time()) - 60)
    return jwt.encode(claims, settings.SIMPLE_JWT["SIGNING_KEY"], algorithm="HS256")


def test_the_client_signs_in_reads_the_profile_and_logs_out(stack, inbox, client_page):
    page = client_page
    tokens = sign_in(page, inbox, "client@example.com")
    profile = page.evaluate("() => client.json('/profile/')")
    assert profile["email"] == "client@example.com"

    page.evaluate("() => client.logout()")
    assert page.evaluate("() => [client.signedIn, window.signedOut]") == [False, 1]
    assert post(stack, "/token/refresh/", {"refresh": tokens["refresh"]}).status_code == 401
    error = page.evaluate("() => client.json('/profile/').catch(e => [e.name, e.status, e.code])")
    assert error == ["OtpError", 401, "not_signed_in"]


def test_two_calls_after_expiry_make_exactly_one_refresh(stack, inbox, client_page):
    page = client_page
    tokens = sign_in(page, inbox, "expiring@example.com")
    page.evaluate("access => { client.tokens = { ...client.tokens, access }; }", expired(tokens["access"]))
    assert requests_401(stack, page)

    results = page.evaluate("""() => Promise.all([client.json('/profile/'), client.json('/profile/'),
                                                  client.fetch('/profile/').then(r => r.status)])""")
    assert results[0]["email"] == results[1]["email"] == "expiring@example.com" and results[2] == 200
    assert len(page.refreshes) == 1
    renewed = page.evaluate("() => client.tokens")
    assert renewed["refresh"] != tokens["refresh"] and renewed["access"] != tokens["access"]
    # The one refresh rotated the token: the sign-in is intact (a second refresh with the old token would have
    # been reuse, and revoked it), and the new refresh token works.
    assert post(stack, "/token/refresh/", {"refresh": renewed["refresh"]}).status_code == 200


def test_a_refused_refresh_ends_the_sign_in_once_for_every_waiting_call(stack, inbox, client_page):
    page = client_page
    tokens = sign_in(page, inbox, "revoked@example.com")
    assert post(stack, "/logout/", {"refresh": tokens["refresh"]}).status_code == 205  # from another device
    page.evaluate("access => { client.tokens = { ...client.tokens, access }; }", expired(tokens["access"]))

    errors = page.evaluate("""() => Promise.all([1, 2].map(() =>
        client.json('/profile/').then(() => 'answered', e => [e.status, e.code])))""")
    assert errors == [[401, "token_not_valid"], [401, "token_not_valid"]]
    assert len(page.refreshes) == 1
    assert page.evaluate("() => [client.signedIn, window.signedOut]") == [False, 1]


def requests_401(stack, page) -> bool:
    """The expired token is refused by the API itself (not by anything in the page)."""
    import requests

    access = page.evaluate("() => client.tokens.access")
    return requests.get(f"{stack.url}/profile/", headers={"Authorization": f"Bearer {access}"}, timeout=10).status_code == 401


CROSS_ORIGIN_REGISTER = """async ([api, address]) => {
    try {
        const response = await fetch(api + "/register/", { method: "POST",
            headers: { "Content-Type": "application/json" }, body: JSON.stringify({ email: address }) });
        return [response.status, (await response.json()).channel];
    } catch (error) {
        return [error.name, error.message];
    }
}"""


def test_a_page_of_another_origin_cannot_call_the_api_unless_listed(stack, inbox, page):  # noqa: F811
    # Pages really served by the stack's nginx under other names: Chromium then knows them as loopback pages (a
    # page it cannot place may not call loopback addresses at all: Private Network Access).
    console = []
    page.on("console", lambda message: console.append(message.text))

    # 127.0.0.2 is not in CORS_ALLOWED_ORIGINS: Chromium refuses the preflight, and the POST is never sent.
    page.goto(f"http://127.0.0.2:{stack.http_port}/healthz")
    refused = page.evaluate(CROSS_ORIGIN_REGISTER, [stack.url, "cross-refused@example.com"])
    assert refused == ["TypeError", "Failed to fetch"]
    assert any("blocked by CORS policy" in line and "No 'Access-Control-Allow-Origin' header" in line
               for line in console), console

    # localhost, on the same port, is listed: the preflight passes and the call is made.
    listed = f"http://localhost:{stack.http_port}"
    assert stack.env["CORS_ALLOWED_ORIGINS"] == listed
    page.goto(f"{listed}/healthz")
    allowed = page.evaluate(CROSS_ORIGIN_REGISTER, [stack.url, "cross-allowed@example.com"])
    assert allowed == [202, "email"]
    inbox.wait_for_message("cross-allowed@example.com")
    assert not inbox.to("cross-refused@example.com")  # asked for first, never sent
