"""The rules of the service: issuing, throttling, verifying and delivering codes, and the tokens they buy."""
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta

import kombu.exceptions
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from core.errors import DependencyUnavailable, InvalidCode, RateLimited, TokenRejected
from core.metrics import metric_count
from core.observability import request_id_current
from core.ratelimit import HOUR, cooldown_release, cooldown_then_window_hit, window_hit, window_unhit
from otp.addresses import Address, address_cache_key
from otp.codes import code_generate, code_hash, code_matches
from otp.messages import email_message_render, sms_message_render
from otp.models import Delivery, OneTimeCode, Purpose
from otp.selectors import user_get_by_address
from otp.senders import SendPermanentError, SendTransientError, sender_for
from users.models import User

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "otp_request_id"
CODE_EXPIRED_ERROR = "Code expired before it could be sent."


# --- Issuing ----------------------------------------------------------------------------------


def code_send_throttle(*, address: Address) -> None:
    """Per-address limits, counted for every request, account or not, so throttling reveals nothing."""
    wait = cooldown_then_window_hit(
        cooldown_key=address_cache_key("otp:cooldown", address), seconds=settings.OTP_RESEND_COOLDOWN_SECONDS,
        key=address_cache_key("otp:sends", address), limit=settings.OTP_SENDS_PER_HOUR, window=HOUR,
    )
    if wait:
        raise RateLimited(wait)


def code_send_throttle_release(*, address: Address) -> None:
    """Give back what code_send_throttle took, when no code could be sent for a reason not the user's."""
    cooldown_release(key=address_cache_key("otp:cooldown", address))
    window_unhit(key=address_cache_key("otp:sends", address), window=HOUR)


def code_request(*, address: Address, purpose: Purpose) -> None:
    """/register/ and /login/: throttle, then issue a code and enqueue its delivery.

    The API does the same work whether or not an account exists, so neither the answer nor its timing
    tells them apart: for a login, the worker checks the account and sends only if it exists.
    """
    code_send_throttle(address=address)
    try:
        code_issue(address=address, purpose=purpose)
        metric_count("otp_codes_issued_total", channel=address.channel.value, purpose=purpose)
    except (DependencyUnavailable, DatabaseError):
        # An outage is not the user's doing: they may ask again as soon as it is over.
        code_send_throttle_release(address=address)
        raise


def code_issue(*, address: Address, purpose: Purpose) -> Delivery:
    """Store a new code's hash, supersede the older ones, record its delivery, and enqueue it once that commits."""
    now = timezone.now()
    code = code_generate()
    delivery = _code_store(address=address, purpose=purpose, code_hash_hex=code_hash(address=address.value, code=code),
                           now=now, expires_at=now + timedelta(seconds=settings.OTP_TTL_SECONDS))
    transaction.on_commit(lambda: delivery_enqueue(delivery=delivery, code=code))
    return delivery


# On PostgreSQL the three writes of an issue are one statement (data-modifying CTEs), so one round trip and no
# transaction of its own: the hot path of every /login/ and /register/ (which call it in autocommit; inside
# an outer transaction its failure aborts that transaction). Its parts see one snapshot, so the UPDATE never
# sees the code the INSERT adds. Every column is given: the models' defaults are Python's.
_CODE_STORE_SQL = f"""
WITH superseded AS (
    UPDATE {OneTimeCode._meta.db_table} SET status = %(superseded)s WHERE address = %(address)s AND status = %(active)s
), code AS (
    INSERT INTO {OneTimeCode._meta.db_table}
        (address, channel, purpose, code_hash, status, attempts, created_at, expires_at, used_at)
    VALUES (%(address)s, %(channel)s, %(purpose)s, %(code_hash)s, %(active)s, 0, %(now)s, %(expires_at)s, NULL)
)
INSERT INTO {Delivery._meta.db_table}
    (address, channel, purpose, status, provider_id, provider_status, attempts, last_error, created_at, updated_at,
     sent_at, expires_at, lease_until)
VALUES (%(address)s, %(channel)s, %(purpose)s, %(queued)s, '', '', 0, '', %(now)s, %(now)s, NULL, %(expires_at)s, NULL)
RETURNING id
"""


def _code_store(*, address: Address, purpose: Purpose, code_hash_hex: str, now, expires_at) -> Delivery:
    if connection.vendor == "postgresql":
        params = {"address": address.value, "channel": address.channel.value, "purpose": purpose,
                  "code_hash": code_hash_hex, "now": now, "expires_at": expires_at,
                  "active": OneTimeCode.Status.ACTIVE.value, "superseded": OneTimeCode.Status.SUPERSEDED.value,
                  "queued": Delivery.Status.QUEUED.value}
        with connection.cursor() as cursor:
            cursor.execute(_CODE_STORE_SQL, params)
            delivery_id = cursor.fetchone()[0]
        return _delivery_loaded(id=delivery_id, address=address.value, channel=address.channel, purpose=purpose,
                                status=Delivery.Status.QUEUED, created_at=now, updated_at=now, expires_at=expires_at)
    # SQLite (the quick local run) has no data-modifying CTEs: the same writes, in one transaction.
    with transaction.atomic():
        OneTimeCode.objects.filter(address=address.value, status=OneTimeCode.Status.ACTIVE).update(
            status=OneTimeCode.Status.SUPERSEDED
        )
        OneTimeCode.objects.create(address=address.value, channel=address.channel, purpose=purpose,
                                   code_hash=code_hash_hex, created_at=now, expires_at=expires_at)
        return Delivery.objects.create(address=address.value, channel=address.channel, purpose=purpose,
                                       created_at=now, expires_at=expires_at)


def _delivery_loaded(**fields) -> Delivery:
    """A Delivery from the values a statement just wrote or returned, loaded as a queryset loads a row: the fields
    not given are deferred (read from the database if ever used), not filled with defaults.

    On the hot paths (issuing, claiming) this replaces a raw queryset's mapping of `RETURNING *` onto the model,
    which cost as much CPU as the rest of the statement.
    """
    names = [field.attname for field in Delivery._meta.concrete_fields if field.attname in fields]
    return Delivery.from_db(connection.alias, names, [fields[name] for name in names])


def delivery_enqueue(*, delivery: Delivery, code: str) -> None:
    from otp.tasks import delivery_send_task  # tasks import services: import here to avoid a cycle

    try:
        delivery_send_task.apply_async(
            kwargs={"delivery_id": delivery.id, "code": code},
            queue=delivery.channel,
            # What Celery's logs and events show instead of the arguments: never the code.
            kwargsrepr=repr({"delivery_id": delivery.id, "code": "<hidden>"}),
            headers={REQUEST_ID_HEADER: request_id_current()},
        )
    except kombu.exceptions.OperationalError as exc:
        # The code exists only in this process now: record that it was never sent and tell the caller.
        _delivery_finish(delivery, Delivery.Status.FAILED, last_error="Broker unavailable: not enqueued.")
        raise DependencyUnavailable("broker") from exc


# --- Verifying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    expires_in: int


def token_pair_issue(*, user: User) -> TokenPair:
    refresh = RefreshToken.for_user(user)
    return TokenPair(access=str(refresh.access_token), refresh=str(refresh),
                     expires_in=settings.ACCESS_TOKEN_LIFETIME_SECONDS)


def code_verify(*, address: Address, code: str) -> TokenPair:
    """Trade a valid code for tokens. Every failure looks the same; each one spends the address's hourly budget."""
    failures_key = address_cache_key("otp:failures", address)
    # Counted before the check and given back on success, so parallel guesses cannot overshoot the budget.
    wait = window_hit(key=failures_key, limit=settings.OTP_MAX_FAILURES_PER_HOUR, window=HOUR)
    if wait:
        metric_count("otp_codes_verified_total", result="throttled")
        raise RateLimited(wait)
    user = _code_consume(address=address, code=code)
    if user is None:
        metric_count("otp_codes_verified_total", result="failure")
        raise InvalidCode()
    window_unhit(key=failures_key, window=HOUR)
    metric_count("otp_codes_verified_total", result="success")
    return token_pair_issue(user=user)


@transaction.atomic
def _code_consume(*, address: Address, code: str) -> User | None:
    """Check `code` against the address's current code under a row lock: one verify at a time per code."""
    now = timezone.now()
    otp = (OneTimeCode.objects.select_for_update()
           .filter(address=address.value, status=OneTimeCode.Status.ACTIVE)
           .order_by("-created_at").first())
    if otp is None or otp.expires_at <= now:
        return None
    if not code_matches(code_hash_hex=otp.code_hash, address=address.value, code=code):
        otp.attempts += 1
        if otp.attempts >= settings.OTP_MAX_ATTEMPTS:
            otp.status = OneTimeCode.Status.BURNED
        otp.save(update_fields=["attempts", "status"])
        return None
    otp.status = OneTimeCode.Status.USED
    otp.used_at = now
    otp.save(update_fields=["status", "used_at"])

    user = user_get_by_address(address=address)
    if user is None:
        if otp.purpose != Purpose.REGISTER:
            return None  # the account went away after the login code was sent
        # The account is born here, so addresses nobody verified never fill the users table.
        return User.objects.create_user(**{address.user_field: address.value}, last_login=now)
    user.last_login = now
    user.save(update_fields=["last_login"])
    return user


# --- Tokens -----------------------------------------------------------------------------------


def token_revoke(*, user: User, refresh: str) -> None:
    """Logout: blacklist the caller's own refresh token."""
    try:
        token = RefreshToken(refresh)
    except TokenError as exc:
        raise TokenRejected() from exc
    if str(token.get("user_id")) != str(user.pk):
        raise TokenRejected()
    token.blacklist()


# --- Delivering -------------------------------------------------------------------------------


class DeliveryRetry(Exception):
    """Raised for the task to schedule another try in `countdown` seconds."""

    def __init__(self, countdown: float) -> None:
        self.countdown = countdown
        super().__init__(f"retry in {countdown:.2f}s")


def delivery_retry_countdown(*, retries_done: int) -> float:
    """Exponential backoff with jitter: between half and all of base * 2^n."""
    ceiling = settings.OTP_SEND_RETRY_BACKOFF_SECONDS * (2 ** retries_done)
    return random.uniform(ceiling / 2, ceiling)


def _delivery_update(delivery_id: int, **fields) -> None:
    Delivery.objects.filter(id=delivery_id).update(updated_at=timezone.now(), **fields)


def _delivery_finish(delivery: Delivery, status: str, *, last_error: str = "", provider_id: str = "",
                     sent_at=None) -> None:
    """Record a delivery's final state (sent or failed) and count it; a final state is never overwritten.

    One plain UPDATE, like the claim: on every delivery's path, the ORM's building of this statement cost
    three times its round trip.
    """
    as_sql = connection.ops.adapt_datetimefield_value  # what the ORM would send: SQLite stores text
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Delivery._meta.db_table} SET status = %s, lease_until = NULL, updated_at = %s, last_error = %s, "
            "provider_id = %s, sent_at = %s WHERE id = %s AND status IN (%s, %s)",
            [status, as_sql(timezone.now()), last_error, provider_id, as_sql(sent_at), delivery.id,
             Delivery.Status.QUEUED.value, Delivery.Status.SENDING.value],
        )
        finished = cursor.rowcount
    if finished:
        metric_count("otp_deliveries_total", channel=delivery.channel, status=status)


# Also returns whether an active account has the address, so a login delivery needs no second query. An address
# is an email or an E.164 number, never both, so one test covers both columns.
_DELIVERY_CLAIM_SQL = f"""
UPDATE {Delivery._meta.db_table} SET status = %(sending)s, attempts = attempts + 1, updated_at = %(now)s,
    lease_until = %(lease_until)s
WHERE id = %(id)s AND expires_at > %(now)s AND (status = %(queued)s OR (status = %(sending)s AND lease_until < %(now)s))
RETURNING id, address, channel, purpose, expires_at, EXISTS (
    SELECT 1 FROM {User._meta.db_table} AS account WHERE account.is_active
    AND (account.email = {Delivery._meta.db_table}.address OR account.mobile = {Delivery._meta.db_table}.address)
) AS account_exists
"""


# What Django's converters need to turn a returned expires_at into a datetime as the ORM would.
_EXPIRES_AT_COLUMN = Delivery._meta.get_field("expires_at").get_col(Delivery._meta.db_table)


def _delivery_claim(*, delivery_id: int, now) -> Delivery | None:
    """Take a delivery for this run, if it is queued (or its holder's lease lapsed) and its code still lives.

    One `UPDATE ... RETURNING` (PostgreSQL, and SQLite since 3.35) instead of a read and an update: this is
    the hot path of every delivery. Django's update() cannot return rows, hence the SQL.
    """
    as_sql = connection.ops.adapt_datetimefield_value  # what the ORM would send: SQLite stores text
    with connection.cursor() as cursor:
        cursor.execute(_DELIVERY_CLAIM_SQL, {
            "id": delivery_id, "now": as_sql(now),
            "lease_until": as_sql(now + timedelta(seconds=settings.OTP_DELIVERY_LEASE_SECONDS)),
            "sending": Delivery.Status.SENDING.value, "queued": Delivery.Status.QUEUED.value,
        })
        row = cursor.fetchone()
    if row is None:
        return None
    id_, address, channel, purpose, expires_at, account_exists = row
    for convert in connection.ops.get_db_converters(_EXPIRES_AT_COLUMN):  # SQLite returns text, psycopg a datetime
        expires_at = convert(expires_at, _EXPIRES_AT_COLUMN, connection)
    delivery = _delivery_loaded(id=id_, address=address, channel=channel, purpose=purpose, expires_at=expires_at,
                                status=Delivery.Status.SENDING)
    delivery.account_exists = bool(account_exists)
    return delivery


def _database_connection_release() -> None:
    """Give this thread's database connection back to the pool before a provider call.

    A provider may take seconds to answer. Held through the call, a connection was pinned by every send in
    flight: with one 64-thread SMS worker sending against a 200 ms stand-in, the database's peak was 84
    connections (26 without), and four such workers wanted more than PostgreSQL's default 100. Inside a
    transaction (a test's, an eager run inside one, or a caller's with autocommit off) the connection is not
    this function's to give back.
    """
    if connection.autocommit and not connection.in_atomic_block:
        connection.close()


def delivery_send(*, delivery_id: int, code: str, retries_done: int = 0) -> None:
    """Send one code at most once per provider acceptance; safe to run again for the same delivery.

    The row is claimed with a lease: a second run finds it sent or held and returns; a run after a
    crash finds the lease lapsed and takes over.
    """
    now = timezone.now()
    delivery = _delivery_claim(delivery_id=delivery_id, now=now)
    if delivery is None:  # not there to take: find out why
        delivery = Delivery.objects.filter(id=delivery_id).first()
        if delivery is None or delivery.status in (Delivery.Status.SENT, Delivery.Status.FAILED):
            logger.info("delivery %s is %s: this run sends nothing", delivery_id,
                        delivery.status if delivery else "gone")
            return
        if delivery.expires_at <= now:
            _delivery_finish(delivery, Delivery.Status.FAILED, last_error=CODE_EXPIRED_ERROR)
            return
        if delivery.status != Delivery.Status.SENDING or delivery.lease_until is None:
            return  # put back in the queue by the run that held it, which scheduled its own retry
        # Another run holds it, or held it and died: look again once its lease has lapsed.
        raise DeliveryRetry(max(0.5, (delivery.lease_until - now).total_seconds() + 0.5))

    if delivery.purpose == Purpose.LOGIN and not delivery.account_exists:
        _delivery_finish(delivery, Delivery.Status.FAILED, last_error="No account for this address: not sent.")
        return

    render = email_message_render if delivery.channel == "email" else sms_message_render
    message = render(code=code)
    _database_connection_release()
    try:
        provider_id = sender_for(delivery.channel).send(to=delivery.address, message=message)
    except SendPermanentError as exc:
        logger.warning("delivery %s failed permanently: %s", delivery_id, exc)
        _delivery_finish(delivery, Delivery.Status.FAILED, last_error=str(exc)[:1000])
        return
    except SendTransientError as exc:
        countdown = delivery_retry_countdown(retries_done=retries_done)
        give_up = (retries_done >= settings.OTP_SEND_MAX_RETRIES
                   or timezone.now() + timedelta(seconds=countdown) >= delivery.expires_at)
        logger.warning("delivery %s failed (%s): %s", delivery_id, "giving up" if give_up else "will retry", exc)
        if give_up:
            _delivery_finish(delivery, Delivery.Status.FAILED, last_error=str(exc)[:1000])
            return
        _delivery_update(delivery_id, status=Delivery.Status.QUEUED, last_error=str(exc)[:1000], lease_until=None)
        metric_count("otp_delivery_retries_total", channel=delivery.channel)
        raise DeliveryRetry(countdown) from exc
    if _delivery_sent_record(delivery=delivery, provider_id=provider_id):
        logger.info("delivery %s sent by %s (provider id %s)", delivery_id, delivery.channel, provider_id)


# Pauses between tries to record an accepted send. Each try may also wait up to 5 s (the pool's timeout, or the
# statement timeout), so the tries end within about 22 s: inside the broker's visibility timeout (default 60 s),
# so no other worker is handed the job meanwhile.
SENT_RECORD_PAUSES = (0.2, 0.5, 1.0)


def _delivery_sent_record(*, delivery: Delivery, provider_id: str) -> bool:
    """Record that the provider accepted the message; False if the database would not take it.

    Never raises a database error: the job would run again and, once its lease lapsed, send the code a second
    time, and the contract allows a duplicate only when the worker dies between acceptance and record. So the
    update is tried a few times (on a fresh connection each time), then given up with an error line; the
    delivery then stays `sending` with the provider's acceptance in the log.
    """
    for pause in (*SENT_RECORD_PAUSES, None):
        try:
            _delivery_finish(delivery, Delivery.Status.SENT, provider_id=provider_id, sent_at=timezone.now())
            return True
        except DatabaseError as exc:
            _database_connection_release()  # a connection the error broke goes back, and the pool drops it
            if pause is None:
                logger.error("delivery %s was accepted by %s (provider id %s) but not recorded: %s", delivery.id,
                             delivery.channel, provider_id, exc)
                return False
            time.sleep(pause)


# Twilio's message states, folded into ours.
_TWILIO_FAILED = {"failed", "undelivered", "canceled"}
_TWILIO_SENT = {"sent", "delivered", "read"}


def delivery_status_record(*, provider_id: str, provider_status: str, error_code: str = "") -> bool:
    """Apply a provider's status callback to the delivery it names; False when none matches."""
    provider_status = provider_status.lower()[:32]
    fields: dict = {"provider_status": provider_status}
    if provider_status in _TWILIO_FAILED:
        fields.update(status=Delivery.Status.FAILED, last_error=f"Provider reported {provider_status} (error {error_code or 'none'})")
    elif provider_status in _TWILIO_SENT:
        fields.update(status=Delivery.Status.SENT)
    return Delivery.objects.filter(provider_id=provider_id).update(updated_at=timezone.now(), **fields) > 0


# --- Housekeeping (beat) -----------------------------------------------------------------------


def _batched_delete(queryset, batch_size: int) -> int:
    deleted = 0
    while True:
        # One statement a batch (DELETE ... WHERE id IN (SELECT id ... LIMIT n)): the ids never travel to
        # Python. Nothing refers to codes, so Django deletes without collecting related rows first.
        count, _ = OneTimeCode.objects.filter(id__in=queryset.values("id")[:batch_size]).delete()
        deleted += count
        if count < batch_size:
            return deleted


def code_purge(*, batch_size: int | None = None) -> int:
    """Delete expired and no-longer-active codes in batches, so no long lock ever blocks the API."""
    batch_size = batch_size or settings.OTP_PURGE_BATCH_SIZE
    now = timezone.now()
    return (_batched_delete(OneTimeCode.objects.filter(expires_at__lte=now), batch_size)
            + _batched_delete(OneTimeCode.objects.exclude(status=OneTimeCode.Status.ACTIVE), batch_size))


def delivery_expire_stale() -> int:
    """Deliveries never handed to the provider before their code expired will never be: mark them failed."""
    now = timezone.now()
    return (Delivery.objects
            .filter(expires_at__lte=now)
            .filter(Q(status=Delivery.Status.QUEUED) | Q(status=Delivery.Status.SENDING, lease_until__lt=now))
            .update(status=Delivery.Status.FAILED, last_error=CODE_EXPIRED_ERROR,
                    lease_until=None, updated_at=now))


def token_blacklist_flush() -> int:
    # Blacklist rows go with their outstanding token (cascade), like simplejwt's flushexpiredtokens.
    deleted, _ = OutstandingToken.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted


def maintenance_run() -> dict:
    result = {"codes_deleted": code_purge(), "deliveries_expired": delivery_expire_stale(),
              "tokens_flushed": token_blacklist_flush()}
    logger.info("maintenance: %s", result)
    return result
