"""Refresh tokens as single-use credentials: rotation races, reuse detection (RFC 9700 section 4.14.2), logout with
the refresh token alone, accounts deleted or deactivated, and signing-key rotation. Races run on the real
PostgreSQL with committed transactions and one connection per thread."""
import pytest
from rest_framework.test import APIClient

from tests.support import factories
from tests.support.http import post
from users.models import User

pytestmark = pytest.mark.django_db(transaction=True)


# --- item 5: tokens of deleted and deactivated accounts -----------------------------------------


def test_a_register_code_for_a_deactivated_accounts_address_opens_nothing(fixed_code):
    """/register/ still answers 202 for the address (it never tells), but its code opens nothing: before, the
    verify tried to create a second account for the address and answered 500."""
    factories.user(email="alice@example.com", is_active=False)
    assert post(APIClient(), "/register/", {"email": "alice@example.com"}).status_code == 202
    verified = post(APIClient(), "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]})
    assert verified.status_code == 400 and verified.json()["code"] == "invalid_code"
    assert User.objects.filter(email="alice@example.com").count() == 1
