"""Issuing: /register/ and /login/ throttle the address, store a new code's hash and enqueue its delivery."""
import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import kombu.exceptions
from django.conf import settings
from django.db import connections, transaction

from core.clock import clock_now
from core.errors import DATABASE_OUTAGES, DependencyUnavailable, EmailBudgetSpent, NumberNotAllowed, SmsBudgetSpent
from core.metrics import metric_count
from core.observability import REQUEST_ID_HEADER, request_id_current
from otp import codes, providers, queries, queues, tasks, throttles
from otp.addresses import Address, Channel, sms_destination_refusal
from otp.models import Delivery, Purpose
from otp.services.delivering import code_withdraw, delivery_unqueued_record

logger = logging.getLogger(__name__)

# The delivery job's payload format. Fields may be added within a version (workers ignore fields they do not
# know); the version changes only when a field changes meaning. 2: the code travels sealed (`code_sealed`)
# instead of in plaintext (`code`, version 1), which workers still read for jobs queued before.
DELIVERY_PAYLOAD_VERSION = 2


def code_request(*, address: Address, purpose: Purpose, device: bool = False) -> None:
    """/register/ and /login/: throttle, then issue a code and enqueue its delivery.

    `device`: the request carries a live device token for the address (otp.selectors.device_token_find), so it
    is judged in the device class: that class's cooldown and hourly cap, and its code supersedes only codes
    issued to device-token requests (contract: device tokens).

    The API does the same work whether or not an account exists, so neither the answer nor its timing
    tells them apart: for a login, the worker checks the account and sends only if it exists.
    `device`: the request carries a valid device token for this address (its own share of the SMS budgets).
    Raises core.errors.NumberNotAllowed (400) for a number the SMS destination rules refuse (before any
    throttle is spent: the answer is the same whether or not an account exists), SmsBudgetSpent or
    EmailBudgetSpent (429) while a send budget of the channel is spent (before the address's throttles, which
    it leaves untouched; contract: "SMS volume is bounded"), RateLimited (429) and
    DependencyUnavailable (503); after an outage (core.errors.DATABASE_OUTAGES, or the broker) the throttles
    taken are given back, since it was not the user's doing. Any other database error keeps them: it comes with
    the request, and giving them back would let it be repeated at will.
    """
    if address.channel == Channel.SMS:
        refusal = sms_destination_refusal(address=address)
        if refusal is not None:
            metric_count("otp_sms_refused_total", reason=refusal.reason)
            raise NumberNotAllowed(refusal.message)
    # The budgets' read and the address's throttles in one Redis operation (docs/performance.md).
    wait, budget = throttles.send_budget_then_throttle_take(address=address, device=device)
    if wait:
        _send_budget_refuse(address=address, wait=wait, budget=budget)
    try:
        code_issue(address=address, purpose=purpose, device=device)
        metric_count("otp_codes_issued_total", channel=address.channel.value, purpose=purpose)
    except (DependencyUnavailable, *DATABASE_OUTAGES):
        throttles.send_throttle_release(address=address, device=device)
        raise


def _send_budget_refuse(*, address: Address, wait: int, budget: str) -> None:
    """Refuse a code while a send budget of the address's channel is spent, counting the refusal in
    otp_sms_refused_total or otp_email_refused_total by the budget's name. Raises SmsBudgetSpent or
    EmailBudgetSpent with the whole seconds until the budget allows a message again."""
    metric_count(f"otp_{address.channel.value}_refused_total", reason=budget)
    raise (SmsBudgetSpent if address.channel == Channel.SMS else EmailBudgetSpent)(wait)


def code_issue(*, address: Address, purpose: Purpose, device: bool = False) -> Delivery:
    """Store a new code's hash, supersede the older ones of its client class (`device`: see code_request),
    record its delivery, and enqueue it once that commits.

    `device`: issued to a request with a valid device token; its job says so, and the worker counts the message
    on that class's share of the send budgets. Returns the queued Delivery. Raises django.db.DatabaseError when
    the database fails.
    """
    now = clock_now()
    code = codes.code_generate()
    delivery = queries.code_store(
        address=address.value, channel=address.channel.value, purpose=purpose,
        provider=providers.provider_name(address.channel.value),
        code_hash_hex=codes.code_hash(address=address.value, code=code),
        now=now, expires_at=now + timedelta(seconds=settings.OTP_TTL_SECONDS), device=device,
    )
    transaction.on_commit(lambda: delivery_enqueue(delivery=delivery, code=code, device=device))
    return delivery


_publishing = threading.local()


def _producer():
    """This thread's kombu producer, taken from Celery's producer pool on its first publish and kept.

    Celery otherwise takes one from the pool and gives it back around every publish: about 2 % of the API's CPU
    under load (docs/performance.md). A kept producer survives a broker outage: kombu's publish retry revives its
    channel on a new connection, and one that failed is dropped anyway (delivery_enqueue)."""
    producer = getattr(_publishing, "producer", None)
    if producer is None:
        producer = _publishing.producer = tasks.delivery_send.app.producer_pool.acquire(block=True)
    return producer


def _producer_drop() -> None:
    producer, _publishing.producer = getattr(_publishing, "producer", None), None
    if producer is not None:
        producer.release()


# With no broker (the quick run, CELERY_TASK_ALWAYS_EAGER) jobs run in this process, one at a time, on a thread of
# their own once the request that queued them has committed. Run inside the request, a login's job (the account
# check, then the email printed) made an existing account's answer slower than an unknown one's, where the contract
# asks the same timing either way (figures in docs/reliability.md).
_in_process_jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otp-in-process-job")


def _in_process_job_run(publish) -> None:
    try:
        publish()  # Celery runs the task at once, in this thread
    except Exception:
        logger.exception("an in-process delivery job failed")
    finally:
        connections.close_all()  # this thread's own


def delivery_enqueue(*, delivery: Delivery, code: str, device: bool = False) -> None:
    """Publish the delivery job for `delivery` on its channel's queue, with `code` (and `device`) in its payload;
    with no broker (CELERY_TASK_ALWAYS_EAGER), run it on this process's job thread instead, after the request.

    Raises DependencyUnavailable("broker") when the broker refuses, after recording the delivery as failed.
    """
    payload = delivery_payload(delivery_id=delivery.id, code=code, expires_at=delivery.expires_at.timestamp(),
                               device=device)
    publish = functools.partial(
        tasks.delivery_send.apply_async,
        kwargs={"payload": payload},
        queue=queues.queue_for_channel(delivery.channel),
        # What Celery's logs and events show instead of the arguments.
        kwargsrepr=repr({"payload": {**payload, "code_sealed": "<hidden>"}}),
        headers={REQUEST_ID_HEADER: request_id_current()},
        add_to_parent=False,  # a request has no parent task: skips Celery's lookup of one
    )
    if settings.CELERY_TASK_ALWAYS_EAGER:
        try:
            _in_process_jobs.submit(_in_process_job_run, publish)
        except RuntimeError:
            # The process is shutting down (Ctrl-C on the quick run) and its job thread takes nothing more, while
            # the code is committed: the request answered 500 and the code was never sent (an attack pass: 2 to 6
            # of 10 requests in flight at the ^C). Run here instead.
            try:
                publish()
            except Exception:
                logger.exception("an in-process delivery job failed")
        return
    try:
        publish(producer=_producer())
    except kombu.exceptions.OperationalError as exc:
        _producer_drop()
        # The code exists only in this process now: record that it was never sent, withdraw it (the user keeps the
        # code before it), and tell the caller. Unless a worker took the job already (the broker had it after all):
        # then the delivery is that worker's to record, and the code may reach the user.
        if delivery_unqueued_record(delivery=delivery, last_error="Broker unavailable: not enqueued."):
            code_withdraw(address=delivery.address, device=device, expires_at=delivery.expires_at)
        raise DependencyUnavailable("broker") from exc


def delivery_payload(*, delivery_id: int, code: str, expires_at: float, device: bool = False) -> dict:
    """The delivery job's payload (version DELIVERY_PAYLOAD_VERSION): {"v": 2, "delivery_id": int, "expires_at":
    the code's expiry in Unix seconds, "code_sealed": codes.code_seal(...), "key_id": codes.code_seal_key_id(),
    "device": bool}.

    `device` (added within version 2; absent reads False): the code was asked for with a valid device token, so
    the worker counts it on that class's share of the send budgets. `key_id` (added within version 2; absent:
    every configured key is tried): the public name of the key that sealed the code, so a worker that does not
    hold it yet (a rotation reaching hosts one by one) puts the job back for another instead of refusing it.

    The code is sealed with the delivery id and the expiry as associated data, so Redis (its memory, its
    append-only file, a backup) never holds it in plaintext, and a sealed code copied into another job is refused
    (contract: Delivery).
    """
    return {"v": DELIVERY_PAYLOAD_VERSION, "delivery_id": delivery_id, "expires_at": expires_at,
            "code_sealed": codes.code_seal(code=code, delivery_id=delivery_id, expires_at=expires_at),
            "key_id": codes.code_seal_key_id(), "device": device}
