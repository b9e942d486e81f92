"""The interface every provider implements, and the two errors a send may raise."""
from dataclasses import dataclass
from typing import Mapping, Protocol

from otp.messages import Message


class SendTransientError(Exception):
    """The send failed, and trying again later may work (a connection error, a 4xx SMTP reply, a 429 or 5xx)."""


class SendPermanentError(Exception):
    """The send failed, and trying again will not help (an invalid number, a refused recipient)."""


@dataclass(frozen=True)
class StatusReport:
    """A provider's status callback, read: which message, the provider's own status word, and what it means for
    the delivery (`final` is "sent", "failed" or "" when the status decides nothing yet)."""

    provider_id: str
    provider_status: str
    final: str = ""
    error_code: str = ""


class Provider(Protocol):
    """One way of delivering a message on one channel.

    Attributes:
        name: the registry name the settings choose it by (`EMAIL_BACKEND` or `SMS_BACKEND`).
        channel: "email" or "sms".
        timeout_seconds: the longest a send may wait on the provider, in seconds. The delivery lease is derived
            from it (registry.delivery_lease_seconds), so that no second worker sends while one still waits.
    """

    name: str
    channel: str
    timeout_seconds: float

    def send(self, *, to: str, message: Message) -> str:
        """Deliver `message` to `to` (an email address or an E.164 number); return the provider's message id.

        Raises SendTransientError when trying again later may work, SendPermanentError when it will not.
        """


class StatusCallbackProvider(Provider, Protocol):
    """A provider that reports delivery status back over HTTP (an optional part of the interface).

    `signature_header` names the request header that carries the callback's signature.
    """

    signature_header: str

    def status_callback_verify(self, *, url: str, params: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        """True when the callback to `url` with form `params` carries the provider's valid signature."""

    def status_callback_parse(self, *, params: Mapping[str, str]) -> StatusReport:
        """Read a verified callback's form parameters."""
