"""The text of the email and SMS that carry a code.

No run of OTP_LENGTH digits other than the code may appear, so the lifetime is written in the largest
whole unit (at most two or three digits) and nothing else in the templates is numeric.
"""
from dataclasses import dataclass
from math import ceil
from urllib.parse import urlsplit

from django.conf import settings
from django.template.loader import render_to_string


@dataclass(frozen=True)
class Message:
    """What a provider sends: `subject` (email only), `text`, `html` (email only; "" for none), and `code`, the
    code the texts carry, so that a provider may lay out the rest of a message once (otp.providers.smtp)."""

    subject: str
    text: str
    html: str = ""
    code: str = ""


def lifetime_words(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} seconds"
    if seconds < 3600:
        minutes = ceil(seconds / 60)
        return "1 minute" if minutes == 1 else f"{minutes} minutes"
    hours = ceil(seconds / 3600)
    return "1 hour" if hours == 1 else f"{hours} hours"


def email_message_render(*, code: str) -> Message:
    context = {"code": code, "service_name": settings.SERVICE_NAME, "lifetime": lifetime_words(settings.OTP_TTL_SECONDS)}
    return Message(
        subject=f"Your {settings.SERVICE_NAME} sign-in code",
        text=render_to_string("otp/email_code.txt", context),
        html=render_to_string("otp/email_code.html", context),
        code=code,
    )


def sms_message_render(*, code: str) -> Message:
    """The SMS for `code`: the sentence, then, when OTP_SMS_APP_HASH is set, Android's SMS Retriever hash on a line
    of its own, then the WebOTP line, which must be the last (`@host #code`, host of PUBLIC_BASE_URL: WICG's
    "Origin-bound one-time codes delivered via SMS"), so a phone's browser or app can fill the code in."""
    host = urlsplit(settings.PUBLIC_BASE_URL).hostname
    app_hash = f"{settings.OTP_SMS_APP_HASH}\n" if settings.OTP_SMS_APP_HASH else ""
    text = (f"{code} is your {settings.SERVICE_NAME} code. "
            f"It expires in {lifetime_words(settings.OTP_TTL_SECONDS)}.\n\n{app_hash}@{host} #{code}")
    return Message(subject="", text=text, code=code)


# GSM 03.38: the default alphabet (one septet each) and its extension table (an escape plus one septet: two).
GSM7_BASIC = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
              "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = "^{}\\[~]|€\f"
SEGMENT_GSM7 = 160
SEGMENT_UCS2 = 70


def sms_length(text: str) -> tuple[int, int, str]:
    """(units used, units one segment holds, encoding) of `text` as an SMS: GSM-7 septets (an extension character
    counts two) out of 160 when every character is in GSM 03.38, else UTF-16 code units out of 70 (UCS-2)."""
    if all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text):
        return sum(2 if char in GSM7_EXTENSION else 1 for char in text), SEGMENT_GSM7, "GSM-7"
    return len(text.encode("utf-16-le")) // 2, SEGMENT_UCS2, "UCS-2"
