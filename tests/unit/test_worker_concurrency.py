"""A worker's threads follow the connections it may open to its provider, unless CELERY_WORKER_CONCURRENCY says."""
import pytest
from celery import Celery

from config.celery import _worker_concurrency_from_connections


@pytest.mark.parametrize("queues, expected", [
    (["email"], 40), ("email", 40), (["sms"], 12), (["email", "sms", "maintenance"], 40), (["maintenance"], 8),
])
def test_unset_concurrency_is_the_queue_providers_connection_cap(settings, queues, expected):
    settings.EMAIL_MAX_CONNECTIONS, settings.SMS_MAX_CONNECTIONS = 40, 12
    conf = Celery("concurrency-test").conf
    conf.worker_concurrency = None

    _worker_concurrency_from_connections(sender="w@h", instance=None, conf=conf, options={"queues": queues})

    assert conf.worker_concurrency == expected


def test_a_set_concurrency_wins(settings):
    settings.EMAIL_MAX_CONNECTIONS = 40
    conf = Celery("concurrency-test").conf
    conf.worker_concurrency = 3
    _worker_concurrency_from_connections(sender="w@h", instance=None, conf=conf, options={"queues": ["email"]})
    assert conf.worker_concurrency == 3

    conf.worker_concurrency = None
    _worker_concurrency_from_connections(sender="w@h", instance=None, conf=conf,
                                         options={"queues": ["email"], "concurrency": 5})
    assert conf.worker_concurrency is None  # --concurrency 5 reaches the worker itself
