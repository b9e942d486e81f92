"""The senders against a real SMTP server (aiosmtpd) and the Twilio stand-in: connections kept, dropped ones replaced."""
import pytest

from otp.messages import Message
from otp.providers import SendTransientError
from otp.providers.smtp import SmtpEmailProvider
from otp.providers.twilio import TwilioSmsProvider, _twilio_client_build
from tests.support.parallel import run_in_parallel
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
        SmtpEmailProvider().send(to=f"user{n}@example.com", message=MESSAGE)

    assert [m["X-Envelope-To"] for m in own_smtp_server.inbox.messages] == [
        "user0@example.com", "user1@example.com", "user2@example.com"]
    assert own_smtp_server.inbox.sessions == 1


def test_a_connection_the_server_dropped_is_found_out_before_the_message_and_replaced(own_smtp_server):
    SmtpEmailProvider().send(to="before@example.com", message=MESSAGE)
    own_smtp_server.restart()  # closes the connection the sender keeps

    SmtpEmailProvider().send(to="after@example.com", message=MESSAGE)

    assert len(own_smtp_server.inbox.to("after@example.com")) == 1
    assert own_smtp_server.inbox.sessions == 2


def test_a_refused_message_closes_the_connection_and_the_next_opens_a_new_one(own_smtp_server):
    SmtpEmailProvider().send(to="first@example.com", message=MESSAGE)
    own_smtp_server.inbox.refuse_next = 1

    with pytest.raises(SendTransientError, match="SMTP 451"):
        SmtpEmailProvider().send(to="refused@example.com", message=MESSAGE)
    SmtpEmailProvider().send(to="third@example.com", message=MESSAGE)

    assert own_smtp_server.inbox.to("refused@example.com") == []
    assert len(own_smtp_server.inbox.to("third@example.com")) == 1
    assert own_smtp_server.inbox.sessions == 2


def test_a_server_that_is_down_is_a_transient_error(own_smtp_server):
    SmtpEmailProvider().send(to="first@example.com", message=MESSAGE)
    own_smtp_server.stop()

    # The kept connection is dead and no new one can be opened: retried later by the task, not here.
    with pytest.raises(SendTransientError, match="SMTP connection"):
        SmtpEmailProvider().send(to="second@example.com", message=MESSAGE)


def test_a_changed_email_setting_gets_a_new_connection(own_smtp_server, settings):
    other = SmtpServer().start()
    try:
        SmtpEmailProvider().send(to="first@example.com", message=MESSAGE)
        settings.EMAIL_PORT = other.port
        SmtpEmailProvider().send(to="second@example.com", message=MESSAGE)
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

    run_in_parallel(16, lambda i: [TwilioSmsProvider().send(to=number, message=MESSAGE) for number in numbers[i::16]])

    assert sorted(m["to"] for m in sms.accepted) == sorted(numbers)
    assert sms.connections <= 16


def test_a_connection_idle_too_long_is_replaced_unchecked(own_smtp_server, settings):
    SmtpEmailProvider().send(to="first@example.com", message=MESSAGE)
    settings.EMAIL_CONNECTION_MAX_IDLE_SECONDS = 0

    SmtpEmailProvider().send(to="second@example.com", message=MESSAGE)

    assert len(own_smtp_server.inbox.to("second@example.com")) == 1
    assert own_smtp_server.inbox.sessions == 2
