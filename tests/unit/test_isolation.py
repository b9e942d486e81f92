"""Two test runs on one machine share no state: the database and the Redis server the tests use are this run's."""
import os

import pytest
import redis
from django.conf import settings
from django.db import connection

from tests.support import isolation
from tests.support.env import delivery_env
from tests.support.processes import REPO_DIR

pytestmark = pytest.mark.django_db


def test_two_checkouts_get_different_run_ids_without_any_setting(tmp_path):
    assert isolation.run_id_for(tmp_path / "one") != isolation.run_id_for(tmp_path / "two")
    assert isolation.run_id_for(tmp_path / "one") == isolation.run_id_for(tmp_path / "one")
    assert isolation.RUN_ID == (os.environ.get("TEST_RUN_ID") or isolation.run_id_for(REPO_DIR))


def test_the_test_database_is_named_for_this_run():
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        name = cursor.fetchone()[0]
    assert name == connection.settings_dict["NAME"] and name.startswith("test_")
    assert name.endswith(f"_{isolation.RUN_ID}")


def test_redis_is_a_server_of_this_runs_own():
    if isolation.redis_server is None:
        pytest.skip("REDIS_URL was given in the environment: that Redis is used as given")
    server = redis.Redis.from_url(settings.REDIS_URL).info("server")
    assert server["process_id"] == isolation.redis_server.process.pid
    assert settings.REDIS_URL == isolation.redis_server.url


def test_processes_the_tests_start_get_this_runs_database_and_redis(smtp_server, twilio_standin):
    env = delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)
    assert env["REDIS_URL"] == settings.REDIS_URL
    assert env["DATABASE_URL"].endswith(f"/{connection.settings_dict['NAME']}")
    other_db = isolation.redis_db_url(14)
    assert other_db.rsplit("/", 1)[0] == settings.REDIS_URL.rsplit("/", 1)[0] and other_db.endswith("/14")
