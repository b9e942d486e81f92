"""Development only: codes printed on the worker's console instead of sent."""
import sys
import uuid

from otp.messages import Message
from otp.providers.smtp import SmtpEmailProvider


class ConsoleEmailProvider(SmtpEmailProvider):
    """The whole email, code included, written to the console by Django's console mail backend."""

    name = "console"
    timeout_seconds = 0.0


class ConsoleSmsProvider:
    """The SMS, code included, written to the worker's standard output."""

    name = "console"
    channel = "sms"
    timeout_seconds = 0.0

    def send(self, *, to: str, message: Message, delivery_id: int) -> str:
        sys.stdout.write(f"--- SMS to {to} ---\n{message.text}\n---\n")
        sys.stdout.flush()
        return f"console-{uuid.uuid4().hex}"
