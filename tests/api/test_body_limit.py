"""A body past DATA_UPLOAD_MAX_MEMORY_SIZE is 413 from the API itself, not only from nginx in front of it."""
import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path, content_type, body", [
    ("/register/", "application/json", b'{"email": "alice@example.com"' + b" " * 70000 + b"}"),
    ("/webhooks/twilio/status/", "application/x-www-form-urlencoded", b"MessageSid=SM1&pad=" + b"x" * 70000),
])
def test_a_body_past_the_limit_is_413_json(path, content_type, body):
    response = APIClient().generic("POST", path, body, content_type=content_type)
    assert response.status_code == 413, response.content[:200]
    assert response.json()["code"] == "request_too_large"
