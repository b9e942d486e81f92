"""A Redis failover as a managed Redis does one (ElastiCache, Sentinel): the replica is promoted, the old primary
becomes its replica, and the endpoint's address moves to the new primary. Connections opened before the move still
reach the old primary, which now refuses every write: "READONLY You can't write against a read only replica", a
failure users of Redis clients report again and again after a failover (django-redis #616, StackExchange.Redis
#2264; Celery workers exiting with "Unrecoverable error: ReadOnlyError").

Here the endpoint is a TCP proxy in front of the two servers, and both the throttles and the broker live behind it.
"""
import pytest
import redis
import requests

from tests.support.redis_state import RedisServer
from tests.support.smtp import code_from_email
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_pair(tmp_path):
    """A primary and its replica, both in sync, behind an endpoint (a TCP proxy) that names the primary."""
    primary = RedisServer(tmp_path / "primary", name="redis-primary").start()
    replica = RedisServer(tmp_path / "replica", name="redis-replica").start()
    replica_client = redis.Redis(port=replica.port)
    replica_client.replicaof("127.0.0.1", primary.port)
    wait_for(lambda: replica_client.info("replication")["master_link_status"] == "up", timeout=15,
             message="the replica to sync")
    endpoint = TcpProxy(primary.port).start()
    yield primary, replica, endpoint
    endpoint.cut()
    replica.stop()
    primary.stop()


def failover(primary: RedisServer, replica: RedisServer, endpoint: TcpProxy) -> None:
    """Promote the replica, make the old primary its replica, and point the endpoint's new connections at the new
    primary; connections already open stay on the old one."""
    redis.Redis(port=replica.port).replicaof("NO", "ONE")
    old = redis.Redis(port=primary.port)
    old.replicaof("127.0.0.1", replica.port)
    wait_for(lambda: old.info("replication")["master_link_status"] == "up", timeout=15,
             message="the old primary to follow the new one")
    endpoint.target = ("127.0.0.1", replica.port)


def test_after_a_redis_failover_the_service_writes_to_the_new_primary_and_loses_nothing(
        base_env, stacks, redis_pair, inbox):
    primary, replica, endpoint = redis_pair
    env = {**base_env, "REDIS_URL": f"redis://127.0.0.1:{endpoint.port}/0"}
    stack = stacks(env, api_workers=2).start_api()
    worker = stack.start_worker()
    for address in ("before1@example.com", "before2@example.com"):  # each API process has opened its connections
        assert stack.post("/register/", {"email": address}).status_code == 202
        inbox.wait_for_message(address)

    failover(primary, replica, endpoint)

    statuses = []

    def served(address: str) -> bool:
        response = stack.post("/register/", {"email": address})
        assert response.headers["Content-Type"] == "application/json", response.text
        statuses.append(response.status_code)
        return response.status_code == 202

    for number in range(4):
        address = f"after{number}@example.com"
        wait_for(lambda: served(address), timeout=20, message=f"a code for {address}")
        code = code_from_email(inbox.wait_for_message(address, timeout=30))
        assert stack.post("/verify-otp/", {"email": address, "code": code}).status_code == 200
    assert set(statuses) <= {202, 503}, statuses
    assert worker.process.poll() is None, worker.log()[-3000:]
    # The service did meet the old primary's refusals (and went on through them).
    refused = redis.Redis(port=primary.port).info("errorstats").get("errorstat_READONLY", {}).get("count", 0)
    assert refused > 0
    wait_for(lambda: requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200, timeout=20,
             message="/readyz to answer 200")


def test_readiness_fails_while_the_only_redis_is_a_replica(base_env, stacks, redis_pair):
    primary, replica, endpoint = redis_pair
    env = {**base_env, "REDIS_URL": f"redis://127.0.0.1:{endpoint.port}/0"}
    stack = stacks(env).start_api()
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200
    redis.Redis(port=primary.port).replicaof("127.0.0.1", replica.port)  # both replicas now: nothing takes writes
    ready = requests.get(f"{stack.url}/readyz", timeout=15)
    assert ready.status_code == 503 and ready.json()["failed"] == "cache", ready.text
    response = stack.post("/register/", {"email": "during@example.com"})
    assert response.status_code == 503 and "cache" in response.json()["detail"], response.text


def test_a_replica_that_serves_nothing_while_its_link_is_down_is_an_outage_too(base_env, stacks, redis_pair):
    # MASTERDOWN: a replica configured not to serve stale data answers every command that way while it has no
    # primary, as a demoted node may until it has synced with the new one.
    primary, replica, endpoint = redis_pair
    env = {**base_env, "REDIS_URL": f"redis://127.0.0.1:{endpoint.port}/0"}
    stack = stacks(env).start_api()
    assert stack.post("/register/", {"email": "before@example.com"}).status_code == 202
    old = redis.Redis(port=primary.port)
    old.config_set("replica-serve-stale-data", "no")
    old.replicaof("127.0.0.1", free_port())  # a primary that is not there: the link stays down
    response = stack.post("/register/", {"email": "during@example.com"})
    assert response.status_code == 503 and "cache" in response.json()["detail"], response.text
    ready = requests.get(f"{stack.url}/readyz", timeout=15)
    assert ready.status_code == 503 and ready.json()["failed"] == "cache", ready.text


def test_readiness_fails_while_the_brokers_redis_is_a_replica(base_env, stacks, redis_pair, private_redis):
    primary, replica, endpoint = redis_pair
    env = {**base_env, "REDIS_URL": private_redis.url, "CELERY_BROKER_URL": f"redis://127.0.0.1:{replica.port}/1"}
    stack = stacks(env).start_api()
    ready = requests.get(f"{stack.url}/readyz", timeout=15)
    assert ready.status_code == 503 and ready.json()["failed"] == "broker", ready.text
    response = stack.post("/register/", {"email": "during@example.com"})
    assert response.status_code == 503 and "broker" in response.json()["detail"], response.text
    # Promoted, it is ready again: the probe's pooled connection that met the replica was not lent again as is.
    redis.Redis(port=replica.port).replicaof("NO", "ONE")
    wait_for(lambda: requests.get(f"{stack.url}/readyz", timeout=15).status_code == 200, timeout=20,
             message="/readyz to answer 200 once the broker's Redis takes writes")
