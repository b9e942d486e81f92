"""A real SMTP server (aiosmtpd) in the test process, holding what it receives like an inbox."""
import asyncio
import email
import re
import threading
from email import policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from tests.support.waiting import free_port, wait_for


class Inbox:
    """aiosmtpd handler: keeps every accepted message; can refuse the next N with a 4xx reply."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[email.message.EmailMessage] = []
        self.raw: list[bytes] = []  # each accepted message as the client sent it, index for index with `messages`
        self.refuse_next = 0
        self.refused = 0
        self.hold_next_rcpt_seconds = 0.0  # a slow server: the next RCPT is answered only after this long
        # A server that takes the next message, then answers the end of DATA only after this long (RFC 5321
        # section 4.5.3.2.6 allows 10 minutes), or never: the connection dropped once the message is taken.
        self.hold_next_final_reply_seconds = 0.0
        self.drop_after_next_data = False
        self.hold_next_refusal_seconds = 0.0  # a refusal (refuse_next) that comes this late
        self.data_attempts: list[bytes] = []  # every message the client sent, accepted or refused
        self.rcpts_seen: list[str] = []
        # Each RCPT command's argument as the client wrote it. aiosmtpd's address parser decodes an RFC 2047
        # encoded word (`=?utf-8?b?asO2cmc=?=@example.com` reads as `jörg@example.com`), which a real relay never
        # does, so `rcpts_seen` cannot tell the two apart.
        self.rcpt_commands: list[str] = []
        self.refuse_ehlo = False  # an old relay that speaks HELO only (RFC 821): no extensions at all
        self.sessions = 0  # EHLOs seen: one per connection a client opened
        self.noops = 0  # NOOP commands seen, on every session
        self.refuse_rcpt: set[str] = set()  # recipients refused for good at RCPT: 550, as for a mailbox that is gone
        # A slow relay: every accepted message's final reply comes this late. Meanwhile its session is busy, so
        # `most_busy_sessions` is the most sessions a client had in use at once.
        self.final_reply_delay_seconds = 0.0
        self.busy_sessions = 0
        self.most_busy_sessions = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_NOOP(self, server, session, envelope, arg):
        with self.lock:
            self.noops += 1
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpts_seen.append(address)
            hold, self.hold_next_rcpt_seconds = self.hold_next_rcpt_seconds, 0.0
            refused = address in self.refuse_rcpt
        if hold:
            await asyncio.sleep(hold)
        if refused:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.data_attempts.append(envelope.content)
            refuse = self.refuse_next > 0
            if refuse:
                self.refuse_next -= 1
                self.refused += 1
                hold, self.hold_next_refusal_seconds = self.hold_next_refusal_seconds, 0.0
        if refuse:
            if hold:
                await asyncio.sleep(hold)
            return "451 4.3.0 Try again later"
        with self.lock:
            message = email.message_from_bytes(envelope.content, policy=policy.default)
            message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
            message["X-Envelope-From"] = envelope.mail_from
            message["X-Envelope-Mail-Options"] = " ".join(envelope.mail_options)
            self.messages.append(message)
            self.raw.append(envelope.content)
            hold, self.hold_next_final_reply_seconds = self.hold_next_final_reply_seconds, 0.0
            drop, self.drop_after_next_data = self.drop_after_next_data, False
        if drop:
            server.transport.close()  # taken, and no reply ever comes
        if hold:
            await asyncio.sleep(hold)
        if self.final_reply_delay_seconds:
            with self.lock:
                self.busy_sessions += 1
                self.most_busy_sessions = max(self.most_busy_sessions, self.busy_sessions)
            await asyncio.sleep(self.final_reply_delay_seconds)
            with self.lock:
                self.busy_sessions -= 1
        return "250 OK"

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.raw.clear()
            self.refuse_next = 0
            self.refused = 0
            self.hold_next_rcpt_seconds = 0.0
            self.hold_next_final_reply_seconds = 0.0
            self.drop_after_next_data = False
            self.hold_next_refusal_seconds = 0.0
            self.data_attempts.clear()
            self.rcpts_seen.clear()
            self.rcpt_commands.clear()
            self.refuse_ehlo = False
            self.sessions = 0
            self.noops = 0
            self.refuse_rcpt.clear()
            self.final_reply_delay_seconds = 0.0
            self.busy_sessions = self.most_busy_sessions = 0

    def to(self, address: str) -> list:
        with self.lock:
            return [m for m in self.messages if address in m["X-Envelope-To"]]

    def raw_to(self, address: str) -> list[bytes]:
        """The bytes of each message to `address`, as the client sent them (to re-parse under another policy)."""
        with self.lock:
            return [raw for m, raw in zip(self.messages, self.raw) if address in m["X-Envelope-To"]]

    def wait_for_message(self, address: str, *, count: int = 1, timeout: float = 20.0):
        return wait_for(lambda: (self.to(address) if len(self.to(address)) >= count else None),
                        timeout=timeout, message=f"{count} email(s) to {address}")[count - 1]


def code_from_email(message, length: int = 6) -> str:
    """Read the code as a person would: the one run of digits in the plain-text body."""
    text = message.get_body(preferencelist=("plain",)).get_content()
    runs = re.findall(rf"\b\d{{{length}}}\b", text)
    assert len(set(runs)) == 1, f"expected one code in the email, found {runs}"
    return runs[0]


class _RecordingSmtp(SMTP):
    async def smtp_EHLO(self, hostname):
        if self.event_handler.refuse_ehlo:
            await self.push("502 5.5.1 Command not implemented")
            return
        return await super().smtp_EHLO(hostname)

    async def smtp_RCPT(self, arg):
        with self.event_handler.lock:
            self.event_handler.rcpt_commands.append(arg)
        return await super().smtp_RCPT(arg)


class _Controller(Controller):
    def factory(self):
        return _RecordingSmtp(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    """`smtputf8`: the server offers SMTPUTF8 (RFC 6531), as aiosmtpd's does unless told not to."""

    def __init__(self, host: str = "127.0.0.1", *, smtputf8: bool = True) -> None:
        self.inbox = Inbox()
        self.port = free_port()
        self.smtputf8 = smtputf8
        self.controller = _Controller(self.inbox, hostname=host, port=self.port, enable_SMTPUTF8=smtputf8)

    def start(self) -> "SmtpServer":
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller.loop.is_running():
            self.controller.stop()

    def restart(self) -> None:
        """Stop (closing every client's connection) and listen again on the same port."""
        self.controller.stop()
        self.controller = _Controller(self.inbox, hostname=self.controller.hostname, port=self.port,
                                      enable_SMTPUTF8=self.smtputf8)
        self.controller.start()
