"""Celery tasks: thin wrappers that take ids and plain values and call a service. Safe to run twice."""
import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from core.observability import request_id_bound, request_id_current
from otp import services

logger = logging.getLogger(__name__)

DATABASE_RETRY_MAX_SECONDS = 5


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def delivery_send_task(self, delivery_id: int, code: str) -> None:
    # The id of the request that issued the code travels as a message header, so this job's lines carry it.
    with request_id_bound(getattr(self.request, services.REQUEST_ID_HEADER, None)):
        try:
            services.delivery_send(delivery_id=delivery_id, code=code, retries_done=self.request.retries)
        except services.DeliveryRetry as exc:
            # The service bounds the number of tries and keeps them inside the code's life.
            countdown = exc.countdown
        except (OperationalError, InterfaceError) as exc:
            # The database is down: the job would be lost if it failed now. Try again soon; once the code
            # has expired the service drops the job itself.
            countdown = min(DATABASE_RETRY_MAX_SECONDS, 0.5 * 2 ** min(self.request.retries, 4))
            logger.warning("delivery %s: database unavailable (%s), trying again in %.1fs", delivery_id,
                           exc.__class__.__name__, countdown)
        else:
            return
        raise self.retry(countdown=countdown, max_retries=None,
                         headers={services.REQUEST_ID_HEADER: request_id_current()})


@shared_task(ignore_result=True)
def maintenance_run() -> None:
    services.maintenance_run()
