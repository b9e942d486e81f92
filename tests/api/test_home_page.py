"""The /home/ page as served: its Content-Security-Policy, its files, and what it shows before any script runs."""
import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

STRICT_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
              "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@pytest.fixture
def page():
    response = Client().get("/home/")
    assert response.status_code == 200
    return response


def test_home_has_the_strict_content_security_policy_exactly(page):
    assert page["Content-Security-Policy"] == STRICT_CSP


@pytest.mark.parametrize("path", ["/api/docs/", "/admin/login/"])
def test_pages_with_inline_script_do_not_get_the_home_policy(path):
    # Swagger UI and the admin run inline script and style: /home/'s policy is its own, not a global one.
    assert Client().get(path).get("Content-Security-Policy") != STRICT_CSP


def test_home_has_no_inline_script_style_or_handler(page):
    html = page.content.decode()
    assert re.findall(r"<script\b[^>]*>", html) == [re.search(r'<script src="/static/otp/home\.js\?v=\w+" defer>',
                                                              html).group(0)]
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # onclick= and the like are inline script too


def test_the_page_files_are_served_with_their_types(page):
    html = page.content.decode()
    types = {"home.js": "text/javascript", "home.css": "text/css", "icon.svg": "image/svg+xml"}
    for name, content_type in types.items():
        url = re.search(rf'"(/static/otp/{re.escape(name)}\?v=\w+)"', html).group(1)
        response = Client().get(url)
        assert response.status_code == 200, url
        assert response["Content-Type"].startswith(content_type), response["Content-Type"]


def test_the_product_name_is_shown(settings):
    settings.SERVICE_NAME = "Acme & Sons <Login>"
    html = Client().get("/home/").content.decode()
    assert '<p class="product" id="product">Acme &amp; Sons &lt;Login&gt;</p>' in html
    assert "<title>Acme &amp; Sons &lt;Login&gt;: sign in</title>" in html


def test_one_flow_without_a_mode_switch(page):
    html = page.content.decode()
    assert 'id="send-code"' in html
    assert "I have an account" not in html and "I am new here" not in html and "aria-pressed" not in html
