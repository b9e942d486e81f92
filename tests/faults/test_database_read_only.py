"""A database that takes no writes: a hot standby, or a primary that a failover demoted while the service's pools
still hold connections to it (PostgreSQL answers "cannot execute ... in a read-only transaction", SQLSTATE 25006).

It is an outage like a cut-off database: 503 naming the database, the throttles given back, jobs kept and retried.
And the connections to the read-only server are replaced once it errs, so the service writes again as soon as the
database does, without waiting for the pool's connections to reach their maximum lifetime.
"""
import time

import pytest
import requests

from otp.models import Delivery
from tests.support.smtp import code_from_email
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

READ_ONLY_ERROR = "read-only"
API_WORKERS = 2
# Replacing a pool is limited to once a second a process (core/postgresql); a request, its 503 included, takes
# milliseconds.
WRITING_AGAIN_WITHIN_SECONDS = 5


def test_a_read_only_database_answers_503_and_the_api_writes_again_once_it_is_writable(
        base_env, stacks, private_redis, inbox, read_only_database):
    stack = stacks({**base_env, "REDIS_URL": private_redis.url}, api_workers=API_WORKERS).start_api()
    stack.start_worker()
    assert stack.post("/register/", {"email": "before@example.com"}).status_code == 202
    inbox.wait_for_message("before@example.com")

    read_only_database.on()
    response = stack.post("/register/", {"email": "during@example.com"})
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable" and "database" in response.json()["detail"]
    assert response.headers["Retry-After"]
    ready = requests.get(f"{stack.url}/readyz", timeout=15)
    assert ready.status_code == 503 and ready.json()["failed"] == "database" and ready.headers["Retry-After"] == "5"

    read_only_database.off()
    # Nothing held against the user (the throttles were given back), and the API processes replace their sessions
    # on the read-only server (each at its first refused write, the rest of the pool at most once a second): a few
    # more 503s, then the user is served within seconds, where those sessions would have lasted the pool's hour.
    writable_since = time.monotonic()
    statuses = []

    def served(path: str, body: dict, status: int) -> bool:
        statuses.append(stack.post(path, body).status_code)
        return statuses[-1] == status

    wait_for(lambda: served("/register/", {"email": "during@example.com"}, 202), timeout=20,
             message="the API to write again")
    assert time.monotonic() - writable_since < WRITING_AGAIN_WITHIN_SECONDS, statuses
    code = code_from_email(inbox.wait_for_message("during@example.com"))
    wait_for(lambda: served("/verify-otp/", {"email": "during@example.com", "code": code}, 200), timeout=20,
             message="the code to be accepted")
    assert set(statuses) <= {503, 202, 200}, statuses
    wait_for(lambda: requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200, timeout=20,
             message="/readyz to answer 200")


def test_a_job_meeting_a_read_only_database_is_kept_and_sent_once_it_is_writable(
        base_env, stacks, private_redis, inbox, read_only_database):
    stack = stacks({**base_env, "REDIS_URL": private_redis.url}).start_api()
    assert stack.post("/register/", {"email": "queued@example.com"}).status_code == 202  # no worker yet: it waits

    read_only_database.on()
    worker = stack.start_worker()
    worker.wait_for_log(READ_ONLY_ERROR)  # the job's claim was refused
    # Past Celery's own default of 3 retries, which dropped the job (found by a new-user pass): an outage lasts.
    worker.wait_for_log("trying again in 4.0s", timeout=30)
    read_only_database.off()

    code = code_from_email(inbox.wait_for_message("queued@example.com", timeout=30))
    assert stack.post("/verify-otp/", {"email": "queued@example.com", "code": code}).status_code == 200
    assert Delivery.objects.get(address="queued@example.com").status == "sent"
