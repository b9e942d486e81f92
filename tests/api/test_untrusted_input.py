"""Untrusted input never reaches a 500, and every error on the API's paths is JSON (contract: HTTP API).

A request that carries no valid credential gets a 4xx that says what is wrong, never a 500: a value the database
would refuse is a field error before it gets there, and only an outage (503) gives the send throttles back.
"""
import pytest
from django.db import DataError
from django.test import Client
from rest_framework.test import APIClient
from twilio.request_validator import RequestValidator

from core.exception_handler import exception_handler
from core.errors import RateLimited
from otp import services, throttles
from otp.addresses import Address, Channel
from otp.models import OneTimeCode, Purpose
from tests.support.env import TWILIO_AUTH_TOKEN
from tests.support.http import post

pytestmark = pytest.mark.django_db

# The input: 254 characters as typed, 887 once each `ü` label is converted to ASCII (xn--tda).
LONG_ONCE_CONVERTED = "a" * 40 + "@" + "ü." * 105 + "com"
WEBHOOK = "/webhooks/twilio/status/"


@pytest.fixture
def client():
    return APIClient()


@pytest.fixture
def csrf_client():
    """A client that, like a browser or curl, is held to Django's CSRF check (the test client skips it)."""
    return Client(enforce_csrf_checks=True, raise_request_exception=False)


def assert_json_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert isinstance(body.get("detail"), str) and isinstance(body.get("code"), str), body
    if code:
        assert body["code"] == code, body
    return body


# --- values the database would refuse are field errors, and cost their throttle --------------------------------


@pytest.mark.parametrize("path", ["/register/", "/login/", "/verify-otp/"])
def test_an_email_too_long_once_converted_is_a_field_error_every_time(client, path):
    body = {"email": LONG_ONCE_CONVERTED, **({"code": "123456"} if path == "/verify-otp/" else {})}
    for _ in range(3):
        response = post(client, path, body)
        assert response.status_code == 400, response.content
        assert "email" in response.json()
    assert not OneTimeCode.objects.exists()


def test_a_database_error_that_is_not_an_outage_keeps_the_send_throttle():
    # An address no normaliser made (so the column refuses it): the database raises DataError, the user's input
    # and not an outage, so the cooldown stays taken and the request cannot be repeated at will.
    address = Address(value="a" * 300 + "@example.com", channel=Channel.EMAIL)
    with pytest.raises(DataError):
        services.code_request(address=address, purpose=Purpose.REGISTER)
    assert throttles.SEND_COOLDOWN.current(address) > 0
    with pytest.raises(RateLimited):
        services.code_request(address=address, purpose=Purpose.REGISTER)


def test_a_data_error_that_slips_past_validation_is_a_400_not_a_500():
    response = exception_handler(DataError("value too long for type character varying(254)"), {"view": None})
    assert response.status_code == 400
    assert response.data == {"detail": "A value in the request cannot be stored.", "code": "invalid_input"}


# --- bodies that break Django's or DRF's parsing ------------------------------------------------------------


@pytest.mark.parametrize("charset", ["rot13", "zlib", "base64", "hex", "uu", "bz2", "quopri"])
@pytest.mark.parametrize("path, content_type, body", [
    ("/register/", "application/json", b'{"email": "alice@example.com"}'),
    ("/verify-otp/", "application/json", b'{"email": "alice@example.com", "code": "123456"}'),
    ("/token/refresh/", "application/json", b'{"refresh": "x"}'),
    ("/logout/", "application/json", b'{"refresh": "x"}'),
    (WEBHOOK, "application/x-www-form-urlencoded", b"MessageSid=SM1&MessageStatus=sent"),
])
def test_a_charset_that_is_not_a_text_encoding_is_415(client, charset, path, content_type, body):
    # Python's codecs know these names, so Django takes them as the body's encoding, and decoding then fails
    # in ways the parsers do not expect.
    response = client.generic("POST", path, body, content_type=f"{content_type}; charset={charset}")
    assert_json_error(response, 415, "unsupported_media_type")


def test_an_unknown_charset_is_415_not_a_guess(client):
    # It was read as UTF-8 (Django ignores a name it does not know); a guess at the body's encoding is refused now.
    response = client.generic("POST", "/register/", b'{"email": "alice@example.com"}',
                              content_type="application/json; charset=no-such-charset")
    assert_json_error(response, 415, "unsupported_media_type")


def test_a_webhook_form_with_too_many_fields_is_400(client):
    # Django refuses more than DATA_UPLOAD_MAX_NUMBER_FIELDS fields (a SuspiciousOperation), signed or not.
    response = client.generic("POST", WEBHOOK, b"a=&" * 1500, content_type="application/x-www-form-urlencoded")
    assert_json_error(response, 400, "bad_request")


@pytest.mark.parametrize("content_type, body", [
    ("application/json", b'{"MessageSid": "SM1", "MessageStatus": "sent"}'),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--\r\n"),
    ("multipart/form-data", b"--x\r\n"),
    ("text/plain", b"MessageSid=SM1"),
    ("application/x-www-form-urlencoded; charset=utf-16", b"\xff\xfeM\x00"),
])
def test_the_webhook_answers_odd_bodies_with_a_4xx_json(client, content_type, body):
    response = client.generic("POST", WEBHOOK, body, content_type=content_type)
    assert 400 <= response.status_code < 500 and response.json()["code"]


def test_a_signed_webhook_form_with_odd_values_is_not_a_500(client, settings):
    settings.SMS_BACKEND = "twilio"
    settings.TWILIO_AUTH_TOKEN = TWILIO_AUTH_TOKEN
    params = {"MessageSid": "SM\x00" + "x" * 5000, "MessageStatus": "undelivered\x00", "ErrorCode": "\x00" * 3}
    signature = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(f"{settings.PUBLIC_BASE_URL}{WEBHOOK}", params)
    from urllib.parse import urlencode

    response = client.generic("POST", WEBHOOK, urlencode(params).encode(),
                              content_type="application/x-www-form-urlencoded", HTTP_X_TWILIO_SIGNATURE=signature)
    assert response.status_code < 500, response.content


# --- every error on the API's paths is JSON --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nowhere/", "/register", "/login", "/verify-otp", "/token/refresh", "/logout",
                                  "/webhooks/twilio/status", "/static/nothing.css", "/admin"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET"])
def test_unknown_paths_and_missing_slashes_are_json_404_for_every_method(csrf_client, path, method):
    response = csrf_client.generic(method, path, b"{}", content_type="application/json")
    assert_json_error(response, 404, "not_found")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_the_root_answers_json_to_every_method_but_get(csrf_client, method):
    # GET and HEAD on / redirect to /home/ (the newcomer's way in); anything else is the API's JSON 405.
    response = csrf_client.generic(method, "/", b"{}", content_type="application/json")
    assert_json_error(response, 405, "method_not_allowed")


def test_a_missing_trailing_slash_is_named_in_the_404(csrf_client):
    body = assert_json_error(csrf_client.post("/register", data=b"{}", content_type="application/json"), 404)
    assert "/register/" in body["detail"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_a_trailing_slash_too_many_is_named_in_the_404(csrf_client, path):
    body = assert_json_error(csrf_client.get(f"{path}/"), 404, "not_found")
    assert body["detail"] == f"Not found. Did you mean {path} (without the slash)?"


@pytest.mark.parametrize("path", ["/nowhere/", "/home/x/", "/static/otp/"])
def test_a_404_names_no_path_that_does_not_exist_either(csrf_client, path):
    assert assert_json_error(csrf_client.get(path), 404, "not_found")["detail"] == "Not found."


def test_metrics_refuses_other_methods_in_json(csrf_client):
    assert_json_error(csrf_client.post("/metrics", data=b"{}", content_type="application/json"), 405,
                      "method_not_allowed")
    assert csrf_client.get("/metrics").status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_a_static_file_refuses_other_methods_in_json(csrf_client, method):
    # WhiteNoise serves it; its own 405 had an empty body and no Content-Type.
    response = csrf_client.generic(method, "/static/otp/home.js", b"{}", content_type="application/json")
    assert_json_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET, HEAD"
    assert csrf_client.get("/static/otp/home.js").status_code == 200


def test_a_range_past_a_static_files_end_is_json_416(csrf_client):
    response = csrf_client.get("/static/otp/home.js", HTTP_RANGE="bytes=99999999-")
    assert_json_error(response, 416, "range_not_satisfiable")
    assert response["Content-Range"].startswith("bytes */")
    assert csrf_client.get("/static/otp/home.js", HTTP_RANGE="bytes=0-9").status_code == 206


def test_a_failed_csrf_check_is_json_outside_the_admin(csrf_client):
    assert_json_error(csrf_client.post("/home/", data=b"{}", content_type="application/json"), 403, "csrf_failed")
    # The admin is a page for people: its CSRF failure stays Django's page.
    admin = csrf_client.post("/admin/login/", data={"username": "a", "password": "b"})
    assert admin.status_code == 403 and admin["Content-Type"].startswith("text/html")


def test_a_suspicious_host_is_json_400(csrf_client):
    assert_json_error(csrf_client.get("/healthz", HTTP_HOST="evil.example"), 400, "bad_request")


@pytest.mark.parametrize("query, accept, status", [("?format=zzz", "*/*", 404), ("?format=openapi-json", "*/*", 404),
                                                   ("", "text/html", 406), ("", "application/xml", 406)])
def test_the_schema_endpoints_errors_are_json_not_yaml(client, query, accept, status):
    response = client.get(f"/api/schema/{query}", HTTP_ACCEPT=accept)
    assert_json_error(response, status)


def test_the_schema_itself_is_still_served_as_yaml_or_json(client):
    assert client.get("/api/schema/")["Content-Type"].startswith("application/vnd.oai.openapi")
    assert client.get("/api/schema/?format=json").json()["openapi"].startswith("3.")
