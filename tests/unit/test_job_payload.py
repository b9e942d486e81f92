"""The code travels only sealed in the delivery job (contract: Delivery): AES-GCM bound to the delivery and its
expiry, any configured key opens it, and a job whose sealed code does not open is refused and recorded."""
import base64
import time

import pytest
from django.core import mail

from otp import codes, services, tasks
from otp.codes import CodeSealInvalid, CodeSealKeyUnknown, code_seal, code_seal_key_id, code_unseal
from otp.models import Delivery, Purpose
from tests.support import factories
from tests.support.broker_messages import broker_blobs, delivery_payloads

OLD_KEY = "old-otp-hmac-key-" + "o" * 32
NEW_KEY = "new-otp-hmac-key-" + "n" * 32


def payload_for(delivery: Delivery, code: str) -> dict:
    return services.delivery_payload(delivery_id=delivery.id, code=code, expires_at=delivery.expires_at.timestamp())


@pytest.mark.django_db(transaction=True)
def test_the_queued_job_holds_the_code_only_sealed(email_address, fixed_code, broker_redis):
    # Before: `redis-cli -n <broker db> lrange email 0 0`, base64-decoded, showed {"code": "123456", ...}.
    delivery = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    (payload,) = delivery_payloads(broker_redis, delivery.id)
    assert payload["v"] == 2 and "code" not in payload
    assert not [blob for blob in broker_blobs(broker_redis) if fixed_code[-1].encode() in blob]
    assert code_unseal(sealed=payload["code_sealed"], delivery_id=delivery.id,
                       expires_at=payload["expires_at"]) == fixed_code[-1]


def test_a_sealed_code_opens_only_for_its_own_delivery_and_expiry():
    sealed = code_seal(code="123456", delivery_id=7, expires_at=1_900_000_000.25)
    assert code_unseal(sealed=sealed, delivery_id=7, expires_at=1_900_000_000.25) == "123456"
    assert code_seal(code="123456", delivery_id=7, expires_at=1_900_000_000.25) != sealed  # fresh salt and nonce
    raw = base64.urlsafe_b64decode(sealed)
    tampered = [base64.urlsafe_b64encode(raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1:]).decode()
                for i in (0, 20, len(raw) - 1)]  # in the salt, the nonce, the tag
    for other in [dict(sealed=sealed, delivery_id=8, expires_at=1_900_000_000.25),
                  dict(sealed=sealed, delivery_id=7, expires_at=1_900_000_060.25),
                  *[dict(sealed=value, delivery_id=7, expires_at=1_900_000_000.25) for value in tampered],
                  dict(sealed=sealed[:30], delivery_id=7, expires_at=1_900_000_000.25),
                  dict(sealed="not base64!", delivery_id=7, expires_at=1_900_000_000.25),
                  dict(sealed=None, delivery_id=7, expires_at=1_900_000_000.25),
                  dict(sealed=sealed, delivery_id=7, expires_at=None)]:
        with pytest.raises(CodeSealInvalid):
            code_unseal(**other)


def test_a_job_sealed_before_the_key_was_rotated_still_opens(settings):
    settings.OTP_HMAC_KEY = OLD_KEY
    sealed = code_seal(code="123456", delivery_id=7, expires_at=1_900_000_000.0)
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    assert code_unseal(sealed=sealed, delivery_id=7, expires_at=1_900_000_000.0) == "123456"
    settings.OTP_HMAC_KEY_FALLBACKS = []
    with pytest.raises(CodeSealInvalid):
        code_unseal(sealed=sealed, delivery_id=7, expires_at=1_900_000_000.0)


def test_a_job_names_the_key_that_sealed_it_and_a_worker_without_that_key_tells_it_from_tampering(settings):
    # A worker whose keys were not yet rotated (an extra worker `make down` did not stop, a host not yet deployed)
    # refused every job sealed under the new key as if it had been changed: half the codes of a careless-operator
    # pass were never sent.
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    payload = services.delivery_payload(delivery_id=7, code="123456", expires_at=1_900_000_000.0)
    assert payload["key_id"] == code_seal_key_id() and len(payload["key_id"]) == 16
    assert NEW_KEY not in repr(payload) and OLD_KEY not in repr(payload)
    assert code_unseal(sealed=payload["code_sealed"], delivery_id=7, expires_at=1_900_000_000.0,
                       key_id=payload["key_id"]) == "123456"
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = OLD_KEY, []  # the worker not yet rotated
    with pytest.raises(CodeSealKeyUnknown):
        code_unseal(sealed=payload["code_sealed"], delivery_id=7, expires_at=1_900_000_000.0,
                    key_id=payload["key_id"])
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    with pytest.raises(CodeSealInvalid):  # the key is held, so a code that does not open was changed
        code_unseal(sealed=payload["code_sealed"], delivery_id=8, expires_at=1_900_000_000.0,
                    key_id=payload["key_id"])
    for malformed in (5, ["x"], "zz", payload["key_id"].upper(), payload["key_id"] + "0"):  # no key has such a name
        with pytest.raises(CodeSealInvalid):  # refused at once, not put back until the code expires (a review)
            code_unseal(sealed=payload["code_sealed"], delivery_id=7, expires_at=1_900_000_000.0, key_id=malformed)


@pytest.mark.django_db
def test_a_job_sealed_under_a_key_no_worker_holds_is_refused_once_its_code_expired(email_address, settings):
    settings.OTP_HMAC_KEY = NEW_KEY
    delivery = factories.issued_code(email_address)
    expired = services.delivery_payload(delivery_id=delivery.id, code="123456", expires_at=time.time() - 1)
    settings.OTP_HMAC_KEY = OLD_KEY
    tasks.delivery_send.apply(kwargs={"payload": expired})
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error) == ("failed", services.KEY_UNKNOWN_ERROR)
    assert mail.outbox == []


@pytest.mark.django_db
def test_a_tampered_job_is_refused_recorded_and_not_sent(email_address):
    delivery = factories.issued_code(email_address)
    payload = payload_for(delivery, "123456")
    raw = base64.urlsafe_b64decode(payload["code_sealed"])
    payload["code_sealed"] = base64.urlsafe_b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode()

    tasks.delivery_send.apply(kwargs={"payload": payload})
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error) == ("failed", services.PAYLOAD_REFUSED_ERROR)
    assert mail.outbox == []


@pytest.mark.django_db
def test_a_sealed_code_moved_into_another_deliverys_job_is_refused(email_address, mobile_address):
    victim = factories.issued_code(email_address)
    other = factories.issued_code(mobile_address)
    sealed_for_victim = payload_for(victim, "123456")["code_sealed"]
    moved = {**payload_for(other, "000000"), "code_sealed": sealed_for_victim}

    tasks.delivery_send.apply(kwargs={"payload": moved})
    other.refresh_from_db()
    assert (other.status, other.last_error) == ("failed", services.PAYLOAD_REFUSED_ERROR)
    # The ciphertext still opens in its own job.
    tasks.delivery_send.apply(kwargs={"payload": payload_for(victim, "123456")})
    victim.refresh_from_db()
    assert victim.status == "sent" and "123456" in mail.outbox[0].body


@pytest.mark.django_db
def test_a_job_queued_before_codes_were_sealed_is_still_delivered(email_address, fixed_code):
    delivery = factories.issued_code(email_address)  # the code's hash is stored; its job is written by hand below
    plaintext_v1 = {"v": 1, "delivery_id": delivery.id, "code": fixed_code[-1],
                    "expires_at": delivery.expires_at.timestamp()}
    tasks.delivery_send.apply(kwargs={"payload": plaintext_v1})
    delivery.refresh_from_db()
    assert delivery.status == "sent" and fixed_code[-1] in mail.outbox[0].body
    assert services.code_verify(address=email_address, code=fixed_code[-1]).access


@pytest.mark.django_db  # a job older than the payload gets its expiry from the service's clock, the database's
def test_a_retry_republishes_a_plaintext_job_sealed():
    expires_at = time.time() + 60
    for payload, delivery_id, code in [
        ({"v": 1, "delivery_id": 5, "code": "123456", "expires_at": expires_at}, 5, "123456"),
        (None, 6, "654321"),  # the bare keywords of jobs older than the payload
    ]:
        republished = tasks._kwargs_to_republish(payload, delivery_id, code, payload and payload["expires_at"])
        sealed = republished["payload"]
        assert sealed["v"] == 2 and "code" not in sealed and code not in repr(sealed)
        assert codes.code_unseal(sealed=sealed["code_sealed"], delivery_id=delivery_id,
                                 expires_at=sealed["expires_at"]) == code
    sealed_v2 = services.delivery_payload(delivery_id=5, code="123456", expires_at=expires_at)
    assert tasks._kwargs_to_republish(sealed_v2, 5, "123456", expires_at) is None  # republished as it came
