"""The vendors behind one small interface: `send(to=, message=) -> provider id`.

A sender raises SendTransientError when trying again later may work, SendPermanentError when it will not.
The SMTP details live in EmailSender, the Twilio ones in TwilioSmsSender; settings choose.
"""
import secrets
import smtplib
import string
import sys
import uuid
from functools import lru_cache
from typing import Protocol

import requests
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from otp.addresses import Channel
from otp.messages import Message


class SendTransientError(Exception):
    pass


class SendPermanentError(Exception):
    pass


class Sender(Protocol):
    def send(self, *, to: str, message: Message) -> str: ...


def _letters(n: int) -> str:
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(n))


class _CodeEmail(EmailMultiAlternatives):
    """An email whose headers hold no digit runs (MIME boundary, Message-ID): the only number a reader
    or a mail client's code detector should find is the code."""

    def message(self, *args, **kwargs):
        msg = super().message(*args, **kwargs)
        if msg.is_multipart():
            msg.set_boundary(f"=_{_letters(24)}")
        return msg


def _smtp_code_error(code: int, text: str) -> Exception:
    return (SendTransientError if 400 <= code < 500 else SendPermanentError)(f"SMTP {code}: {text}")


class EmailSender:
    def send(self, *, to: str, message: Message) -> str:
        domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
        message_id = f"<{_letters(24)}@{domain}>"
        email = _CodeEmail(
            subject=message.subject,
            body=message.text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[to],
            headers={"Message-ID": message_id},
            connection=get_connection(timeout=settings.EMAIL_TIMEOUT),
        )
        if message.html:
            email.attach_alternative(message.html, "text/html")
        try:
            email.send(fail_silently=False)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            raise _smtp_code_error(code, text.decode(errors="replace") if isinstance(text, bytes) else str(text)) from exc
        except smtplib.SMTPResponseException as exc:
            raise _smtp_code_error(exc.smtp_code, str(exc.smtp_error)) from exc
        except OSError as exc:  # connection refused or dropped, timeout (smtplib's other errors are OSErrors too)
            raise SendTransientError(f"SMTP connection: {exc.__class__.__name__}: {exc}") from exc
        return message_id


class ConsoleSmsSender:
    """Development only: prints the SMS, code included, on the worker's console."""

    def send(self, *, to: str, message: Message) -> str:
        sys.stdout.write(f"--- SMS to {to} ---\n{message.text}\n---\n")
        sys.stdout.flush()
        return f"console-{uuid.uuid4().hex}"


@lru_cache(maxsize=1)
def _twilio_client() -> Client:
    client = Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN,
                    http_client=TwilioHttpClient(timeout=settings.TWILIO_TIMEOUT_SECONDS))
    # Lets a Twilio-compatible gateway, or a test double, answer instead of api.twilio.com.
    client.api.base_url = settings.TWILIO_API_BASE_URL
    return client


class TwilioSmsSender:
    def send(self, *, to: str, message: Message) -> str:
        sender = ({"messaging_service_sid": settings.TWILIO_MESSAGING_SERVICE_SID}
                  if settings.TWILIO_MESSAGING_SERVICE_SID else {"from_": settings.TWILIO_FROM_NUMBER})
        try:
            sent = _twilio_client().messages.create(
                to=to, body=message.text,
                status_callback=f"{settings.PUBLIC_BASE_URL}/webhooks/twilio/status/", **sender,
            )
        except TwilioRestException as exc:
            error = f"Twilio {exc.status} (code {exc.code}): {exc.msg}"
            if exc.status == 429 or exc.status >= 500:
                raise SendTransientError(error) from exc
            raise SendPermanentError(error) from exc
        except (requests.RequestException, TwilioException, OSError) as exc:
            raise SendTransientError(f"Twilio connection: {exc.__class__.__name__}: {exc}") from exc
        return sent.sid


def sender_for(channel: str) -> Sender:
    if channel == Channel.EMAIL:
        return EmailSender()
    return TwilioSmsSender() if settings.SMS_BACKEND == "twilio" else ConsoleSmsSender()
