"""Email through Django's mail backend (SMTP in production): a plain-text and an HTML part, one kept connection
per worker thread."""
import secrets
import smtplib
import string
import threading
import time

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend

from otp.messages import Message
from otp.providers.base import SendPermanentError, SendTransientError
from otp.providers.mailbox import sender_parse


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


def _email_connection(timeout_seconds: float) -> BaseEmailBackend:
    """This thread's mail connection, kept open from one message to the next.

    Opening one (TCP, EHLO, STARTTLS, AUTH, QUIT) costs about as much as the rest of a delivery
    (docs/performance.md), so a worker holds at most CELERY_WORKER_CONCURRENCY connections to the mail server.
    A kept connection is checked with NOOP before use, so a message is never sent twice because a connection
    died under it. Settings that name the server are part of the key, so a changed setting gets a new connection.
    """
    key = (settings.EMAIL_BACKEND, settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_HOST_USER,
           settings.EMAIL_USE_TLS)
    cached = getattr(_email_connections, "cached", None)
    if cached is not None and cached[0] != key:
        _email_connection_drop(cached[1])
        cached = None
    if cached is None:
        cached = _email_connections.cached = (key, get_connection(timeout=timeout_seconds))
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
    # Read with the email library, not split on "@": `OTP Login <no-reply@example.com>` made the Message-ID
    # `<...@example.com>>`, and Django's own IDNA 2003 conversion mailed `straße.de` as `strasse.de`.
    sender = sender_parse(settings.DEFAULT_FROM_EMAIL)
    message_id = f"<{_letters(24)}@{sender.domain}>"
    email = _CodeEmail(
        subject=message.subject,
        body=message.text,
        from_email=sender.header,
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


class SmtpEmailProvider:
    """Email through the Django mail backend that `EMAIL_BACKEND` names (SMTP, or Django's in-memory one in tests).

    The provider id is the message's Message-ID. A 4xx reply or a connection error is transient, a 5xx permanent.
    """

    name = "smtp"
    channel = "email"
    timeout_seconds = 10.0

    def send(self, *, to: str, message: Message, delivery_id: int) -> str:
        connection = _email_connection(self.timeout_seconds)
        try:
            return _email_send(connection, to=to, message=message)
        except OSError as exc:
            # Never reuse a connection left in an unknown state; the task retries the message later.
            _email_connection_drop(connection)
            raise _email_error(exc) from exc
