"""Send budgets (contract: "SMS volume is bounded ..."), run in this process against the real Redis, PostgreSQL,
SMTP server and Twilio stand-in: the API's check, the worker's count on handoff, the device share, the kill
switch, the soft threshold, the email budgets, the Auto-Submitted header and the suppression of refused
recipients. tests/faults/test_send_budgets.py runs the same through a real worker and nginx."""
import re
import smtplib

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from core.errors import EmailBudgetSpent, SmsBudgetSpent
from core.ratelimit import rate_count
from otp import services, throttles
from otp.addresses import email_normalize, mobile_normalize, sms_destination_prefix
from otp.models import Delivery, Purpose
from otp.providers import SendRecipientRefusedError, SendTransientError
from otp.providers.smtp import _email_connections, _email_error
from otp.providers.twilio import _twilio_check_client, _twilio_client_build
from tests.support import factories
from tests.support.http import post

pytestmark = pytest.mark.django_db


@pytest.fixture
def twilio(settings, sms):
    settings.SMS_BACKEND = "twilio"
    settings.TWILIO_ACCOUNT_SID = "AC" + "1" * 32
    settings.TWILIO_AUTH_TOKEN = "test-token"
    settings.TWILIO_FROM_NUMBER = "+14155550100"
    settings.TWILIO_API_BASE_URL = sms.base_url
    _twilio_client_build.cache_clear()
    _twilio_check_client.cache_clear()
    yield sms
    _twilio_client_build.cache_clear()
    _twilio_check_client.cache_clear()


@pytest.fixture
def smtp(settings, inbox, smtp_server):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = smtp_server.port
    yield inbox
    _email_connections.close_idle()  # no kept connection outlives the server's settings


@pytest.fixture
def small_sms_budgets(settings):
    """5 an hour per prefix (4 for requests without a device token), 10 for all SMS (8 without)."""
    settings.OTP_SMS_PER_PREFIX_PER_HOUR = 5
    settings.OTP_SMS_PER_HOUR = 10
    settings.OTP_SMS_DEVICE_SHARE = 20
    settings.OTP_SMS_PREFIX_DIGITS = 3


def send(raw: str, *, purpose=Purpose.REGISTER, device=False, fixed_code) -> Delivery:
    """One request for a code and the worker's run on its delivery, as the task would do it."""
    address = mobile_normalize(raw) if raw.startswith("+") else email_normalize(raw)
    services.code_request(address=address, purpose=purpose, device=device)
    delivery = Delivery.objects.filter(address=address.value).latest("id")
    services.delivery_send(delivery_id=delivery.id, code=fixed_code[-1], device=device)
    delivery.refresh_from_db()
    return delivery


def spent(budget: throttles.SendBudget, address=None, *, shared=False) -> int:
    key = budget.key(address) + (":shared" if shared else "")
    return rate_count(key=key, limit=budget.shared_limit if shared else budget.limit, period=3600)


def test_the_destination_prefix_is_the_calling_code_and_the_first_national_digits(settings):
    assert sms_destination_prefix(mobile_normalize("+14155552671")) == "+1415"
    assert sms_destination_prefix(mobile_normalize("+447911123456")) == "+44791"
    settings.OTP_SMS_PREFIX_DIGITS = 5
    assert sms_destination_prefix(mobile_normalize("+14155552671")) == "+141555"


def test_only_messages_handed_to_the_provider_count(twilio, small_sms_budgets, fixed_code):
    # A login for a number without an account: the API does the same work, the worker sends nothing.
    stranger = send("+14155552001", purpose=Purpose.LOGIN, fixed_code=fixed_code)
    assert stranger.status == "failed" and twilio.accepted == []
    assert spent(throttles.SMS_PER_HOUR) == 0 and spent(throttles.SMS_PER_HOUR, shared=True) == 0

    factories.user(mobile="+14155552002")
    member = send("+14155552002", purpose=Purpose.LOGIN, fixed_code=fixed_code)
    assert member.status == "sent" and len(twilio.accepted) == 1
    assert spent(throttles.SMS_PER_HOUR) == 1 and spent(throttles.SMS_PER_HOUR, shared=True) == 1
    assert spent(throttles.SMS_PER_PREFIX, mobile_normalize("+14155552002")) == 1


def test_a_transient_failure_gives_the_message_back_and_the_retry_counts_it_once(twilio, small_sms_budgets,
                                                                                 fixed_code):
    twilio.script.append(500)
    address = mobile_normalize("+14155552003")
    services.code_request(address=address, purpose=Purpose.REGISTER)
    delivery = Delivery.objects.get(address=address.value)
    with pytest.raises(services.DeliveryRetry):
        services.delivery_send(delivery_id=delivery.id, code=fixed_code[-1])
    assert spent(throttles.SMS_PER_HOUR) == 0
    services.delivery_send(delivery_id=delivery.id, code=fixed_code[-1])
    assert len(twilio.accepted) == 1 and spent(throttles.SMS_PER_HOUR) == 1


def test_a_spent_prefix_budget_answers_429_sms_budget_while_other_prefixes_and_email_go_on(
        twilio, small_sms_budgets, fixed_code):
    for n in range(4):  # the share of requests without a device token: 5 less 20 %
        assert send(f"+1415555210{n}", fixed_code=fixed_code).status == "sent"

    refused = post(APIClient(), "/register/", {"mobile": "+14155552109"})
    assert refused.status_code == 429
    assert refused.json()["code"] == "sms_budget" and set(refused.json()) == {"detail", "code"}
    # Honest: the budget gives one message back every 3600 / 4 s, less what has passed since.
    assert 800 <= int(refused["Retry-After"]) <= 900
    assert not Delivery.objects.filter(address="+14155552109").exists()
    # Refused before the address's own throttles: nothing of them was spent.
    assert throttles.address_throttle_state(address=mobile_normalize("+14155552109"))["send_cooldown"] == 0

    assert post(APIClient(), "/register/", {"mobile": "+12125552100"}).status_code == 202  # another prefix
    assert post(APIClient(), "/register/", {"email": "someone@example.com"}).status_code == 202
    assert len(twilio.accepted) == 4


def test_the_global_budget_stops_every_prefix(twilio, small_sms_budgets, settings, fixed_code):
    settings.OTP_SMS_PER_PREFIX_PER_HOUR = 50
    for n in range(8):  # 10 less the 20 % reserve, over eight prefixes
        assert send(f"+1{212 + n}5552100", fixed_code=fixed_code).status == "sent"
    with pytest.raises(SmsBudgetSpent) as refused:
        services.code_request(address=mobile_normalize("+13125552100"), purpose=Purpose.REGISTER)
    assert refused.value.wait_seconds > 0
    assert throttles.send_budget_wait(address=mobile_normalize("+13125552100")) == (
        refused.value.wait_seconds, "budget_global")


def test_zero_turns_sms_off_and_leaves_email_alone(twilio, settings, fixed_code):
    settings.OTP_SMS_PER_HOUR = 0
    refused = post(APIClient(), "/register/", {"mobile": "+14155552004"})
    assert refused.status_code == 429 and refused.json()["code"] == "sms_budget"
    assert int(refused["Retry-After"]) == throttles.CHANNEL_OFF_WAIT_SECONDS
    assert post(APIClient(), "/register/", {"email": "still-works@example.com"}).status_code == 202
    # A job queued before the switch is not sent either.
    settings.OTP_SMS_PER_HOUR = 1000
    address = mobile_normalize("+14155552005")
    services.code_request(address=address, purpose=Purpose.REGISTER)
    settings.OTP_SMS_PER_HOUR = 0
    services.delivery_send(delivery_id=Delivery.objects.get(address=address.value).id, code=fixed_code[-1])
    assert twilio.accepted == []
    delivery = Delivery.objects.get(address=address.value)
    assert delivery.status == "failed" and "channel_off" in delivery.last_error


def test_device_token_requests_draw_on_a_reserve_the_others_cannot_spend(twilio, small_sms_budgets, fixed_code):
    for n in range(4):
        send(f"+1415555220{n}", fixed_code=fixed_code)
    with pytest.raises(SmsBudgetSpent):
        services.code_request(address=mobile_normalize("+14155552209"), purpose=Purpose.REGISTER)
    # The reserved 20 % (1 of 5) is there for a request with a valid device token.
    assert send("+14155552208", device=True, fixed_code=fixed_code).status == "sent"
    assert len(twilio.accepted) == 5
    with pytest.raises(SmsBudgetSpent):
        services.code_request(address=mobile_normalize("+14155552207"), purpose=Purpose.REGISTER, device=True)


def test_device_token_requests_may_also_use_what_the_others_left(twilio, small_sms_budgets, fixed_code):
    for n in range(5):
        assert send(f"+1415555230{n}", device=True, fixed_code=fixed_code).status == "sent"
    with pytest.raises(SmsBudgetSpent):
        services.code_request(address=mobile_normalize("+14155552309"), purpose=Purpose.REGISTER, device=True)
    # Requests without a token spent none of their share, yet the prefix's whole budget is gone.
    with pytest.raises(SmsBudgetSpent):
        services.code_request(address=mobile_normalize("+14155552308"), purpose=Purpose.REGISTER)


def test_the_worker_sends_nothing_past_the_budget_even_for_codes_queued_before_it_was_spent(
        twilio, small_sms_budgets, fixed_code):
    queued = []
    for n in range(6):  # all asked for while the budget still had room: the API checks, the worker counts
        address = mobile_normalize(f"+1415555240{n}")
        services.code_request(address=address, purpose=Purpose.REGISTER)
        queued.append((Delivery.objects.get(address=address.value), fixed_code[-1]))
    for delivery, code in queued:
        services.delivery_send(delivery_id=delivery.id, code=code)
    statuses = [Delivery.objects.get(id=delivery.id).status for delivery, _ in queued]
    assert statuses == ["sent"] * 4 + ["failed"] * 2 and len(twilio.accepted) == 4
    assert "budget_prefix" in Delivery.objects.get(id=queued[-1][0].id).last_error


def gauges() -> dict:
    text = APIClient().get("/metrics").content.decode()
    return {(family.name, sample.labels.get("budget")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if family.name.startswith("otp_send_budget")}


def test_the_soft_threshold_raises_its_metric_before_the_hard_stop(twilio, small_sms_budgets, settings, fixed_code):
    settings.OTP_SMS_PER_PREFIX_PER_HOUR = 50
    settings.OTP_SEND_BUDGET_SOFT_PERCENT = 50
    for n in range(4):
        send(f"+1{212 + n}5552500", fixed_code=fixed_code)
    before = gauges()
    assert before[("otp_send_budget_used_ratio", "sms")] == pytest.approx(0.4)
    assert before[("otp_send_budget_soft_exceeded", "sms")] == 0
    assert before[("otp_send_budget_soft_exceeded", "sms_shared")] == 1  # 4 of 8: half the others' share
    send("+12205552500", fixed_code=fixed_code)
    after = gauges()
    assert after[("otp_send_budget_used_ratio", "sms")] == pytest.approx(0.5)
    assert after[("otp_send_budget_soft_exceeded", "sms")] == 1
    assert after[("otp_send_budget_soft_exceeded", "email")] == 0
    # Still below the hard stop: requests pass.
    assert post(APIClient(), "/register/", {"mobile": "+12245552500"}).status_code == 202


def refused_count(channel: str, reason: str) -> float:
    text = APIClient().get("/metrics").content.decode()  # reading flushes this process's counts first
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == f"otp_{channel}_refused" for sample in family.samples
               if sample.labels.get("reason") == reason)


def test_refusals_are_counted_by_reason(twilio, small_sms_budgets, settings, fixed_code):
    before = {reason: refused_count("sms", reason) for reason in ("channel_off", "budget_prefix")}
    for n in range(4):
        send(f"+1415555260{n}", fixed_code=fixed_code)
    assert post(APIClient(), "/register/", {"mobile": "+14155552609"}).status_code == 429
    settings.OTP_SMS_PER_HOUR = 0
    assert post(APIClient(), "/register/", {"mobile": "+12125552609"}).status_code == 429
    assert refused_count("sms", "budget_prefix") - before["budget_prefix"] == 1
    assert refused_count("sms", "channel_off") - before["channel_off"] == 1


def test_a_spent_domain_budget_answers_429_email_budget_and_leaves_other_domains_and_sms_alone(
        smtp, twilio, settings, fixed_code):
    settings.OTP_EMAIL_PER_DOMAIN_PER_HOUR = 3
    for n in range(3):
        assert send(f"role{n}@bombed.example", fixed_code=fixed_code).status == "sent"
    refused = post(APIClient(), "/register/", {"email": "admin@bombed.example"})
    assert refused.status_code == 429 and refused.json()["code"] == "email_budget"
    assert 0 < int(refused["Retry-After"]) <= 1200
    assert send("someone@other.example", fixed_code=fixed_code).status == "sent"
    assert post(APIClient(), "/register/", {"mobile": "+14155552700"}).status_code == 202
    assert len(smtp.messages) == 4


@pytest.mark.parametrize("budget", ["domain", "global"])
def test_device_token_requests_draw_on_a_reserve_of_each_email_budget(smtp, settings, fixed_code, budget):
    # An attack pass filled a domain's email budget with /register/s for random addresses: every user of the domain,
    # device-token holders too, got 429 email_budget, and one request every 7.2 s kept it so. The SMS budgets had
    # a reserve for the device class; the email budgets had none.
    settings.OTP_EMAIL_DEVICE_SHARE = 20
    if budget == "domain":
        settings.OTP_EMAIL_PER_DOMAIN_PER_HOUR = 5
        addresses = [f"random{n}@bombed.example" for n in range(6)]
    else:
        settings.OTP_EMAIL_PER_HOUR = 5
        addresses = [f"random@bombed{n}.example" for n in range(6)]
    for address in addresses[:4]:
        assert send(address, fixed_code=fixed_code).status == "sent"
    with pytest.raises(EmailBudgetSpent):  # 4 of 5: the rest is the device class's
        services.code_request(address=email_normalize(addresses[4]), purpose=Purpose.REGISTER)
    assert send(addresses[5], device=True, fixed_code=fixed_code).status == "sent"
    assert len(smtp.messages) == 5
    with pytest.raises(EmailBudgetSpent):
        services.code_request(address=email_normalize(addresses[5]), purpose=Purpose.REGISTER, device=True)


def test_the_global_email_budget_and_its_switch(smtp, settings, fixed_code):
    settings.OTP_EMAIL_PER_HOUR = 2
    send("a@one.example", fixed_code=fixed_code)
    send("b@two.example", fixed_code=fixed_code)
    with pytest.raises(EmailBudgetSpent):
        services.code_request(address=email_normalize("c@three.example"), purpose=Purpose.REGISTER)
    settings.OTP_EMAIL_PER_HOUR = 0
    refused = post(APIClient(), "/register/", {"email": "d@four.example"})
    assert refused.status_code == 429 and refused.json()["code"] == "email_budget"


def test_every_code_email_says_it_is_auto_generated(smtp, fixed_code):
    send("reader@example.com", fixed_code=fixed_code)
    (raw,) = smtp.raw_to("reader@example.com")
    assert re.search(rb"^Auto-Submitted: auto-generated\r?$", raw, flags=re.MULTILINE)


def test_a_recipient_refused_with_5xx_at_rcpt_is_suppressed_and_requests_answer_as_if_sent(smtp, settings,
                                                                                          fixed_code):
    smtp.refuse_rcpt.add("gone@example.com")
    first = send("gone@example.com", fixed_code=fixed_code)
    assert first.status == "failed" and "550" in first.last_error and "suppressed" in first.last_error
    assert throttles.recipient_suppressed(address=email_normalize("gone@example.com")) > 86000
    assert spent(throttles.EMAIL_PER_HOUR) == 0  # the server did not take it: nothing spent

    throttles.send_throttle_release(address=email_normalize("gone@example.com"))  # as if the cooldown had passed
    again = post(APIClient(), "/register/", {"email": "gone@example.com"})
    other = post(APIClient(), "/register/", {"email": "here@example.com"})
    assert again.status_code == other.status_code == 202 and again.json() == other.json()
    second = Delivery.objects.filter(address="gone@example.com").latest("id")
    services.delivery_send(delivery_id=second.id, code=fixed_code[-1])
    second.refresh_from_db()
    assert second.status == "failed" and second.last_error == services.delivering.RECIPIENT_SUPPRESSED_ERROR
    assert smtp.rcpts_seen.count("gone@example.com") == 1  # the second code was never offered to the server

    settings.OTP_EMAIL_SUPPRESSION_SECONDS = 1
    throttles.recipient_suppress(address=email_normalize("gone@example.com"))
    assert 0 < throttles.recipient_suppressed(address=email_normalize("gone@example.com")) <= 1


def test_a_4xx_at_rcpt_is_transient_and_only_a_5xx_suppresses():
    assert isinstance(_email_error(smtplib.SMTPRecipientsRefused({"a@b.example": (450, b"busy")})),
                      SendTransientError)
    assert isinstance(_email_error(smtplib.SMTPRecipientsRefused({"a@b.example": (550, b"gone")})),
                      SendRecipientRefusedError)
