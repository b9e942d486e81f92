"""Normalising the addresses codes are sent to: one spelling per mailbox or phone, so one account each."""
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


def email_normalize(raw: str) -> Address:
    """Trim and lower-case; reject anything Django's validator rejects (which also shuts out header injection)."""
    value = raw.strip().lower()
    if not value or len(value) > 254:
        raise ValidationError("Enter a valid email address.")
    validate_email(value)
    return Address(value=value, channel=Channel.EMAIL)


def mobile_normalize(raw: str) -> Address:
    """To E.164; a number without `+` is read in OTP_DEFAULT_REGION."""
    try:
        number = phonenumbers.parse(raw.strip(), settings.OTP_DEFAULT_REGION)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError("Enter a valid mobile number.") from exc
    # An extension cannot receive an SMS; dropping it quietly would text someone else.
    if not phonenumbers.is_valid_number(number) or number.extension:
        raise ValidationError("Enter a valid mobile number.")
    return Address(value=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), channel=Channel.SMS)
