"""Normalising the addresses codes are sent to: one spelling per mailbox or phone, so one account each."""
import unicodedata
from dataclasses import dataclass

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models


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


def email_normalize(raw: str) -> Address:
    """Trim and lower-case; reject anything Django's validator rejects (which also shuts out header injection)."""
    _reject_invisible(raw, "Enter a valid email address.")
    value = raw.strip().lower()
    if not value or len(value) > 254:
        raise ValidationError("Enter a valid email address.")
    validate_email(value)
    local, _, domain = value.rpartition("@")
    try:
        # One ASCII spelling per domain: an internationalised (or look-alike) domain is kept as its punycode,
        # so `alice@\u0435xample.com` can never pass for alice@example.com.
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValidationError("Enter a valid email address.") from exc
    return Address(value=f"{local}@{domain}", channel=Channel.EMAIL)


def mobile_normalize(raw: str) -> Address:
    """To E.164; a number without `+` is read in OTP_DEFAULT_REGION."""
    _reject_invisible(raw, "Enter a valid mobile number.")
    try:
        number = phonenumbers.parse(raw.strip(), settings.OTP_DEFAULT_REGION)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError("Enter a valid mobile number.") from exc
    # An extension cannot receive an SMS; dropping it quietly would text someone else.
    if not phonenumbers.is_valid_number(number) or number.extension:
        raise ValidationError("Enter a valid mobile number.")
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
