"""Where codes appear, and where they never do (issue 18, item 7; README "Where development codes appear").

Console backends print each message, code included, into the workers' logs. With DEBUG off that takes
OTP_CONSOLE_CODES=on, said by name; under the production settings (smtp, twilio) no log line holds a code.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support.env import database_url
from tests.support.http import post
from tests.support.isolation import redis_db_url
from tests.support.processes import REPO_DIR
from tests.support.redis_state import redis_flush
from tests.support.smtp import code_from_email
from tests.support.twilio_standin import code_from_sms
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_under_the_production_settings_no_log_of_the_stack_holds_a_code(stack, inbox, sms):
    assert stack.env["EMAIL_BACKEND"] == "smtp" and stack.env["SMS_BACKEND"] == "twilio"
    assert stack.env["DEBUG"] == "false" and stack.env["OTP_CONSOLE_CODES"] == "off"
    codes = []
    assert post(stack, "/register/", {"email": "quiet@example.com"}).status_code == 202
    codes.append(code_from_email(inbox.wait_for_message("quiet@example.com")))
    assert post(stack, "/register/", {"mobile": "+14155552688"}).status_code == 202
    codes.append(code_from_sms(sms.wait_for_message("+14155552688")))
    assert post(stack, "/verify-otp/", {"email": "quiet@example.com", "code": codes[0]}).status_code == 200
    assert post(stack, "/verify-otp/", {"mobile": "+14155552688", "code": codes[1]}).status_code == 200

    logs = sorted((stack.stack_dir / "log").glob("*.log"))
    assert {"api.log", "worker-email.log", "worker-sms.log", "beat.log"} <= {path.name for path in logs}
    for path in logs:
        text = path.read_text(errors="replace")
        for code in codes:
            assert code not in text, f"{path.name} holds a code"
    assert not any(code in stack.up_output for code in codes)
    assert "codes are printed" not in stack.up_output


@pytest.fixture
def console_stack(django_db_setup, django_db_blocker, tmp_path):
    """`make up` as a developer runs it from `.env.example`: console backends, DEBUG off."""
    with django_db_blocker.unblock():
        url = database_url()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "ENV_FILE": "",
           "DATABASE_URL": url, "REDIS_URL": redis_db_url(8), "CELERY_BROKER_URL": "", "DEBUG": "false",
           "EMAIL_BACKEND": "console", "SMS_BACKEND": "console", "OTP_CONSOLE_CODES": "",
           "STACK_DIR": str(tmp_path / "stack"), "HTTP_PORT": str(free_port()), "API_PORT": str(free_port()),
           "WEB_CONCURRENCY": "1", "CELERY_WORKER_CONCURRENCY": "2", "PYTHONUNBUFFERED": "1"}
    for db in (8, 9):
        client = redis.Redis.from_url(redis_db_url(db))
        redis_flush(client)
        client.close()
    yield env
    subprocess.run(["make", "down"], cwd=REPO_DIR, env=env, capture_output=True, timeout=240)


def make(target: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["make", target], cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=240)


def test_console_backends_on_the_stack_are_a_choice_made_by_name_and_print_codes_where_the_readme_says(console_stack):
    env = console_stack
    refused = make("up", env)
    lines = [line for line in (refused.stdout + refused.stderr).splitlines() if not line.startswith("make: ***")]
    assert refused.returncode != 0 and len(lines) == 1, lines
    assert lines[0].startswith("Invalid setting EMAIL_BACKEND='console'") and "OTP_CONSOLE_CODES=on" in lines[0]

    env["OTP_CONSOLE_CODES"] = "on"
    started = make("up", env)
    assert started.returncode == 0, started.stdout + started.stderr
    log_dir = Path(env["STACK_DIR"]) / "log"
    # Its last lines say where the codes will be.
    assert started.stdout.splitlines()[-2:] == [
        f"Emailed codes are printed in {log_dir}/worker-email.log (EMAIL_BACKEND=console).",
        f"SMS codes are printed in {log_dir}/worker-sms.log (SMS_BACKEND=console)."]
    base = f"http://127.0.0.1:{env['HTTP_PORT']}"
    assert post(base, "/register/", {"email": "dev@example.com"}).status_code == 202
    assert post(base, "/register/", {"mobile": "+14155552677"}).status_code == 202

    # The README's own commands find them.
    email_code = wait_for(lambda: _code(_readme_grep("worker-email", "dev@example.com", log_dir)), timeout=60,
                          message="the emailed code in worker-email.log")
    sms_code = wait_for(lambda: _code(_readme_grep("worker-sms", "+14155552677", log_dir)), timeout=60,
                        message="the SMS code in worker-sms.log")
    assert post(base, "/verify-otp/", {"email": "dev@example.com", "code": email_code}).status_code == 200
    assert post(base, "/verify-otp/", {"mobile": "+14155552677", "code": sms_code}).status_code == 200
    # Only the workers print them.
    for name in ("api", "beat", "nginx-access"):
        text = (log_dir / f"{name}.log").read_text(errors="replace") if (log_dir / f"{name}.log").exists() else ""
        assert email_code not in text and sms_code not in text

    # An email-only service (SMS turned off) is told only where its emailed codes are.
    assert make("down", env).returncode == 0
    env["OTP_SMS_PER_HOUR"] = "0"
    email_only = make("up", env)
    assert email_only.returncode == 0, email_only.stdout + email_only.stderr
    assert email_only.stdout.splitlines()[-1] == (
        f"Emailed codes are printed in {log_dir}/worker-email.log (EMAIL_BACKEND=console).")
    assert "SMS codes are printed" not in email_only.stdout


README = (REPO_DIR / "README.md").read_text()


def _readme_grep(worker: str, address: str, log_dir) -> str:
    """The README's command for `worker`'s log, run as written but for the address and the stack's folder."""
    command, example = next((line.strip(), example) for line in README.splitlines()
                            for example in ("alice@example.com", "+14155552671")
                            if line.strip().startswith("grep -F") and f"{worker}.log" in line and example in line)
    command = command.replace(example, address).replace("var/stack/log/", f"{log_dir}/")
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30).stdout


def _code(text: str) -> str | None:
    runs = re.findall(r"\b\d{6}\b", text)
    return runs[-1] if runs else None
