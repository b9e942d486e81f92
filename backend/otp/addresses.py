"""Normalising the addresses codes are sent to: one spelling per mailbox or phone, so one account each."""
import unicodedata
from dataclasses import dataclass

import email_validator
import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from otp.codes import char_is_spacer
from otp.providers.mailbox import sender_parse


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"


@dataclass(frozen=True)
class Address:
    value: str
    channel: Channel

    @property
    def user_field(self) -> str:
        return "email" if self.channel == Channel.EMAIL else "mobile"


def _reject_invisible(raw: str, message: str) -> None:
    # Control and format characters (NUL, CR, right-to-left overrides, zero-width joiners) have no place in an
    # address; some parsers would skip them and accept a string that reads differently from what is stored.
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in raw.strip()):
        raise ValidationError(message)


def mailbox_canonical(address: Address) -> Address:
    """The address that stands for every spelling reaching the same mailbox: for an email, the local part cut
    at its first `+` (sub-addressing, RFC 5233); a mobile number as it is.

    Only throttles use it; messages go to the address as given, and each address stays its own account. Other
    separators some providers fold (dots at Gmail, `-` on some servers) are not folded: docs/reliability.md.
    """
    if address.channel != Channel.EMAIL:
        return address
    local, _, domain = address.value.rpartition("@")
    return Address(value=f"{local.split('+', 1)[0] or local}@{domain}".lower(), channel=address.channel)


def sms_destination_prefix(address: Address) -> str:
    """A mobile number's destination prefix, what the per-prefix SMS budget keys on: `+`, the country calling
    code and the first OTP_SMS_PREFIX_DIGITS digits of the national number (`+1415` for +14155552671), which
    groups the numbers of one range, as pumping runs use them."""
    number = phonenumbers.parse(address.value)
    national = phonenumbers.national_significant_number(number)
    return f"+{number.country_code}{national[:settings.OTP_SMS_PREFIX_DIGITS]}"


def email_domain(address: Address) -> str:
    """An email address's domain (in its ASCII form, as normalised), what the per-domain email budget keys on."""
    return address.value.rpartition("@")[2]


def email_normalize(raw: str) -> Address:
    """Trim and lower-case `raw`, then check it by syntax alone with the `email-validator` library.

    Returns the Address `local@domain`, the domain in its ASCII form: internationalised domains are converted with
    IDNA 2008 / UTS 46, non-transitional (RFC 5891, UTS 46 section 4), so `straße.de` is `xn--strae-oqa.de`, never
    `strasse.de`, and a look-alike domain can never pass for the one it imitates. Refused, as the contract's
    address rules say: IP-literal and single-label or special-use domains (RFC 6761), quoted local parts,
    display names, non-ASCII local parts unless EMAIL_ALLOW_SMTPUTF8 is on (RFC 6531; they are then NFC-normalised),
    invisible and control characters, addresses over 254 octets (RFC 5321 section 4.5.3.1.3) once converted, and
    local parts that mail software would deliver elsewhere (an RFC 2047 encoded word, `=?utf-8?q?x?=@example.com`,
    is decoded to `x@example.com`). No DNS or other network lookup is made (`check_deliverability=False`). Raises
    ValidationError with the library's message, or ours, which says what is wrong.
    """
    try:
        checked = email_validator.validate_email(
            raw.strip().lower(), check_deliverability=False, allow_smtputf8=settings.EMAIL_ALLOW_SMTPUTF8,
            allow_quoted_local=False, allow_domain_literal=False, allow_display_name=False, allow_empty_local=False,
            globally_deliverable=True, test_environment=False)
    except email_validator.EmailNotValidError as exc:
        raise ValidationError(str(exc)) from exc
    value = f"{checked.local_part}@{checked.ascii_domain}"
    # `=` and `?` are plain characters of a local part (RFC 5322 section 3.2.3), but a mail library reads a word
    # between `=?` and `?=` as an encoded word (RFC 2047 section 2): Django's SMTP backend mailed
    # `=?utf-8?q?x?=@example.com` to `x@example.com`, another mailbox than the account's and its throttles'.
    # Only then is the address read as the mail library reads a mailbox, which must give it back unchanged.
    if "=?" in checked.local_part:
        try:
            as_mailed = sender_parse(value).addr_spec
        except ValueError:  # not one clean mailbox to the library
            as_mailed = None
        if as_mailed != value:
            raise ValidationError("The email address has an encoded word (=?...?=) in it, which mail software would "
                                  "deliver to another address.")
    return Address(value=value, channel=Channel.EMAIL)


def mobile_normalize(raw: str) -> Address:
    """To E.164 with `phonenumbers`; a number without `+` is read in OTP_DEFAULT_REGION.

    Typed the way codes may be (otp.codes): decimal digits of any script, which phonenumbers reads itself, and
    the spacers codes accept, which it partly refuses (the thin and narrow no-break spaces, most dashes): they
    are made plain spaces and hyphens first. Letters are refused: phonenumbers reads them as keypad letters
    (`+1 415 555 CODE` is +14155552633), a number nobody typed. Raises ValidationError; for a number without `+`
    that is no valid number of OTP_DEFAULT_REGION, its message names the region and its country code.
    """
    message = "Enter a valid mobile number."
    _reject_invisible(raw, message)
    if any(unicodedata.category(char).startswith("L") for char in raw):
        raise ValidationError(message)
    text = "".join(("-" if unicodedata.category(char) == "Pd" else " ") if char_is_spacer(char) else char
                   for char in raw.strip())
    if not text.startswith(("+", "\uff0b")):  # phonenumbers reads the full-width plus as a plus too
        # `07911 123456` read in the default region (US) was "Enter a valid mobile number." with no word of why: a
        # newcomer abroad was left guessing (a newcomer pass).
        region = settings.OTP_DEFAULT_REGION
        message = (f"Enter a valid mobile number. A number without + is read as a number of {region} "
                   f"(+{phonenumbers.country_code_for_region(region)}): for another country, begin with + and its "
                   f"country code.")
    try:
        number = phonenumbers.parse(text, settings.OTP_DEFAULT_REGION)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError(message) from exc
    # An extension cannot receive an SMS; dropping it quietly would text someone else.
    if not phonenumbers.is_valid_number(number) or number.extension:
        raise ValidationError(message)
    return Address(value=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), channel=Channel.SMS)


# Number types an SMS can reach and that toll fraud does not pay from (contract: Addresses, Mobiles). Premium-
# rate, shared-cost, toll-free, UAN, pager and personal numbers are the usual SMS-pumping destinations.
_SMS_TYPES = {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
# phonenumbers' region for numbers of no country (+800, +808, +870, +881, +882, +883, +979): satellite and
# international services, whose type it may still call MOBILE.
NON_GEOGRAPHIC_REGION = "001"


@dataclass(frozen=True)
class SmsRefusal:
    reason: str  # "non_geographic", "region" or "type": the label of the refusals metric
    message: str


def sms_destination_refusal(*, address: Address) -> SmsRefusal | None:
    """Why no code may be texted to `address` (an E.164 number), or None when it may.

    Rules (contract: Mobiles; OWASP's SMS pumping guidance): numbers of no country are always refused; the
    number's region must be in OTP_SMS_ALLOWED_REGIONS (`*` allows every region); its type must be MOBILE or
    FIXED_LINE_OR_MOBILE, or VOIP while OTP_SMS_ALLOW_VOIP is on, or FIXED_LINE when OTP_SMS_ALLOW_FIXED_LINE is.
    """
    number = phonenumbers.parse(address.value)
    region = phonenumbers.region_code_for_number(number)
    if region in (None, NON_GEOGRAPHIC_REGION):
        return SmsRefusal("non_geographic", "Codes are not sent to numbers outside any country.")
    allowed = settings.OTP_SMS_ALLOWED_REGIONS
    if "*" not in allowed and region not in allowed:
        return SmsRefusal("region", "Codes are not sent by SMS to numbers of this country.")
    types = set(_SMS_TYPES)
    if settings.OTP_SMS_ALLOW_VOIP:
        types.add(phonenumbers.PhoneNumberType.VOIP)
    if settings.OTP_SMS_ALLOW_FIXED_LINE:
        types.add(phonenumbers.PhoneNumberType.FIXED_LINE)
    if phonenumbers.number_type(number) not in types:
        return SmsRefusal("type", "Codes are sent by SMS to mobile numbers only.")
    return None
