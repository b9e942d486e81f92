"""The Celery app shared by the API (to enqueue) and the workers and beat (to run)."""
import logging
import os

from celery import Celery, bootsteps, signals
from kombu.transport import TRANSPORT_ALIASES

from core.broker import BrokerUnfit, BrokerUnreachable, broker_redis_check

logger = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# redis:// and rediss:// brokers get kombu's Redis transport keeping one client per channel (core/broker.py).
# Registered under the schemes' own names, so kombu still reads everything else, TLS for rediss:// included,
# off the URL as it would for its own transport.
TRANSPORT_ALIASES.update(redis="core.broker:Transport", rediss="core.broker:Transport")

app = Celery("otp_service")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def broker_redis_check_at_start(celery_app) -> None:
    """The start-up check of the broker's Redis (core.broker.broker_redis_check) for the API, a worker or beat.

    Raises SystemExit with one line naming CELERY_BROKER_URL when the broker would lose jobs. An unreachable
    broker is only logged: it says nothing about the policy, and each process checks again once it connects
    (a worker on every connection, the API in /readyz).
    """
    from django.conf import settings

    try:
        broker_redis_check(celery_app, cache_url=settings.REDIS_URL)
    except BrokerUnfit as exc:
        raise SystemExit(str(exc)) from None
    except BrokerUnreachable as exc:
        logger.warning("the broker's Redis is not answering (%s): its eviction policy is checked once it does", exc)


class BrokerRedisCheck(bootsteps.StartStopStep):
    """Checks the broker's Redis each time the worker's consumer has connected to it, so a worker started
    before Redis, or reconnected to another one, is checked too; an unfit one stops the worker."""

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, consumer) -> None:
        broker_redis_check_at_start(consumer.app)


app.steps["consumer"].add(BrokerRedisCheck)


@signals.celeryd_init.connect
def _worker_concurrency_from_connections(sender, instance, conf, options, **kwargs) -> None:
    """Unless CELERY_WORKER_CONCURRENCY (or --concurrency) says otherwise, a worker gets one thread per connection
    it may open to its provider: EMAIL_MAX_CONNECTIONS for the email queue, SMS_MAX_CONNECTIONS for sms (the larger
    of them for a worker of both), else CELERY_WORKER_DEFAULT_CONCURRENCY. Sending is waiting on the provider,
    so a worker sends about threads / provider latency messages a second (50 / 0.3 s = 166 for email)."""
    from django.conf import settings

    from otp import queues as otp_queues

    if options.get("concurrency") or conf.worker_concurrency:
        return
    names = options.get("queues") or []
    names = set(names.split(",") if isinstance(names, str) else names)
    caps = [cap for queue, cap in ((otp_queues.EMAIL, settings.EMAIL_MAX_CONNECTIONS),
                                   (otp_queues.SMS, settings.SMS_MAX_CONNECTIONS)) if queue in names]
    conf.worker_concurrency = max(caps, default=settings.CELERY_WORKER_DEFAULT_CONCURRENCY)


@signals.beat_init.connect
def _beat_broker_redis_check(sender, **kwargs) -> None:
    broker_redis_check_at_start(sender.app)
