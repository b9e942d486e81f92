"""The README's first command, `make run`: SQLite, jobs in-process, the email printed on the console.

Started as `make run` starts it (DEBUG=true, no DATABASE_URL or REDIS_URL), on a database file of its own.
"""
import os
import re
import sys

import pytest
import requests

from tests.support.processes import ManagedProcess
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.timeout(120)


def code_from_console(log: str, address: str) -> str:
    """The code in the last email to `address` the console backend printed, read as a person would."""
    emails = [block for block in log.split("-" * 79) if f"To: {address}" in block]
    assert emails, f"no email to {address} on the console:\n{log[-2000:]}"
    runs = set(re.findall(r"\b\d{6}\b", emails[-1]))
    assert len(runs) == 1, f"expected one code in the email, found {runs}"
    return runs.pop()


@pytest.fixture
def quick_run(tmp_path):
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "EMAIL_BACKEND", "SMS_BACKEND")}
    env.update({"ENV_FILE": "", "DEBUG": "true", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                "PYTHONUNBUFFERED": "1"})
    manage = [sys.executable, "manage.py"]
    migrate = ManagedProcess("quick-migrate", [*manage, "migrate", "--noinput"], env=env, log_dir=tmp_path).start()
    assert migrate.process.wait(timeout=60) == 0, migrate.log()
    server = ManagedProcess("quick-run", [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"], env=env,
                            log_dir=tmp_path).start()
    server.wait_for_log("Quit the server with")
    yield f"http://127.0.0.1:{port}", server
    server.stop()


def test_register_verify_and_profile_on_the_embedded_defaults(quick_run):
    url, server = quick_run
    assert requests.post(f"{url}/register/", json={"email": "quick@example.com"}, timeout=10).status_code == 202
    code = wait_for(lambda: "To: quick@example.com" in server.log() and code_from_console(server.log(), "quick@example.com"),
                    message="the email on the console")

    tokens = requests.post(f"{url}/verify-otp/", json={"email": "quick@example.com", "code": code}, timeout=10)
    assert tokens.status_code == 200, tokens.text
    profile = requests.get(f"{url}/profile/", headers={"Authorization": f"Bearer {tokens.json()['access']}"},
                           timeout=10)
    assert profile.json()["email"] == "quick@example.com"
    # The in-process job recorded its delivery as sent, through the same claim the workers use.
    assert "delivery 1 sent by email" in server.log()
