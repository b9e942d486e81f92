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
