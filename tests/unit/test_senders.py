"""The senders against a real SMTP server (aiosmtpd) and the Twilio stand-in: connections kept, dropped ones replaced."""
import contextlib
import email
import email.policy
import re
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from otp.messages import Message, email_message_render
from otp.providers import SendOutcomeUnknownError, SendPermanentError, SendTransientError
from otp.providers import smtp as smtp_provider
from otp.providers import twilio as twilio_provider
from otp.providers.smtp import SmtpEmailProvider
from otp.providers.twilio import TwilioSmsProvider, _twilio_check_client, _twilio_client_build
from tests.support import twilio_standin
from tests.support.parallel import run_in_parallel
from tests.support.smtp import SmtpServer, code_from_email
from tests.support.waiting import free_port

MESSAGE = Message(subject="Your code", text="Your code is 123456.")


@contextlib.contextmanager
def _relay(settings, *, smtputf8: bool):
    """A real SMTP server of the test's own, that the email provider sends to while the block runs."""
    server = SmtpServer(smtputf8=smtputf8).start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = server.port
    try:
        yield server
    finally:
        smtp_provider._email_connections.close_idle()
        server.stop()


@pytest.fixture
def own_smtp_server(settings):
    with _relay(settings, smtputf8=True) as server:
        yield server


def test_one_connection_carries_many_messages(own_smtp_server):
    for n in range(3):
        SmtpEmailProvider().send(to=f"user{n}@example.com", message=MESSAGE, delivery_id=1)

    assert [m["X-Envelope-To"] for m in own_smtp_server.inbox.messages] == [
        "user0@example.com", "user1@example.com", "user2@example.com"]
    assert own_smtp_server.inbox.sessions == 1
    # A kept session is reused while its socket is quiet: no NOOP round trip before each message.
    assert own_smtp_server.inbox.noops == 0


def test_threads_share_at_most_email_max_connections_to_a_slow_relay(own_smtp_server, settings):
    # A relay answering each message in 0.2 s, 8 sending threads, a cap of 3: every message goes, over at most 3
    # sessions, all 3 of them busy at once.
    settings.EMAIL_MAX_CONNECTIONS = 3
    inbox = own_smtp_server.inbox
    inbox.final_reply_delay_seconds = 0.2

    run_in_parallel(8, lambda i: [SmtpEmailProvider().send(to=f"user{i}-{n}@example.com", message=MESSAGE,
                                                           delivery_id=1) for n in range(3)])

    assert len(inbox.messages) == 24
    assert inbox.sessions <= 3
    assert inbox.most_busy_sessions == 3


def test_a_send_that_finds_every_connection_lent_for_too_long_is_a_transient_error(own_smtp_server, settings,
                                                                                  monkeypatch):
    settings.EMAIL_MAX_CONNECTIONS = 1
    monkeypatch.setattr(smtp_provider, "COMMANDS_SECONDS", 0.3)
    lent = smtp_provider._email_connections.take(deadline=time.monotonic() + 1)
    try:
        with pytest.raises(SendTransientError, match="EMAIL_MAX_CONNECTIONS"):
            SmtpEmailProvider().send(to="waits@example.com", message=MESSAGE, delivery_id=1)
    finally:
        smtp_provider._email_connections.give_back(lent, usable=True)
    SmtpEmailProvider().send(to="after@example.com", message=MESSAGE, delivery_id=1)  # the connection came back

    assert [m["X-Envelope-To"] for m in own_smtp_server.inbox.messages] == ["after@example.com"]
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
    settings.SMS_MAX_CONNECTIONS = 16
    _twilio_client_build.cache_clear()  # built once per process, from these settings
    _twilio_check_client.cache_clear()
    yield sms
    _twilio_client_build.cache_clear()
    _twilio_check_client.cache_clear()


def test_worker_threads_keep_their_twilio_connections(twilio_settings):
    # 48 SMS from 16 threads over at most 16 connections. (The pool's size matters for api.twilio.com, where
    # twilio's own adapter keeps only six HTTPS connections; the stand-in speaks plain HTTP.)
    sms = twilio_settings
    sms.latency_seconds = 0.05  # so the 16 sends overlap
    numbers = [f"+1415555{n:04d}" for n in range(48)]

    run_in_parallel(16, lambda i: [TwilioSmsProvider().send(to=number, message=MESSAGE, delivery_id=1)
                                   for number in numbers[i::16]])

    assert sorted(m["to"] for m in sms.accepted) == sorted(numbers)
    assert sms.connections <= 16


def test_more_threads_than_sms_max_connections_share_them(twilio_settings, settings):
    settings.SMS_MAX_CONNECTIONS = 4
    _twilio_client_build.cache_clear()
    sms = twilio_settings
    sms.latency_seconds = 0.05
    numbers = [f"+1415555{n:04d}" for n in range(32)]

    run_in_parallel(16, lambda i: [TwilioSmsProvider().send(to=number, message=MESSAGE, delivery_id=1)
                                   for number in numbers[i::16]])

    assert sorted(m["to"] for m in sms.accepted) == sorted(numbers)
    assert 1 < sms.connections <= 4


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


# --- Each kind of code email laid out once a process -------------------------------------------------------


@pytest.fixture
def fresh_layouts(monkeypatch):
    """A process's layouts as at its start, and a count of the messages Django's classes build."""
    monkeypatch.setattr(smtp_provider, "_email_layouts", smtp_provider._CodeEmailLayouts())
    built = []
    message = smtp_provider._CodeEmail.message
    monkeypatch.setattr(smtp_provider._CodeEmail, "message", lambda self, *a, **k: built.append(1) or message(self, *a, **k))
    return built


def _built_whole(raw: bytes, *, to: str, message: Message) -> bytes:
    """What Django's classes build for `message` to `to` with the Date header of their own making (the order of
    headers included), given the Date value, Message-ID and MIME boundary of `raw` (a message as the server
    received it)."""
    import email
    from django.conf import settings

    received = email.message_from_bytes(raw)
    whole = smtp_provider._code_email(to=to, message=message, sender=smtp_provider.sender_parse(
        settings.DEFAULT_FROM_EMAIL), message_id=received["Message-ID"], boundary=received.get_boundary())
    built = whole.message().as_bytes(linesep="\r\n")
    return re.sub(rb"^Date: [^\r]*\r\n", b"Date: " + received["Date"].encode() + b"\r\n", built, count=1,
                  flags=re.MULTILINE)


ADDRESSES_LAID_OUT = ["alice@example.com", "Bob.Smith+otp@Mail.Example.co.uk", "o_k-1@x.io", "u@xn--bcher-kva.example",
                      f"{'a' * 58}@example.com"]  # the last is 70 characters, the longest filled in
ADDRESSES_BUILT_WHOLE = [f"{'a' * 59}@example.com", "user@bücher.example", "o'brien@example.com",
                         '"quoted local"@example.com']


@pytest.mark.parametrize("to", ADDRESSES_LAID_OUT + ADDRESSES_BUILT_WHOLE)
def test_a_code_email_is_byte_for_byte_what_djangos_classes_build(own_smtp_server, settings, fresh_layouts, to):
    from otp.messages import email_message_render

    settings.DEFAULT_FROM_EMAIL = "Connexion sécurisée <no-reply@bücher.example>"  # an encoded From header
    settings.SERVICE_NAME = "Connexion sécurisée"  # an encoded Subject
    sent = [email_message_render(code=code) for code in ("482913", "000001", "907310")]
    for delivery_id, message in enumerate(sent, start=7):  # the first lays the kind out, the others fill it
        SmtpEmailProvider().send(to=to, message=message, delivery_id=delivery_id)

    # Filled in: Django's classes built the first message twice (its layout, and itself to check it) and no other.
    assert len(fresh_layouts) == (2 if to in ADDRESSES_LAID_OUT else 3)
    received = own_smtp_server.inbox.raw
    assert len(received) == 3
    for raw, message in zip(received, sent):
        assert raw == _built_whole(raw, to=to, message=message)
    # The envelope as Django's own SMTP backend gives it, for one more message sent through that backend.
    from django.conf import settings as live_settings
    from django.core.mail import get_connection

    smtp_provider._code_email(to=to, message=sent[0], sender=smtp_provider.sender_parse(
        live_settings.DEFAULT_FROM_EMAIL), message_id="<django@example.com>", connection=get_connection()).send()
    assert len(set(own_smtp_server.inbox.rcpts_seen)) == 1 and len(own_smtp_server.inbox.rcpts_seen) == 4


def test_only_the_first_code_email_of_a_kind_is_built_by_djangos_classes(own_smtp_server, fresh_layouts):
    from otp.messages import email_message_render

    for n in range(5):
        SmtpEmailProvider().send(to=f"user{n}@example.com", message=email_message_render(code=f"{n}1234{n}"),
                                 delivery_id=n)

    assert len(own_smtp_server.inbox.raw) == 5
    assert len(fresh_layouts) == 2  # the first message: its layout, and itself built whole to check it against
    # A message whose code is not in the layout's place, or a recipient outside it, is built whole.
    SmtpEmailProvider().send(to="o'brien@example.com", message=email_message_render(code="123456"), delivery_id=9)
    assert len(fresh_layouts) == 3


_LAYOUTS = smtp_provider._CodeEmailLayouts()  # one process's, shared by the examples below


@given(to=st.from_regex(smtp_provider._ADDRESS_LAYOUT, fullmatch=True).filter(
    lambda address: len(address) <= smtp_provider._ADDRESS_LAYOUT_MAX), code=st.from_regex(r"[0-9]{4,10}", fullmatch=True),
    id_letters=st.from_regex(r"[a-z]{24}", fullmatch=True), sent_at=st.floats(min_value=0, max_value=4e9))
@hsettings(max_examples=300, deadline=None)
def test_any_address_and_code_filled_in_give_the_bytes_djangos_classes_build(to, code, id_letters, sent_at):
    from django.conf import settings
    from django.core.mail.message import sanitize_address
    from email.utils import formatdate
    from otp.messages import email_message_render

    sender = smtp_provider.sender_parse(settings.DEFAULT_FROM_EMAIL)
    message, message_id, date = email_message_render(code=code), f"<{id_letters}@{sender.domain}>", formatdate(sent_at)
    filled = _LAYOUTS.message_bytes(to=to, message=message, sender=sender, message_id=message_id, date=date)

    # With the layouts' own boundary: a message built whole instead of filled in would have a random one.
    whole = smtp_provider._code_email(to=to, message=message, sender=sender, message_id=message_id, date=date,
                                      boundary=_LAYOUTS._boundary).message().as_bytes(linesep="\r\n")
    assert filled == whole
    assert sanitize_address(to, "utf-8") == to  # the envelope recipient the provider gives without asking Django


def test_a_charset_whose_encoding_moves_the_code_gets_every_message_built_whole(own_smtp_server, settings,
                                                                               fresh_layouts, caplog):
    # Latin-1 bodies go out quoted-printable, whose soft line breaks fall where the line's length puts them: the
    # layout's check fails on the first message, and every message is built whole.
    from otp.messages import email_message_render

    settings.DEFAULT_CHARSET = "iso-8859-1"
    # 73 letters, then the code: quoted-printable's 76-character lines break inside it, and inside its marker.
    sent = [Message(subject="Code", text="x" * 73 + f"{code}\n", code=code) for code in ("482913", "777777")]
    for delivery_id, message in enumerate(sent):
        SmtpEmailProvider().send(to="alice@example.com", message=message, delivery_id=delivery_id)

    assert len(fresh_layouts) == 2 + 2  # the first message's check, then both built whole
    assert b"482913" not in own_smtp_server.inbox.raw[0]  # split by a soft line break
    for raw, message in zip(own_smtp_server.inbox.raw, sent):
        assert raw == _built_whole(raw, to="alice@example.com", message=message)
    assert "each is built whole" in caplog.text


def test_a_process_keeps_at_most_layouts_max_kinds_and_builds_the_rest_whole(monkeypatch):
    from django.conf import settings
    from email.utils import formatdate

    layouts, sender = smtp_provider._CodeEmailLayouts(), smtp_provider.sender_parse(settings.DEFAULT_FROM_EMAIL)
    for n in range(smtp_provider._LAYOUTS_MAX + 4):
        message = Message(subject=f"Code {'x' * n}", text="Your code: 123456", code="123456")
        filled = layouts.message_bytes(to="a@example.com", message=message, sender=sender, date=formatdate(0),
                                       message_id=f"<{'q' * 24}@{sender.domain}>")
        assert b"Your code: 123456" in filled and b"Subject: Code " + b"x" * n in filled

    assert len(layouts._layouts) == smtp_provider._LAYOUTS_MAX


def test_a_kind_whose_first_message_fails_the_check_is_built_whole_each_time(own_smtp_server, fresh_layouts, monkeypatch,
                                                                      caplog):
    # A header that changes with the recipient's length, as an encoding that moves with a value would: the layout
    # filled in gives other bytes than the message built whole, so it is not used.
    code_email = smtp_provider._code_email

    def with_length_header(*, to, **kwargs):
        email = code_email(to=to, **kwargs)
        email.extra_headers["X-Length"] = str(len(to))
        return email

    monkeypatch.setattr(smtp_provider, "_code_email", with_length_header)
    from otp.messages import email_message_render

    for n in range(3):
        SmtpEmailProvider().send(to=f"user{n}@example.com", message=email_message_render(code=f"55555{n}"),
                                 delivery_id=n)

    assert [m["X-Length"] for m in own_smtp_server.inbox.messages] == ["17"] * 3
    assert len(fresh_layouts) == 2 + 3  # the check's two, then every message built whole
    assert "built whole" in caplog.text


# --- An outcome that may be unknown: SMTP after the end of DATA -----------------------------------------


def test_a_final_reply_later_than_the_commands_budget_is_waited_for_up_to_its_own_bound(own_smtp_server, settings,
                                                                                         monkeypatch):
    # RFC 5321 section 4.5.3.2.6: the server may take long to answer the end of DATA; the client waits up to
    # EMAIL_FINAL_REPLY_TIMEOUT_SECONDS there, whatever the budget of the commands before it.
    monkeypatch.setattr(smtp_provider, "COMMANDS_SECONDS", 1.0)
    settings.EMAIL_FINAL_REPLY_TIMEOUT_SECONDS = 5.0
    own_smtp_server.inbox.hold_next_final_reply_seconds = 2.0

    message_id = SmtpEmailProvider().send(to="slow@example.com", message=MESSAGE, delivery_id=7)

    assert own_smtp_server.inbox.to("slow@example.com")[0]["Message-ID"] == message_id


def test_no_final_reply_in_time_is_an_unknown_outcome_not_a_failure(own_smtp_server, settings):
    settings.EMAIL_FINAL_REPLY_TIMEOUT_SECONDS = 1.0
    own_smtp_server.inbox.hold_next_final_reply_seconds = 4.0

    with pytest.raises(SendOutcomeUnknownError, match="no final reply to the end of DATA within 1 s"):
        SmtpEmailProvider().send(to="late@example.com", message=MESSAGE, delivery_id=7)

    assert len(own_smtp_server.inbox.to("late@example.com")) == 1  # the server had taken it: resending would be a duplicate
    SmtpEmailProvider().send(to="next@example.com", message=MESSAGE, delivery_id=8)  # a fresh connection works
    assert len(own_smtp_server.inbox.to("next@example.com")) == 1


def test_a_connection_dropped_after_the_end_of_data_is_an_unknown_outcome(own_smtp_server):
    own_smtp_server.inbox.drop_after_next_data = True

    with pytest.raises(SendOutcomeUnknownError):
        SmtpEmailProvider().send(to="dropped@example.com", message=MESSAGE, delivery_id=7)

    assert len(own_smtp_server.inbox.to("dropped@example.com")) == 1


def test_a_stall_before_the_end_of_data_is_transient_and_bounded_by_the_commands_budget(own_smtp_server, monkeypatch):
    # Before the end of DATA the server has not taken the message: no doubt about the outcome, so a retry is safe.
    monkeypatch.setattr(smtp_provider, "COMMANDS_SECONDS", 1.0)
    own_smtp_server.inbox.hold_next_rcpt_seconds = 5.0
    started = time.monotonic()

    with pytest.raises(SendTransientError, match="SMTP connection"):
        SmtpEmailProvider().send(to="stalled@example.com", message=MESSAGE, delivery_id=7)

    assert time.monotonic() - started < 3
    assert own_smtp_server.inbox.to("stalled@example.com") == []


def test_every_try_of_one_delivery_carries_one_message_id(own_smtp_server):
    own_smtp_server.inbox.refuse_next = 1
    with pytest.raises(SendTransientError, match="SMTP 451"):
        SmtpEmailProvider().send(to="twice@example.com", message=MESSAGE, delivery_id=41)
    first = SmtpEmailProvider().send(to="twice@example.com", message=MESSAGE, delivery_id=41)
    other = SmtpEmailProvider().send(to="twice@example.com", message=MESSAGE, delivery_id=42)

    import email
    ids = [email.message_from_bytes(raw)["Message-ID"] for raw in own_smtp_server.inbox.data_attempts]
    assert ids == [first, first, other] and first != other
    assert re.fullmatch(r"<[a-z]{24}@localhost>", first)


# --- An outcome that may be unknown: Twilio ------------------------------------------------------------


@pytest.fixture
def quick_twilio(twilio_settings, monkeypatch):
    """Twilio's timeouts and check pauses shortened, so a lost answer costs a test seconds, not half a minute."""
    monkeypatch.setattr(twilio_provider, "TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(twilio_provider, "CHECK_PAUSES_SECONDS", (0.2, 0.3))
    twilio_settings.late_seconds = 3.0
    return twilio_settings


def test_an_answer_lost_to_a_read_timeout_is_looked_up_and_the_taken_message_returned(quick_twilio):
    sms = quick_twilio
    sms.script[:] = [twilio_standin.LATE]

    sid = TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)

    assert [m["sid"] for m in sms.to("+14155552671")] == [sid] and len(sms.requests) == 1
    assert sms.list_requests == [{"To": "+14155552671", "PageSize": "50"}]


def test_a_connection_dropped_after_the_request_is_looked_up_and_found(quick_twilio):
    sms = quick_twilio
    sms.script[:] = [twilio_standin.TAKEN_THEN_DROPPED]

    sid = TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)

    assert [m["sid"] for m in sms.to("+14155552671")] == [sid] and len(sms.requests) == 1


def test_a_message_the_list_never_shows_is_an_unknown_outcome_after_two_checks(quick_twilio):
    sms = quick_twilio
    sms.script[:] = [twilio_standin.DROPPED]

    with pytest.raises(SendOutcomeUnknownError, match="no such message in the Messages list"):
        TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)

    assert len(sms.requests) == 1 and len(sms.list_requests) == 2 and sms.accepted == []


def test_a_gateway_without_a_messages_list_leaves_the_outcome_unknown_after_one_check(quick_twilio):
    sms = quick_twilio
    sms.messages_list = False
    sms.script[:] = [twilio_standin.LATE]

    with pytest.raises(SendOutcomeUnknownError, match="no Messages list"):
        TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)

    assert len(sms.requests) == 1 and len(sms.list_requests) == 1


@pytest.mark.parametrize("status", [405])
def test_a_gateway_answering_405_to_the_list_leaves_the_outcome_unknown(quick_twilio, status):
    sms = quick_twilio
    sms.messages_list, sms.messages_list_status = False, status
    sms.script[:] = [twilio_standin.DROPPED]

    with pytest.raises(SendOutcomeUnknownError, match=f"no Messages list \\(HTTP {status}\\)"):
        TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)


def test_only_a_message_with_this_body_created_since_the_attempt_matches(quick_twilio, monkeypatch):
    # Another message to the number (another code) and one with this body created long before the attempt (its
    # creation time older than the clock-skew margin) are not this attempt's.
    sms = quick_twilio
    TwilioSmsProvider().send(to="+14155552671", message=Message(subject="", text="Your code is 654321."), delivery_id=6)
    TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=5)
    monkeypatch.setattr(twilio_provider, "CLOCK_SKEW_SECONDS", -3600)  # as if that one were an hour old
    sms.script[:] = [twilio_standin.DROPPED]

    with pytest.raises(SendOutcomeUnknownError):
        TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)


def test_a_gateway_timeout_after_the_message_was_taken_returns_it(quick_twilio):
    sms = quick_twilio
    sms.script[:] = [twilio_standin.TAKEN_THEN_504]

    sid = TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)

    assert [m["sid"] for m in sms.to("+14155552671")] == [sid] and len(sms.requests) == 1


def test_a_gateway_timeout_with_nothing_taken_stays_transient(quick_twilio):
    sms = quick_twilio
    sms.script[:] = [504]

    with pytest.raises(SendTransientError, match="Twilio 504"):
        TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)


def test_twilio_5xx_and_429_are_transient_and_4xx_permanent_without_asking(quick_twilio):
    sms = quick_twilio
    sms.script[:] = [503, 429, 400]
    for expected in (SendTransientError, SendTransientError, SendPermanentError):
        with pytest.raises(expected):
            TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)
    assert sms.list_requests == [] and sms.accepted == []


def test_a_connection_never_made_is_transient_without_asking(twilio_settings, settings):
    sms = twilio_settings
    settings.TWILIO_API_BASE_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    with pytest.raises(SendTransientError, match="Twilio connection: ConnectionError"):
        TwilioSmsProvider().send(to="+14155552671", message=MESSAGE, delivery_id=7)

    assert sms.list_requests == []


def test_the_providers_declared_timeouts_cover_their_whole_wait(settings):
    settings.EMAIL_FINAL_REPLY_TIMEOUT_SECONDS = 20.0
    assert SmtpEmailProvider.timeout_seconds == smtp_provider.COMMANDS_SECONDS + 20.0
    checks = len(twilio_provider.CHECK_PAUSES_SECONDS) * (
        twilio_provider.CHECK_CONNECT_TIMEOUT_SECONDS + twilio_provider.CHECK_TIMEOUT_SECONDS)
    assert TwilioSmsProvider.timeout_seconds == (twilio_provider.CONNECT_TIMEOUT_SECONDS
                                                 + twilio_provider.TIMEOUT_SECONDS
                                                 + sum(twilio_provider.CHECK_PAUSES_SECONDS) + checks)


def test_a_refusal_that_comes_late_after_the_end_of_data_is_still_a_refusal(own_smtp_server, settings, monkeypatch):
    # The final reply may come after the commands' budget is spent; smtplib then sends RSET, which must not turn
    # the server's answer into a connection error.
    monkeypatch.setattr(smtp_provider, "COMMANDS_SECONDS", 1.0)
    settings.EMAIL_FINAL_REPLY_TIMEOUT_SECONDS = 5.0
    own_smtp_server.inbox.refuse_next = 1
    own_smtp_server.inbox.hold_next_refusal_seconds = 2.0

    with pytest.raises(SendTransientError, match="SMTP 451"):
        SmtpEmailProvider().send(to="refused-late@example.com", message=MESSAGE, delivery_id=7)


@pytest.fixture
def relay_without_smtputf8(settings):
    with _relay(settings, smtputf8=False) as server:
        yield server


@pytest.mark.parametrize("to", ["jörg@xn--strae-oqa.de", "üser@example.com", "用户@example.com",
                                f"{'ü' * 30}@{'a' * 40}.example.com"])  # the last longer than a header line
def test_a_non_ascii_local_part_is_mailed_as_itself_over_smtputf8(own_smtp_server, settings, to):
    # RFC 6531/6532: the address goes as it is in RCPT TO and the To header. Django's classes alone wrote an
    # encoded word there (`=?utf-8?b?w7xzZXI=?=@example.com`), a mailbox that is not the account's.
    from otp.messages import email_message_render

    settings.DEFAULT_FROM_EMAIL = "Connexion sécurisée <no-reply@bücher.example>"
    SmtpEmailProvider().send(to=to, message=email_message_render(code="482913"), delivery_id=3)
    # Another message on the same session, to an ASCII address, is sent as before.
    SmtpEmailProvider().send(to="plain@example.com", message=email_message_render(code="907310"), delivery_id=4)

    first, second = own_smtp_server.inbox.messages
    assert own_smtp_server.inbox.rcpt_commands[0] == f"TO:<{to}>"
    assert "SMTPUTF8" in first["X-Envelope-Mail-Options"].split()
    assert first["X-Envelope-From"] == "no-reply@xn--bcher-kva.example"
    assert f"\r\nTo: {to}\r\n".encode() in own_smtp_server.inbox.raw[0]
    # As a mail client reads it: an SMTPUTF8 message's headers are UTF-8 (RFC 6532 section 3.2).
    read = email.message_from_string(own_smtp_server.inbox.raw[0].decode("utf-8"), policy=email.policy.default)
    assert read["To"].addresses[0].addr_spec == to
    assert code_from_email(read) == "482913"
    assert first["Message-ID"] == smtp_provider._message_id(delivery_id=3, domain="xn--bcher-kva.example")
    assert second["X-Envelope-To"] == "plain@example.com" and "SMTPUTF8" not in second["X-Envelope-Mail-Options"]
    assert own_smtp_server.inbox.sessions == 1


@pytest.mark.parametrize("helo_only", [False, True])
def test_a_non_ascii_local_part_to_a_relay_without_smtputf8_is_a_permanent_error(relay_without_smtputf8, helo_only):
    # RFC 6531 section 3.2: such an address cannot be downgraded, so no try will ever succeed; nothing is sent.
    # A relay that answers HELO only: smtplib dropped the SMTPUTF8 option and failed encoding the RCPT
    # (UnicodeEncodeError, past the provider's error mapping).
    inbox = relay_without_smtputf8.inbox
    inbox.refuse_ehlo = helo_only
    with pytest.raises(SendPermanentError, match="does not offer SMTPUTF8"):
        SmtpEmailProvider().send(to="jörg@xn--strae-oqa.de", message=MESSAGE, delivery_id=1)

    assert inbox.rcpt_commands == [] and inbox.data_attempts == []
    SmtpEmailProvider().send(to="user@example.com", message=MESSAGE, delivery_id=2)  # the next one goes
    assert [m["X-Envelope-To"] for m in inbox.messages] == ["user@example.com"]
    assert inbox.sessions == (0 if helo_only else 1)  # on the same session: nothing had been sent on it


def test_a_relay_without_auth_or_starttls_stays_a_transient_error(own_smtp_server, settings):
    # smtplib raises the same SMTPNotSupportedError for a missing AUTH or STARTTLS as for a missing SMTPUTF8: a
    # relay that drops them for a while (or a wrong EMAIL_USE_TLS) must not fail every delivery for good.
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "user", "password"
    with pytest.raises(SendTransientError, match="AUTH"):
        SmtpEmailProvider().send(to="user@example.com", message=MESSAGE, delivery_id=1)
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "", ""
    settings.EMAIL_USE_TLS = True
    with pytest.raises(SendTransientError, match="STARTTLS"):
        SmtpEmailProvider().send(to="user@example.com", message=MESSAGE, delivery_id=1)


def test_a_long_display_name_stays_one_mailbox_in_a_smtputf8_message(own_smtp_server, settings):
    # The SMTPUTF8 policy refolded a long From line, decoding its encoded word to raw UTF-8 without its quotes:
    # the comma split it into two mailboxes. Django's folding is kept.
    name = "Société, Inc. — service de connexion sécurisée de démo"
    settings.DEFAULT_FROM_EMAIL = f'"{name}" <no-reply@example.com>'
    settings.SERVICE_NAME = "Connexion sécurisée de démonstration pour les très longs sujets de courriel"
    SmtpEmailProvider().send(to="jörg@example.com", message=email_message_render(code="482913"), delivery_id=1)

    read = email.message_from_string(own_smtp_server.inbox.raw[0].decode("utf-8"), policy=email.policy.default)
    (sender,) = read["From"].addresses
    # (Python's parser puts a space where Django split the encoded words, in either kind of message.)
    assert sender.addr_spec == "no-reply@example.com" and sender.display_name.replace(" ", "") == name.replace(" ", "")
    assert read["Subject"] == f"Your {settings.SERVICE_NAME} sign-in code"
    assert "BODY=8BITMIME" in own_smtp_server.inbox.messages[0]["X-Envelope-Mail-Options"].split()


def test_a_non_ascii_local_part_on_the_console_and_in_memory_backends(settings, capsys):
    # The quick run prints the email (Django's console backend); tests keep it in memory. A long non-ASCII local
    # part made Django raise ValueError, a short one showed an encoded word in To.
    from django.core import mail

    to = f"{'ü' * 30}@example.com"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    mail.outbox = []
    SmtpEmailProvider().send(to=to, message=email_message_render(code="482913"), delivery_id=1)
    assert mail.outbox[0].message()["To"] == to and mail.outbox[0].to == [to]
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    SmtpEmailProvider().send(to=to, message=email_message_render(code="482913"), delivery_id=2)
    assert f"\nTo: {to}\n" in capsys.readouterr().out
