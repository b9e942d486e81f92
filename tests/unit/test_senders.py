"""The senders against a real SMTP server (aiosmtpd) and the Twilio stand-in: connections kept, dropped ones replaced."""
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from otp.messages import Message
from otp.providers import SendTransientError
from otp.providers.smtp import SmtpEmailProvider
from otp.providers.twilio import TwilioSmsProvider, _twilio_client_build
from tests.support.smtp import SmtpServer

MESSAGE = Message(subject="Your code", text="Your code is 123456.")


@pytest.fixture
def own_smtp_server(settings):
    server = SmtpServer().start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = server.port
    yield server
    server.stop()


def test_one_connection_carries_many_messages(own_smtp_server):
    for n in range(3):
        SmtpEmailProvider().send(to=f"user{n}@example.com", message=MESSAGE, delivery_id=1)

    assert [m["X-Envelope-To"] for m in own_smtp_server.inbox.messages] == [
        "user0@example.com", "user1@example.com", "user2@example.com"]
    assert own_smtp_server.inbox.sessions == 1


def test_a_connection_the_server_dropped_is_found_out_before_the_message_and_replaced(own_smtp_server):
    SmtpEmailProvider().send(to="before@example.com", message=MESSAGE, delivery_id=1)
    own_smtp_server.restart()  # closes the connection the sender keeps

    SmtpEmailProvider().send(to="after@example.com", message=MESSAGE, delivery_id=1)

    assert len(own_smtp_server.inbox.to("after@example.com")) == 1
    assert own_smtp_server.inbox.sessions == 2


def test_a_refused_message_closes_the_connection_and_the_next_opens_a_new_one(own_smtp_server):
    SmtpEmailProvider().send(to="first@example.com", message=MESSAGE, delivery_id=1)
    own_smtp_server.inbox.refuse_next = 1

    with pytest.raises(SendTransientError, match="SMTP 451"):
        SmtpEmailProvider().send(to="refused@example.com", message=MESSAGE, delivery_id=1)
    SmtpEmailProvider().send(to="third@example.com", message=MESSAGE, delivery_id=1)

    assert own_smtp_server.inbox.to("refused@example.com") == []
    assert len(own_smtp_server.inbox.to("third@example.com")) == 1
    assert own_smtp_server.inbox.sessions == 2


def test_a_server_that_is_down_is_a_transient_error(own_smtp_server):
    SmtpEmailProvider().send(to="first@example.com", message=MESSAGE, delivery_id=1)
    own_smtp_server.stop()

    # The kept connection is dead and no new one can be opened: retried later by the task, not here.
    with pytest.raises(SendTransientError, match="SMTP connection"):
        SmtpEmailProvider().send(to="second@example.com", message=MESSAGE, delivery_id=1)


def test_a_changed_email_setting_gets_a_new_connection(own_smtp_server, settings):
    other = SmtpServer().start()
    try:
        SmtpEmailProvider().send(to="first@example.com", message=MESSAGE, delivery_id=1)
        settings.EMAIL_PORT = other.port
        SmtpEmailProvider().send(to="second@example.com", message=MESSAGE, delivery_id=1)
        assert len(other.inbox.to("second@example.com")) == 1
        assert own_smtp_server.inbox.to("second@example.com") == []
    finally:
        other.stop()


@pytest.fixture
def twilio_settings(settings, sms):
    settings.SMS_BACKEND = "twilio"
    settings.TWILIO_ACCOUNT_SID = "AC" + "1" * 32
    settings.TWILIO_AUTH_TOKEN = "test-token"
    settings.TWILIO_FROM_NUMBER = "+14155550100"
    settings.TWILIO_API_BASE_URL = sms.base_url
    settings.CELERY_WORKER_CONCURRENCY = 16
    _twilio_client_build.cache_clear()  # built once per process, from these settings
    yield sms
    _twilio_client_build.cache_clear()


def test_worker_threads_keep_their_twilio_connections(twilio_settings):
    # 48 SMS from 16 threads over at most 16 connections. (The pool's size matters for api.twilio.com, where
    # twilio's own adapter keeps only six HTTPS connections; the stand-in speaks plain HTTP.)
    sms = twilio_settings
    sms.latency_seconds = 0.05  # so the 16 sends overlap
    numbers = [f"+1415555{n:04d}" for n in range(48)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda number: TwilioSmsProvider().send(to=number, message=MESSAGE, delivery_id=1), numbers))

    assert sorted(m["to"] for m in sms.accepted) == sorted(numbers)
    assert sms.connections <= 16


def test_a_connection_idle_too_long_is_replaced_unchecked(own_smtp_server, settings):
    SmtpEmailProvider().send(to="first@example.com", message=MESSAGE, delivery_id=1)
    settings.EMAIL_CONNECTION_MAX_IDLE_SECONDS = 0

    SmtpEmailProvider().send(to="second@example.com", message=MESSAGE, delivery_id=1)

    assert len(own_smtp_server.inbox.to("second@example.com")) == 1
    assert own_smtp_server.inbox.sessions == 2


def _strictly_parsed(raw: bytes):
    """The message as a strict reader sees it: a defect anywhere in its structure raises, and each header's own
    defects are listed (header values are parsed when read)."""
    import email
    from email import policy

    message = email.message_from_bytes(raw, policy=policy.strict)
    header_defects = {name: [str(defect) for defect in message[name].defects] for name in message.keys()}
    return message, {name: found for name, found in header_defects.items() if found}


@pytest.mark.parametrize("from_email, display_name, addr_spec", [
    ("no-reply@example.com", "", "no-reply@example.com"),
    # Django's documented form: the input, whose Message-ID came out as <...@example.com>>.
    ("OTP Login <no-reply@example.com>", "OTP Login", "no-reply@example.com"),
    ('"Login, Inc." <no-reply@example.com>', "Login, Inc.", "no-reply@example.com"),
    ("Ünïcode Dienst <no-reply@bücher.example>", "Ünïcode Dienst", "no-reply@xn--bcher-kva.example"),
    # IDNA 2008 keeps ß: Python's own codec (IDNA 2003) turned this sender into no-reply@strasse.de.
    ("OTP <no-reply@straße.de>", "OTP", "no-reply@xn--strae-oqa.de"),
    ("no-reply@localhost", "", "no-reply@localhost"),
])
def test_every_header_parses_cleanly_under_the_strict_email_policy(own_smtp_server, settings, from_email,
                                                                   display_name, addr_spec):
    settings.DEFAULT_FROM_EMAIL = from_email
    settings.SERVICE_NAME = "Connexion sécurisée"  # a non-ASCII subject, encoded by the mail library
    SmtpEmailProvider().send(to="alice@example.com", delivery_id=1, message=Message(
        subject=f"Your {settings.SERVICE_NAME} code", text="Your code is 123456.", html="<p>123456</p>"))

    message, header_defects = _strictly_parsed(own_smtp_server.inbox.raw_to("alice@example.com")[0])

    assert header_defects == {}
    sender = message["From"].addresses
    assert [(a.display_name, a.addr_spec) for a in sender] == [(display_name, addr_spec)]
    domain = addr_spec.partition("@")[2]
    assert re.fullmatch(rf"<[a-z]+@{re.escape(domain)}>", message["Message-ID"]), message["Message-ID"]
    assert message["Subject"] == "Your Connexion sécurisée code"
    assert own_smtp_server.inbox.messages[0]["X-Envelope-From"] == addr_spec  # the envelope sender too
