"""Races on the real PostgreSQL and Redis: committed transactions, one connection per thread."""
import pytest
from rest_framework.test import APIClient

from otp.models import Delivery, OneTimeCode
from tests.support.http import post
from tests.support.parallel import run_in_parallel
from users.models import User

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
