"""A send whose outcome is unknown is never blindly sent again (contract: Delivery).

A real Celery worker against the Twilio stand-in and the SMTP server, made to take a message and then answer
late, or never. The worker runs with the product's own timeouts (Twilio: 10 s for the answer, then two checks of
its Messages list) and EMAIL_FINAL_REPLY_TIMEOUT_SECONDS=2 (tests/support/env.py).
"""
import re

import pytest
from rest_framework.test import APIClient

from otp.models import Delivery
from otp.tasks import delivery_send
from tests.support import twilio_standin
from tests.support.http import post
from tests.support.smtp import code_from_email
from tests.support.twilio_standin import code_from_sms
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("worker")]


def delivery_settled(address: str) -> Delivery:
    """The delivery to `address` once it is final (sent, failed or unknown)."""
    return wait_for(lambda: Delivery.objects.filter(address=address, status__in=("sent", "failed", "unknown")).first(),
                    timeout=45, message=f"the delivery to {address} to settle")


def unknown_count(channel: str) -> float:
    found = re.search(rf'otp_deliveries_total\{{channel="{channel}",status="unknown"\}} (\S+)',
                      APIClient().get("/metrics").content.decode())
    return float(found.group(1)) if found else 0.0


def run_again(delivery: Delivery, worker, code: str = "482913") -> None:
    """Publish the delivery's job once more, as the broker does when it redelivers it, and wait for that run."""
    delivery_send.apply_async(kwargs={"delivery_id": delivery.id, "code": code}, queue=delivery.channel)
    wait_for(lambda: f"delivery {delivery.id} is unknown: this run sends nothing" in worker.log(),
             message="the repeated job to finish")


def test_a_twilio_answer_after_the_client_timeout_is_found_in_the_list_and_not_sent_again(sms):
    # The input: the stand-in takes the message, then answers after 12 s, past the client's 10 s timeout.
    # Before, the worker retried and the user got two SMS with the same code (two SIDs, the second recorded).
    sms.script[:] = [twilio_standin.LATE]
    assert post(APIClient(), "/register/", {"mobile": "+14155552691"}).status_code == 202

    delivery = delivery_settled("+14155552691")
    [message] = sms.to("+14155552691")
    assert (delivery.status, delivery.provider_id, delivery.attempts) == ("sent", message["sid"], 1)
    assert len(sms.requests) == 1 and sms.list_requests == [{"To": "+14155552691", "PageSize": "50"}]
    assert post(APIClient(), "/verify-otp/", {"mobile": "+14155552691", "code": code_from_sms(message)}).status_code == 200


def test_a_twilio_gateway_without_a_messages_list_leaves_the_delivery_unknown_and_never_resends(sms, worker, settings):
    settings.OTP_RESEND_COOLDOWN_SECONDS = 1  # so the user's next request below waits a second, not thirty
    sms.messages_list = False  # a Twilio-compatible gateway that only sends: GET Messages answers 404
    sms.script[:] = [twilio_standin.LATE]
    unknown_before = unknown_count("sms")
    assert post(APIClient(), "/register/", {"mobile": "+14155552692"}).status_code == 202

    delivery = delivery_settled("+14155552692")
    assert delivery.status == "unknown" and "no Messages list (HTTP 404)" in delivery.last_error
    assert len(sms.requests) == 1 and len(sms.list_requests) == 1 and len(sms.to("+14155552692")) == 1
    wait_for(lambda: unknown_count("sms") > unknown_before, timeout=5, message="the unknown delivery in /metrics")

    run_again(delivery, worker)  # a redelivered job finds it unknown and sends nothing
    assert len(sms.requests) == 1

    # The user asks again after the cooldown, and that code is delivered as usual.
    wait_for(lambda: post(APIClient(), "/register/", {"mobile": "+14155552692"}).status_code == 202, timeout=10,
             interval=0.5, message="the cooldown to pass")
    message = sms.wait_for_message("+14155552692", count=2)
    assert post(APIClient(), "/verify-otp/", {"mobile": "+14155552692", "code": code_from_sms(message)}).status_code == 200


def test_a_connection_dropped_before_twilio_took_the_message_is_unknown_not_resent(sms):
    # The request was written, then the connection dropped: Twilio may have it. Its list shows nothing, twice.
    sms.script[:] = [twilio_standin.DROPPED]
    assert post(APIClient(), "/register/", {"mobile": "+14155552693"}).status_code == 202

    delivery = delivery_settled("+14155552693")
    assert delivery.status == "unknown" and "no such message in the Messages list" in delivery.last_error
    assert len(sms.requests) == 1 and len(sms.list_requests) == 2 and sms.accepted == []


def test_an_smtp_final_reply_later_than_its_bound_leaves_the_delivery_unknown(inbox, worker):
    # The server takes the message and answers the end of DATA after 12 s: past EMAIL_FINAL_REPLY_TIMEOUT_SECONDS,
    # and past the 10 s socket timeout the worker had before, after which it retried and sent a second email.
    inbox.hold_next_final_reply_seconds = 12
    assert post(APIClient(), "/register/", {"email": "late-reply@example.com"}).status_code == 202

    delivery = delivery_settled("late-reply@example.com")
    assert delivery.status == "unknown" and "no final reply to the end of DATA within 2 s" in delivery.last_error
    assert len(inbox.to("late-reply@example.com")) == 1

    run_again(delivery, worker)
    assert len(inbox.data_attempts) == 1
    code = code_from_email(inbox.to("late-reply@example.com")[0])  # the one email did reach the mailbox
    assert post(APIClient(), "/verify-otp/", {"email": "late-reply@example.com", "code": code}).status_code == 200


def test_an_smtp_connection_dropped_after_the_end_of_data_leaves_the_delivery_unknown(inbox):
    inbox.drop_after_next_data = True
    assert post(APIClient(), "/register/", {"email": "dropped@example.com"}).status_code == 202

    delivery = delivery_settled("dropped@example.com")
    assert delivery.status == "unknown" and len(inbox.to("dropped@example.com")) == 1
    assert len(inbox.data_attempts) == 1
