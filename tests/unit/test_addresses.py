"""Address normalisation: one spelling per mailbox and per phone."""
import pytest
from django.core.exceptions import ValidationError
from hypothesis import given, settings as hsettings, strategies as st

from otp.addresses import Channel, email_normalize, mobile_normalize


def test_email_is_trimmed_and_lower_cased():
    address = email_normalize("  Alice@Example.COM ")
    assert address.value == "alice@example.com"
    assert address.channel == Channel.EMAIL
    assert address.user_field == "email"


def test_internationalised_and_look_alike_domains_are_stored_as_punycode():
    assert email_normalize("alice@\u0435xample.com").value == "alice@xn--xample-2of.com"  # Cyrillic e
    assert email_normalize("Bob@Bücher.example").value == "bob@xn--bcher-kva.example"
    assert email_normalize("alice@xn--xample-2of.com").value == "alice@xn--xample-2of.com"


@pytest.mark.parametrize("raw", ["", "   ", "alice", "alice@", "@example.com", "alice@example.com\r\nBcc: x@y.z",
                                 "alice@example.com\nSubject: hi", "al ice@example.com", "ａlice@example.com",
                                 "a" * 250 + "@example.com", "alice@exa mple.com", "'; DROP TABLE users;--@x.com"])
def test_bad_emails_are_rejected(raw):
    with pytest.raises(ValidationError):
        email_normalize(raw)


@pytest.mark.parametrize("raw", ["+14155552671", "+1 (415) 555-2671", "(415) 555-2671", "415.555.2671", " 4155552671 "])
def test_mobiles_become_e164_reading_national_numbers_in_default_region(raw):
    address = mobile_normalize(raw)
    assert address.value == "+14155552671"
    assert address.channel == Channel.SMS


def test_default_region_decides_national_numbers(settings):
    settings.OTP_DEFAULT_REGION = "GB"
    assert mobile_normalize("07400 123456").value == "+447400123456"


@pytest.mark.parametrize("raw", ["+1 415 555 2671\u202e", "+1415\u200b5552671", "+14155552671\x00", "", "abc", "+1", "12", "+999999999999999", "+1 415 555 2671 ext 9999999999", "%s%n"])
def test_bad_mobiles_are_rejected(raw):
    with pytest.raises(ValidationError):
        mobile_normalize(raw)


@hsettings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_mobile_normalisation_never_crashes_and_is_idempotent(raw):
    try:
        address = mobile_normalize(raw)
    except ValidationError:
        return
    assert address.value.startswith("+") and address.value[1:].isdigit()
    assert mobile_normalize(address.value) == address


@hsettings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_email_normalisation_never_crashes_and_is_idempotent(raw):
    try:
        address = email_normalize(raw)
    except ValidationError:
        return
    assert address.value == address.value.strip().lower()
    assert "\n" not in address.value and "\r" not in address.value
    assert email_normalize(address.value) == address
