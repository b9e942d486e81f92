"""Races on the real PostgreSQL and Redis: committed transactions, one connection per thread."""
import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from otp.models import Delivery, OneTimeCode
from tests.support import factories
from tests.support.http import post
from tests.support.parallel import run_in_parallel
from tests.support.waiting import wait_for
from users.models import DeviceToken, TokenFamily, User

pytestmark = pytest.mark.django_db(transaction=True)


def test_ten_parallel_sends_for_one_address_let_exactly_one_through(broker_redis):
    results = run_in_parallel(10, lambda i: post(APIClient(), "/register/", {"email": "alice@example.com"}).status_code)
    assert sorted(results) == [202] + [429] * 9
    assert Delivery.objects.count() == 1
    # Exactly one delivery job reached the broker, on the email queue.
    assert broker_redis.llen("email") == 1 and broker_redis.llen("sms") == 0


def test_two_concurrent_verifies_of_one_code_exactly_one_wins(fixed_code):
    assert post(APIClient(), "/register/", {"email": "alice@example.com"}).status_code == 202
    code = fixed_code[-1]
    results = run_in_parallel(2, lambda i: post(APIClient(), "/verify-otp/", {"email": "alice@example.com",
                                                                              "code": code}))
    assert sorted(r.status_code for r in results) == [200, 400]
    assert User.objects.count() == 1
    assert OneTimeCode.objects.get().status == OneTimeCode.Status.USED


def test_parallel_wrong_guesses_stop_at_max_attempts(fixed_code, settings):
    settings.OTP_MAX_ATTEMPTS = 5
    assert post(APIClient(), "/register/", {"email": "alice@example.com"}).status_code == 202
    results = run_in_parallel(12, lambda i: post(APIClient(), "/verify-otp/", {"email": "alice@example.com",
                                                                               "code": f"{i:06d}"}).status_code)
    assert results == [400] * 12
    code = OneTimeCode.objects.get()
    # Only the first five guesses were compared; the rest met a burned code.
    assert (code.attempts, code.status) == (5, OneTimeCode.Status.BURNED)


@pytest.fixture
def account_updates_linger():
    """Every UPDATE of an account row holds it 1.5 s longer (a trigger sleeping after it), so a test can act while
    a transaction holds that row; returns a function telling whether one is sleeping there now."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE FUNCTION test_linger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                       "PERFORM pg_sleep(1.5); RETURN NEW; END $$")
        cursor.execute("CREATE TRIGGER test_linger AFTER UPDATE ON users_user FOR EACH ROW "
                       "EXECUTE FUNCTION test_linger()")

    def lingering() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                           "AND datname = current_database()")
            return cursor.fetchone()[0] > 0

    yield lingering
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_linger ON users_user")
        cursor.execute("DROP FUNCTION test_linger()")


def test_an_account_deleted_in_the_admin_while_it_signs_in_with_a_device_token_is_no_deadlock(fixed_code,
                                                                                            account_updates_linger):
    # A sign-in with a device token updates the account (its last login), then replaces the device token; the
    # admin's delete removed the account's device tokens, then the account. Meeting, each waited for the other
    # and PostgreSQL ended one: the sign-in answered 503, or the admin's page failed (found by a review). The
    # admin now locks the account first, as the sign-in does.
    address = {"email": "alice@example.com"}
    assert post(APIClient(), "/register/", address).status_code == 202
    device_token = post(APIClient(), "/verify-otp/", {**address, "code": fixed_code[-1]}).json()["device_token"]
    assert post(APIClient(), "/login/", {**address, "device_token": device_token}).status_code == 202
    account = User.objects.get(**address)
    operator = Client()
    operator.force_login(factories.user(email="admin@example.com", is_staff=True, is_superuser=True),
                         backend="django.contrib.auth.backends.ModelBackend")

    def work(index):
        if index == 0:
            return post(APIClient(), "/verify-otp/", {**address, "device_token": device_token,
                                                      "code": fixed_code[-1]})
        wait_for(account_updates_linger, timeout=10, message="the sign-in to hold the account's row")
        return operator.post(f"/admin/users/user/{account.pk}/delete/", {"post": "yes"})

    signed_in, deleted = run_in_parallel(2, work)
    assert signed_in.status_code == 200, signed_in.content
    assert deleted.status_code == 302, deleted.content[:300]
    assert not User.objects.filter(pk=account.pk).exists()
    # Its rows went with it, the sign-in's new ones included.
    assert not TokenFamily.objects.filter(user_id=account.pk).exists()
    assert not DeviceToken.objects.filter(user_id=account.pk).exists()
