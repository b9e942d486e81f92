"""Celery tasks: thin, explicitly named, safe to run twice. They take ids and plain values and call a service.

Task names are part of the wire format: a queued job names its task, so a name must never change with the code
(tests/unit/test_tasks.py pins them). Services import this module; a task imports the services inside its body,
so there is no import cycle.
"""
import logging
import time

import kombu.exceptions
from celery import shared_task, signals
from celery.exceptions import Reject, Retry
from celery.worker import state as worker_state
from django.conf import settings
from django.db import InterfaceError, OperationalError

from core.broker import REFUSAL_PAUSE_SECONDS
from core.clock import clock_seconds
from core.observability import REQUEST_ID_HEADER, request_id_bound, request_id_current
from otp import codes

logger = logging.getLogger(__name__)

DELIVERY_SEND = "otp.delivery_send"
MAINTENANCE_RUN = "otp.maintenance_run"
# The names these tasks had before they were named explicitly. Jobs queued under them before a deploy must
# still run after it: keep them registered for at least one release after the rename.
DELIVERY_SEND_OLD_NAME = "otp.tasks.delivery_send_task"
MAINTENANCE_RUN_OLD_NAME = "otp.tasks.maintenance_run"

DATABASE_RETRY_MAX_SECONDS = 5
# How long before its visibility timeout a job whose retry the broker does not take is given back (seconds):
# _delivery_retry_published holds it no longer, so no other worker is handed it while this one still holds it.
RETRY_HOLD_MARGIN_SECONDS = 5

# max_retries=None: no limit of Celery's own (its default is 3 retries). The tries are bounded by the service
# (OTP_SEND_MAX_RETRIES, the code's life) and by this module's rules for outages and unknown payload versions;
# `retry(max_retries=None)` would not do it, since there None means the task's own limit.
_DELIVERY_OPTIONS = dict(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=None)
# A job run in-process (the quick run: CELERY_TASK_ALWAYS_EAGER) retries at once, inside the same call, with no
# pause: without a limit, an outage would recurse until the stack overflows. Celery's default, as before.
IN_PROCESS_MAX_RETRIES = 3


def _retries_allowed(task) -> int | None:
    """The `max_retries` of a retry of `task`: None (no limit) on a worker, IN_PROCESS_MAX_RETRIES in-process."""
    return IN_PROCESS_MAX_RETRIES if task.request.is_eager else None


# The newest payload version this code reads (otp.services.issuing.DELIVERY_PAYLOAD_VERSION writes it). 1 holds
# the code in plaintext (jobs queued before 2), 2 holds it sealed (otp.codes.code_seal).
DELIVERY_PAYLOAD_VERSION_READ = 2
UNKNOWN_VERSION_RETRY_SECONDS = 1.0


class PayloadVersionUnknown(Exception):
    """A job written by a newer release: a worker of that release must run it."""


def _delivery_arguments(delivery_id: int | None, code: str | None, payload: dict | None) -> tuple[int, str, float | None]:
    """(delivery id, code, code's expiry as a Unix time in seconds or None) from any message format: the
    versioned payload (2: the code sealed; 1: in plaintext), or the keyword arguments jobs were published with
    before it.

    Raises PayloadVersionUnknown for a payload version newer than DELIVERY_PAYLOAD_VERSION_READ,
    otp.codes.CodeSealKeyUnknown when a version 2 code names a key this worker does not hold, and
    otp.codes.CodeSealInvalid when it does not open for its delivery and expiry.
    """
    if payload is None:
        return delivery_id, code, None
    version = int(payload.get("v", 1))
    if version > DELIVERY_PAYLOAD_VERSION_READ:
        raise PayloadVersionUnknown(f"payload version {payload.get('v')}")
    delivery_id, expires_at = payload["delivery_id"], payload.get("expires_at")
    if version == 1:
        return delivery_id, payload["code"], expires_at
    code = codes.code_unseal(sealed=payload.get("code_sealed"), delivery_id=delivery_id, expires_at=expires_at,
                             key_id=payload.get("key_id"))
    return delivery_id, code, expires_at


def _kwargs_to_republish(payload: dict | None, delivery_id: int, code: str, expires_at: float | None) -> dict | None:
    """What a retry publishes: None (the job's own arguments) when its code is sealed already; otherwise the job
    as a sealed payload, so a job queued before codes were sealed does not put its code back in the broker in
    plaintext."""
    from otp import services

    if payload is not None and int(payload.get("v", 1)) >= 2:
        return None
    if expires_at is None:  # a job older than the payload: its code, issued before now, expires within the TTL
        expires_at = clock_seconds() + settings.OTP_TTL_SECONDS
    return {"payload": services.delivery_payload(delivery_id=delivery_id, code=code, expires_at=expires_at)}


def _request_id_of(request) -> str | None:
    """The id of the request that enqueued this job, from the job's message header.

    A worker makes each message header an attribute of the task's request; a job run in-process
    (CELERY_TASK_ALWAYS_EAGER, the quick run) gets its headers only as the request's `headers` dict.
    """
    return getattr(request, REQUEST_ID_HEADER, None) or (getattr(request, "headers", None) or {}).get(REQUEST_ID_HEADER)


@signals.task_prerun.connect
def _request_id_bind(task=None, **kwargs) -> None:
    """Every line a job's run writes carries the id of the request that enqueued it (the message header
    REQUEST_ID_HEADER), Celery's own lines included: a failure, a retry, a reject (they carried "-" when only the
    service's call was bound). Bound for the task's run, from Celery's task_prerun to its task_postrun."""
    task.request.otp_request_id_binding = binding = request_id_bound(_request_id_of(task.request))
    binding.__enter__()


@signals.task_postrun.connect
def _request_id_unbind(task=None, **kwargs) -> None:
    binding = getattr(task.request, "otp_request_id_binding", None)
    if binding is not None:
        binding.__exit__(None, None, None)


def _delivery_send_run(task, delivery_id: int | None = None, code: str | None = None, payload: dict | None = None) -> None:
    from otp import services

    started = time.monotonic()  # about when the job was taken: its visibility timeout counts from then
    try:
        delivery_id, code, expires_at = _delivery_arguments(delivery_id, code, payload)
    except PayloadVersionUnknown as exc:
        # Mid-deploy, an older worker may meet a newer job: put it back for a newer worker, within its code's life.
        if clock_seconds() >= float(payload.get("expires_at", 0)):
            logger.warning("delivery %s: %s, and its code has expired: job dropped", payload.get("delivery_id"), exc)
            return
        logger.warning("delivery %s: %s is newer than this worker reads: put back", payload.get("delivery_id"), exc)
        raise _delivery_retry_published(task, delivery_id=payload.get("delivery_id"),
                                        expires_at=float(payload["expires_at"]), started=started,
                                        countdown=UNKNOWN_VERSION_RETRY_SECONDS, kwargs=None)
    except codes.CodeSealKeyUnknown as exc:
        # Keys rotated on the process that sealed it and not yet here (or this one's fallback dropped too early): a
        # worker that holds the key may run it, within its code's life; refused (recorded) once that has passed.
        if clock_seconds() >= float(payload.get("expires_at", 0)):
            logger.warning("delivery %s: %s, and its code has expired: job refused", payload.get("delivery_id"), exc)
            services.delivery_refuse(delivery_id=payload["delivery_id"], reason=services.KEY_UNKNOWN_ERROR,
                                     device=bool(payload.get("device", False)))
            return
        logger.warning("delivery %s: %s: put back for a worker that holds it", payload.get("delivery_id"), exc)
        raise _delivery_retry_published(task, delivery_id=payload.get("delivery_id"),
                                        expires_at=float(payload["expires_at"]), started=started,
                                        countdown=UNKNOWN_VERSION_RETRY_SECONDS, kwargs=None)
    except codes.CodeSealInvalid as exc:
        # Never sent, and recorded, so support can tell the user why no code came.
        logger.warning("delivery %s: job refused, its sealed code did not open (%s)", payload.get("delivery_id"), exc)
        services.delivery_refuse(delivery_id=payload["delivery_id"], reason=services.PAYLOAD_REFUSED_ERROR,
                                 device=bool(payload.get("device", False)))
        return
    try:
        services.delivery_send(delivery_id=delivery_id, code=code, device=bool((payload or {}).get("device", False)))
    except services.DeliveryRetry as exc:
        # The service bounds the number of tries and keeps them inside the code's life.
        countdown = exc.countdown
    except (OperationalError, InterfaceError) as exc:
        if expires_at is not None and clock_seconds() >= expires_at:
            # The code is dead: no try can deliver it, and no record can be written while the database is down.
            logger.warning("delivery %s: database unavailable (%s) and the code has expired: job dropped",
                           delivery_id, exc.__class__.__name__)
            return
        # The database is down: the job would be lost if it failed now. Try again soon.
        countdown = min(DATABASE_RETRY_MAX_SECONDS, 0.5 * 2 ** min(task.request.retries, 4))
        logger.warning("delivery %s: database unavailable (%s), trying again in %.1fs", delivery_id,
                       exc.__class__.__name__, countdown)
    else:
        return
    raise _delivery_retry_published(task, delivery_id=delivery_id, expires_at=expires_at, started=started,
                                    countdown=countdown,
                                    kwargs=_kwargs_to_republish(payload, delivery_id, code, expires_at))


def _delivery_retry_published(task, *, delivery_id: int | None, expires_at: float | None, started: float,
                              countdown: float, kwargs: dict | None) -> Retry:
    """Publish the retry of the delivery job `task` runs, `countdown` seconds on, and return Celery's Retry for
    the task to raise (which acknowledges the job taken). `kwargs` are the retry's arguments (None: the job's own);
    `expires_at` is the code's expiry (Unix seconds), or None for a job older than the payload; `started` is when
    the run began (time.monotonic() seconds).

    Celery's own retry rejects the job without requeue when the publish fails: under OOM that reject (a delete,
    which a full Redis allows) went through and the code was never sent (a broker refusing the delete too kept the
    job for its visibility timeout). While the broker cannot take the publish (kombu.exceptions.OperationalError:
    unreachable, or refusing writes for its own state), it is tried again every core.broker.REFUSAL_PAUSE_SECONDS,
    the job held unacknowledged, for as long as its visibility timeout (CELERY_VISIBILITY_TIMEOUT_SECONDS, less
    RETRY_HOLD_MARGIN_SECONDS, from `started`) and the worker's run allow: held longer, the broker would hand it to
    another worker as well. Then the job is rejected with requeue (celery.exceptions.Reject): back on its queue
    if the broker takes it, else still recorded, for the visibility timeout to restore. Raises Celery's Reject
    without requeue (the job dropped) once the code has expired, or for any other publish failure. In-process
    (CELERY_TASK_ALWAYS_EAGER) nothing is published.
    """
    code_deadline = expires_at if expires_at is not None else clock_seconds() + settings.OTP_TTL_SECONDS
    hold_deadline = started + settings.CELERY_VISIBILITY_TIMEOUT_SECONDS - RETRY_HOLD_MARGIN_SECONDS
    waiting_since = None
    while True:
        try:
            retry = task.retry(countdown=countdown, max_retries=_retries_allowed(task), kwargs=kwargs, throw=False,
                               headers={REQUEST_ID_HEADER: request_id_current()})
        except Reject as exc:
            if not isinstance(exc.reason, kombu.exceptions.OperationalError) or clock_seconds() >= code_deadline:
                raise
            if time.monotonic() >= hold_deadline or worker_state.should_stop is not None \
                    or worker_state.should_terminate is not None:
                logger.warning("delivery %s: the broker did not take its retry (%s): job put back", delivery_id,
                               exc.reason)
                raise Reject(exc.reason, requeue=True) from exc
            if waiting_since is None:
                waiting_since = time.monotonic()
                logger.warning("delivery %s: the broker did not take its retry (%s): waiting for the broker",
                               delivery_id, exc.reason)
            time.sleep(REFUSAL_PAUSE_SECONDS)
            continue
        if waiting_since is not None:
            logger.warning("delivery %s: retry published after %.1f s waiting for the broker", delivery_id,
                           time.monotonic() - waiting_since)
        return retry


@shared_task(name=DELIVERY_SEND, **_DELIVERY_OPTIONS)
def delivery_send(self, delivery_id: int | None = None, code: str | None = None, payload: dict | None = None) -> None:
    """Deliver one code. `payload` is {"v": 2, "delivery_id": int, "expires_at": Unix seconds, "code_sealed": str}
    (otp.services.issuing.delivery_payload), or {"v": 1, ..., "code": str} for jobs queued before codes were
    sealed; the bare `delivery_id` and `code` keywords are the format of jobs queued before the payload existed."""
    _delivery_send_run(self, delivery_id, code, payload)


@shared_task(name=DELIVERY_SEND_OLD_NAME, **_DELIVERY_OPTIONS)
def delivery_send_old_name(self, delivery_id: int | None = None, code: str | None = None,
                           payload: dict | None = None) -> None:
    """delivery_send under its name before the rename, for jobs queued then."""
    _delivery_send_run(self, delivery_id, code, payload)


def _maintenance_run() -> None:
    from otp import services

    services.maintenance_run()


@shared_task(name=MAINTENANCE_RUN, ignore_result=True)
def maintenance_run() -> None:
    """Beat's housekeeping (otp.services.housekeeping)."""
    _maintenance_run()


@shared_task(name=MAINTENANCE_RUN_OLD_NAME, ignore_result=True)
def maintenance_run_old_name() -> None:
    """maintenance_run under its name before the rename, for jobs queued then."""
    _maintenance_run()
