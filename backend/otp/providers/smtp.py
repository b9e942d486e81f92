"""Email through Django's mail backend (SMTP in production): a plain-text and an HTML part, kept connections
(at most EMAIL_MAX_CONNECTIONS a process), every wait bounded, a message the server may have accepted told
apart from a failure, and each message's bytes laid out by Django's email classes once a process."""
import functools
import hashlib
import hmac
import logging
import re
import secrets
import smtplib
import string
import threading
import time
from email import policy as email_policy
from email.utils import formatdate

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend as DjangoSmtpBackend
from django.core.mail.message import sanitize_address
from urllib3.util.wait import wait_for_read

from otp.messages import Message
from otp.providers.base import SendOutcomeUnknownError, SendPermanentError, SendRecipientRefusedError, SendTransientError
from otp.providers.mailbox import Sender, sender_parse

logger = logging.getLogger(__name__)

DJANGO_SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
# Everything before the end of DATA shares this budget, in seconds: checking a kept connection, connecting,
# EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA and the message itself. A server that has not taken the whole message
# by then has not accepted it, so running out is a transient failure. The final reply has its own wait,
# EMAIL_FINAL_REPLY_TIMEOUT_SECONDS.
COMMANDS_SECONDS = 10.0


def _letters(n: int) -> str:
    # One random byte a letter: the slight bias of `% 26` does not matter for a boundary or a Message-ID.
    return "".join(string.ascii_lowercase[byte % 26] for byte in secrets.token_bytes(n))


# An SMTPUTF8 message's headers are UTF-8 (RFC 6532 section 3.2). Lines are left as Django folded them: refolded,
# a long encoded display name came back as raw UTF-8 with its quotes gone, and a comma in it split From in two.
_SMTPUTF8_POLICY = email_policy.SMTPUTF8.clone(refold_source="none")


def _needs_smtputf8(address: str) -> bool:
    """True for an address whose local part is not ASCII (allowed by EMAIL_ALLOW_SMTPUTF8, RFC 6531)."""
    return not address.partition("@")[0].isascii()


class _CodeEmail(EmailMultiAlternatives):
    """An email whose headers hold no digit runs (MIME boundary, Message-ID): the only number a reader
    or a mail client's code detector should find is the code. `boundary`: the MIME boundary (letters), random
    when not given.

    A recipient with a non-ASCII local part is written as itself in To, and the message is serialised as UTF-8
    (RFC 6532 section 3.2): Django's address sanitising writes an RFC 2047 encoded word there
    (`=?utf-8?b?asO2cmc=?=@example.com`), which is no address (a relay mailed that literal mailbox), and refuses
    (ValueError) a local part long enough for that word to fold."""

    def __init__(self, *args, boundary: str | None = None, **kwargs):
        self.boundary = boundary
        super().__init__(*args, **kwargs)

    def message(self, *args, **kwargs):
        if any(_needs_smtputf8(address) for address in self.to):
            to, self.to = self.to, ["recipient@invalid"]  # a stand-in Django can sanitise, replaced below
            try:
                msg = super().message(*args, **kwargs)
            finally:
                self.to = to
            msg.replace_header("To", ", ".join(to))
            msg.policy = _SMTPUTF8_POLICY  # as_bytes (Django's, and its console backend's) writes UTF-8 headers
        else:
            msg = super().message(*args, **kwargs)
        if msg.is_multipart():
            msg.set_boundary(self.boundary or f"=_{_letters(24)}")
        return msg


def _code_email(*, to: str, message: Message, sender: Sender, message_id: str, date: str | None = None,
                boundary: str | None = None, connection: BaseEmailBackend | None = None) -> _CodeEmail:
    """The email of `message` to `to`, built by Django's classes; `date`: the Date header (RFC 5322 section 3.3),
    Django's own (now) when None."""
    # Date first: where Django writes its own Date (after To, before the extra headers), so a message given one
    # has its headers in the same order as one that is not.
    headers = {"Date": date} if date is not None else {}
    headers.update({"Message-ID": message_id, "Auto-Submitted": "auto-generated"})
    email = _CodeEmail(
        subject=message.subject,
        body=message.text,
        from_email=sender.header,
        to=[to],
        # RFC 3834 section 5: a message a program sends on its own, so auto-responders (vacation replies,
        # ticket systems) must not answer it, and a bombing run cannot bounce replies off role addresses.
        headers=headers,
        connection=connection,
        boundary=boundary,
    )
    if message.html:
        email.attach_alternative(message.html, "text/html")
    return email


def _message_id(*, delivery_id: int, domain: str) -> str:
    """The Message-ID of every email of one delivery (RFC 5322 section 3.6.4): the same on each try, so a
    mailbox can fold a duplicate that still gets through. Letters only, so no digit run stands beside the code,
    from a keyed hash of the delivery id, so it tells outsiders nothing about how many deliveries there are."""
    key = hashlib.sha256(b"otp-message-id:" + settings.SECRET_KEY.encode()).digest()
    digest = hmac.new(key, str(delivery_id).encode(), hashlib.sha256).digest()
    return f"<{''.join(string.ascii_lowercase[byte % 26] for byte in digest[:24])}@{domain}>"


class _BoundedSmtp:
    """smtplib's client, each wait bounded: the commands of a send share the backend's `deadline`
    (time.monotonic()), and the reply to the end of DATA gets EMAIL_FINAL_REPLY_TIMEOUT_SECONDS.

    RFC 5321 section 4.5.3.2.6 lets a server take 10 minutes for that reply; ours is bounded so the provider's
    whole wait stays inside the delivery lease and the broker's visibility timeout (otp.apps). From the end of
    DATA until that reply arrives `awaiting_final_reply` is True: an error then leaves the outcome unknown.
    """

    def __init__(self, *args, budget, **kwargs):
        self._budget = budget  # the backend, whose `deadline` the provider sets for each message
        self.awaiting_final_reply = False
        super().__init__(*args, **kwargs)

    def _time_left(self) -> float:
        deadline = getattr(self._budget, "deadline", None)
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            # smtplib's own "connection lost" error: its sendmail then still reports a refusal of the message
            # (SMTPDataError) when the RSET after it finds the budget spent.
            raise smtplib.SMTPServerDisconnected(f"the server took more than {COMMANDS_SECONDS:g} s")
        return left

    def _get_socket(self, host, port, timeout):
        return super()._get_socket(host, port, self._time_left())

    def send(self, s):
        if self.sock is not None:
            self.sock.settimeout(self._time_left())
        super().send(s)
        # smtplib sends commands as text and the message as bytes ending in CRLF "." CRLF (SMTP.data).
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.awaiting_final_reply = True

    def getreply(self):
        if self.sock is not None:
            self.sock.settimeout(settings.EMAIL_FINAL_REPLY_TIMEOUT_SECONDS if self.awaiting_final_reply
                                 else self._time_left())
        reply = super().getreply()
        self.awaiting_final_reply = False
        return reply


class _BoundedSmtpClient(_BoundedSmtp, smtplib.SMTP):
    pass


class _BoundedSmtpSslClient(_BoundedSmtp, smtplib.SMTP_SSL):
    pass


class BoundedSmtpBackend(DjangoSmtpBackend):
    """Django's SMTP backend on the bounded client; the provider sets `deadline` before each message."""

    deadline: float | None = None

    @property
    def connection_class(self):
        return functools.partial(_BoundedSmtpSslClient if self.use_ssl else _BoundedSmtpClient, budget=self)


class SmtpUtf8NotOffered(SendPermanentError):
    """The relay does not offer SMTPUTF8 (RFC 6531), which a non-ASCII local part needs: nothing was sent."""


def _smtp_code_error(code: int, text: str) -> Exception:
    return (SendTransientError if 400 <= code < 500 else SendPermanentError)(f"SMTP {code}: {text}")


class _SmtpConnections:
    """The SMTP sessions of this process: at most EMAIL_MAX_CONNECTIONS open at once, each kept open from one
    message to the next and lent to one sending thread at a time (the most recently used first, so the rest idle
    out).

    A relay caps a client's concurrent sessions (Postfix's default is 50) and a hosted one meters them, so the count
    is a setting rather than one per worker thread; with more threads than connections, a thread waits for one.
    Opening one (TCP, EHLO, STARTTLS, AUTH, QUIT) costs about as much as the rest of a delivery
    (docs/performance.md). Settings that name the server are part of each connection's key, so a changed setting
    gets a new connection.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._idle: list[tuple[tuple, BaseEmailBackend, float]] = []  # (key, connection, last used), oldest first
        self._open = 0  # idle and lent together
        self.most_open = 0  # the highest count seen, for tests and operators

    @staticmethod
    def _key() -> tuple:
        return (settings.EMAIL_BACKEND, settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_HOST_USER,
                settings.EMAIL_USE_TLS)

    def take(self, *, deadline: float) -> BaseEmailBackend:
        """A connection to lend (open, or opened by the first send), waiting until `deadline` (time.monotonic())
        for one to come back when EMAIL_MAX_CONNECTIONS are lent. Raises SendTransientError when none does: nothing
        was sent, and the task tries again later."""
        key, stale, found = self._key(), [], None
        with self._changed:
            while found is None:
                stale += [connection for k, connection, _ in self._idle if k != key]
                self._open -= len(self._idle) - len(kept := [entry for entry in self._idle if entry[0] == key])
                self._idle = kept
                if self._idle:
                    _, connection, last_used = self._idle.pop()
                    found = (connection, last_used)
                elif self._open < settings.EMAIL_MAX_CONNECTIONS:
                    self._open += 1
                    self.most_open = max(self.most_open, self._open)
                    found = (None, 0.0)
                elif (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
                else:
                    break
        for connection in stale:
            _email_connection_drop(connection)
        if found is None:
            raise SendTransientError(f"all {settings.EMAIL_MAX_CONNECTIONS} connections to the mail server are busy "
                                     f"(EMAIL_MAX_CONNECTIONS)")
        connection, last_used = found
        try:
            return self._ready(connection, key=key, last_used=last_used, deadline=deadline)
        except BaseException:
            with self._changed:  # the slot taken above is free again
                self._open -= 1
                self._changed.notify()
            raise

    @staticmethod
    def _ready(connection: BaseEmailBackend | None, *, key: tuple, last_used: float,
               deadline: float) -> BaseEmailBackend:
        if connection is None:
            # Django's SMTP backend is replaced by its bounded subclass; other backends (console, locmem) are used
            # as they are.
            backend = f"{__name__}.BoundedSmtpBackend" if settings.EMAIL_BACKEND == DJANGO_SMTP_BACKEND else None
            connection = get_connection(backend=backend, timeout=COMMANDS_SECONDS)
        connection.deadline = deadline
        smtp = getattr(connection, "connection", None)  # the SMTP backend's open socket; other backends have none
        if smtp is not None:
            # A kept connection is used only while quiet: a server that closes a session sends its 421 (RFC 5321
            # section 3.8) or its FIN, and either makes the socket readable. Looking costs no round trip, where a
            # NOOP cost one on the worker and on the relay for every message (docs/performance.md); a session that
            # died without a word is closed after EMAIL_CONNECTION_MAX_IDLE_SECONDS, as before.
            usable = (time.monotonic() - last_used < settings.EMAIL_CONNECTION_MAX_IDLE_SECONDS
                      and smtp.sock is not None and not wait_for_read(smtp.sock, timeout=0))
            if not usable:
                _email_connection_drop(connection)  # the same slot opens a new session on the next send
        connection.key = key
        return connection

    def give_back(self, connection: BaseEmailBackend, *, usable: bool) -> None:
        """Return a lent connection: kept for the next message when `usable`, else closed (its slot freed)."""
        if not usable:
            _email_connection_drop(connection)
        with self._changed:
            if usable:
                self._idle.append((connection.key, connection, time.monotonic()))
            else:
                self._open -= 1
            self._changed.notify()

    def close_idle(self) -> None:
        """Close every idle connection (tests, after the server they point at is gone)."""
        with self._changed:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self.most_open = self._open
        for _, connection, _ in idle:
            _email_connection_drop(connection)


_email_connections = _SmtpConnections()


def _email_connection_drop(connection: BaseEmailBackend) -> None:
    smtp = getattr(connection, "connection", None)
    try:
        connection.close()
    except OSError:  # smtplib's errors are OSErrors; QUIT on a dead connection may fail, and that is fine
        pass
    if smtp is not None:
        smtp.close()  # the socket goes even when QUIT failed (Django forgets the client either way)


# Addresses whose To header and envelope recipient are the address itself (Django's sanitize_address leaves
# them as they are): for them a message can be filled into its layout. Any other address gets its message built
# whole by Django's classes. A To line holds no whitespace or comma at which the email generator (compat32) could
# fold it, and at most 70 characters keep "To: " and the address within the 78 that RFC 5322 section 2.1.1 asks
# a line to keep to, so no line is near a fold either way.
_ADDRESS_LAYOUT = re.compile(r"[A-Za-z0-9._+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
_ADDRESS_LAYOUT_MAX = 70
# Codes longer than this are built whole: OTP_LENGTH allows at most 10 digits; the bound only sizes the marker.
_CODE_LAYOUT_MAX = 32
# A process keeps this many layouts at most: one a sender and template in practice. Past it, a message of a new
# kind is built whole, so nothing grows without bound.
_LAYOUTS_MAX = 16


class _CodeEmailLayouts:
    """The bytes of each kind of code email, built by Django's email classes once a process, with markers where
    the four values that change from message to message go: the code, the recipient, the Message-ID and the
    Date (docs/decisions.md, "A code email's bytes are laid out once a process").

    A kind is the message's subject as it is, its texts with the code taken out, its sender and the charset. Each
    marker is random letters, as long as its value where that length could move the bytes around it (the code,
    the Message-ID). The first message of a kind is also built whole, and the layout is kept only if filling it
    gives exactly those bytes; otherwise (a charset whose encoding splits or changes the code, say) every message
    of that kind is built whole. Threads share it: two that meet a new kind at once may both build its layout.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layouts: dict[tuple, bytes | None] = {}  # kind -> layout, or None: build this kind whole
        self._code_letters = _letters(_CODE_LAYOUT_MAX).upper()  # a code's marker is its first len(code)
        self._to_marker = f"{_letters(24)}@{_letters(16)}.invalid"
        self._id_letters = _letters(24)  # as many as _message_id writes
        self._date_marker = _letters(31)  # formatdate's length
        self._boundary = f"=_{_letters(24)}"

    def message_bytes(self, *, to: str, message: Message, sender: Sender, message_id: str, date: str) -> bytes:
        """The message as Django's classes build it (RFC 5322, CRLF line ends) for `to`, with `message_id`
        (`<24 letters@domain>`) and `date` (RFC 5322 section 3.3) as its Message-ID and Date: filled into its
        kind's layout where it can be, else built whole."""
        code, at = message.code, message_id.find("@")
        code_marker = self._code_letters[:len(code)]
        if not (len(to) <= _ADDRESS_LAYOUT_MAX and _ADDRESS_LAYOUT.fullmatch(to)
                and 0 < len(code) <= _CODE_LAYOUT_MAX and code.isascii() and code.isalnum()
                and at == len(self._id_letters) + 1 and message_id.startswith("<")
                and code_marker not in message.text and code_marker not in message.html):
            return self._built(to=to, message=message, sender=sender, message_id=message_id, date=date)
        marked = Message(subject=message.subject, text=message.text.replace(code, code_marker),
                         html=message.html.replace(code, code_marker), code=code_marker)
        id_marker = f"<{self._id_letters}{message_id[at:]}"
        # The recipient goes in last, so no marker is looked for inside the one value a requester chooses.
        values = {code_marker: code, id_marker: message_id, self._date_marker: date, self._to_marker: to}
        kind = (marked, sender, settings.DEFAULT_CHARSET)
        if kind not in self._layouts and len(self._layouts) < _LAYOUTS_MAX:
            whole = self._built(to=to, message=message, sender=sender, message_id=message_id, date=date,
                                boundary=self._boundary)
            self._layout_add(kind=kind, id_marker=id_marker, whole=whole, values=values)
        layout = self._layouts.get(kind)
        if layout is None:
            return self._built(to=to, message=message, sender=sender, message_id=message_id, date=date)
        return self._filled(layout, values)

    @staticmethod
    def _filled(layout: bytes, values: dict[str, str]) -> bytes:
        """`layout` with each marker (a key of `values`) replaced by its value, in the order of `values`."""
        for marker, value in values.items():
            layout = layout.replace(marker.encode(), value.encode())
        return layout

    @staticmethod
    def _built(*, to: str, message: Message, sender: Sender, message_id: str, date: str,
               boundary: str | None = None) -> bytes:
        """The message built whole by Django's classes (`_code_email`), as bytes with CRLF line ends, as Django's
        SMTP backend sends it; `boundary`: the MIME boundary, random when None."""
        email = _code_email(to=to, message=message, sender=sender, message_id=message_id, date=date,
                            boundary=boundary)
        return email.message().as_bytes(linesep="\r\n")

    def _layout_add(self, *, kind: tuple, id_marker: str, whole: bytes, values: dict[str, str]) -> None:
        """Build the layout of `kind` and keep it if filling it with `values` gives `whole` (the same message
        built whole with the layout's boundary); else keep None, so the kind is built whole from then on. Past
        _LAYOUTS_MAX kinds nothing is kept."""
        marked, sender, _ = kind
        layout = self._built(to=self._to_marker, message=marked, sender=sender, message_id=id_marker,
                             date=self._date_marker, boundary=self._boundary)
        if self._filled(layout, values) != whole:
            layout = None
        with self._lock:
            if kind in self._layouts or len(self._layouts) >= _LAYOUTS_MAX:
                return
            self._layouts[kind] = layout
        if layout is None:
            logger.warning("a code email's bytes change with more than its code, recipient, Message-ID and Date "
                           "(charset %s): each is built whole (slower, and correct)", settings.DEFAULT_CHARSET)


_email_layouts = _CodeEmailLayouts()


@functools.lru_cache(maxsize=8)
def _envelope_sender(header: str, encoding: str) -> str:
    """The envelope sender Django's SMTP backend gives for the From value `header` (its `sanitize_address`),
    once a value. Raises ValueError for an address Django refuses."""
    return sanitize_address(header, encoding)


def _email_send(connection: BaseEmailBackend, *, to: str, message: Message, delivery_id: int) -> str:
    # Read with the email library, not split on "@": `OTP Login <no-reply@example.com>` made the Message-ID
    # `<...@example.com>>`, and Django's own IDNA 2003 conversion mailed `straße.de` as `strasse.de`.
    sender = sender_parse(settings.DEFAULT_FROM_EMAIL)
    message_id = _message_id(delivery_id=delivery_id, domain=sender.domain)
    connection.open()  # Django leaves open a connection it did not open itself inside send()
    if not isinstance(connection, BoundedSmtpBackend):  # Django's console or in-memory backend, or another one
        _code_email(to=to, message=message, sender=sender, message_id=message_id,
                    connection=connection).send(fail_silently=False)
        return message_id
    # What Django's SMTP backend does in send() (django/core/mail/backends/smtp.py, EmailBackend._send, Django
    # 5.2), with the message's bytes from its layout; the connection is lent to this thread alone, so Django's
    # lock around it has nothing to guard.
    encoding = settings.DEFAULT_CHARSET
    envelope_sender = _envelope_sender(sender.header, encoding)
    if _needs_smtputf8(to):
        # Only with EMAIL_ALLOW_SMTPUTF8 on (otp.addresses): the address goes as it is, in the envelope and the To
        # header (_CodeEmail), over SMTPUTF8 (RFC 6531 section 3.4). A relay that does not offer it cannot take
        # the message on any try (RFC 6531 section 3.2: no downgrade), and nothing is sent. Asked here rather than
        # left to smtplib, whose SMTPNotSupportedError also means a missing STARTTLS or AUTH (a transient error),
        # and which, with a relay that answers HELO only, drops the option and fails encoding the RCPT.
        smtp = connection.connection
        smtp.ehlo_or_helo_if_needed()
        if not (smtp.does_esmtp and smtp.has_extn("smtputf8")):
            raise SmtpUtf8NotOffered("SMTP: the mail server does not offer SMTPUTF8 (RFC 6531), which this "
                                     "address needs")
        payload = _code_email(to=to, message=message, sender=sender, message_id=message_id).message().as_bytes(
            linesep="\r\n")
        # The headers are 8-bit now; RFC 6531 section 3.1 has every SMTPUTF8 server take 8BITMIME (RFC 6152).
        options = ["SMTPUTF8", "BODY=8BITMIME"] if smtp.has_extn("8bitmime") else ["SMTPUTF8"]
        smtp.sendmail(envelope_sender, [to], payload, mail_options=options)
        return message_id
    payload = _email_layouts.message_bytes(to=to, message=message, sender=sender, message_id=message_id,
                                           date=formatdate(localtime=settings.EMAIL_USE_LOCALTIME))
    recipient = to if _ADDRESS_LAYOUT.fullmatch(to) else sanitize_address(to, encoding)
    connection.connection.sendmail(envelope_sender, [recipient], payload)
    return message_id


def _email_error(exc: OSError) -> Exception:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        if 500 <= code < 600:  # the recipient itself is refused (RFC 5321 section 4.2.1: 5yz is permanent)
            return SendRecipientRefusedError(f"SMTP {code} at RCPT: {text}")
        return _smtp_code_error(code, text)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _smtp_code_error(exc.smtp_code, str(exc.smtp_error))
    # Connection refused or dropped, timeout (smtplib's other errors are OSErrors too).
    return SendTransientError(f"SMTP connection: {exc.__class__.__name__}: {exc}")


class _WholeWait:
    """`timeout_seconds` read when asked, since a setting is part of it: COMMANDS_SECONDS plus
    EMAIL_FINAL_REPLY_TIMEOUT_SECONDS."""

    def __get__(self, instance, owner) -> float:
        return COMMANDS_SECONDS + settings.EMAIL_FINAL_REPLY_TIMEOUT_SECONDS


class SmtpEmailProvider:
    """Email through the Django mail backend that `EMAIL_BACKEND` names (SMTP, or Django's in-memory one in tests).

    The provider id is the message's Message-ID, one per delivery. A 4xx reply or a connection error before the
    end of DATA is transient, a 5xx permanent; no final reply to the end of DATA in time (a timeout, or the
    connection dropped) leaves the outcome unknown.
    """

    name = "smtp"
    channel = "email"
    timeout_seconds = _WholeWait()
    timeout_setting = "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS"

    def send(self, *, to: str, message: Message, delivery_id: int) -> str:
        connection = _email_connections.take(deadline=time.monotonic() + COMMANDS_SECONDS)
        try:
            message_id = _email_send(connection, to=to, message=message, delivery_id=delivery_id)
        except SmtpUtf8NotOffered:
            _email_connections.give_back(connection, usable=True)  # nothing was sent: the session is as it was
            raise
        except OSError as exc:
            unknown = getattr(getattr(connection, "connection", None), "awaiting_final_reply", False)
            # Never reuse a connection left in an unknown state; the task retries the message later.
            _email_connections.give_back(connection, usable=False)
            if unknown:
                raise SendOutcomeUnknownError(
                    f"SMTP: no final reply to the end of DATA within {settings.EMAIL_FINAL_REPLY_TIMEOUT_SECONDS:g} s "
                    f"({exc.__class__.__name__}: {exc})") from exc
            raise _email_error(exc) from exc
        except BaseException:
            _email_connections.give_back(connection, usable=False)
            raise
        _email_connections.give_back(connection, usable=True)
        return message_id
