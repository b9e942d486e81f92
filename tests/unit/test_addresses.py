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


# --- The address rules of the contract (email-validator, IDNA 2008 / UTS 46 non-transitional) -----------------


@pytest.mark.parametrize("raw, stored", [
    # IDNA 2003 (Python's `idna` codec) maps these to other, existing domains; IDNA 2008 keeps them apart.
    ("alice@straße.de", "alice@xn--strae-oqa.de"),
    ("alice@faß.de", "alice@xn--fa-hia.de"),
    ("alice@βόλος.com", "alice@xn--nxasmm1c.com"),
    ("Alice@STRAẞE.de", "alice@xn--strae-oqa.de"),  # capital sharp s is the same domain
    ("alice@xn--strae-oqa.de", "alice@xn--strae-oqa.de"),
    ("alice@ＥＸＡＭＰＬＥ.com", "alice@example.com"),  # full-width letters are folded by UTS 46
])
def test_internationalised_domains_follow_idna_2008_non_transitional(raw, stored):
    assert email_normalize(raw).value == stored


@pytest.mark.parametrize("raw", [
    "root@[127.0.0.1]", "root@[IPv6:::1]",  # IP literals
    "root@localhost", "root@example", "alice@com",  # single-label domains
    "root@sub.localhost", "alice@example.invalid", "alice@example.onion",  # special-use names
    '"john doe"@example.com', '"alice"@example.com',  # quoted local parts
    "jörg@example.com", "ａlice@example.com",  # non-ASCII local parts, with EMAIL_ALLOW_SMTPUTF8 off
    "alice@example.com.", ".alice@example.com", "al..ice@example.com",
    "alice@exam\u00adple.com", "alice@exa\u200bmple.com",  # invisible characters
    "alice@ශ්\u200dරී.lk",  # a joiner: IDNA 2003 dropped it (another domain); email-validator refuses it as invisible
    "alice@💩.la",  # not a valid IDNA 2008 label
    "Alice <alice@example.com>",  # a display name
])
def test_addresses_mail_systems_refuse_are_refused(raw):
    with pytest.raises(ValidationError):
        email_normalize(raw)


def test_length_is_checked_after_conversion():
    # 254 characters as typed, 887 once each `ü` label is xn--tda: longer than any mail system (or column) takes.
    raw = "a" * 40 + "@" + "ü." * 105 + "com"
    assert len(raw) == 254
    with pytest.raises(ValidationError):
        email_normalize(raw)


def test_non_ascii_local_parts_only_with_smtputf8_on(settings):
    settings.EMAIL_ALLOW_SMTPUTF8 = True
    assert email_normalize("Jörg@Straße.de").value == "jörg@xn--strae-oqa.de"
    assert email_normalize("jo\u0308rg@example.com").value == "jörg@example.com"  # NFC: one spelling
    with pytest.raises(ValidationError):
        email_normalize('"jörg"@example.com')


def test_the_library_never_looks_up_dns(monkeypatch):
    import dns.resolver

    def no_dns(*args, **kwargs):
        raise AssertionError("a DNS lookup inside a request")

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", no_dns)
    assert email_normalize("alice@example.com").value == "alice@example.com"


# Short labels, many of them, some non-ASCII: a domain that grows past every limit once converted to ASCII.
_label = st.text(alphabet="abzüßéσ日", min_size=1, max_size=4)


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet="abc.+_-", min_size=1, max_size=64), st.lists(_label, min_size=20, max_size=80))
def test_every_accepted_email_fits_its_column_and_is_ascii(local, labels):
    try:
        address = email_normalize(f"{local}@{'.'.join(labels)}.com")
    except ValidationError:
        return
    assert len(address.value) <= 254 and address.value.isascii()
    assert email_normalize(address.value) == address


# An RFC 2047 encoded word is plain text in a local part, but mail software decodes it: Django's SMTP backend mailed
# the code of `=?utf-8?q?x?=@example.com` to `x@example.com`, a mailbox other than the account's, and each encoding of
# one mailbox was an address of its own to the throttles.
@pytest.mark.parametrize("raw", ["=?utf-8?q?x?=@example.com", "=?UTF-8?B?eA==?=@example.com", "=?iso-8859-1?q?x?=@ex.com",
                                 "=?utf-8?q?victim?=.b@example.com"])
def test_an_address_mail_software_would_deliver_elsewhere_is_refused(raw):
    from django.core.mail.message import sanitize_address

    assert sanitize_address(raw.lower(), "utf-8") != raw.lower()  # what the SMTP backend would have mailed to
    with pytest.raises(ValidationError, match="encoded word"):
        email_normalize(raw)


_encoded_word = st.builds("=?{}?{}?{}?=".format, st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii"]),
                          st.sampled_from(["q", "Q", "b", "B"]), st.sampled_from(["x", "eA==", "a_b", "=41", "victim"]))


@given(st.lists(st.one_of(_encoded_word, st.sampled_from(["a", ".", "+", "_", "=?", "?=", "=", "?"])), min_size=1,
                max_size=5))
@hsettings(max_examples=500, deadline=None)
def test_every_accepted_email_is_mailed_to_itself(tokens):
    from django.core.mail.message import sanitize_address

    try:
        value = email_normalize(f"{''.join(tokens)}@example.com").value
    except ValidationError:
        return
    assert sanitize_address(value, "utf-8") == value  # the envelope recipient Django's SMTP backend gives


@pytest.mark.parametrize("raw", ["07911123456", "7911 123456", "12"])
def test_a_number_without_plus_that_fails_in_the_default_region_names_the_region(raw, settings):
    # A newcomer in the UK typed 07911 123456: read as a US number, it was "Enter a valid mobile number." alone.
    settings.OTP_DEFAULT_REGION = "US"
    with pytest.raises(ValidationError) as refused:
        mobile_normalize(raw)
    assert refused.value.messages == ["Enter a valid mobile number. A number without + is read as a number of US "
                                      "(+1): for another country, begin with + and its country code."]


@pytest.mark.parametrize("raw", ["+44 7911 12345", "+1", "\uff0b1 415 555 CODE"])
def test_a_number_with_plus_that_fails_is_only_called_invalid(raw):
    with pytest.raises(ValidationError) as refused:
        mobile_normalize(raw)
    assert refused.value.messages == ["Enter a valid mobile number."]
