"""SMS through Twilio's REST API with the `twilio` client, and Twilio's signed status callbacks."""
import os
import threading
from functools import lru_cache
from typing import Mapping
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from otp.messages import Message
from otp.providers.base import SendPermanentError, SendTransientError, StatusReport

TIMEOUT_SECONDS = 10.0
STATUS_CALLBACK_PATH = "/webhooks/twilio/status/"
# The status-callback URL's query parameter that names the delivery. Twilio signs the whole URL, query
# included, so a callback cannot be pointed at another delivery without the auth token.
DELIVERY_PARAMETER = "delivery"
SIGNATURE_HEADER = "X-Twilio-Signature"

# Twilio's message statuses in the order a message moves through them (Twilio's "Message status values"; the
# contract: queued < sending < sent < delivered | undelivered | failed | read, the last four final). `accepted`
# and `scheduled` come before `queued` for messages sent through a Messaging Service; `canceled` ends a
# scheduled one. Equal ranks never replace each other, so a final status is never changed.
_STATUS_RANK = {"accepted": 1, "scheduled": 2, "queued": 3, "sending": 4, "sent": 5,
                "delivered": 6, "undelivered": 6, "failed": 6, "read": 6, "canceled": 6}
# The carrier's failures: the only callbacks that move a delivery to `failed` (contract: Delivery).
_CARRIER_FAILURES = {"undelivered", "failed"}
_WENT_OUT = {"sent", "delivered", "read"}


def status_callback_url(delivery_id: int) -> str:
    """The public URL Twilio posts a delivery's status changes to: the webhook's path, naming the delivery."""
    return f"{settings.PUBLIC_BASE_URL}{STATUS_CALLBACK_PATH}?{urlencode({DELIVERY_PARAMETER: delivery_id})}"


def _delivery_named(url: str) -> int | None:
    value = parse_qs(urlsplit(url).query).get(DELIVERY_PARAMETER, [""])[0]
    return int(value) if value.isascii() and value.isdigit() else None

_client_lock = threading.Lock()


def _twilio_client() -> Client:
    # Locked: a worker's threads all start at once, and each would otherwise build a client (and a pool).
    with _client_lock:
        return _twilio_client_build()


@lru_cache(maxsize=1)
def _twilio_client_build() -> Client:
    http_client = TwilioHttpClient(timeout=TIMEOUT_SECONDS)
    # twilio keeps min(32, cores + 4) pooled connections: with more worker threads than that, the others
    # opened (and for api.twilio.com TLS-handshook) a new connection for every SMS. One per worker thread.
    adapter = HTTPAdapter(pool_maxsize=max(settings.CELERY_WORKER_CONCURRENCY, min(32, (os.cpu_count() or 1) + 4)))
    http_client.session.mount("https://", adapter)
    http_client.session.mount("http://", adapter)
    client = Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client)
    # Lets a Twilio-compatible gateway, or a test double, answer instead of api.twilio.com.
    client.api.base_url = settings.TWILIO_API_BASE_URL
    return client


class TwilioSmsProvider:
    """SMS through Twilio's Messages API. The provider id is the message SID.

    A 429 or 5xx answer, or a connection error, is transient; any other 4xx is permanent.
    """

    name = "twilio"
    channel = "sms"
    timeout_seconds = TIMEOUT_SECONDS
    signature_header = SIGNATURE_HEADER

    def send(self, *, to: str, message: Message, delivery_id: int) -> str:
        sender = ({"messaging_service_sid": settings.TWILIO_MESSAGING_SERVICE_SID}
                  if settings.TWILIO_MESSAGING_SERVICE_SID else {"from_": settings.TWILIO_FROM_NUMBER})
        try:
            sent = _twilio_client().messages.create(
                to=to, body=message.text, status_callback=status_callback_url(delivery_id), **sender,
            )
        except TwilioRestException as exc:
            error = f"Twilio {exc.status} (code {exc.code}): {exc.msg}"
            if exc.status == 429 or exc.status >= 500:
                raise SendTransientError(error) from exc
            raise SendPermanentError(error) from exc
        except (requests.RequestException, TwilioException, OSError) as exc:
            raise SendTransientError(f"Twilio connection: {exc.__class__.__name__}: {exc}") from exc
        return sent.sid

    def status_callback_verify(self, *, url: str, params: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        """True when `X-Twilio-Signature` is Twilio's HMAC-SHA1 of `url` (query included) and `params` under
        TWILIO_AUTH_TOKEN (Twilio's "Validating requests" scheme); False without a token or a signature."""
        signature = headers.get(SIGNATURE_HEADER, "")
        return bool(settings.TWILIO_AUTH_TOKEN and signature
                    and RequestValidator(settings.TWILIO_AUTH_TOKEN).validate(url, dict(params), signature))

    def status_callback_parse(self, *, url: str, params: Mapping[str, str]) -> StatusReport:
        """Read the delivery from the callback URL's `delivery` parameter, and `MessageSid`, `MessageStatus`
        and `ErrorCode` from its form. The report replaces only the statuses before it in _STATUS_RANK; a
        status Twilio does not document replaces nothing."""
        status = params.get("MessageStatus", "").lower()[:32]
        final = "failed" if status in _CARRIER_FAILURES else "sent" if status in _WENT_OUT else ""
        rank = _STATUS_RANK.get(status)
        replaces = (frozenset({""} | {earlier for earlier, its in _STATUS_RANK.items() if its < rank})
                    if rank is not None else frozenset())
        return StatusReport(provider_id=params.get("MessageSid", "")[:255], provider_status=status, final=final,
                            error_code=params.get("ErrorCode", "")[:32], delivery_id=_delivery_named(url),
                            replaces=replaces)
