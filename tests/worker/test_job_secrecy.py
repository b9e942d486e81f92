"""While a delivery job waits in Redis, queued, unacknowledged, or published again for a retry, Redis never
holds its code in plaintext (contract: Delivery); a real worker still opens it and delivers the code."""
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from otp import services, tasks
from otp.models import Delivery, Purpose
from otp.addresses import mobile_normalize
from tests.support import factories
from tests.support.broker_messages import broker_blobs, delivery_jobs
from tests.support.http import post
from tests.support.twilio_standin import code_from_sms

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("worker")]

HELD_SECONDS = 5


def hold(delivery: Delivery) -> None:
    """As if another run held the delivery for HELD_SECONDS: the worker's run puts the job back for a retry once
    that lease lapses, so the retry waits in the broker, unacknowledged, long enough to be read."""
    Delivery.objects.filter(id=delivery.id).update(status="sending",
                                                   lease_until=timezone.now() + timedelta(seconds=HELD_SECONDS))


def watch_broker(broker_redis, delivery_id: int, sms, number: str, timeout: float = 30) -> list[list[tuple[int, dict]]]:
    """Read the broker's whole database every few milliseconds until the SMS to `number` arrives; return the
    delivery's jobs as each read found them, with every blob of each read kept for the caller's check."""
    reads, deadline = [], time.monotonic() + timeout
    while not sms.to(number):
        assert time.monotonic() < deadline, "the SMS never came"
        reads.append((delivery_jobs(broker_redis, delivery_id), broker_blobs(broker_redis)))
        time.sleep(0.02)
    return reads


def test_redis_never_holds_the_code_in_plaintext_queued_unacknowledged_or_retried(fixed_code, broker_redis, sms):
    number = "+14155552691"
    with transaction.atomic():  # the job is published when this commits, with the delivery already held
        delivery = services.code_issue(address=mobile_normalize(number), purpose=Purpose.REGISTER)
        hold(delivery)
    reads = watch_broker(broker_redis, delivery.id, sms, number)

    code = fixed_code[-1].encode()
    assert not [blob for _, blobs in reads for blob in blobs if code in blob]
    jobs = [job for found, _ in reads for job in found]
    assert {retries for retries, _ in jobs} >= {1}, "the retry was never seen waiting in Redis"
    assert all(payload["v"] == 2 and "code" not in payload for _, payload in jobs)
    # The worker opened it all the same.
    assert code_from_sms(sms.to(number)[0]) == fixed_code[-1]
    assert post(APIClient(), "/verify-otp/", {"mobile": number, "code": fixed_code[-1]}).status_code == 200


def test_a_plaintext_job_queued_before_the_deploy_is_delivered_and_retried_sealed(broker_redis, sms):
    number, code = "+14155552692", "482913"
    delivery = factories.delivery_row(number, channel="sms", purpose="register",
                                      expires_at=timezone.now() + timedelta(minutes=2))
    hold(delivery)
    # Published in the last release's format: the code in plaintext.
    tasks.delivery_send.apply_async(kwargs={"payload": {"v": 1, "delivery_id": delivery.id, "code": code,
                                                        "expires_at": delivery.expires_at.timestamp()}}, queue="sms")
    reads = watch_broker(broker_redis, delivery.id, sms, number)

    retried = [payload for found, _ in reads for retries, payload in found if retries >= 1]
    assert retried and all(payload["v"] == 2 and "code" not in payload for payload in retried)
    # The retry is published before the plaintext original is acknowledged; once it is, the plaintext is gone for
    # good: reads that see the retry waiting show the plaintext only at first, never after.
    plaintext_beside_retry = [any(code.encode() in blob for blob in blobs) for found, blobs in reads
                              if any(retries >= 1 for retries, _ in found)]
    assert plaintext_beside_retry and not plaintext_beside_retry[-1]
    assert plaintext_beside_retry == sorted(plaintext_beside_retry, reverse=True)
    assert code_from_sms(sms.to(number)[0]) == code
