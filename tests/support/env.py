"""The environment handed to processes the tests start (workers, the native stack)."""
import os
import re
import sys
from pathlib import Path

from django.db import connection

TWILIO_ACCOUNT_SID = "AC" + "0" * 32
TWILIO_AUTH_TOKEN = "test-auth-token"
TWILIO_FROM_NUMBER = "+14155550100"


def database_url() -> str:
    """The test database pytest-django created, for processes outside this one."""
    db = connection.settings_dict
    # Until a test that uses the database has run, pytest-django leaves NAME as configured: name the test
    # database it creates (tests/support/isolation.py sets TEST NAME) rather than the configured one.
    name = db["NAME"] if db["NAME"].startswith("test_") else (db.get("TEST", {}).get("NAME") or f"test_{db['NAME']}")
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"


def database_url_through(env: dict, path) -> dict:
    """`env` with its DATABASE_URL's host and port replaced by `path`'s (anything with `host` and `port`: a
    TcpProxy, a SilentLink), so the processes started with it reach PostgreSQL that way."""
    return {**env, "DATABASE_URL": re.sub(r"@[^@/]+/", f"@{path.host}:{path.port}/", env["DATABASE_URL"], count=1)}


def delivery_env(*, smtp_server, twilio_standin) -> dict:
    """This process's environment, pointed at the test database, the test SMTP server and the Twilio stand-in."""
    return {
        **os.environ,
        # The start scripts run `gunicorn` and `celery` from PATH: this interpreter's, i.e. the project's .venv.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ENV_FILE": "",
        "DATABASE_URL": database_url(),
        "EMAIL_BACKEND": "smtp",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_server.port),
        "SMS_BACKEND": "twilio",
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": TWILIO_FROM_NUMBER,
        "TWILIO_API_BASE_URL": twilio_standin.base_url,
        # Production's choice: no console backend may print a code (the settings refuse one with DEBUG off).
        "OTP_CONSOLE_CODES": "off",
        "OTP_SEND_RETRY_BACKOFF_SECONDS": "0.05",
        # The test SMTP server answers at once unless a test holds its final reply: then seconds, not 15, decide.
        "EMAIL_FINAL_REPLY_TIMEOUT_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }


# The SMS channel off (its provider the console one, which waits for nothing), so the delivery lease is the SMTP
# provider's alone: 10 s for its commands, delivery_env's 2 s for the final reply, 16 s to record the outcome and a
# 5 s margin, 33 s. The shortest visibility timeout the settings accept is then 35 s (above the lease plus 1 s),
# where Twilio's fixed wait asks for 51 s: tests that wait out a lease or a visibility timeout take 16 s less.
EMAIL_ONLY = {"SMS_BACKEND": "console", "OTP_SMS_PER_HOUR": "0", "CELERY_VISIBILITY_TIMEOUT_SECONDS": "35"}
