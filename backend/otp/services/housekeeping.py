"""Housekeeping, run by beat: purge old codes, fail deliveries that can no longer be sent, delete delivery records
past their retention, flush old tokens, expired device tokens, sessions and admin access logs."""
import logging
from datetime import timedelta

from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db.models import Min, Q
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

from otp.models import Delivery, OneTimeCode
from otp.services.delivering import CODE_EXPIRED_ERROR
from users.models import DeviceToken, TokenFamily
from core.clock import clock_now

logger = logging.getLogger("otp.services")


def _batched_delete(queryset, batch_size: int) -> int:
    deleted = 0
    while True:
        # One statement a batch (DELETE ... WHERE id IN (SELECT id ... LIMIT n)): the ids never travel to
        # Python. Nothing refers to codes or device tokens, so Django deletes without collecting related rows.
        count, _ = queryset.model.objects.filter(id__in=queryset.values("id")[:batch_size]).delete()
        deleted += count
        if count < batch_size:
            return deleted


def code_purge(*, batch_size: int | None = None) -> int:
    """Delete expired codes, and used and burned ones, in batches of `batch_size` rows (default
    OTP_PURGE_BATCH_SIZE), so no long lock ever blocks the API; return how many were deleted. Superseded and unsent
    codes stay until they expire: if the code that superseded one is never sent, it is the user's again, found
    through the codes' `supersedes_id` links (otp.services.code_withdraw)."""
    batch_size = batch_size or settings.OTP_PURGE_BATCH_SIZE
    now = clock_now()
    spent = OneTimeCode.objects.filter(status__in=[OneTimeCode.Status.USED, OneTimeCode.Status.BURNED])
    return (_batched_delete(OneTimeCode.objects.filter(expires_at__lte=now), batch_size)
            + _batched_delete(spent, batch_size))


def device_token_purge(*, batch_size: int | None = None) -> int:
    """Delete expired device tokens (past OTP_DEVICE_TOKEN_TTL_DAYS; revoked ones go when they expire, so the
    admin sees a revocation until then) in batches of `batch_size` rows (default OTP_PURGE_BATCH_SIZE); return
    how many were deleted (contract: Delivery, "expired device tokens are dropped")."""
    batch_size = batch_size or settings.OTP_PURGE_BATCH_SIZE
    return _batched_delete(DeviceToken.objects.filter(expires_at__lte=clock_now()), batch_size)


def delivery_expire_stale() -> int:
    """Deliveries never handed to the provider before their code expired will never be: mark them failed.
    Returns how many were marked."""
    now = clock_now()
    return (Delivery.objects
            .filter(expires_at__lte=now)
            .filter(Q(status=Delivery.Status.QUEUED) | Q(status=Delivery.Status.SENDING, lease_until__lt=now))
            .update(status=Delivery.Status.FAILED, last_error=CODE_EXPIRED_ERROR,
                    lease_until=None, updated_at=now))


def delivery_purge(*, batch_size: int | None = None) -> int:
    """Delete delivery records created more than OTP_DELIVERY_RETENTION_DAYS days ago, in batches of at most
    `batch_size` ids (default OTP_PURGE_BATCH_SIZE); return how many were deleted (contract: Delivery).

    Ids grow with created_at (a sequence, and the issuing request's clock, both taken at insert), so the records
    to delete are the lowest ids. Each batch is one DELETE of an id range, read through the primary key, and the
    walk stops at the first range that still holds a record to keep: no statement scans the table or the
    records kept, however large it grows, and no index on created_at has to be kept up on every insert.
    Records inserted by concurrent requests may be a few milliseconds out of order; one that is old enough but
    behind a younger one goes in the next run.
    """
    batch_size = batch_size or settings.OTP_PURGE_BATCH_SIZE
    cutoff = clock_now() - timedelta(days=settings.OTP_DELIVERY_RETENTION_DAYS)
    deleted = 0
    low = Delivery.objects.aggregate(low=Min("id"))["low"]
    # The lowest id still young enough to keep means nothing is due: the usual run reads one row.
    while low is not None and Delivery.objects.filter(id=low, created_at__lt=cutoff).exists():
        batch = Delivery.objects.filter(id__gte=low, id__lt=low + batch_size)
        # Nothing refers to deliveries, so Django deletes without collecting related rows first: one statement.
        count, _ = batch.filter(created_at__lt=cutoff).delete()
        deleted += count
        if batch.exists():  # a record young enough to keep: every later id is younger still
            break
        # The next id that exists, so a gap in the sequence costs one lookup, not a batch per missing range.
        low = Delivery.objects.filter(id__gte=low + batch_size).aggregate(low=Min("id"))["low"]
    return deleted


def session_purge() -> int:
    """Delete expired admin sessions, as Django's clearsessions does; return how many were deleted.
    Without it the sessions table keeps every admin login forever."""
    deleted, _ = Session.objects.filter(expire_date__lt=clock_now()).delete()
    return deleted


def admin_access_log_purge() -> int:
    """Delete django-axes' records of admin sign-ins (client IP, user agent, username) older than
    OTP_DELIVERY_RETENTION_DAYS, through axes' own handler; return how many were deleted. Axes keeps them forever
    otherwise; admin sign-ins are few, so one statement does."""
    return AxesProxyHandler.reset_logs(age_days=settings.OTP_DELIVERY_RETENTION_DAYS)


def token_blacklist_flush() -> int:
    """Delete expired refresh-token records (their blacklist rows go with them, by cascade, as simplejwt's
    flushexpiredtokens does) and sign-ins (token families) whose every token has expired; return how many rows
    were deleted."""
    now = clock_now()
    deleted, _ = OutstandingToken.objects.filter(expires_at__lte=now).delete()
    families, _ = TokenFamily.objects.filter(expires_at__lte=now).delete()
    return deleted + families


def maintenance_run() -> dict:
    """Beat's job: every housekeeping step once; returns the counts by step name."""
    result = {"codes_deleted": code_purge(), "deliveries_expired": delivery_expire_stale(),
              "deliveries_deleted": delivery_purge(), "tokens_flushed": token_blacklist_flush(),
              "device_tokens_deleted": device_token_purge(),
              "sessions_deleted": session_purge(), "admin_access_logs_deleted": admin_access_log_purge()}
    logger.info("maintenance: %s", result)
    return result
