"""Delivering: the worker claims a delivery, sends its code through the channel's provider and records the
outcome; providers' status callbacks update the record afterwards."""
import logging
import random
import re
import time
from datetime import datetime, timedelta
from typing import Mapping

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Case, DateTimeField, F, Q, TextField, Value, When

from core.clock import clock_now
from core.errors import CallbackMalformed, SignatureInvalid
from core.metrics import metric_count, metric_observe
from otp import providers, queries, throttles
from otp.addresses import Address, Channel
from otp.messages import email_message_render, sms_message_render
from otp.models import Delivery, OneTimeCode, Purpose

logger = logging.getLogger("otp.services")

CODE_EXPIRED_ERROR = "Code expired before it could be sent."
BUDGET_SPENT_ERROR = "Send budget spent when the worker came to send it: not sent"
RECIPIENT_REFUSED_ERROR = "Recipient refused permanently, suppressed"
RECIPIENT_SUPPRESSED_ERROR = ("Recipient suppressed (refused permanently at RCPT not long ago): not sent, "
                              "though the request was answered as usual.")
PAYLOAD_REFUSED_ERROR = ("Job refused, not sent: its sealed code did not open for this delivery (changed, copied "
                         "from another delivery's job, or sealed under a key this worker does not have).")
KEY_UNKNOWN_ERROR = ("Job refused, not sent: its code was sealed under a key no worker that took it holds, and it "
                     "expired meanwhile (a key rotation not applied to every worker, or a fallback dropped too early).")
# Metrics count a login for an address without an account apart from failures: it is the design, not a fault, and
# an alert on failed deliveries must not fire when someone types unknown addresses.
NO_ACCOUNT_OUTCOME = "no_account"
# Likewise a code not sent because a send budget was spent when the worker came to hand it over (requests are
# refused at the API while one is spent; these are the few that were queued just before), and one not mailed
# because its recipient is suppressed: the service's own choices, not delivery faults.
BUDGET_SPENT_OUTCOME = "budget_spent"
SUPPRESSED_OUTCOME = "suppressed"

# Pauses between tries to record a send's outcome (sent, or unknown), in seconds. A try is started only if
# its longest wait (_database_try_seconds) still ends inside the lease, which allows
# registry.OUTCOME_RECORD_SECONDS for it: no other run takes the delivery over while this one records.
SENT_RECORD_PAUSES = (0.2, 0.5, 1.0)


class DeliveryRetry(Exception):
    """Raised for the task to schedule another try in `countdown` seconds."""

    def __init__(self, countdown: float) -> None:
        self.countdown = countdown
        super().__init__(f"retry in {countdown:.2f}s")


# Past this many tries the backoff grows no more (2**1024 would not fit in a float; a code lives minutes anyway).
RETRY_BACKOFF_DOUBLINGS_MAX = 20


def delivery_retry_countdown(*, retries_done: int) -> float:
    """Seconds before the next try after `retries_done` tries: exponential backoff with jitter, between half and
    all of OTP_SEND_RETRY_BACKOFF_SECONDS * 2**retries_done ("equal jitter"), the exponent capped at
    RETRY_BACKOFF_DOUBLINGS_MAX."""
    ceiling = settings.OTP_SEND_RETRY_BACKOFF_SECONDS * (2 ** min(retries_done, RETRY_BACKOFF_DOUBLINGS_MAX))
    return random.uniform(ceiling / 2, ceiling)


def _delivery_put_back(delivery_id: int, *, lease_until: datetime, last_error: str) -> None:
    # Only the run that holds the lease puts the delivery back in the queue: a status callback that failed it
    # meanwhile, or another run that took over a lapsed lease, is never overwritten.
    Delivery.objects.filter(id=delivery_id, status=Delivery.Status.SENDING, lease_until=lease_until).update(
        status=Delivery.Status.QUEUED, last_error=last_error, lease_until=None, updated_at=clock_now())


def delivery_finish(*, delivery: Delivery, status: str, last_error: str = "", provider_id: str = "",
                    provider: str | None = None, sent_at: datetime | None = None, outcome: str | None = None) -> None:
    """Record a delivery's final state (sent or failed) and count it; a final state is never overwritten.

    `outcome` is the `status` label it is counted under in otp_deliveries_total, when not `status` itself. A sent
    delivery's time from issue to acceptance (seconds) goes to otp_delivery_seconds. Raises
    django.db.DatabaseError when the database does.
    """
    finished = queries.delivery_finish(delivery_id=delivery.id, status=status, now=clock_now(),
                                       last_error=last_error, provider_id=provider_id, provider=provider,
                                       sent_at=sent_at)
    if finished:
        metric_count("otp_deliveries_total", channel=delivery.channel, status=outcome or status)
        if status == Delivery.Status.SENT and sent_at is not None:
            # Issued at the code's expiry less its lifetime: the claimed row carries no created_at, and reading it
            # would cost a statement per delivery.
            issued_at = delivery.expires_at - timedelta(seconds=settings.OTP_TTL_SECONDS)
            metric_observe("otp_delivery_seconds", max(0.0, (sent_at - issued_at).total_seconds()),
                           channel=delivery.channel)


def delivery_unqueued_record(*, delivery: Delivery, last_error: str) -> bool:
    """Record `delivery` failed with `last_error` if it is still queued (no run took it), and count it; returns
    whether it was. A delivery a worker already holds is that worker's to record. Raises django.db.DatabaseError."""
    recorded = Delivery.objects.filter(id=delivery.id, status=Delivery.Status.QUEUED).update(
        status=Delivery.Status.FAILED, last_error=last_error, updated_at=clock_now())
    if recorded:
        metric_count("otp_deliveries_total", channel=delivery.channel, status=Delivery.Status.FAILED)
    return bool(recorded)


# How many codes that were never sent code_withdraw follows back, at most, to the one the user holds: the resend
# cooldown and hourly cap allow only a few codes of a class to live at once.
WITHDRAW_CHAIN_MAX = 20


def code_withdraw(*, address: str, device: bool, expires_at: datetime) -> bool:
    """Withdraw a code no provider took, and make the code it superseded active again if that one still lives.

    A new code supersedes the older ones of its class at once, in the request, before anyone knows whether it
    will be sent. When it is not (a login for an address without an account, a budget spent, a suppressed or
    refused recipient, the provider's refusal, retries given up, the broker down at enqueue), the user still
    holds the code before it and was told nothing: without this, an attacker's `/login/` for an address signing
    up (no account yet) sent nothing but silently voided the code just mailed (a known-failures pass; OWASP
    Authentication Cheat Sheet, "account lockout" as a denial of service).

    `address`, `device` (the client class) and `expires_at` name the code as its delivery records it (they were
    written together, with one timestamp). The code is marked `unsent` (unless guesses burned it), so it is never
    made active again. If it was still active, the code it superseded when issued (`supersedes_id`) is made active
    again when that one is `superseded` and unexpired; one that was itself never sent is passed over for the code
    it superseded in turn. A used, burned or expired code, or a link that leads to a purged row, ends the search:
    nothing is made active. Callers withdraw only codes no earlier run can have handed to a provider (a delivery
    not taken over: Delivery.taken_over). Returns True when a code was made active again. Raises
    django.db.DatabaseError.

    One race is left: a code issued in the moment of the withdrawal (its statement began before this commits and
    waited for the lock on the withdrawn code) does not supersede the code made active here. Verify compares the
    newer, and using or burning it supersedes the other (otp.services.verifying), so the older never works after
    it; until then the database holds two active codes of the class.
    """
    now = clock_now()
    live = OneTimeCode.objects.select_for_update().filter(expires_at__gt=now)
    with transaction.atomic():
        unsent = (live.filter(address=address, device=device, expires_at=expires_at)
                  .exclude(status=OneTimeCode.Status.UNSENT).order_by("-created_at", "-id").first())
        if unsent is None or unsent.status not in (OneTimeCode.Status.ACTIVE, OneTimeCode.Status.SUPERSEDED):
            return False  # expired, burned by guesses (kept as the record of them), or purged
        OneTimeCode.objects.filter(id=unsent.id).update(status=OneTimeCode.Status.UNSENT)
        if unsent.status == OneTimeCode.Status.SUPERSEDED:
            return False  # a newer code superseded it meanwhile: that one is the user's
        previous_id = unsent.supersedes_id
        for _ in range(WITHDRAW_CHAIN_MAX):
            previous = live.filter(id=previous_id, address=address, device=device).first() if previous_id else None
            if previous is None or previous.status not in (OneTimeCode.Status.SUPERSEDED, OneTimeCode.Status.UNSENT):
                return False
            if previous.status == OneTimeCode.Status.SUPERSEDED:
                OneTimeCode.objects.filter(id=previous.id).update(status=OneTimeCode.Status.ACTIVE)
                return True
            previous_id = previous.supersedes_id
    return False


def _delivery_fail_unsent(*, delivery: Delivery, device: bool, **finish) -> None:
    # Withdrawn before the record: a run after a failed record finds the delivery unfinished and does both again.
    # Not after a takeover: the run whose lease lapsed may have handed the code to the provider before it died.
    if not delivery.taken_over:
        code_withdraw(address=delivery.address, device=device, expires_at=delivery.expires_at)
    delivery_finish(delivery=delivery, status=Delivery.Status.FAILED, **finish)


def delivery_refuse(*, delivery_id: int, reason: str, device: bool = False) -> None:
    """Record that the job for `delivery_id` was refused unsent, with `reason`, and withdraw its code
    (code_withdraw; `device`: the job's client class), if the delivery is still queued: a delivery a run holds is
    that run's to record (it may be sending a legitimate copy of the job), and one a run took over may have
    reached its provider. Nothing is recorded for a delivery that does not exist or already ended.

    Raises django.db.DatabaseError when the database does.
    """
    delivery = Delivery.objects.filter(id=delivery_id).first()
    if delivery is None:
        return
    # Only while still queued, in one conditional write: a run holding it (a legitimate copy of the job) records
    # what its provider says, and may have sent it.
    if delivery_unqueued_record(delivery=delivery, last_error=reason) and not delivery.taken_over:
        code_withdraw(address=delivery.address, device=device, expires_at=delivery.expires_at)


def _database_try_seconds() -> float:
    """The longest one statement can take here, in seconds: the wait for a pooled connection plus PostgreSQL's
    statement timeout (config/settings.py's DATABASES), or SQLite's lock timeout."""
    options = settings.DATABASES["default"].get("OPTIONS", {})
    pool = options.get("pool")
    wait = float(pool.get("timeout", 30.0)) if isinstance(pool, dict) else 0.0  # psycopg_pool's default is 30
    # The last one counts, as for PostgreSQL: an operator's own options follow the service's (config/settings.py).
    statements = re.findall(r"statement_timeout=(\d+)", str(options.get("options", "")))
    return wait + (int(statements[-1]) / 1000 if statements else float(options.get("timeout", 5.0)))


def _database_connection_release() -> None:
    """Give this thread's database connection back to the pool before a provider call.

    A provider may take seconds to answer; held through the call, a connection is pinned by every send in
    flight, and a few busy workers then want more connections than PostgreSQL allows (docs/decisions.md).
    Inside a transaction (a test's, an eager run inside one, or a caller's with autocommit off) the
    connection is not this function's to give back.
    """
    if connection.autocommit and not connection.in_atomic_block:
        connection.close()


# A delivery in one of these states is never sent (again): `unknown` means the provider may have taken it.
_FINAL = (Delivery.Status.SENT, Delivery.Status.FAILED, Delivery.Status.UNKNOWN)


def delivery_send(*, delivery_id: int, code: str, device: bool = False) -> None:
    """Send one code at most once per provider acceptance; safe to run again for the same delivery.

    The tries already made are the delivery's claims before this one (`attempts`, counted by the claim): a job
    put back without a try (waiting for a worker with its key or its payload version, or for another run's lease)
    spends none of OTP_SEND_MAX_RETRIES (a review: the job's own retry count did).

    The row is claimed with a lease (registry.delivery_lease_seconds): a second run finds it final (sent,
    failed, unknown) or held and returns; a run after a crash finds the lease lapsed and takes over. A send
    whose outcome stays unknown (providers.SendOutcomeUnknownError) is recorded `unknown` and never sent again
    (contract: Delivery). Raises DeliveryRetry when the task should try again in `countdown` seconds, and
    django.db.DatabaseError when the database fails before the send.

    Just before the provider, the message is counted on its channel's send budgets (otp.throttles.
    send_budget_take; `device`: on the device-token class's share), and given back if the provider did not
    take it (a transient or permanent error); a message no budget allows is not sent and recorded failed. An
    email to a suppressed recipient (refused with a 5xx at RCPT within OTP_EMAIL_SUPPRESSION_SECONDS) is not
    sent either; a new 5xx at RCPT suppresses the recipient.
    """
    now = clock_now()
    lease_until = now + timedelta(seconds=providers.delivery_lease_seconds())
    delivery = queries.delivery_claim(delivery_id=delivery_id, now=now, lease_until=lease_until)
    if delivery is None:  # not there to take: find out why
        delivery = Delivery.objects.filter(id=delivery_id).first()
        if delivery is None or delivery.status in _FINAL:
            logger.info("delivery %s is %s: this run sends nothing", delivery_id,
                        delivery.status if delivery else "gone")
            return
        if delivery.provider_status:
            # The provider reported on this delivery (a status callback naming it): it holds the message, which
            # an earlier run sent without recording it (it died, or its answer was lost). Not sent again.
            logger.info("delivery %s was reported %s by its provider: recorded sent, not sent again", delivery_id,
                        delivery.provider_status)
            delivery_finish(delivery=delivery, status=Delivery.Status.SENT, provider_id=delivery.provider_id,
                            sent_at=now)
            return
        if delivery.expires_at <= now:
            delivery_finish(delivery=delivery, status=Delivery.Status.FAILED, last_error=CODE_EXPIRED_ERROR)
            return
        if delivery.status != Delivery.Status.SENDING or delivery.lease_until is None:
            return  # put back in the queue by the run that held it, which scheduled its own retry
        # Another run holds it, or held it and died: look again once its lease has lapsed.
        raise DeliveryRetry(max(0.5, (delivery.lease_until - now).total_seconds() + 0.5))

    if delivery.purpose == Purpose.LOGIN and not delivery.account_exists:
        _delivery_fail_unsent(delivery=delivery, device=device, last_error="No account for this address: not sent.",
                              outcome=NO_ACCOUNT_OUTCOME)
        return

    address = Address(value=delivery.address, channel=Channel(delivery.channel))
    # A suppressed email recipient is skipped before any budget is counted; both read in one Redis operation.
    spent = throttles.recipient_unsuppressed_then_send_budget_take(address=address, device=device)
    if spent == throttles.RECIPIENT_SUPPRESSED:
        # The answer to the request was 202 all the same: whether an address bounces is nobody's to learn.
        metric_count("otp_email_suppressed_total", event="skipped")
        _delivery_fail_unsent(delivery=delivery, device=device, outcome=SUPPRESSED_OUTCOME,
                              last_error=RECIPIENT_SUPPRESSED_ERROR)
        return
    if spent is not None:
        metric_count(f"otp_{delivery.channel}_refused_total", reason=spent)
        _delivery_fail_unsent(delivery=delivery, device=device, outcome=BUDGET_SPENT_OUTCOME,
                              last_error=f"{BUDGET_SPENT_ERROR} ({spent}).")
        return

    render = email_message_render if delivery.channel == "email" else sms_message_render
    message = render(code=code)
    provider = providers.provider_for(delivery.channel)
    provider_name = providers.provider_name(delivery.channel)  # the registry's name, as the issue recorded it
    _database_connection_release()
    # Recording the outcome must end inside the lease, which allows OUTCOME_RECORD_SECONDS after the provider.
    record_deadline = lease_until - timedelta(seconds=providers.registry.LEASE_MARGIN_SECONDS)
    try:
        provider_id = provider.send(to=delivery.address, message=message, delivery_id=delivery_id)
    except providers.SendPermanentError as exc:
        throttles.send_budget_give_back(address=address, device=device)
        if isinstance(exc, providers.SendRecipientRefusedError):
            throttles.recipient_suppress(address=address)
            metric_count("otp_email_suppressed_total", event="added")
            logger.warning("delivery %s: recipient refused permanently, suppressed for %ss: %s", delivery_id,
                           settings.OTP_EMAIL_SUPPRESSION_SECONDS, exc)
            _delivery_fail_unsent(delivery=delivery, device=device, provider=provider_name,
                                  last_error=f"{RECIPIENT_REFUSED_ERROR}: {exc}"[:1000])
            return
        logger.warning("delivery %s failed permanently: %s", delivery_id, exc)
        _delivery_fail_unsent(delivery=delivery, device=device, last_error=str(exc)[:1000], provider=provider_name)
        return
    except providers.SendOutcomeUnknownError as exc:
        # The provider may have taken it: sending again could deliver the code twice. The user may ask for a
        # new code once the cooldown has passed.
        logger.warning("delivery %s: outcome unknown, recorded unknown and not sent again: %s", delivery_id, exc)
        _delivery_outcome_record(delivery=delivery, status=Delivery.Status.UNKNOWN, provider=provider_name,
                                 last_error=str(exc)[:1000], deadline=record_deadline)
        return
    except providers.SendTransientError as exc:
        throttles.send_budget_give_back(address=address, device=device)  # the next try counts it again
        tries_before = delivery.attempts - 1
        countdown = delivery_retry_countdown(retries_done=tries_before)
        give_up = (tries_before >= settings.OTP_SEND_MAX_RETRIES
                   or clock_now() + timedelta(seconds=countdown) >= delivery.expires_at)
        logger.warning("delivery %s failed (%s): %s", delivery_id, "giving up" if give_up else "will retry", exc)
        if give_up:
            _delivery_fail_unsent(delivery=delivery, device=device, last_error=str(exc)[:1000],
                                  provider=provider_name)
            return
        _delivery_put_back(delivery_id, lease_until=lease_until, last_error=str(exc)[:1000])
        metric_count("otp_delivery_retries_total", channel=delivery.channel)
        raise DeliveryRetry(countdown) from exc
    if _delivery_outcome_record(delivery=delivery, status=Delivery.Status.SENT, provider_id=provider_id,
                                provider=provider_name, deadline=record_deadline):
        logger.info("delivery %s sent by %s (provider id %s)", delivery_id, delivery.channel, provider_id)


def _delivery_outcome_record(*, delivery: Delivery, status: str, provider: str, deadline: datetime,
                             provider_id: str = "", last_error: str = "") -> bool:
    """Record what the provider said, `sent` (with its id) or `unknown`; False if the database would not take it.

    Never raises a database error: the job would run again and, once its lease lapsed, send the code a second
    time, and the contract allows a duplicate only when the worker dies between acceptance and record. So the
    update is tried a few times (on a fresh connection each time), each later try only if its longest wait
    (_database_try_seconds) ends by `deadline`, inside this run's lease; then given up with an error line. The
    delivery then stays `sending` with the provider's answer in the log, and beat fails it once its code expired.
    """
    for pause in (*SENT_RECORD_PAUSES, None):
        try:
            delivery_finish(delivery=delivery, status=status, provider_id=provider_id, provider=provider,
                            last_error=last_error, sent_at=clock_now() if status == Delivery.Status.SENT else None)
            return True
        except DatabaseError as exc:
            _database_connection_release()  # a connection the error broke goes back, and the pool drops it
            if pause is None or clock_now() + timedelta(seconds=pause + _database_try_seconds()) > deadline:
                logger.error("delivery %s was %s by %s (provider id %s) but not recorded: %s", delivery.id,
                             "accepted" if status == Delivery.Status.SENT else "left unknown", delivery.channel,
                             provider_id or "none", exc)
                return False
            time.sleep(pause)


# The delivery states a carrier-failure callback moves to `failed`. `unknown` stays: the record says the service
# could not learn the outcome in time, and provider_status then says what the provider reported afterwards.
_CARRIER_FAILURE_ENDS = (Delivery.Status.QUEUED, Delivery.Status.SENDING, Delivery.Status.SENT)


def delivery_status_record(*, report: providers.StatusReport) -> bool:
    """Apply a provider's status report to the delivery it names, forward only (contract: Delivery); returns
    False when no delivery matched or the report changed nothing.

    The delivery is the one the callback URL names (`report.delivery_id`), if its recorded provider id is empty
    or the report's; a URL naming none (sent before URLs named deliveries) matches on the provider id alone.
    `provider_status` moves only forward in the provider's own order (`report.replaces`); a repeat, or a
    status the provider puts before the recorded one, changes nothing. `status` moves only to `failed`, on a
    carrier failure (`report.final == "failed"`), from queued, sending or sent; failed and unknown never become
    sent. A missing provider id is filled in. All of it is one conditional UPDATE, so concurrent callbacks for
    one delivery cannot interleave: the database applies them one after the other, each against the row the
    one before left.
    """
    if report.delivery_id is not None:
        match = Q(id=report.delivery_id) & (Q(provider_id="") | Q(provider_id=report.provider_id))
    elif report.provider_id:
        match = Q(provider_id=report.provider_id)
    else:
        return False
    fields: dict = {
        "provider_status": report.provider_status,
        "provider_id": Case(When(provider_id="", then=Value(report.provider_id)), default=F("provider_id")),
        "updated_at": clock_now(),
    }
    if report.final == Delivery.Status.FAILED:
        failing = Q(status__in=_CARRIER_FAILURE_ENDS)
        error = f"Provider reported {report.provider_status} (error {report.error_code or 'none'})"
        fields.update(
            status=Case(When(failing, then=Value(Delivery.Status.FAILED.value)), default=F("status")),
            last_error=Case(When(failing, then=Value(error, output_field=TextField())), default=F("last_error")),
            lease_until=Case(When(failing, then=Value(None, output_field=DateTimeField())), default=F("lease_until")),
        )
    return Delivery.objects.filter(match, provider_status__in=report.replaces).update(**fields) > 0


def delivery_status_callback_record(*, provider_name: str, url: str, params: Mapping[str, str],
                                    headers: Mapping[str, str]) -> bool:
    """A provider's status callback: check its signature, then apply it (delivery_status_record).

    `url` is the public URL the provider called (it signs that one); `params` the callback's form. Returns
    False when no delivery matches. Raises core.errors.SignatureInvalid (403) when the signature is missing
    or wrong, and core.errors.CallbackMalformed (400) when a signed callback lacks a field every one carries.
    """
    provider = providers.provider_class("sms", provider_name)()
    if not provider.status_callback_verify(url=url, params=params, headers=headers):
        raise SignatureInvalid(f"Missing or invalid {provider.signature_header}.")
    try:
        report = provider.status_callback_parse(url=url, params=params)
    except providers.StatusCallbackMalformed as exc:
        raise CallbackMalformed(f"Malformed callback: {exc}") from exc
    return delivery_status_record(report=report)
