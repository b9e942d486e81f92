"""Keys rotate without signing anyone out or voiding a code already sent (contract: Configuration), and the
throttles' Redis keys give no address back to whoever holds a dump of Redis."""
import hashlib
import hmac

import pytest
from rest_framework.test import APIClient

from core.errors import InvalidCode, RateLimited
from core.keys import code_keys, throttle_digest
from otp import codes, services, throttles
from otp.models import OneTimeCode, Purpose
from tests.support.http import post

pytestmark = pytest.mark.django_db

OLD_KEY = "old-otp-hmac-key-" + "o" * 32
NEW_KEY = "new-otp-hmac-key-" + "n" * 32
OLD_SECRET = "old-django-secret-key-" + "s" * 32
NEW_SECRET = "new-django-secret-key-" + "t" * 32


def test_a_code_sent_before_otp_hmac_key_was_rotated_still_verifies(email_address, fixed_code, settings):
    settings.OTP_HMAC_KEY = OLD_KEY
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    assert services.code_verify(address=email_address, code=fixed_code[-1]).access


def test_a_code_sent_before_secret_key_was_rotated_still_verifies(email_address, fixed_code, settings):
    settings.OTP_HMAC_KEY, settings.SECRET_KEY = "", OLD_SECRET
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_SECRET, [OLD_SECRET]
    assert services.code_verify(address=email_address, code=fixed_code[-1]).access


def test_new_codes_hash_with_the_current_key_and_a_dropped_key_is_no_longer_accepted(email_address, fixed_code,
                                                                                      settings):
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    expected = hmac.new(NEW_KEY.encode(), f"alice@example.com\n{fixed_code[-1]}".encode(), hashlib.sha256)
    assert OneTimeCode.objects.get().code_hash == expected.hexdigest()

    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = OLD_KEY, []  # the new key is gone altogether
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[-1])


def test_fallbacks_are_tried_in_order_after_the_current_key(settings):
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = NEW_KEY, [OLD_KEY, "x" * 40]
    assert code_keys() == (NEW_KEY.encode(), OLD_KEY.encode(), b"x" * 40)
    settings.OTP_HMAC_KEY, settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "", NEW_SECRET, [OLD_SECRET]
    # Derived as before rotation existed, so codes issued by the previous release still match.
    assert code_keys() == (hashlib.sha256(b"otp-code-hmac:" + NEW_SECRET.encode()).digest(),
                           hashlib.sha256(b"otp-code-hmac:" + OLD_SECRET.encode()).digest())
    digest = codes.code_hash(address="a@example.com", code="123456")
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "z" * 50, [OLD_SECRET, NEW_SECRET]
    assert codes.code_matches(code_hash_hex=digest, address="a@example.com", code="123456")


# --- Throttle keys --------------------------------------------------------------------------------------------

def test_throttle_keys_are_keyed_hashes_not_a_hash_anyone_can_recompute(mobile_address, redis_clean):
    services.code_request(address=mobile_address, purpose=Purpose.REGISTER)
    keys = {key.decode() for key in redis_clean.keys("*otp:*")}
    unkeyed = hashlib.sha256(b"+14155552671").hexdigest()[:32]
    assert keys and not any(unkeyed in key or "4155552671" in key for key in keys)
    assert any(throttle_digest("+14155552671") in key for key in keys)


def test_per_ip_throttle_keys_hold_no_client_address(redis_clean, settings):
    settings.OTP_IP_SEND_RATE = "5/min"  # the suite's own rate is so high that its keys expire at once
    APIClient().post("/register/", {"email": "alice@example.com"}, format="json", REMOTE_ADDR="203.0.113.77",
                     HTTP_X_FORWARDED_FOR="203.0.113.77")
    keys = [key.decode() for key in redis_clean.keys("*ip:*")]
    assert keys and not any("203.0.113" in key for key in keys)


def test_throttles_survive_a_rotation_of_otp_hmac_key_when_otp_throttle_key_is_set(email_address, settings):
    settings.OTP_THROTTLE_KEY = "t" * 40
    settings.OTP_HMAC_KEY = OLD_KEY
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    with pytest.raises(RateLimited):
        services.code_request(address=email_address, purpose=Purpose.REGISTER)


def test_without_otp_throttle_key_a_rotation_starts_the_throttles_afresh(email_address, settings):
    # Documented (README, Settings): the throttle key derives from the current key and has no fallbacks.
    settings.OTP_THROTTLE_KEY = ""
    settings.OTP_HMAC_KEY = OLD_KEY
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    before = throttles.SEND_COOLDOWN.key(email_address)
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    assert throttles.SEND_COOLDOWN.key(email_address) != before
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
