"""The vendors behind one small interface: `send(to=, message=) -> provider id`.

A sender raises SendTransientError when trying again later may work, SendPermanentError when it will not.
The SMTP details live in EmailSender, the Twilio ones in TwilioSmsSender; settings choose.
"""
import os
import secrets
import smtplib
import string
import sys
import threading
import time
import uuid
from functools import lru_cache
from typing import Protocol

import requests
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from requests.adapters import HTTPAdapter
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
    # One random byte a letter: the slight bias of `% 26` does not matter for a boundary or a Message-ID.
    return "".join(string.ascii_lowercase[byte % 26] for byte in secrets.token_bytes(n))


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


_email_connections = threading.local()


def _email_connection() -> BaseEmailBackend:
    """This thread's mail connection, kept open from one message to the next.

    Opening one (TCP, EHLO, STARTTLS, AUTH, QUIT) cost about as much CPU as the rest of a delivery. A worker
    therefore holds at most CELERY_WORKER_CONCURRENCY connections to the mail server. A kept connection is
    checked with NOOP before use, so a message is never sent twice because a connection died under it.
    Settings that name the server are part of the key, so a changed setting gets a new connection.
    """
    key = (settings.EMAIL_BACKEND, settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_HOST_USER,
           settings.EMAIL_USE_TLS)
    cached = getattr(_email_connections, "cached", None)
    if cached is not None and cached[0] != key:
        _email_connection_drop(cached[1])
        cached = None
    if cached is None:
        cached = _email_connections.cached = (key, get_connection(timeout=settings.EMAIL_TIMEOUT))
    connection = cached[1]
    smtp = getattr(connection, "connection", None)  # the SMTP backend's open socket; other backends have none
    if smtp is not None:
        idle = time.monotonic() - getattr(_email_connections, "last_used", 0.0)
        try:
            usable = idle < settings.EMAIL_CONNECTION_MAX_IDLE_SECONDS and smtp.noop()[0] == 250
        except OSError:  # smtplib's errors are OSErrors: the server closed it (421, or silently)
            usable = False
        if not usable:
            _email_connection_drop(connection)
    _email_connections.last_used = time.monotonic()
    return connection


def _email_connection_drop(connection: BaseEmailBackend) -> None:
    try:
        connection.close()
    except OSError:  # smtplib's errors are OSErrors; QUIT on a dead connection may fail, and that is fine
        pass


def _email_send(connection: BaseEmailBackend, *, to: str, message: Message) -> str:
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    message_id = f"<{_letters(24)}@{domain}>"
    email = _CodeEmail(
        subject=message.subject,
        body=message.text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
        headers={"Message-ID": message_id},
        connection=connection,
    )
    if message.html:
        email.attach_alternative(message.html, "text/html")
    connection.open()  # Django leaves open a connection it did not open itself inside send()
    email.send(fail_silently=False)
    return message_id


def _email_error(exc: OSError) -> Exception:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
        return _smtp_code_error(code, text.decode(errors="replace") if isinstance(text, bytes) else str(text))
    if isinstance(exc, smtplib.SMTPResponseException):
        return _smtp_code_error(exc.smtp_code, str(exc.smtp_error))
    # Connection refused or dropped, timeout (smtplib's other errors are OSErrors too).
    return SendTransientError(f"SMTP connection: {exc.__class__.__name__}: {exc}")


class EmailSender:
    def send(self, *, to: str, message: Message) -> str:
        connection = _email_connection()
        try:
            return _email_send(connection, to=to, message=message)
        except OSError as exc:
            # Never reuse a connection left in an unknown state; the task retries the message later.
            _email_connection_drop(connection)
            raise _email_error(exc) from exc


class ConsoleSmsSender:
    """Development only: prints the SMS, code included, on the worker's console."""

    def send(self, *, to: str, message: Message) -> str:
        sys.stdout.write(f"--- SMS to {to} ---\n{message.text}\n---\n")
        sys.stdout.flush()
        return f"console-{uuid.uuid4().hex}"


_twilio_client_lock = threading.Lock()


def _twilio_client() -> Client:
    # Locked: a worker's threads all start at once, and each would otherwise build a client (and a pool).
    with _twilio_client_lock:
        return _twilio_client_build()


@lru_cache(maxsize=1)
def _twilio_client_build() -> Client:
    http_client = TwilioHttpClient(timeout=settings.TWILIO_TIMEOUT_SECONDS)
    # twilio keeps min(32, cores + 4) connections (6 here): the other threads of a worker opened, and for
    # api.twilio.com TLS-handshook, a new connection for every SMS. One kept connection per worker thread.
    adapter = HTTPAdapter(pool_maxsize=max(settings.CELERY_WORKER_CONCURRENCY, min(32, (os.cpu_count() or 1) + 4)))
    http_client.session.mount("https://", adapter)
    http_client.session.mount("http://", adapter)
    client = Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client)
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
