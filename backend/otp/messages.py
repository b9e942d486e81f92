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
    subject: str
    text: str
    html: str = ""


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
    )


def sms_message_render(*, code: str) -> Message:
    # The last line is the WebOTP format (`@host #code`) so a phone can offer to fill the code in.
    host = urlsplit(settings.PUBLIC_BASE_URL).hostname
    text = (f"{code} is your {settings.SERVICE_NAME} code. "
            f"It expires in {lifetime_words(settings.OTP_TTL_SECONDS)}.\n\n@{host} #{code}")
    return Message(subject="", text=text)
