"""A real Celery worker process on the real Redis broker, sending to a real SMTP server and a Twilio stand-in."""
import sys
import uuid

import pytest

from tests.support.env import delivery_env
from tests.support.processes import REPO_DIR, ManagedProcess


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, smtp_server, twilio_standin):
    with django_db_blocker.unblock():
        return delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)


def celery_worker(name: str, env: dict, *, queues: str = "email,sms,maintenance", pool: str = "threads",
                  concurrency: int = 4) -> ManagedProcess:
    args = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-n", f"{name}-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "INFO"]
    env = {**env, "CELERY_WORKER_POOL": pool, "CELERY_WORKER_CONCURRENCY": str(concurrency)}
    return ManagedProcess(name, args, env=env, log_dir=REPO_DIR / "var" / "test-logs")


@pytest.fixture(scope="session")
def worker(worker_env):
    process = celery_worker("worker", worker_env).start()
    process.wait_for_log("ready.")
    yield process
    process.stop()
