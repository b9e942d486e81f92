"""Delivery through a real Celery worker: the code is read out of the email or SMS, as a user would."""
import re
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from otp.models import Delivery, OneTimeCode
from otp.tasks import delivery_send, maintenance_run
from tests.support import factories
from tests.support.database_state import backends_end
from tests.support.http import post
from tests.support.parallel import run_in_parallel
from tests.support.redis_state import redis_flush
from tests.support.smtp import code_from_email
from tests.support.twilio_standin import code_from_sms
from tests.support.waiting import wait_for
from tests.support.env import TWILIO_ACCOUNT_SID, TWILIO_FROM_NUMBER
from users.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("worker")]


def delivery_in_state(address, *states):
    return wait_for(lambda: Delivery.objects.filter(address=address, status__in=states).first(),
                    message=f"delivery to {address} in {states}")


def test_email_round_trip(inbox):
    assert post(APIClient(), "/register/", {"email": "Alice@Example.com"}).status_code == 202
    message = inbox.wait_for_message("alice@example.com")
    assert message["Subject"] == "Your OTP Login sign-in code"
    assert message.get_body(preferencelist=("html",)) is not None  # a plain-text and an HTML part
    code = code_from_email(message)

    tokens = post(APIClient(), "/verify-otp/", {"email": "alice@example.com", "code": code})
    assert tokens.status_code == 200
    profile = APIClient().get("/profile/", HTTP_AUTHORIZATION=f"Bearer {tokens.json()['access']}")
    assert profile.json()["email"] == "alice@example.com"

    delivery = delivery_in_state("alice@example.com", "sent")
    assert delivery.attempts == 1 and delivery.provider_id and delivery.sent_at
    assert code not in repr(Delivery.objects.values().get())

    # The worker's count reached the same metrics the API serves.
    # (Each process writes its counts to Redis once a second.)
    wait_for(lambda: re.search(r'otp_deliveries_total\{channel="email",status="sent"\} [1-9]',
                               APIClient().get("/metrics").content.decode()),
             timeout=5, message="the worker's count in /metrics")


def test_sms_round_trip_through_the_twilio_client(sms):
    assert post(APIClient(), "/register/", {"mobile": "415 555 2671"}).status_code == 202
    message = sms.wait_for_message("+14155552671")
    assert message["from"] == TWILIO_FROM_NUMBER and message["account_sid"] == TWILIO_ACCOUNT_SID
    code = code_from_sms(message)
    assert message["body"].endswith(f"@localhost #{code}")
    assert sms.requests[0]["authorization"].startswith("Basic ")

    assert post(APIClient(), "/verify-otp/", {"mobile": "+14155552671", "code": code}).status_code == 200
    delivery = delivery_in_state("+14155552671", "sent")
    assert delivery.provider_id == message["sid"]
    # The callback URL names the delivery, so a status callback finds it even before its SID is recorded.
    assert sms.requests[0]["StatusCallback"] == f"http://localhost:8080/webhooks/twilio/status/?delivery={delivery.id}"
    assert User.objects.get().mobile == "+14155552671"


def test_login_sends_only_to_existing_accounts(inbox):
    factories.user(email="known@example.com")
    assert post(APIClient(), "/login/", {"email": "unknown@example.com"}).status_code == 202
    assert post(APIClient(), "/login/", {"email": "known@example.com"}).status_code == 202
    code = code_from_email(inbox.wait_for_message("known@example.com"))
    assert post(APIClient(), "/verify-otp/", {"email": "known@example.com", "code": code}).status_code == 200
    unknown = delivery_in_state("unknown@example.com", "failed")
    assert unknown.last_error == "No account for this address: not sent." and unknown.attempts == 1
    assert inbox.to("unknown@example.com") == []


def test_a_login_during_a_sign_up_leaves_the_mailed_code_working(inbox):
    # The known-failures pass's input: someone's /login/ for an address still signing up (no account) sent
    # nothing but superseded the code just mailed; the user typed it and got "invalid code", and no new code came.
    assert post(APIClient(), "/register/", {"email": "signup@example.com"}).status_code == 202
    mailed = code_from_email(inbox.wait_for_message("signup@example.com"))
    redis_flush(redis.Redis.from_url(settings.REDIS_URL), "*otp:cooldown:*")  # the attacker waited it out
    assert post(APIClient(), "/login/", {"email": "signup@example.com"}).status_code == 202
    delivery_in_state("signup@example.com", "failed")  # the login's: no account, not sent
    assert post(APIClient(), "/verify-otp/", {"email": "signup@example.com", "code": mailed}).status_code == 200
    assert len(inbox.to("signup@example.com")) == 1


def test_twilio_429_and_500_are_retried_until_delivered_once(sms):
    sms.script[:] = [500, 429]
    assert post(APIClient(), "/register/", {"mobile": "+14155552672"}).status_code == 202
    message = sms.wait_for_message("+14155552672")
    delivery = delivery_in_state("+14155552672", "sent")
    assert delivery.attempts == 3 and len(sms.requests) == 3 and len(sms.to("+14155552672")) == 1
    wait_for(lambda: re.search(r'otp_delivery_retries_total\{channel="sms"\} [2-9]',
                               APIClient().get("/metrics").content.decode()),
             timeout=5, message="the worker's retry count in /metrics")
    verified = post(APIClient(), "/verify-otp/", {"mobile": "+14155552672", "code": code_from_sms(message)})
    assert verified.status_code == 200


def test_twilio_400_is_recorded_failed_and_not_retried(sms, worker):
    sms.script[:] = [400]
    assert post(APIClient(), "/register/", {"mobile": "+14155552673"}).status_code == 202
    delivery = delivery_in_state("+14155552673", "failed")
    assert "21211" in delivery.last_error and delivery.attempts == 1
    assert len(sms.requests) == 1 and sms.accepted == []


def test_smtp_4xx_is_retried_until_delivered_once(inbox):
    inbox.refuse_next = 2
    assert post(APIClient(), "/register/", {"email": "bob@example.com"}).status_code == 202
    inbox.wait_for_message("bob@example.com")
    delivery = delivery_in_state("bob@example.com", "sent")
    assert inbox.refused == 2 and delivery.attempts == 3 and len(inbox.to("bob@example.com")) == 1
    # Every try of one delivery carries one Message-ID, so a mailbox can fold a duplicate that gets through.
    import email
    assert {email.message_from_bytes(raw)["Message-ID"] for raw in inbox.data_attempts} == {delivery.provider_id}


def test_a_delivery_gets_every_try_otp_send_max_retries_allows(inbox):
    # OTP_SEND_MAX_RETRIES (5 by default) bounds the tries, not Celery's own default of 3 retries: a job's
    # retry(max_retries=None) means the task's default, and the fourth retry was refused and the code dropped
    # (found by a new-user pass, through a database read-only for longer than 3.5 s).
    inbox.refuse_next = 5
    assert post(APIClient(), "/register/", {"email": "erin@example.com"}).status_code == 202
    inbox.wait_for_message("erin@example.com", timeout=30)
    delivery = delivery_in_state("erin@example.com", "sent")
    assert inbox.refused == 5 and delivery.attempts == 6


def test_ten_parallel_registers_send_exactly_one_email(inbox):
    results = run_in_parallel(10, lambda i: post(APIClient(), "/register/", {"email": "carol@example.com"}).status_code)
    assert sorted(results) == [202] + [429] * 9
    inbox.wait_for_message("carol@example.com")
    delivery_in_state("carol@example.com", "sent")
    assert Delivery.objects.count() == 1 and len(inbox.to("carol@example.com")) == 1


def test_a_job_run_again_after_success_does_not_send_again(inbox, worker):
    assert post(APIClient(), "/register/", {"email": "dave@example.com"}).status_code == 202
    code = code_from_email(inbox.wait_for_message("dave@example.com"))
    delivery = delivery_in_state("dave@example.com", "sent")
    delivery_send.apply_async(kwargs={"delivery_id": delivery.id, "code": code}, queue="email")
    wait_for(lambda: f"delivery {delivery.id} is sent: this run sends nothing" in worker.log(),
             message="the repeated job to finish")
    assert len(inbox.to("dave@example.com")) == 1
    delivery.refresh_from_db()
    assert delivery.attempts == 1


def test_worker_log_never_shows_the_code(inbox, worker):
    assert post(APIClient(), "/register/", {"email": "erin@example.com"}).status_code == 202
    code = code_from_email(inbox.wait_for_message("erin@example.com"))
    delivery = delivery_in_state("erin@example.com", "sent")
    wait_for(lambda: f"delivery {delivery.id} sent by email" in worker.log(), message="the job's log line")
    assert code not in worker.log()


def test_maintenance_job_runs_on_the_worker(email_address):
    past = timezone.now() - timedelta(minutes=10)
    factories.code_row("old@example.com", expires_at=past)
    stale = factories.delivery_row("old@example.com", expires_at=past)
    maintenance_run.delay()
    wait_for(lambda: not OneTimeCode.objects.exists(), message="expired codes to be purged")
    # The same job marks the stale delivery a moment after the purge.
    wait_for(lambda: Delivery.objects.get(id=stale.id).status == "failed", message="the stale delivery marked failed")


def test_a_job_queued_under_a_task_name_from_before_the_rename_is_delivered(inbox, worker):
    # Jobs queued by the previous release name their task as it was then, with bare keyword arguments.
    import celery

    delivery = factories.delivery_row("legacy@example.com", purpose="register",
                                      expires_at=timezone.now() + timedelta(minutes=2))
    celery.current_app.send_task("otp.tasks.delivery_send_task", kwargs={"delivery_id": delivery.id, "code": "482913"},
                                 queue="email")
    assert code_from_email(inbox.wait_for_message("legacy@example.com")) == "482913"
    delivery_in_state("legacy@example.com", "sent")
    runs = worker.log().count("maintenance: {")
    celery.current_app.send_task("otp.tasks.maintenance_run", queue="maintenance")
    wait_for(lambda: worker.log().count("maintenance: {") > runs, message="the maintenance job under its old name")


def test_worker_whose_database_connections_were_cut_delivers_every_job(inbox):
    # After the server ends every connection the worker holds or keeps in its pool, no job may fail for good.
    # Two things each suffice: the pool checks a connection as it leaves (CONN_HEALTH_CHECKS), and a task that
    # meets a database error is retried. Without both, this test fails.
    for i in range(8):  # the worker has connections in use and in its pool now
        assert post(APIClient(), "/register/", {"email": f"warm{i}@example.com"}).status_code == 202
    for i in range(8):
        inbox.wait_for_message(f"warm{i}@example.com")
    with connection.cursor() as cursor:
        assert backends_end(cursor) >= 1
    addresses = [f"after{i}@example.com" for i in range(8)]
    for address in addresses:
        assert post(APIClient(), "/register/", {"email": address}).status_code == 202
    for address in addresses:
        inbox.wait_for_message(address, timeout=20)
    assert all(len(inbox.to(address)) == 1 for address in addresses)
