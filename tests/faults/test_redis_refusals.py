"""A Redis that takes no writes because of its own state, until an operator acts: its memory full under the broker's
required maxmemory-policy noeviction (OOM), a primary run with min-replicas-to-write and no replica keeping up
(NOREPLICAS), a failed snapshot with stop-writes-on-bgsave-error, as a full disk leaves it (MISCONF: one of the
errors users of Redis-backed queues report most). The throttles' Redis then answered 500; a worker whose broker
refused stopped with "Unrecoverable error", and under OOM lost the job it had just taken."""
import signal
from collections.abc import Callable

import pytest
import redis
import requests

from tests.support.env import EMAIL_ONLY
from tests.support.processes import celery_worker
from tests.support.redis_state import RedisServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

REFUSALS = ["oom", "noreplicas", "misconf"]
# What each refusal's error says, as a worker logs it.
REFUSAL_TEXT = {"oom": "maxmemory", "noreplicas": "Not enough good replicas", "misconf": "unable to persist"}


def writes_refused(server: RedisServer, refusal: str) -> Callable[[], None]:
    """Make `server` refuse writes as `refusal` says; returns what lifts it."""
    client = redis.Redis(port=server.port)
    if refusal == "oom":
        client.config_set("maxmemory", "1")  # the server's policy is Redis's default, noeviction
        return lambda: client.config_set("maxmemory", "0")
    if refusal == "noreplicas":
        client.config_set("min-replicas-to-write", "1")  # it has none
        return lambda: client.config_set("min-replicas-to-write", "0")
    # A snapshot that cannot be written: its folder is gone (root writes anywhere else).
    client.config_set("save", "3600 1")
    for path in sorted(server.data_dir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    server.data_dir.rmdir()
    client.bgsave()
    wait_for(lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err", timeout=10,
             message="the snapshot to fail")

    def lift():
        client.config_set("stop-writes-on-bgsave-error", "no")
        client.config_set("save", "")
        server.data_dir.mkdir(parents=True, exist_ok=True)  # for its shutdown

    return lift


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_throttles_redis_refusing_writes_is_a_503_naming_the_cache(base_env, stacks, private_redis, refusal):
    stack = stacks({**base_env, "REDIS_URL": private_redis.url}).start_api()
    assert stack.post("/register/", {"email": "before@example.com"}).status_code == 202
    lift = writes_refused(private_redis, refusal)
    try:
        response = stack.post("/register/", {"email": "during@example.com"})
        assert response.status_code == 503 and "cache" in response.json()["detail"], response.text
        assert response.headers["Retry-After"]
        ready = requests.get(f"{stack.url}/readyz", timeout=15)
        assert ready.status_code == 503 and ready.json()["failed"] == "cache", ready.text
    finally:
        lift()
    assert stack.post("/register/", {"email": "during@example.com"}).status_code == 202  # nothing kept


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_worker_whose_broker_refuses_writes_stays_up_and_loses_no_job(base_env, stacks, private_redis, inbox,
                                                                        refusal):
    stack = stacks({**base_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/1"}).start_api()
    worker = stack.start_worker()
    # A job queued while the worker is paused, so that it takes it while the broker refuses (under OOM the pop
    # itself is allowed: it frees memory; the record as unacknowledged that follows is not).
    worker.process.send_signal(signal.SIGSTOP)
    try:
        assert stack.post("/register/", {"email": "queued@example.com"}).status_code == 202
        lift = writes_refused(private_redis, refusal)
    finally:
        worker.process.send_signal(signal.SIGCONT)
    try:
        wait_for(lambda: REFUSAL_TEXT[refusal] in worker.log(), timeout=20, message="the worker to meet the refusal")
        assert worker.process.poll() is None, worker.log()[-3000:]
    finally:
        lift()
    wait_for(lambda: any(message["To"] == "queued@example.com" for message in inbox.messages), timeout=30,
             message="the job queued before the refusal to be delivered")
    assert worker.process.poll() is None, worker.log()[-3000:]
    broker = redis.Redis(port=private_redis.port, db=1)
    wait_for(lambda: broker.llen("email") == 0 and broker.hlen("unacked") == 0, timeout=10,
             message="no job left behind")
    assert [message["To"] for message in inbox.messages].count("queued@example.com") == 1
    assert stack.post("/register/", {"email": "after@example.com"}).status_code == 202
    wait_for(lambda: any(message["To"] == "after@example.com" for message in inbox.messages), timeout=30,
             message="a job queued after the refusal to be delivered")


def _worker_started_during(refusal: str, *, stack, private_redis, address: str):
    """A code asked for `address` on `stack`, then the broker refusing writes as `refusal` says, then a worker
    started (not waited for); returns (the worker, what lifts the refusal)."""
    assert stack.post("/register/", {"email": address}).status_code == 202
    lift = writes_refused(private_redis, refusal)
    worker = celery_worker(f"worker-{refusal}-broker", stack.env, pool="threads", concurrency=4).start()
    stack.workers.append(worker)
    return worker, lift


def test_a_worker_started_while_its_broker_is_full_drains_the_backlog(base_env, stacks, private_redis, inbox):
    # A broker full of queued jobs (OOM under noeviction) is drained by its workers, and starting more workers is
    # what an operator does. A worker started then wrote its queues' bindings and took kombu's restore lock, both
    # writes: refused, it looped through restarts and never took a job (found by a review).
    stack = stacks({**base_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/1"}).start_api()
    _, lift = _worker_started_during("oom", stack=stack, private_redis=private_redis, address="backlog@example.com")
    try:
        wait_for(lambda: any(message["To"] == "backlog@example.com" for message in inbox.messages), timeout=30,
                 message="the job queued before the broker filled to be delivered while it is full")
    finally:
        lift()


def test_a_worker_started_while_its_broker_refuses_writes_waits_for_it(base_env, stacks, private_redis, inbox):
    # kombu restores overdue jobs as the worker starts, a write: refused, the worker exited at once.
    stack = stacks({**base_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/1"}).start_api()
    worker, lift = _worker_started_during("noreplicas", stack=stack, private_redis=private_redis,
                                          address="queued@example.com")
    try:
        wait_for(lambda: REFUSAL_TEXT["noreplicas"] in worker.log(), timeout=30,
                 message="the worker to meet the refusal")
        assert worker.process.poll() is None, worker.log()[-3000:]
    finally:
        lift()
    worker.wait_for_log("ready.")
    wait_for(lambda: any(message["To"] == "queued@example.com" for message in inbox.messages), timeout=30,
             message="the queued job to be delivered")
    assert worker.process.poll() is None, worker.log()[-3000:]


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_delivery_retry_the_broker_refuses_is_published_once_it_takes_writes(base_env, stacks, private_redis,
                                                                                inbox, refusal):
    # A delivery the relay refuses for now is retried by publishing a new job, then acknowledging the one taken.
    # Celery rejects the job without requeue when that publish fails: under OOM the reject (a delete, which a full
    # Redis allows) went through and the code was never sent; refused too (NOREPLICAS, MISCONF), it left the job
    # recorded for its visibility timeout (60 s here) to bring back (found reading the code).
    stack = stacks({**base_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/1"}).start_api()
    worker = stack.start_worker()
    inbox.refuse_next = 1
    # The relay holds its answer to RCPT (the client waits 10 s for one), so the broker refuses while the job is
    # taken and recorded; then it refuses the message for now (451).
    inbox.hold_next_rcpt_seconds = 3.0
    assert stack.post("/register/", {"email": "retried@example.com"}).status_code == 202
    wait_for(lambda: inbox.rcpts_seen, timeout=20, message="the first try to reach the relay")
    lift = writes_refused(private_redis, refusal)
    try:
        wait_for(lambda: "waiting for the broker" in worker.log(), timeout=20,
                 message="the worker to meet the refusal as it publishes the retry")
        assert not inbox.to("retried@example.com")
    finally:
        lift()
    inbox.wait_for_message("retried@example.com", timeout=30)
    broker = redis.Redis(port=private_redis.port, db=1)
    wait_for(lambda: broker.llen("email") == 0 and broker.hlen("unacked") == 0, timeout=10,
             message="no job left behind")
    assert len(inbox.to("retried@example.com")) == 1
    assert worker.process.poll() is None, worker.log()[-3000:]


def test_a_delivery_retry_refused_past_the_visibility_timeout_is_put_back_not_held(base_env, stacks,
                                                                                  private_redis, inbox):
    # Held past its visibility timeout, the job would also be handed to another worker by the broker's restore:
    # the worker gives it back (a reject with requeue; refused too, its record stays for the restore) 5 s before.
    # EMAIL_ONLY's 35 s is the shortest visibility timeout the settings accept.
    env = {**base_env, **EMAIL_ONLY, "CELERY_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/1"}
    stack = stacks(env).start_api()
    worker = stack.start_worker()
    inbox.refuse_next = 1
    inbox.hold_next_rcpt_seconds = 1.0
    assert stack.post("/register/", {"email": "put-back@example.com"}).status_code == 202
    wait_for(lambda: inbox.rcpts_seen, timeout=20, message="the first try to reach the relay")
    lift = writes_refused(private_redis, "oom")
    try:
        wait_for(lambda: "waiting for the broker" in worker.log(), timeout=20, message="the worker to hold the job")
        wait_for(lambda: "job put back" in worker.log(), timeout=60,
                 message="the worker to give the job back before its visibility timeout")
        assert not inbox.to("put-back@example.com")
    finally:
        lift()
    inbox.wait_for_message("put-back@example.com", timeout=40)  # restored once its record is 35 s old
    broker = redis.Redis(port=private_redis.port, db=1)
    wait_for(lambda: broker.llen("email") == 0 and broker.hlen("unacked") == 0, timeout=15,
             message="no job left behind")
    assert len(inbox.to("put-back@example.com")) == 1
    assert worker.process.poll() is None, worker.log()[-3000:]
