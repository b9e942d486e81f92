"""The device-token share of the SMS budgets through a real Celery worker: the job says which class asked, and the
worker counts the message on that class's share (default budgets: 50 an hour per prefix, 40 of them for requests
without a device token)."""
import pytest
from rest_framework.test import APIClient

from core.ratelimit import rate_count
from otp import services, throttles
from otp.addresses import mobile_normalize
from otp.models import Delivery, Purpose
from tests.support.http import post
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("worker")]


def test_a_device_token_code_is_sent_from_the_reserve_requests_without_one_cannot_spend(sms):
    others = mobile_normalize("+14155554000")
    for _ in range(40):  # the share of +1415's budget for requests without a token, spent as 40 SMS would
        assert throttles.send_budget_take(address=others) is None
    refused = post(APIClient(), "/register/", {"mobile": "+14155554001"})
    assert refused.status_code == 429 and refused.json()["code"] == "sms_budget"

    services.code_request(address=mobile_normalize("+14155554002"), purpose=Purpose.REGISTER, device=True)
    sms.wait_for_message("+14155554002")
    wait_for(lambda: Delivery.objects.filter(address="+14155554002", status="sent").exists(), timeout=10,
             message="the device-token delivery recorded sent")
    # The worker counted it on the whole budget only: the share of requests without a token is still spent.
    whole = throttles.SMS_PER_PREFIX
    assert rate_count(key=whole.key(others), limit=whole.limit, period=3600) == 41
    assert rate_count(key=f"{whole.key(others)}:shared", limit=whole.shared_limit, period=3600) == 40
    assert post(APIClient(), "/register/", {"mobile": "+14155554003"}).status_code == 429
