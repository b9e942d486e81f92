"""Test set-up shared by every suite: the real PostgreSQL and Redis on 127.0.0.1, clean for each test."""
import os
from pathlib import Path

import pytest

from tests.support import isolation
from tests.support.redis_state import redis_flush
from tests.support.smtp import SmtpServer
from tests.support.twilio_standin import TwilioStandIn

# The environment the suite runs in; a value already in the environment wins, so CI can point elsewhere.
# Django reads settings in pytest_configure below, after these are in place. REDIS_URL, unless given, is this
# run's own redis-server, and the test database's name ends in the run's id (tests/support/isolation.py).
TEST_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "ENV_FILE": "",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/otp_service",
    "SECRET_KEY": "tests-only-secret-key-never-used-anywhere-else",
    "DEBUG": "false",
    "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
    "PUBLIC_BASE_URL": "http://localhost:8080",
    "EMAIL_BACKEND": "locmem",
    # The suite's own process keeps the default SMS backend, console, and never runs a job in it (the API tests
    # only enqueue): with DEBUG off, that must be named. Processes that deliver (tests/support/env.py) turn it off.
    "OTP_CONSOLE_CODES": "on",
    # Guards are exercised by their own tests with small limits; elsewhere they must not interfere.
    "OTP_IP_SEND_RATE": "100000/min",
    "OTP_IP_VERIFY_RATE": "100000/min",
}


# Set by make when `make test` runs the suite: a `make` that a test starts would then print "Entering
# directory" lines that a user's own `make up` never prints, and the tests read make's output as a user would.
MAKE_INHERITED = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")


def pytest_configure(config):
    for name in MAKE_INHERITED:
        os.environ.pop(name, None)
    isolation.redis_start()
    for name, value in TEST_ENV.items():
        os.environ.setdefault(name, value)
    import logging

    import django

    django.setup()
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP line at info


def pytest_unconfigure(config):
    isolation.redis_stop()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    isolation.name_test_database()


# Markers (declared in pytest.ini) by where a test lives; `make test-fast` leaves out all four.
MARKERS_BY_PATH = {"e2e/": "e2e", "e2e/test_browser": "browser", "faults/": "faults", "worker/": "slow"}


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).parent
    for item in items:
        where = item.path.relative_to(tests_dir).as_posix()
        for prefix, marker in MARKERS_BY_PATH.items():
            if where.startswith(prefix):
                item.add_marker(marker)


@pytest.fixture(autouse=True)
def redis_clean(broker_redis):
    """Each test starts with no throttle state and no queued jobs (kombu's exchange bindings stay)."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    redis_flush(client)
    redis_flush(broker_redis)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def database_connection_usable():
    """Each test starts without the suite's own database connection left broken by an earlier one.

    A request ends by dropping a connection that broke (Django's close_if_unusable_or_obsolete on request_finished),
    but the test client disconnects that handler, so a connection PostgreSQL ended during one test would fail every
    later test of this process that touches the database, and one failure would read as dozens.
    """
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        broken = getattr(wrapper.connection, "closed", False)  # psycopg's: True once the server ended it
        if broken and not wrapper.in_atomic_block:
            wrapper.close()


@pytest.fixture
def broker_redis():
    """A client of the broker's Redis database (CELERY_BROKER_URL: REDIS_URL's next one), where jobs wait."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    yield client
    client.close()


@pytest.fixture
def read_only_database(django_db_blocker):
    """The test database turned read-only as a failover leaves it for a pool's sessions (tests/support/
    database_state.py); undone after the test."""
    from tests.support.database_state import ReadOnlyDatabase
    from tests.support.env import database_url

    with django_db_blocker.unblock():
        database = ReadOnlyDatabase(database_url())
        yield database
        database.close()


@pytest.fixture
def fixed_code(monkeypatch):
    """Codes travel only inside the delivery job; tests that do not run a worker pin the next code instead."""
    from otp import codes

    pinned = iter(["123456", "654321", "111222", "333444", "555666", "777888", "999000", "246802"])
    issued = []

    def generate():
        issued.append(next(pinned))
        return issued[-1]

    monkeypatch.setattr(codes, "code_generate", generate)
    return issued


@pytest.fixture
def clock_steady(monkeypatch):
    """The service's clock read now and not again during the test (core.clock reads the database's clock about once
    a minute), so a count of statements counts only those of the code under test."""
    from core import clock

    clock.clock_seconds()
    monkeypatch.setattr(clock, "_next_read_at", float("inf"))


@pytest.fixture
def email_address():
    from otp.addresses import email_normalize

    return email_normalize("alice@example.com")


@pytest.fixture
def mobile_address():
    from otp.addresses import mobile_normalize

    return mobile_normalize("+14155552671")



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


@pytest.fixture
def inbox(smtp_server):
    smtp_server.inbox.reset()
    return smtp_server.inbox


@pytest.fixture
def sms(twilio_standin):
    twilio_standin.reset()
    return twilio_standin
