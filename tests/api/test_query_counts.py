"""The hot endpoints' database work, pinned: a change that adds a query here shows up as a failing test."""
import pytest
from rest_framework.test import APIClient

from tests.support import factories
from tests.support.http import post

# clock_steady: the service's clock reads the database's about once a minute (core.clock), not counted here.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock_steady")]


def test_login_and_register_queries(django_assert_num_queries):
    factories.user(email="alice@example.com")
    client = APIClient()
    # one statement: supersede older codes, insert the code, insert the delivery record
    with django_assert_num_queries(1):
        assert post(client, "/login/", {"email": "alice@example.com"}).status_code == 202
    with django_assert_num_queries(1):
        assert post(client, "/register/", {"email": "new@example.com"}).status_code == 202


def test_verify_queries(django_assert_num_queries, fixed_code):
    client = APIClient()
    post(client, "/register/", {"email": "alice@example.com"})
    # one transaction (a savepoint inside the test's): lock the code, mark it used, look up the account, create it,
    # the sign-in's row (users.models.TokenFamily) and the device token's (users.models.DeviceToken)
    with django_assert_num_queries(8):
        assert post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]}).status_code == 200


def test_device_token_queries(django_assert_num_queries, fixed_code):
    client = APIClient()
    post(client, "/register/", {"email": "alice@example.com"})
    device_token = post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]}).json()["device_token"]
    body = {"email": "alice@example.com", "device_token": device_token}
    with django_assert_num_queries(2):  # the token's lookup (with its account), then the one issue statement
        assert post(client, "/login/", body).status_code == 202
    with django_assert_num_queries(0):  # a value not shaped like a token is ignored without a lookup
        assert post(client, "/login/", {**body, "device_token": "garbage"}).status_code == 429
    # the token's lookup; then one transaction (a savepoint inside the test's): lock the code, mark it used, the
    # account, last_login, the sign-in's row, revoke the old device token, insert the new one
    with django_assert_num_queries(10):
        assert post(client, "/verify-otp/", {**body, "code": fixed_code[-1]}).status_code == 200


def test_wrong_code_queries(django_assert_num_queries):
    client = APIClient()
    post(client, "/register/", {"email": "alice@example.com"})
    # savepoint, lock the code, count the attempt, release
    with django_assert_num_queries(4):
        assert post(client, "/verify-otp/", {"email": "alice@example.com", "code": "000000"}).status_code == 400


def test_profile_queries(django_assert_num_queries, fixed_code):
    client = APIClient()
    post(client, "/register/", {"email": "alice@example.com"})
    access = post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]}).json()["access"]
    with django_assert_num_queries(1):  # the user, from the token's id
        assert client.get("/profile/", HTTP_AUTHORIZATION=f"Bearer {access}").status_code == 200


def test_refresh_and_logout_queries(django_assert_num_queries, fixed_code):
    client = APIClient()
    post(client, "/register/", {"email": "alice@example.com"})
    tokens = post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]}).json()
    # savepoint, lock the sign-in's row (with whether its account is active), rotate it, release
    with django_assert_num_queries(4):
        rotated = post(client, "/token/refresh/", {"refresh": tokens["refresh"]})
        assert rotated.status_code == 200
    with django_assert_num_queries(1):  # revoke the sign-in
        assert post(client, "/logout/", {"refresh": rotated.json()["refresh"]}).status_code == 205
