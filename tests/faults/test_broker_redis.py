"""The broker's Redis must keep every job (maxmemory-policy noeviction): each process refuses one that may evict,
with one line naming CELERY_BROKER_URL, and a Redis that is merely down at start-up is not taken for one."""
import pytest
import requests

from tests.support.processes import BACKEND_DIR, LOG_DIR, REPO_DIR, ManagedProcess, celery_worker
from tests.support.redis_state import RedisServer
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

REFUSAL = "Invalid setting CELERY_BROKER_URL: expected a Redis whose maxmemory-policy is noeviction"


@pytest.fixture
def evicting_redis(tmp_path):
    """A redis-server set to evict its least recently used keys when memory runs out (not yet started)."""
    server = RedisServer(tmp_path / "redis")
    server.args += ["--maxmemory-policy", "allkeys-lru"]
    yield server
    server.stop()


def exits_with_one_refusal(process: ManagedProcess) -> None:
    wait_for(lambda: process.process.poll() is not None, timeout=30, message=f"{process.name} to stop")
    assert process.process.returncode != 0
    assert [line for line in process.log().splitlines() if REFUSAL in line], process.log()[-3000:]


def test_api_worker_and_beat_each_refuse_a_broker_that_may_evict_jobs(base_env, evicting_redis, tmp_path):
    evicting_redis.start()
    env = {**base_env, "REDIS_URL": evicting_redis.url, "API_PORT": str(free_port())}
    processes = [
        ManagedProcess("api-evicting", [str(BACKEND_DIR / "start-api.sh")], env={**env, "WEB_CONCURRENCY": "1"},
                       log_dir=LOG_DIR),
        celery_worker("worker-evicting", env),
        ManagedProcess("beat-evicting", [str(REPO_DIR / "worker" / "start-beat.sh"), "--schedule",
                                         str(tmp_path / "beat-schedule")], env=env, log_dir=LOG_DIR),
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            exits_with_one_refusal(process)
    finally:
        for process in processes:
            process.stop()


def test_a_worker_started_while_redis_is_down_waits_then_refuses_an_evicting_one(base_env, evicting_redis):
    worker = celery_worker("worker-before-redis", {**base_env, "REDIS_URL": evicting_redis.url}).start()
    try:
        # Down is not unfit: the worker keeps trying to connect, as it would for a Redis with the right policy.
        worker.wait_for_log("Cannot connect to redis")
        assert worker.process.poll() is None
        evicting_redis.start()
        exits_with_one_refusal(worker)
    finally:
        worker.stop()


def test_an_api_started_while_redis_is_down_is_not_ready_until_the_broker_keeps_jobs(base_env, stacks, tmp_path):
    redis_server = RedisServer(tmp_path / "redis")
    stack = stacks({**base_env, "REDIS_URL": redis_server.url}).start_api()  # answers /healthz with Redis down
    try:
        assert requests.get(f"{stack.url}/readyz", timeout=15).status_code == 503
        redis_server.args += ["--maxmemory-policy", "volatile-lru"]
        redis_server.start()
        ready = requests.get(f"{stack.url}/readyz", timeout=15)
        assert ready.status_code == 503 and ready.json()["failed"] == "broker"
        assert REFUSAL in stack.api.log()

        redis_server.stop()
        redis_server.args = redis_server.args[:-2]  # the same Redis, restarted with noeviction
        redis_server.start()
        wait_for(lambda: requests.get(f"{stack.url}/readyz", timeout=15).status_code == 200, timeout=30,
                 message="the API to be ready once its broker keeps every job")
    finally:
        redis_server.stop()


# Celery's consumer waits 2, 4, ... up to 30 s between its tries to reconnect (kombu's ensure_connection), so its
# limit of 100 tries is about 47 minutes of outage. This shortens the waits, in the worker's process only, so the
# test sees the same count of tries in seconds.
FAST_RECONNECTS = '''
import functools
import kombu.connection

_ensure_connection = kombu.connection.Connection.ensure_connection


@functools.wraps(_ensure_connection)
def ensure_connection(self, *args, **kwargs):
    kwargs.update(interval_start=0.01, interval_step=0.01, interval_max=0.02)
    return _ensure_connection(self, *args, **kwargs)


kombu.connection.Connection.ensure_connection = ensure_connection
'''


def test_a_worker_outlives_a_broker_outage_of_more_tries_than_celerys_default_limit(base_env, stacks, private_redis,
                                                                                    inbox, tmp_path):
    # Past broker_connection_max_retries (Celery's default: 100), the consumer logged "Unrecoverable error" and the
    # worker exited with status 0: natively nothing started it again, and a supervisor restarting only failures
    # would not either (found reading Celery's consumer after an outage test).
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(FAST_RECONNECTS)
    stack = stacks({**base_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/1"}).start_api()
    worker = stack.start_worker(PYTHONPATH=str(shim))
    private_redis.stop()
    try:
        wait_for(lambda: worker.log().count("Cannot connect to redis") > 120 or worker.process.poll() is not None,
                 timeout=60, message="more tries to reconnect than Celery's default limit")
        assert worker.process.poll() is None, worker.log()[-3000:]
    finally:
        private_redis.start()
    assert stack.post("/register/", {"email": "after-the-outage@example.com"}).status_code == 202
    inbox.wait_for_message("after-the-outage@example.com", timeout=30)
