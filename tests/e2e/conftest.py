"""The native stack (`make up`: nginx, gunicorn, a worker per queue, beat) on free ports, driven over HTTP only."""
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.env import delivery_env
from tests.support.isolation import redis_db_url
from tests.support.processes import REPO_DIR
from tests.support.redis_state import redis_flush
from tests.support.waiting import free_port


def stack_redis_url() -> str:
    """Database 14 of this run's Redis, apart from the tests' own. Read when a fixture runs: a conftest named on
    pytest's command line is imported before pytest_configure has started the run's redis-server."""
    return redis_db_url(14)


@dataclass
class Stack:
    url: str
    http_port: int
    api_port: int
    stack_dir: Path
    env: dict
    up_output: str = ""

    def make(self, target: str, **env) -> subprocess.CompletedProcess:
        return subprocess.run(["make", target], cwd=REPO_DIR, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=240)

    def log(self, name: str) -> str:
        path = self.stack_dir / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def stack_env(base_env: dict, *, http_port: int, api_port: int, stack_dir: Path) -> dict:
    return {
        **base_env,
        "STACK_DIR": str(stack_dir),
        "HTTP_PORT": str(http_port),
        "API_PORT": str(api_port),
        "REDIS_URL": stack_redis_url(),
        "TRUSTED_PROXY_COUNT": "1",
        "OTP_IP_SEND_RATE": "5/min",
        "OTP_IP_VERIFY_RATE": "30/min",
        "EDGE_SEND_RATE": "2r/s",
        "EDGE_SEND_BURST": "5",
        "WEB_CONCURRENCY": "2",
        "CELERY_WORKER_CONCURRENCY": "4",
        # One origin other than the stack's own may call it from a browser: the same port under the name
        # localhost (tests/e2e/test_browser_client.py tries it, and an origin not listed).
        "CORS_ALLOWED_ORIGINS": f"http://localhost:{http_port}",
        # This stack lives for the whole session on the test database every later test uses. At the default
        # interval (300 s) its beat's housekeeping would delete, mid-test, the used and burned codes another test
        # is about to read (tests/faults/test_attacks.py's brute-force test lost its code that way).
        "OTP_PURGE_INTERVAL_SECONDS": "86400",
        # Non-ASCII local parts accepted, as an operator whose relays speak SMTPUTF8 runs it (the suite's SMTP
        # server does): tests/e2e/test_native_stack.py signs one in.
        "EMAIL_ALLOW_SMTPUTF8": "true",
    }


@pytest.fixture(scope="session")
def stack(django_db_setup, django_db_blocker, smtp_server, twilio_standin):
    with django_db_blocker.unblock():
        base_env = delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)
    for old in (REPO_DIR / "var").glob("test-stack-*"):  # logs of the previous run's stacks
        shutil.rmtree(old, ignore_errors=True)
    http_port, api_port = free_port(), free_port()
    stack_dir = REPO_DIR / "var" / f"test-stack-{http_port}"
    running = Stack(f"http://127.0.0.1:{http_port}", http_port, api_port, stack_dir,
                    stack_env(base_env, http_port=http_port, api_port=api_port, stack_dir=stack_dir))
    result = running.make("up")
    assert result.returncode == 0, f"make up failed:\n{result.stdout}\n{result.stderr}"
    running.up_output = result.stdout + result.stderr  # what `make up` printed, for tests of what it shows
    yield running
    result = running.make("down")
    assert result.returncode == 0, result.stderr


@pytest.fixture(autouse=True)
def stack_redis_clean():
    """Throttle state of the stack's Redis database, reset for each test (exchange bindings stay)."""
    client = redis.Redis.from_url(stack_redis_url())
    redis_flush(client)
    yield
    client.close()
