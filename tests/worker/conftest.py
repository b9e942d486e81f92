"""A real Celery worker process on the real Redis broker, sending to a real SMTP server and a Twilio stand-in."""
import pytest

from tests.support.env import delivery_env
from tests.support.processes import celery_worker


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, smtp_server, twilio_standin):
    with django_db_blocker.unblock():
        return delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)


@pytest.fixture(scope="session")
def worker(worker_env):
    process = celery_worker("worker", worker_env).start()
    process.wait_for_log("ready.")
    yield process
    process.stop()
