"""A database whose network goes silent: packets dropped, no reset, no refusal (a firewall, a host gone).

Unlike a refused or reset connection, nothing tells the client: a statement sent into such a network waited for as
long as the kernel retransmits (about 15 minutes), and the server's statement_timeout cannot end it. The
connections' TCP settings (config/settings.py, DATABASES OPTIONS) bound it; these tests drop real packets
(tests/support/silent_link.py).
"""
import time

import psycopg
import pytest
import requests
from django.conf import settings
from django.db import connections

from core.database import connection_quiet
from tests.support.env import database_url_through
from tests.support.smtp import code_from_email
from tests.support.waiting import timed, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

OPTIONS = settings.DATABASES["default"]["OPTIONS"]
# libpq's tcp_user_timeout, in seconds: how long sent data may go unacknowledged.
UNACKNOWLEDGED_SECONDS = OPTIONS["tcp_user_timeout"] / 1000
# The pool's wait for a connection, in seconds.
POOL_TIMEOUT_SECONDS = OPTIONS["pool"]["timeout"]
# Keepalives: how long a connection stays idle before its first probe, and when unanswered probes end it, with
# 3 s of slack.
KEEPALIVES_IDLE_SECONDS = OPTIONS["keepalives_idle"]
IDLE_DEAD_WITHIN_SECONDS = KEEPALIVES_IDLE_SECONDS + OPTIONS["keepalives_interval"] * OPTIONS["keepalives_count"] + 3
# The worst a request meets: a statement on a connection the network left (UNACKNOWLEDGED_SECONDS), then the pool's
# wait for a new connection, which cannot open; and a second of slack for a loaded machine.
REQUEST_BOUND_SECONDS = UNACKNOWLEDGED_SECONDS + POOL_TIMEOUT_SECONDS + 1


def test_a_database_gone_silent_answers_503_json_in_bounded_time_and_loses_nothing(
        base_env, stacks, private_redis, inbox, silent_pg):
    stack = stacks({**database_url_through(base_env, silent_pg), "REDIS_URL": private_redis.url}, api_workers=1).start_api()
    stack.start_worker()
    # The API's and the worker's pools now hold open connections, and the API has read the database's clock.
    assert stack.post("/register/", {"email": "before@example.com"}).status_code == 202
    inbox.wait_for_message("before@example.com")

    silent_pg.cut()
    response, seconds = timed(lambda: stack.post("/register/", {"email": "during@example.com"}, timeout=60))
    assert response.status_code == 503, (seconds, response.text)
    assert response.json()["code"] == "service_unavailable" and "database" in response.json()["detail"]
    assert UNACKNOWLEDGED_SECONDS - 0.5 < seconds < REQUEST_BOUND_SECONDS, seconds  # silence, then the bound
    # The next request meets the pool's other connections, silent too, and new ones that cannot open.
    ready, seconds = timed(lambda: requests.get(f"{stack.url}/readyz", timeout=60))
    assert ready.status_code == 503 and ready.json()["failed"] == "database"
    assert seconds < REQUEST_BOUND_SECONDS, ("/readyz", seconds)

    silent_pg.restore()
    # The failed requests took no cooldown: the user asks again and gets the code, delivered by the worker whose
    # connections went silent too.
    wait_for(lambda: stack.post("/register/", {"email": "during@example.com"}).status_code == 202,
             timeout=30, message="the API to serve again")
    code = code_from_email(inbox.wait_for_message("during@example.com"))
    assert stack.post("/verify-otp/", {"email": "during@example.com", "code": code}).status_code == 200


def test_an_idle_pooled_connection_is_found_dead_without_a_statement(silent_pg):
    # The pool lends an idle connection without a round trip when its socket is quiet (core/database.py). TCP
    # keepalives make the kernel end one whose peer stopped answering, and its socket then reads as not quiet, so
    # the pool checks it and replaces it instead of lending it to a request to wait on.
    through_link = {**connections["default"].get_connection_params(), "host": silent_pg.host, "port": silent_pg.port}
    with psycopg.connect(**through_link, autocommit=True) as conn:
        conn.execute("SELECT 1")
        assert connection_quiet(conn)
        silent_pg.cut()
        cut_at = time.monotonic()
        wait_for(lambda: not connection_quiet(conn), timeout=IDLE_DEAD_WITHIN_SECONDS, interval=0.2,
                 message="the client's kernel to end the idle connection")
        assert time.monotonic() - cut_at >= KEEPALIVES_IDLE_SECONDS - 0.5  # it was the silence, not an error
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
