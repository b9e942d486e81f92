"""Races on the real PostgreSQL and Redis: committed transactions, one connection per thread."""
import json
import threading

import pytest
from django.db import connections

from otp.models import Delivery, OneTimeCode
from users.models import User

pytestmark = pytest.mark.django_db(transaction=True)


def run_in_parallel(count, work):
    """Start `count` threads on a barrier so they hit the server together; return their results in order."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(index):
        try:
            barrier.wait(timeout=10)
            results[index] = work(index)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return results


def post(path, body):
    from rest_framework.test import APIClient

    return APIClient().post(path, data=json.dumps(body), content_type="application/json")


def test_ten_parallel_sends_for_one_address_let_exactly_one_through(redis_clean):
    results = run_in_parallel(10, lambda i: post("/register/", {"email": "alice@example.com"}).status_code)
    assert sorted(results) == [202] + [429] * 9
    assert Delivery.objects.count() == 1
    # Exactly one delivery job reached the broker, on the email queue.
    assert redis_clean.llen("email") == 1 and redis_clean.llen("sms") == 0


def test_two_concurrent_verifies_of_one_code_exactly_one_wins(fixed_code):
    assert post("/register/", {"email": "alice@example.com"}).status_code == 202
    code = fixed_code[-1]
    results = run_in_parallel(2, lambda i: post("/verify-otp/", {"email": "alice@example.com", "code": code}))
    assert sorted(r.status_code for r in results) == [200, 400]
    assert User.objects.count() == 1
    assert OneTimeCode.objects.get().status == OneTimeCode.Status.USED


def test_parallel_wrong_guesses_stop_at_max_attempts(fixed_code, settings):
    settings.OTP_MAX_ATTEMPTS = 5
    assert post("/register/", {"email": "alice@example.com"}).status_code == 202
    results = run_in_parallel(12, lambda i: post("/verify-otp/", {"email": "alice@example.com",
                                                                  "code": f"{i:06d}"}).status_code)
    assert results == [400] * 12
    code = OneTimeCode.objects.get()
    # Only the first five guesses were compared; the rest met a burned code.
    assert (code.attempts, code.status) == (5, OneTimeCode.Status.BURNED)
