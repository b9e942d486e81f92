"""Housekeeping, run by beat: purge old codes, fail deliveries that can no longer be sent, flush old tokens."""
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

from otp.models import Delivery, OneTimeCode
from otp.services.delivering import CODE_EXPIRED_ERROR
from users.models import TokenFamily

logger = logging.getLogger("otp.services")


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
    """Delete expired and no-longer-active codes in batches of `batch_size` rows (default
    OTP_PURGE_BATCH_SIZE), so no long lock ever blocks the API; return how many were deleted."""
    batch_size = batch_size or settings.OTP_PURGE_BATCH_SIZE
    now = timezone.now()
    return (_batched_delete(OneTimeCode.objects.filter(expires_at__lte=now), batch_size)
            + _batched_delete(OneTimeCode.objects.exclude(status=OneTimeCode.Status.ACTIVE), batch_size))


def delivery_expire_stale() -> int:
    """Deliveries never handed to the provider before their code expired will never be: mark them failed.
    Returns how many were marked."""
    now = timezone.now()
    return (Delivery.objects
            .filter(expires_at__lte=now)
            .filter(Q(status=Delivery.Status.QUEUED) | Q(status=Delivery.Status.SENDING, lease_until__lt=now))
            .update(status=Delivery.Status.FAILED, last_error=CODE_EXPIRED_ERROR,
                    lease_until=None, updated_at=now))


def token_blacklist_flush() -> int:
    """Delete expired refresh-token records (their blacklist rows go with them, by cascade, as simplejwt's
    flushexpiredtokens does) and sign-ins (token families) whose every token has expired; return how many rows
    were deleted."""
    now = timezone.now()
    deleted, _ = OutstandingToken.objects.filter(expires_at__lte=now).delete()
    families, _ = TokenFamily.objects.filter(expires_at__lte=now).delete()
    return deleted + families


def maintenance_run() -> dict:
    """Beat's job: every housekeeping step once; returns the counts by step name."""
    result = {"codes_deleted": code_purge(), "deliveries_expired": delivery_expire_stale(),
              "tokens_flushed": token_blacklist_flush()}
    logger.info("maintenance: %s", result)
    return result
