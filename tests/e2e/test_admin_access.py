"""Where the Django admin is reached (contract: GET /admin/): a JSON 404 through the public nginx by default; with
ADMIN_PUBLIC on, through nginx, CSRF included, its sign-ins throttled per client; otherwise on the API's
loopback-only port, through an SSH tunnel, with Secure cookies (docs/operations.md, "Admin"). The sign-ins run in
a real headless Chromium, as an operator would sign in."""
import ipaddress
import socket
import subprocess

import pytest
import requests

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.test_nginx_errors import SECURITY_HEADERS
from tests.support import factories
from tests.support.edge import LoneNginx, admin_sign_in, session_from
from tests.support.processes import LOG_DIR, REPO_DIR, ManagedProcess
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

ADMIN_EMAIL = "operator@example.com"
ADMIN_PASSWORD = "a-long-admin-password-for-tests"


@pytest.fixture
def admin_user():
    user = factories.user(email=ADMIN_EMAIL, is_staff=True, is_superuser=True)
    user.set_password(ADMIN_PASSWORD)
    user.save()
    return user


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def chromium_sign_in(browser, base_url: str, posts: list | None = None):
    """An operator opens /admin/, is sent to the sign-in form, signs in; returns the context (its cookies) and
    the page where the form led. The requests the browser POSTs are appended to `posts`."""
    context = browser.new_context()
    if posts is not None:
        context.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{base_url}/admin/")
    page.wait_for_selector("#id_username")
    page.fill("#id_username", ADMIN_EMAIL)
    page.fill("#id_password", ADMIN_PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")
    return context, page


@pytest.fixture
def public_admin_nginx(stack, tmp_path):
    """The stack's API behind an nginx rendered with ADMIN_PUBLIC on (the rest of its settings the defaults)."""
    nginx = LoneNginx(tmp_path, api_port=stack.api_port, ADMIN_PUBLIC="true").start()
    yield nginx
    nginx.stop()


@pytest.mark.parametrize("method, path", [("GET", "/admin/"), ("GET", "/admin/login/"), ("POST", "/admin/login/"),
                                          ("GET", "/admin"), ("GET", "/admin/users/user/")])
def test_admin_is_a_json_404_through_nginx_by_default(stack, method, path):
    response = requests.request(method, f"{stack.url}{path}", timeout=10, allow_redirects=False)
    assert response.status_code == 404, response.text[:300]
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found.", "code": "not_found"}
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, (name, response.headers)
    # The same stack serves it on the API's own port, bound to the loopback interface only.
    assert requests.get(f"http://127.0.0.1:{stack.api_port}/admin/login/", timeout=10).status_code == 200


def test_the_apis_port_listens_on_the_loopback_interface_only(stack):
    # What keeps the admin off the network when nginx does not serve it: gunicorn binds 127.0.0.1:API_PORT.
    addresses = [address for address in subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                                                         timeout=10).stdout.split()
                 if ipaddress.ip_address(address).version == 4 and not ipaddress.ip_address(address).is_loopback]
    if not addresses:
        pytest.skip("this machine has no address but the loopback one")
    for address in addresses:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, stack.api_port), timeout=5).close()
        socket.create_connection((address, stack.http_port), timeout=5).close()  # nginx: every interface


@pytest.mark.browser
def test_admin_sign_in_through_nginx_passes_csrf_when_admin_public(public_admin_nginx, admin_user, browser):
    posts = []
    context, page = chromium_sign_in(browser, public_admin_nginx.url, posts)
    try:
        # With nginx's former `Referrer-Policy: no-referrer`, Chromium sent `Origin: null` here: 403 CSRF.
        assert posts and posts[-1].headers.get("origin") == public_admin_nginx.url
        assert page.url == f"{public_admin_nginx.url}/admin/", page.content()[:500]
        assert "Site administration" in page.content()
        response = requests.get(f"{public_admin_nginx.url}/admin/login/", timeout=10)
        assert response.headers["Referrer-Policy"] == "same-origin"
    finally:
        context.close()


def test_admin_sign_ins_through_nginx_are_throttled_per_client_when_public(public_admin_nginx, admin_user):
    attacker = session_from("127.0.0.21")
    answers = [admin_sign_in(attacker, public_admin_nginx.url, ADMIN_EMAIL, f"wrong-{n}") for n in range(5)]
    assert [answer.status_code for answer in answers] == [200] * 4 + [429]  # the form again, then django-axes
    assert answers[-1].headers["Retry-After"] == "900"
    # Locked out: the right password too, and a forged X-Forwarded-For does not make it another client.
    assert admin_sign_in(attacker, public_admin_nginx.url, ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 429
    attacker.headers["X-Forwarded-For"] = "198.51.100.200"
    assert admin_sign_in(attacker, public_admin_nginx.url, ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 429
    # The operator, at another address, is not locked out by the attacker.
    operator = admin_sign_in(session_from("127.0.0.22"), public_admin_nginx.url, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert operator.status_code == 302 and operator.headers["Location"] == "/admin/"


def test_behind_a_trusted_tls_balancer_the_admin_sign_in_passes_csrf_as_https(stack, tmp_path, admin_user):
    # The balancer ended TLS: the browser's Origin is https://..., and Django must see the request as https to
    # match it, from the balancer's X-Forwarded-Proto, which nginx passes on only from TRUSTED_PROXY_RANGES.
    nginx = LoneNginx(tmp_path, api_port=stack.api_port, ADMIN_PUBLIC="true",
                      TRUSTED_PROXY_RANGES="127.0.0.30/32").start()
    try:
        through_tls = {"X-Forwarded-Proto": "https", "Origin": f"https://127.0.0.1:{nginx.port}"}
        balancer = session_from("127.0.0.30")
        balancer.headers.update(through_tls)
        signed_in = admin_sign_in(balancer, nginx.url, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert signed_in.status_code == 302 and signed_in.headers["Location"] == "/admin/", signed_in.text[:500]
        # The same headers from a peer outside the ranges: the scheme stays nginx's own, and Django refuses the
        # https Origin for a plain-http request.
        stranger = session_from("127.0.0.31")
        stranger.headers.update(through_tls)
        refused = admin_sign_in(stranger, nginx.url, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert refused.status_code == 403 and "CSRF" in refused.text
    finally:
        nginx.stop()


@pytest.fixture
def https_api(stack):
    """The stack's API as production runs it, its public URL https (so the admin's cookies are Secure), on a
    loopback port of its own."""
    port = free_port()
    env = {**stack.env, "API_PORT": str(port), "PUBLIC_BASE_URL": "https://login.example.test",
           "WEB_CONCURRENCY": "1"}
    api = ManagedProcess(f"https-api-{port}", [str(REPO_DIR / "backend" / "start-api.sh")], env=env,
                         log_dir=LOG_DIR).start()

    def healthy():
        assert api.process.poll() is None, api.log()
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, timeout=60, message="the API to answer")
    yield port
    api.stop()


@pytest.mark.browser
def test_admin_sign_in_through_a_tunnel_to_the_loopback_port_keeps_secure_cookies(https_api, admin_user, browser):
    # What `ssh -L 8000:127.0.0.1:$API_PORT host` gives the operator: a port on their own machine forwarded to the
    # API's loopback port. Chromium treats http://localhost as a secure context, so it keeps Secure cookies there.
    tunnel = TcpProxy(https_api).start()
    context, page = chromium_sign_in(browser, f"http://localhost:{tunnel.port}")
    try:
        assert page.url == f"http://localhost:{tunnel.port}/admin/", page.content()[:500]
        assert "Site administration" in page.content()
        cookies = {cookie["name"]: cookie for cookie in context.cookies()}
        assert cookies["sessionid"]["secure"] and cookies["csrftoken"]["secure"], cookies
        # Signed in for good: the next page is the admin's, not the sign-in form again.
        page.goto(f"http://localhost:{tunnel.port}/admin/users/user/")
        assert page.url.endswith("/admin/users/user/") and "Select user to change" in page.content()
    finally:
        context.close()
        tunnel.stop()
