"""`make up` meeting a database or a Redis it cannot use: one line naming the variable and what failed, within
seconds, never a traceback; and a missing database on the local PostgreSQL is created, as a newcomer needs.

Before: a missing database or a closed PostgreSQL port printed a 25-line traceback whose cause was only in
var/stack/log/migrate.log; a dead Redis made `make up` wait 90 s and print 109 lines naming neither variable.
"""
import os
import re
import subprocess
import time
import uuid

import psycopg
import pytest
import requests
from django.conf import settings

from tests.support.env import database_url, delivery_env
from tests.support.processes import REPO_DIR, ManagedProcess
from tests.support.waiting import free_port, wait_for

# The stack is pointed at the test database, so it must exist before `make up` looks: transaction=True keeps
# no transaction open while the stack's own processes migrate it.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300), pytest.mark.django_db(transaction=True)]

# What make itself adds after a failed recipe; everything else is bin/stack's.
MAKE_TRAILER = re.compile(r"^make: \*\*\* \[.*\] Error \d+$")
# Python's start-up dominates, and this two-core machine is shared: an idle one answers in about 2 s, a loaded one in 12.
FAILS_WITHIN_SECONDS = 30


def make_up(env: dict, tmp_path) -> tuple[int, list[str], float]:
    """Run `make up` from the checkout on free ports; returns (exit status, output lines but make's own, seconds)."""
    env = {**env, "ENV_FILE": "", "STACK_DIR": str(tmp_path / "stack"), "HTTP_PORT": str(free_port()),
           "API_PORT": str(free_port())}
    started = time.monotonic()
    result = subprocess.run(["make", "up"], cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=240)
    seconds = time.monotonic() - started
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line and not MAKE_TRAILER.match(line)]
    return result.returncode, lines, seconds


@pytest.fixture
def good_env(django_db_setup, django_db_blocker):
    """A stack environment whose PostgreSQL database and Redis both answer (the suite's own)."""
    with django_db_blocker.unblock():
        url = database_url()
    return {**os.environ, "DATABASE_URL": url, "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": ""}


def assert_one_line(result, variable: str, *fragments: str) -> None:
    status, lines, seconds = result
    assert status != 0
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith(f"{variable} "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert seconds < FAILS_WITHIN_SECONDS, f"took {seconds:.1f}s"
    print(f"make up failed in {seconds:.1f}s: {lines[0]}")


def closed_port() -> int:
    return free_port()  # bound and released at once: nothing listens there


def test_a_closed_postgresql_port_is_one_line_naming_database_url(good_env, tmp_path):
    url = f"postgres://postgres@127.0.0.1:{closed_port()}/otp_service"
    assert_one_line(make_up({**good_env, "DATABASE_URL": url}, tmp_path), "DATABASE_URL",
                    url, "connection refused")


def test_a_role_the_server_refuses_is_one_line_naming_database_url(good_env, tmp_path):
    url = "postgres://no_such_role@127.0.0.1:5432/otp_service"
    assert_one_line(make_up({**good_env, "DATABASE_URL": url}, tmp_path), "DATABASE_URL",
                    'role "no_such_role" does not exist')


def test_a_dead_redis_is_one_line_naming_redis_url(good_env, tmp_path):
    url = f"redis://127.0.0.1:{closed_port()}/0"
    assert_one_line(make_up({**good_env, "REDIS_URL": url}, tmp_path), "REDIS_URL", url, "connection refused")


def test_a_redis_database_that_does_not_exist_is_one_line_naming_redis_url(good_env, tmp_path):
    url = settings.REDIS_URL.rsplit("/", 1)[0] + "/99"
    assert_one_line(make_up({**good_env, "REDIS_URL": url}, tmp_path), "REDIS_URL", "DB index is out of range")


def test_redis_urls_last_database_is_one_line_saying_the_broker_took_the_next(good_env, tmp_path):
    # The broker defaults to REDIS_URL's next database; on the last one (15 by default) that one does not exist.
    url = settings.REDIS_URL.rsplit("/", 1)[0] + "/15"
    assert_one_line(make_up({**good_env, "REDIS_URL": url}, tmp_path), "CELERY_BROKER_URL",  # CELERY_BROKER_URL unset
                    "DB index is out of range", "REDIS_URL's next database")


def test_a_dead_broker_is_one_line_naming_celery_broker_url(good_env, tmp_path):
    url = f"redis://127.0.0.1:{closed_port()}/1"
    assert_one_line(make_up({**good_env, "CELERY_BROKER_URL": url}, tmp_path), "CELERY_BROKER_URL", url,
                    "connection refused")


@pytest.fixture
def redis_with_password(tmp_path):
    port = free_port()
    server = ManagedProcess("redis-password", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                               "--requirepass", "right-password", "--save", "", "--appendonly", "no",
                                               "--dir", str(tmp_path)], env=dict(os.environ), log_dir=tmp_path,
                            cwd=tmp_path).start()
    server.wait_for_log("Ready to accept connections")
    yield port
    server.stop()


@pytest.mark.parametrize("credentials", ["", ":wrong-password@"], ids=["no password", "wrong password"])
def test_a_redis_refusing_the_password_is_one_line_that_hides_it(good_env, tmp_path, redis_with_password, credentials):
    url = f"redis://{credentials}127.0.0.1:{redis_with_password}/0"
    result = make_up({**good_env, "REDIS_URL": url}, tmp_path)
    assert_one_line(result, "REDIS_URL", "authentication failed")
    assert "wrong-password" not in result[1][0]


def test_the_stack_wants_postgresql_and_redis_not_the_quick_runs_fallbacks(good_env, tmp_path):
    assert_one_line(make_up({**good_env, "REDIS_URL": ""}, tmp_path), "REDIS_URL", "not set")
    status, lines, _ = make_up({**good_env, "DATABASE_URL": ""}, tmp_path)
    assert status != 0 and len(lines) == 1 and lines[0].startswith("DATABASE_URL is not a postgres:// URL"), lines


def test_a_missing_database_on_the_local_server_is_created_and_the_stack_starts(django_db_setup, django_db_blocker,
                                                                               smtp_server, twilio_standin, tmp_path):
    with django_db_blocker.unblock():
        env = delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)
    name = f"otp_created_{uuid.uuid4().hex[:8]}"
    env.update({"DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}", "REDIS_URL": settings.REDIS_URL,
                "WEB_CONCURRENCY": "1", "CELERY_WORKER_CONCURRENCY": "2"})
    status, lines, _ = make_up(env, tmp_path)
    stack_env = {**env, "ENV_FILE": "", "STACK_DIR": str(tmp_path / "stack")}
    try:
        assert status == 0, "\n".join(lines)
        assert lines[0] == f'Created database "{name}" on 127.0.0.1 (DATABASE_URL named one that did not exist).'
        # The success line says where the front end and the API docs are, and both answer there.
        home, docs = re.search(r"front end at (\S+), the API docs at (\S+) ", lines[-1]).groups()
        assert home.endswith("/home/") and docs.endswith("/api/docs/")
        assert requests.get(home, timeout=10).status_code == 200
        assert requests.get(docs, timeout=10).status_code == 200
    finally:
        down = subprocess.run(["make", "down"], cwd=REPO_DIR, env=stack_env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            # The stack's processes are gone; a connection still closing would make DROP fail, so retry briefly.
            wait_for(lambda: _drop(conn, name), timeout=20, message=f"DROP DATABASE {name}")


def _drop(conn, name: str) -> bool:
    try:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        return True
    except psycopg.errors.ObjectInUse:
        return False
