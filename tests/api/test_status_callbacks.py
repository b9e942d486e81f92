"""Twilio's signed status callbacks move a delivery forward only, whatever order they arrive in (contract: Delivery)."""
import random
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from rest_framework.test import APIClient
from twilio.request_validator import RequestValidator

from otp.models import Delivery
from tests.support import factories
from tests.support.parallel import run_in_parallel

pytestmark = pytest.mark.django_db

PATH = "/webhooks/twilio/status/"


@pytest.fixture(autouse=True)
def auth_token(settings):
    settings.TWILIO_AUTH_TOKEN = "test-auth-token"


def callback(status, *, sid="SM1", delivery=None, error_code="", signed_for=None, client=None):
    """POST Twilio's status callback form for `sid`, to the URL the worker gave Twilio (naming `delivery`), signed
    as Twilio signs it: over the full public URL, query included (`signed_for` signs another URL instead). A
    `status` or `sid` of None leaves that field out."""
    from django.conf import settings

    path = PATH + (f"?{urlencode({'delivery': delivery})}" if delivery is not None else "")
    params = {name: value for name, value in {"MessageSid": sid, "MessageStatus": status}.items() if value is not None}
    params["AccountSid"] = "AC" + "0" * 32
    if error_code:
        params["ErrorCode"] = error_code
    signature = RequestValidator(settings.TWILIO_AUTH_TOKEN).compute_signature(
        signed_for or f"{settings.PUBLIC_BASE_URL}{path}", params)
    return (client or APIClient()).post(path, data=urlencode(params), content_type="application/x-www-form-urlencoded",
                                        HTTP_X_TWILIO_SIGNATURE=signature)


def sms_delivery(**fields):
    return factories.delivery_row("+14155552671", channel="sms", purpose="register",
                                  expires_at=timezone.now() + timedelta(minutes=2), **fields)


def test_a_late_sent_then_queued_after_undelivered_changes_nothing():
    # The input: undelivered (error 30003), then a late `sent`, then `queued`. Before, the delivery went
    # back to `sent` and its provider status to `queued`.
    delivery = sms_delivery(status="sent", provider_id="SM1", provider_status="queued")
    for status, error in [("undelivered", "30003"), ("sent", ""), ("queued", "")]:
        assert callback(status, delivery=delivery.id, error_code=error).status_code == 204
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status) == ("failed", "undelivered")
    assert "30003" in delivery.last_error


@pytest.mark.parametrize("order, status, provider_status", [
    (["queued", "sent", "delivered"], "sent", "delivered"),
    (["delivered", "sent", "queued", "sending"], "sent", "delivered"),
    (["sent", "failed", "delivered"], "failed", "failed"),  # two final statuses: the first one stays
    (["delivered", "undelivered"], "sent", "delivered"),
    (["sending", "queued", "undelivered"], "failed", "undelivered"),
])
def test_callbacks_in_any_order_leave_the_furthest_status(order, status, provider_status):
    delivery = sms_delivery(status="sent", provider_id="SM1")
    for word in order:
        assert callback(word, delivery=delivery.id, error_code="30003" if word in ("failed", "undelivered") else "").status_code == 204
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status) == (status, provider_status)


def test_a_repeated_callback_changes_nothing():
    delivery = sms_delivery(status="sent", provider_id="SM1")
    assert callback("delivered", delivery=delivery.id).status_code == 204
    delivery.refresh_from_db()
    first = delivery.updated_at
    assert callback("delivered", delivery=delivery.id).status_code == 204
    delivery.refresh_from_db()
    assert delivery.updated_at == first and delivery.provider_status == "delivered"


def test_a_failed_delivery_never_becomes_sent():
    # The worker gave up on it (its tries ran out), yet the provider had taken one of them.
    delivery = sms_delivery(status="failed", provider_id="SM1", last_error="Twilio 503")
    assert callback("delivered", delivery=delivery.id).status_code == 204
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status, delivery.last_error) == ("failed", "delivered", "Twilio 503")


@pytest.mark.parametrize("final_word", ["delivered", "undelivered"])
def test_an_unknown_delivery_stays_unknown_and_learns_what_the_provider_says(final_word):
    # The worker could not learn whether Twilio took it, so it holds no SID: the URL finds it.
    delivery = sms_delivery(status="unknown", last_error="Twilio connection: ReadTimeout")
    assert callback(final_word, sid="SMlost", delivery=delivery.id, error_code="30003").status_code == 204
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status, delivery.provider_id) == ("unknown", final_word, "SMlost")


def test_a_callback_before_the_worker_recorded_the_sid_finds_its_delivery_by_the_url():
    delivery = sms_delivery(status="sending", lease_until=timezone.now() + timedelta(seconds=30))
    assert callback("sent", sid="SMearly", delivery=delivery.id).status_code == 204
    delivery.refresh_from_db()
    assert (delivery.provider_id, delivery.provider_status, delivery.status) == ("SMearly", "sent", "sending")


def test_a_carrier_failure_before_the_worker_recorded_the_send_fails_the_delivery():
    delivery = sms_delivery(status="sending", lease_until=timezone.now() + timedelta(seconds=30))
    assert callback("undelivered", sid="SMearly", delivery=delivery.id, error_code="30003").status_code == 204
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status, delivery.lease_until) == ("failed", "undelivered", None)


def test_a_callback_for_another_message_than_the_recorded_one_is_ignored():
    delivery = sms_delivery(status="sent", provider_id="SM1")
    assert callback("undelivered", sid="SM2", delivery=delivery.id, error_code="30003").status_code == 204
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status) == ("sent", "")


def test_a_callback_url_without_a_delivery_matches_on_the_sid():
    # Messages sent before the URL named the delivery still report.
    delivery = sms_delivery(status="sent", provider_id="SM1")
    assert callback("delivered").status_code == 204
    delivery.refresh_from_db()
    assert delivery.provider_status == "delivered"


def test_the_delivery_in_the_url_is_covered_by_the_signature(settings):
    target = sms_delivery(status="sent", provider_id="")
    other = sms_delivery(status="sent", provider_id="")
    signed_url = f"{settings.PUBLIC_BASE_URL}{PATH}?delivery={other.id}"
    response = callback("undelivered", delivery=target.id, error_code="30003", signed_for=signed_url)
    assert response.status_code == 403 and response.json()["code"] == "permission_denied"
    target.refresh_from_db()
    assert target.status == "sent"


def test_a_status_twilio_does_not_document_changes_nothing():
    delivery = sms_delivery(status="sent", provider_id="SM1", provider_status="sent")
    assert callback("teleported", delivery=delivery.id).status_code == 204
    delivery.refresh_from_db()
    assert delivery.provider_status == "sent"


@pytest.mark.parametrize("status, sid", [(None, "SM1"), ("", "SM1"), (" ", "SM1"), ("undelivered", None),
                                         ("undelivered", ""), (None, None)])
def test_a_signed_callback_without_its_sid_or_status_is_a_400_and_changes_nothing(status, sid):
    # Every Twilio status callback carries both; a signed form without one is malformed (contract: 4xx JSON),
    # not a 204 as if it had been applied.
    delivery = sms_delivery(status="sent", provider_id="", provider_status="sent")
    response = callback(status, sid=sid, delivery=delivery.id, error_code="30003")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "parse_error" and "MessageS" in response.json()["detail"]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status, delivery.provider_id) == ("sent", "sent", "")


def test_a_callbacks_fields_are_read_without_surrounding_spaces():
    delivery = sms_delivery(status="sent", provider_id="")
    assert callback(" delivered ", sid=" SM1 ", delivery=delivery.id).status_code == 204
    delivery.refresh_from_db()
    assert (delivery.provider_id, delivery.provider_status) == ("SM1", "delivered")


@pytest.mark.django_db(transaction=True)
def test_concurrent_callbacks_cannot_interleave():
    # Each callback is one conditional UPDATE: whatever order the database applies them in, the carrier's
    # failure ends it. A read-then-write would let a late `sent` land after it.
    delivery = sms_delivery(status="sent", provider_id="SM1")
    words = ["queued"] * 4 + ["sending"] * 3 + ["sent"] * 4 + ["undelivered"]
    random.shuffle(words)
    results = run_in_parallel(len(words), lambda i: callback(
        words[i], delivery=delivery.id, error_code="30003" if words[i] == "undelivered" else "").status_code)
    assert results == [204] * len(words)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status) == ("failed", "undelivered")
