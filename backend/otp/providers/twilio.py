"""SMS through Twilio's REST API with the `twilio` client, and Twilio's signed status callbacks."""
import hashlib
import hmac
import threading
import time
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Mapping
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from django.conf import settings
from django.utils import timezone
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError

from otp.messages import Message
from otp.providers.base import (SendOutcomeUnknownError, SendPermanentError, SendTransientError,
                                StatusCallbackMalformed, StatusReport)

# Sending: up to CONNECT_TIMEOUT_SECONDS to connect, then up to TIMEOUT_SECONDS for Twilio's answer.
CONNECT_TIMEOUT_SECONDS = 3.0
TIMEOUT_SECONDS = 10.0
# When the answer is lost (a read timeout, a connection dropped after the request was written, a gateway's
# 502 or 504), Twilio is asked whether it took the message: after each of these pauses, one request to the
# Messages list for that `To`, each bounded by the check timeouts.
CHECK_PAUSES_SECONDS = (1.0, 2.0)
CHECK_CONNECT_TIMEOUT_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 4.0
# Newest messages to one number read per check. The list filters dates by whole days only, on date_sent,
# which is empty while a message is queued: the match (creation time, body) is made here.
CHECK_PAGE_SIZE = 50
# A listed message counts if Twilio created it at most this long before the attempt started by our clock.
CLOCK_SKEW_SECONDS = 60
# A gateway answering these may have passed the request on before it gave up waiting.
_GATEWAY_ERRORS = {502, 504}
# A Twilio-compatible gateway without a Messages list answers these to the check: it cannot tell.
_NO_MESSAGES_LIST = {404, 405}
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


def _http_client(*, connect: float, read: float) -> TwilioHttpClient:
    http_client = TwilioHttpClient()
    # requests takes (connect, read); TwilioHttpClient's constructor refuses a pair (it compares its timeout
    # with 0) but hands the attribute to requests as it is.
    http_client.timeout = (connect, read)
    return http_client


def _client(http_client: TwilioHttpClient) -> Client:
    client = Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client)
    # Lets a Twilio-compatible gateway, or a test double, answer instead of api.twilio.com.
    client.api.base_url = settings.TWILIO_API_BASE_URL
    return client


@lru_cache(maxsize=1)
def _twilio_client_build() -> Client:
    http_client = _http_client(connect=CONNECT_TIMEOUT_SECONDS, read=TIMEOUT_SECONDS)
    # twilio keeps min(32, cores + 4) pooled connections: with more worker threads than that, the others
    # opened (and for api.twilio.com TLS-handshook) a new connection for every SMS. SMS_MAX_CONNECTIONS kept, and
    # never more open at once (pool_block: a thread beyond them waits for one), since the provider meters an
    # account's concurrent requests; an SMS worker's threads default to the same number (config.celery).
    adapter = HTTPAdapter(pool_maxsize=settings.SMS_MAX_CONNECTIONS, pool_block=True)
    http_client.session.mount("https://", adapter)
    http_client.session.mount("http://", adapter)
    return _client(http_client)


@lru_cache(maxsize=1)
def _twilio_check_client() -> Client:
    # Its own client: shorter timeouts, and rare enough that twilio's default pool serves it.
    return _client(_http_client(connect=CHECK_CONNECT_TIMEOUT_SECONDS, read=CHECK_TIMEOUT_SECONDS))


def _never_reached(exc: Exception) -> bool:
    """True when the request cannot have reached Twilio: no connection was made (refused, no route, a name that
    does not resolve, a connect timeout). Anything later, a read timeout, a connection dropped once the request
    was written, an answer that could not be read, may follow an accepted message."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None  # urllib3's MaxRetryError
    # NewConnectionError and NameResolutionError are ConnectTimeoutErrors in urllib3.
    return isinstance(exc, requests.exceptions.ConnectionError) and isinstance(reason, ConnectTimeoutError)


def _http_status(exc: Exception) -> int | None:
    # twilio raises TwilioRestException (.status) for a refused create, but a plain TwilioException("Unable to
    # fetch page", response) for a list page that is not a 200.
    if isinstance(exc, TwilioRestException):
        return exc.status
    response = exc.args[1] if isinstance(exc, TwilioException) and len(exc.args) > 1 else None
    return getattr(response, "status_code", None)


def _body_digest(body: str) -> bytes:
    return hashlib.sha256(body.encode()).digest()


def _message_taken(*, to: str, body: str, since: datetime) -> tuple[str | None, str]:
    """Ask Twilio whether it took a message: (its SID, "") when found, else (None, what the checks learnt).

    After each pause of CHECK_PAUSES_SECONDS, one page of the Messages list filtered by `To`: a message matches
    if Twilio created it at or after `since` less CLOCK_SKEW_SECONDS and its body hashes to this body's SHA-256.
    A gateway with no Messages list (404, 405) ends the checks at once; any other error, or no match, leaves
    the next check to try. Bounded: len(CHECK_PAUSES_SECONDS) x (pause + check connect + check read timeout).
    """
    digest = _body_digest(body)
    earliest = since - timedelta(seconds=CLOCK_SKEW_SECONDS)
    learnt = ""
    for pause in CHECK_PAUSES_SECONDS:
        time.sleep(pause)  # Twilio may still be creating the message whose answer was lost
        try:
            listed = _twilio_check_client().messages.list(to=to, limit=CHECK_PAGE_SIZE, page_size=CHECK_PAGE_SIZE)
        except (requests.RequestException, TwilioException, OSError) as exc:
            status = _http_status(exc)
            if status in _NO_MESSAGES_LIST:
                return None, f"the gateway has no Messages list (HTTP {status})"
            learnt = (f"the Messages list answered HTTP {status}" if status
                      else f"the Messages list did not answer ({exc.__class__.__name__})")
            continue
        for listed_message in listed:
            created = listed_message.date_created
            if (isinstance(created, datetime) and created >= earliest and listed_message.body is not None
                    and hmac.compare_digest(_body_digest(listed_message.body), digest)):
                return listed_message.sid, ""
        learnt = "no such message in the Messages list"
    return None, learnt


class TwilioSmsProvider:
    """SMS through Twilio's Messages API. The provider id is the message SID.

    A 429 or 5xx answer, or a connection never made, is transient; any other 4xx is permanent. When the answer
    is lost after the request may have reached Twilio, Twilio is asked whether it took the message
    (_message_taken): found, it is sent; not found, the outcome is unknown (a 502 or 504 stays transient).
    """

    name = "twilio"
    channel = "sms"
    # The whole wait of one send: the request, then the checks of a lost answer.
    timeout_seconds = (CONNECT_TIMEOUT_SECONDS + TIMEOUT_SECONDS + sum(CHECK_PAUSES_SECONDS)
                       + len(CHECK_PAUSES_SECONDS) * (CHECK_CONNECT_TIMEOUT_SECONDS + CHECK_TIMEOUT_SECONDS))
    signature_header = SIGNATURE_HEADER

    def send(self, *, to: str, message: Message, delivery_id: int) -> str:
        """Create the message; return its SID. Raises SendTransientError (429, 5xx, no connection made),
        SendPermanentError (other 4xx) or SendOutcomeUnknownError (the answer lost and Twilio's list does not
        show the message)."""
        sender = ({"messaging_service_sid": settings.TWILIO_MESSAGING_SERVICE_SID}
                  if settings.TWILIO_MESSAGING_SERVICE_SID else {"from_": settings.TWILIO_FROM_NUMBER})
        started = timezone.now()
        try:
            sent = _twilio_client().messages.create(
                to=to, body=message.text, status_callback=status_callback_url(delivery_id), **sender,
            )
        except TwilioRestException as exc:
            error = f"Twilio {exc.status} (code {exc.code}): {exc.msg}"
            if exc.status in _GATEWAY_ERRORS:
                sid, _ = _message_taken(to=to, body=message.text, since=started)
                if sid:
                    return sid
            if exc.status == 429 or exc.status >= 500:
                raise SendTransientError(error) from exc
            raise SendPermanentError(error) from exc
        except (requests.RequestException, TwilioException, OSError) as exc:
            error = f"Twilio connection: {exc.__class__.__name__}: {exc}"
            if _never_reached(exc):
                raise SendTransientError(error) from exc
            sid, learnt = _message_taken(to=to, body=message.text, since=started)
            if sid:
                return sid
            raise SendOutcomeUnknownError(f"{error}; asked Twilio: {learnt}") from exc
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
        status Twilio does not document replaces nothing. Raises StatusCallbackMalformed when `MessageSid` or
        `MessageStatus`, which every status callback carries (Twilio's Messaging docs, "StatusCallback
        parameters"), is missing or empty."""
        params = {name: value.strip() for name, value in params.items()}
        missing = [name for name in ("MessageSid", "MessageStatus") if not params.get(name)]
        if missing:
            raise StatusCallbackMalformed(f"The callback has no {' and no '.join(missing)}.")
        status = params["MessageStatus"].lower()[:32]
        final = "failed" if status in _CARRIER_FAILURES else "sent" if status in _WENT_OUT else ""
        rank = _STATUS_RANK.get(status)
        replaces = (frozenset({""} | {earlier for earlier, its in _STATUS_RANK.items() if its < rank})
                    if rank is not None else frozenset())
        return StatusReport(provider_id=params.get("MessageSid", "")[:255], provider_status=status, final=final,
                            error_code=params.get("ErrorCode", "")[:32], delivery_id=_delivery_named(url),
                            replaces=replaces)
