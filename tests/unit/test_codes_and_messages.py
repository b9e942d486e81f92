"""Codes, their hashes, and the messages that carry them."""
import re

from hypothesis import given, settings as hsettings, strategies as st

from otp.codes import code_generate, code_hash, code_matches
from otp.messages import email_message_render, lifetime_words, sms_message_render


def test_codes_are_otp_length_digits_and_vary(settings):
    settings.OTP_LENGTH = 8
    codes = {code_generate() for _ in range(200)}
    assert all(len(code) == 8 and code.isdigit() for code in codes)
    assert len(codes) > 190


def test_hash_is_keyed_bound_to_the_address_and_never_the_code(settings):
    digest = code_hash(address="alice@example.com", code="123456")
    assert "123456" not in digest and len(digest) == 64
    assert code_matches(code_hash_hex=digest, address="alice@example.com", code="123456")
    assert not code_matches(code_hash_hex=digest, address="alice@example.com", code="123457")
    assert not code_matches(code_hash_hex=digest, address="bob@example.com", code="123456")
    settings.SECRET_KEY = "another-secret-key-that-is-long-enough-to-pass"
    assert code_hash(address="alice@example.com", code="123456") != digest
    settings.OTP_HMAC_KEY = "explicit-key"
    assert code_hash(address="alice@example.com", code="123456") not in (digest,)


def _digit_runs(text: str, length: int) -> set[str]:
    return {match for match in re.findall(r"\d+", text) if len(match) >= length}


def test_email_has_text_and_html_and_no_other_digit_run_than_the_code(settings):
    settings.SERVICE_NAME = "Acme 2026"
    message = email_message_render(code="482913")
    assert "Acme 2026" in message.text and "Acme 2026" in message.html
    assert "2 minutes" in message.text
    assert "if this was not you" in message.text.lower()
    for part in (message.subject, message.text, message.html):
        assert _digit_runs(part, 6) <= {"482913"}
    assert "482913" in message.text and "482913" in message.html


def test_sms_ends_with_webotp_line_and_fits_one_segment(settings):
    settings.PUBLIC_BASE_URL = "https://login.example.com:8443"
    message = sms_message_render(code="482913")
    assert message.text.splitlines()[-1] == "@login.example.com #482913"
    assert len(message.text) <= 160 and message.text.isascii()
    assert _digit_runs(message.text, 6) == {"482913"}


def test_lifetime_is_written_in_few_digits():
    assert lifetime_words(45) == "45 seconds"
    assert lifetime_words(60) == "1 minute"
    assert lifetime_words(120) == "2 minutes"
    assert lifetime_words(86400) == "24 hours"
    assert max(len(run) for seconds in range(10, 86401, 7) for run in re.findall(r"\d+", lifetime_words(seconds))) <= 2


@hsettings(max_examples=200, deadline=None)
@given(code=st.from_regex(r"\A[0-9]{6}\Z"), ttl=st.integers(min_value=10, max_value=86400))
def test_no_message_shows_another_digit_run_than_its_code(code, ttl):
    from django.test import override_settings

    with override_settings(OTP_TTL_SECONDS=ttl):
        email = email_message_render(code=code)
        sms = sms_message_render(code=code)
    for text in (email.subject, email.text, email.html, sms.text):
        assert _digit_runs(text, 6) <= {code}
    assert code in email.text and code in sms.text


def test_sms_with_the_app_hash_keeps_the_webotp_line_last_and_no_other_digit_run(settings):
    from otp.messages import sms_length

    settings.PUBLIC_BASE_URL = "https://login.example.com"
    settings.OTP_SMS_APP_HASH = "FA12345+VSu"
    lines = sms_message_render(code="482913").text.splitlines()
    assert lines[-2:] == ["FA12345+VSu", "@login.example.com #482913"]
    assert _digit_runs("\n".join(lines), 6) == {"482913"}
    assert sms_length("\n".join(lines))[1:] == (160, "GSM-7")


def test_sms_length_counts_septets_extension_characters_and_ucs2():
    from otp.messages import sms_length

    assert sms_length("a" * 160) == (160, 160, "GSM-7")
    assert sms_length("€[]") == (6, 160, "GSM-7")  # the extension table costs an escape each
    assert sms_length("Ünïcøde") == (7, 70, "UCS-2")  # ï is not in GSM 03.38
    assert sms_length("😀") == (2, 70, "UCS-2")  # outside the BMP: a surrogate pair
