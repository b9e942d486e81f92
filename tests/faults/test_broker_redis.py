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
