"""A real Celery worker process on the real Redis broker, sending to a real SMTP server and a Twilio stand-in."""
import os
import sys
import uuid

import pytest
from django.db import connection

from tests.support.processes import REPO_DIR, ManagedProcess
from tests.support.smtp import SmtpServer
from tests.support.twilio_standin import TwilioStandIn

TWILIO_ACCOUNT_SID = "AC" + "0" * 32
TWILIO_AUTH_TOKEN = "test-auth-token"
TWILIO_FROM_NUMBER = "+14155550100"


@pytest.fixture(scope="session")
def smtp_server():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def twilio_standin():
    standin = TwilioStandIn().start()
    yield standin
    standin.stop()


def database_url() -> str:
    """The test database pytest-django created, for processes outside this one."""
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, smtp_server, twilio_standin):
    with django_db_blocker.unblock():
        url = database_url()
    return {
        **os.environ,
        "DATABASE_URL": url,
        "EMAIL_BACKEND": "smtp",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_server.port),
        "SMS_BACKEND": "twilio",
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": TWILIO_FROM_NUMBER,
        "TWILIO_API_BASE_URL": twilio_standin.base_url,
        "OTP_SEND_RETRY_BACKOFF_SECONDS": "0.05",
        "PYTHONUNBUFFERED": "1",
    }


def celery_worker(name: str, env: dict, *, queues: str = "email,sms,maintenance", pool: str = "threads",
                  concurrency: int = 4) -> ManagedProcess:
    args = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-P", pool, "-c", str(concurrency),
            "-n", f"{name}-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "INFO"]
    return ManagedProcess(name, args, env=env, log_dir=REPO_DIR / "var" / "test-logs")


@pytest.fixture(scope="session")
def worker(worker_env):
    process = celery_worker("worker", worker_env).start()
    process.wait_for_log("ready.")
    yield process
    process.stop()


@pytest.fixture
def inbox(smtp_server):
    smtp_server.inbox.reset()
    return smtp_server.inbox


@pytest.fixture
def sms(twilio_standin):
    twilio_standin.reset()
    return twilio_standin
