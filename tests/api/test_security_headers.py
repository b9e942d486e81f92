"""Headers an auth API is expected to send: no caching of tokens, HSTS and Secure cookies behind https."""
import pytest
from rest_framework.test import APIClient

from tests.support.http import post

pytestmark = pytest.mark.django_db


def test_token_responses_are_never_stored(fixed_code):
    client = APIClient()
    post(client, "/register/", {"email": "alice@example.com"})
    tokens = post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]})
    assert tokens.status_code == 200 and tokens["Cache-Control"] == "no-store"
    refreshed = post(client, "/token/refresh/", {"refresh": tokens.json()["refresh"]})
    assert refreshed.status_code == 200 and refreshed["Cache-Control"] == "no-store"
    profile = client.get("/profile/", HTTP_AUTHORIZATION=f"Bearer {tokens.json()['access']}")
    assert profile["Cache-Control"] == "no-store"


def test_errors_are_not_stored_and_the_home_page_keeps_its_own_caching():
    client = APIClient()
    assert post(client, "/verify-otp/", {"email": "x"}).get("Cache-Control") == "no-store"
    assert "public" in client.get("/home/")["Cache-Control"]


def test_no_hsts_over_a_plain_http_public_url(settings):
    settings.PUBLIC_HTTPS = False
    assert "Strict-Transport-Security" not in APIClient().get("/healthz")


def test_hsts_when_the_public_url_is_https_whoever_ends_tls(settings):
    settings.PUBLIC_HTTPS = True
    response = APIClient().get("/healthz")  # plain http to the API: TLS ended at the load balancer
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")


def test_cookies_are_secure_when_the_public_url_is_https():
    import os
    import subprocess
    import sys

    from tests.support.processes import BACKEND_DIR

    script = "from django.conf import settings; print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)"
    for url, expected in (("https://login.example.com", "True True"), ("http://localhost:8080", "False False")):
        result = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=BACKEND_DIR,
                                env={**os.environ, "PUBLIC_BASE_URL": url}, capture_output=True, text=True, timeout=60)
        assert result.stdout.strip().splitlines()[-1] == expected, result.stderr
