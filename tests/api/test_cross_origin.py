"""The cross-origin rule: same origin only by default; CORS_ALLOWED_ORIGINS lets named origins call the API.

A browser sends a preflight (OPTIONS with Origin and Access-Control-Request-*) before a cross-origin JSON POST,
and goes on only if the answer allows that origin (Fetch standard, "CORS protocol").
"""
import pytest

pytestmark = pytest.mark.django_db

APP = "https://app.example.com"


def preflight(client, path="/register/", origin=APP, method="POST", headers="content-type"):
    return client.options(path, HTTP_ORIGIN=origin, HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
                          HTTP_ACCESS_CONTROL_REQUEST_HEADERS=headers)


def test_a_cross_origin_preflight_is_refused_by_default(client, settings):
    assert settings.CORS_ALLOWED_ORIGINS == []
    response = preflight(client)
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers
    # Nor does a simple cross-origin request's answer let the page read it.
    answer = client.post("/register/", {"email": "x@example.com"}, content_type="application/json", HTTP_ORIGIN=APP)
    assert answer.status_code == 202 and "Access-Control-Allow-Origin" not in answer.headers


def test_a_configured_origin_may_call_the_api_with_a_bearer_token(client, settings):
    settings.CORS_ALLOWED_ORIGINS = [APP]
    response = preflight(client, "/profile/", method="GET", headers="authorization")
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert "authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "GET" in response.headers["Access-Control-Allow-Methods"]
    # Cookies never go cross-origin: the admin's session stays same-origin.
    assert "Access-Control-Allow-Credentials" not in response.headers

    answer = client.post("/register/", {"email": "x@example.com"}, content_type="application/json", HTTP_ORIGIN=APP)
    assert answer.status_code == 202 and answer.headers["Access-Control-Allow-Origin"] == APP

    # Another origin is still refused, and so are paths that are not the API's (the admin, the metrics).
    assert "Access-Control-Allow-Origin" not in preflight(client, origin="https://evil.example").headers
    assert "Access-Control-Allow-Origin" not in preflight(client, "/admin/login/").headers
