"""The interface every provider implements, the errors a send may raise, and a status callback's."""
from dataclasses import dataclass
from typing import Mapping, Protocol

from otp.messages import Message


class SendTransientError(Exception):
    """The send failed, and trying again later may work (a connection error, a 4xx SMTP reply, a 429 or 5xx)."""


class SendPermanentError(Exception):
    """The send failed, and trying again will not help (an invalid number, a refused recipient)."""


class SendRecipientRefusedError(SendPermanentError):
    """The recipient itself was refused permanently (an SMTP 5xx reply to RCPT: no such mailbox, say): mailing it
    again would only add bounces, so it is suppressed for a while (otp.throttles.recipient_suppress)."""


class SendOutcomeUnknownError(Exception):
    """The provider may have taken the message, and asking it did not tell: a read timeout or a connection
    dropped after the request was written (for SMTP, after the end of DATA), and the provider's own check
    inconclusive. The delivery is recorded `unknown` and never sent again (contract: Delivery)."""


class StatusCallbackMalformed(ValueError):
    """A signed status callback that lacks a field the provider's documentation says every callback carries."""


@dataclass(frozen=True)
class StatusReport:
    """A provider's status callback, read.

    Attributes:
        provider_id: the provider's id of the message.
        provider_status: the provider's own status word.
        final: what it means for the delivery: "failed" for a carrier failure (a delivery `sent`, or not yet
            recorded, becomes `failed`), "sent" when the message went out, "" when the word decides nothing yet.
        error_code: the provider's error code, if any.
        delivery_id: the delivery the callback URL names (the provider signed that URL), or None for a URL
            without one (callbacks of messages sent before the URL named its delivery).
        replaces: the stored provider statuses this one may overwrite: those before it in the provider's own
            order ("" included). A status not in it, the same one again or a later one, changes nothing, so
            callbacks that arrive late, out of order or twice never move a delivery backwards.
    """

    provider_id: str
    provider_status: str
    final: str = ""
    error_code: str = ""
    delivery_id: int | None = None
    replaces: frozenset[str] = frozenset()


class Provider(Protocol):
    """One way of delivering a message on one channel.

    Attributes:
        name: the registry name the settings choose it by (`EMAIL_BACKEND` or `SMS_BACKEND`).
        channel: "email" or "sms".
        timeout_seconds: the longest one `send` may take, in seconds: every wait on the provider, the request
            and any check of an unknown outcome together. The delivery lease is derived from it
            (registry.delivery_lease_seconds), so that no second worker sends while one still waits.
        timeout_setting (optional): the setting that lengthens `timeout_seconds`, if one does: start-up names
            it when the provider's wait does not fit the broker's visibility timeout (otp.apps).
    """

    name: str
    channel: str
    timeout_seconds: float

    def send(self, *, to: str, message: Message, delivery_id: int) -> str:
        """Deliver `message` to `to` (an email address or an E.164 number); return the provider's message id.

        `delivery_id` names the delivery this message belongs to: the same on every try of one delivery, so a
        provider can tie its callbacks, or a duplicate a mailbox should fold, to it.
        Raises SendTransientError when the provider never got the message and trying again later may work,
        SendPermanentError when trying again will not help, SendOutcomeUnknownError when the provider may have
        taken it and could not say.
        """


class StatusCallbackProvider(Provider, Protocol):
    """A provider that reports delivery status back over HTTP (an optional part of the interface).

    `signature_header` names the request header that carries the callback's signature. `send` gives the
    provider a callback URL that names the delivery, and `status_callback_parse` reads it back, so a callback
    finds its delivery even before the worker recorded the provider's id, or when it never learnt it.
    """

    signature_header: str

    def status_callback_verify(self, *, url: str, params: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        """True when the callback to `url` (the full public URL, query included) with form `params` carries the
        provider's valid signature."""

    def status_callback_parse(self, *, url: str, params: Mapping[str, str]) -> StatusReport:
        """Read a verified callback: its URL (which names the delivery) and its form parameters. Raises
        StatusCallbackMalformed when a field every callback carries is missing or empty."""
