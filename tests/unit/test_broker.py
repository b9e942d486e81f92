"""The broker transport: kombu's Redis channel, keeping one redis-py client where kombu made one per message, and
its unacknowledged-job bookkeeping without MULTI/EXEC or redis-py's pipeline."""
import base64
import json
import subprocess
import sys
import threading
import time

import kombu
import pytest
import redis
from celery import Celery
from django.conf import settings
from django.core.cache import cache

from config.celery import app
from core.broker import BrokerUnfit, BrokerUnreachable, Transport, broker_redis_check
from core.redis_failover import NoReplicasError
from otp import services
from otp.models import Purpose
from tests.support.processes import BACKEND_DIR
from tests.support.redis_state import RedisServer
from tests.support.waiting import free_port


def test_the_app_publishes_through_the_transport_that_keeps_its_client():
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first  # kombu's own builds a new client each time
        with channel.conn_or_acquire() as client:
            assert client is first and client.ping()


def test_a_new_pool_gets_a_new_client():
    # After a fork, or a reconnect, kombu drops the channel's pool; the kept client must not outlive it.
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()
        channel._disconnect_pools()
        second = channel._create_client()
        assert second is not first and second.connection_pool is channel.pool and second.ping()


def test_a_tls_broker_url_keeps_kombus_tls_default():
    # Registered under the scheme's own name, the transport leaves kombu reading TLS off `rediss://` as before.
    with app.connection_for_write("rediss://127.0.0.1:6380/0") as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.ssl


# --- The broker's Redis keeps every job (contract: Configuration) ---------------------------------------------

@pytest.fixture
def spare_redis(tmp_path):
    """A redis-server of this test's own, whose settings the test may change."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def redis_url_of(server: RedisServer, database: int, host: str = "127.0.0.1") -> str:
    return f"redis://{host}:{server.port}/{database}"


MONITOR_STOP = "monitor-stop"


def commands_seen_while(server: RedisServer, action) -> list[str]:
    """The commands `server` ran while `action()` ran (Redis's MONITOR), upper-cased names only."""
    seen, watching = [], threading.Event()

    def watch():
        with redis.Redis(port=server.port).monitor() as monitor:  # MONITOR is on once this returns
            watching.set()
            for command in monitor.listen():
                if MONITOR_STOP in command["command"]:
                    return
                seen.append(command["command"].split()[0].upper())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert watching.wait(5)
    action()
    redis.Redis(port=server.port).echo(MONITOR_STOP)
    watcher.join(5)
    assert not watcher.is_alive()
    return seen


def test_a_job_taken_and_acknowledged_is_booked_without_a_transaction(spare_redis):
    # kombu wraps each pair of bookkeeping writes (ZADD+HSET when a job is taken, ZREM+HDEL when it is
    # acknowledged) in MULTI/EXEC, which guards nothing there and doubled the commands (core/broker.py QoS).
    queue = kombu.Queue("bookkeeping", routing_key="bookkeeping")
    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        with connection.Producer() as producer:
            producer.publish({"n": 1}, routing_key="bookkeeping", declare=[queue])
        channel = connection.default_channel

        def take_and_acknowledge():
            message = channel.basic_get("bookkeeping", no_ack=False)
            assert message is not None
            message.ack()

        commands = commands_seen_while(spare_redis, take_and_acknowledge)
        unacked = channel.qos.unacked_key

    assert {"ZADD", "HSET", "ZREM", "HDEL"} <= set(commands)  # the bookkeeping went through this Redis
    assert "MULTI" not in commands and "EXEC" not in commands
    assert redis.Redis(port=spare_redis.port, db=1).hlen(unacked) == 0  # acknowledged: nothing left to restore


def _job_published(connection, queue_name: str) -> None:
    queue = kombu.Queue(queue_name, routing_key=queue_name)
    with connection.Producer() as producer:
        producer.publish({"n": 1}, routing_key=queue_name, declare=[queue])


def _job_taken(connection, queue_name: str):
    message = connection.default_channel.basic_get(queue_name, no_ack=False)
    assert message is not None
    return message


def test_the_bookkeeping_is_written_without_redis_pys_pipeline(spare_redis, monkeypatch):
    # redis-py's pipeline cost more CPU than the two commands it sends (core/broker.py QoS; ninth round).
    def refuse(*args, **kwargs):
        raise AssertionError("the bookkeeping went through redis-py's Pipeline")

    server = redis.Redis(port=spare_redis.port, db=1)
    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        _job_published(connection, "raw-bookkeeping")  # declaring the queue reads its size through a pipeline
        monkeypatch.setattr(redis.client.Pipeline, "execute", refuse)
        message = _job_taken(connection, "raw-bookkeeping")
        qos = connection.default_channel.qos
        tag = message.delivery_tag
        assert server.zscore(qos.unacked_index_key, tag) is not None  # taken: recorded for the visibility timeout
        assert json.loads(server.hget(qos.unacked_key, tag))[0]["properties"]["delivery_tag"] == tag
        message.ack()
        assert server.zscore(qos.unacked_index_key, tag) is None and not server.hexists(qos.unacked_key, tag)


def test_a_job_taken_before_the_worker_died_is_restored_from_the_bookkeeping(spare_redis):
    # What the bookkeeping is for: a job taken and never acknowledged goes back to its queue once the visibility
    # timeout has passed (here 0 s, so the restore scan takes it at once).
    server = redis.Redis(port=spare_redis.port, db=1)
    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        _job_published(connection, "restored")
        message = _job_taken(connection, "restored")
        assert server.llen("restored") == 0
        qos = connection.default_channel.qos
        qos.visibility_timeout = 0
        qos.restore_visible(num=10)
        assert server.llen("restored") == 1 and not server.hexists(qos.unacked_key, message.delivery_tag)


def test_the_bookkeeping_write_survives_a_dropped_connection(spare_redis):
    # A pooled connection that Redis closed (a restart, a timeout, CLIENT KILL) is replaced, by the pool's check as
    # it is lent or by the write's retry, as with redis-py's pipeline.
    server = redis.Redis(port=spare_redis.port, db=1)
    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        _job_published(connection, "dropped")
        message = _job_taken(connection, "dropped")
        qos = connection.default_channel.qos
        killed = server.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        message.ack()
        assert not server.hexists(qos.unacked_key, message.delivery_tag)


def test_an_error_reply_to_the_bookkeeping_leaves_the_connection_in_step(spare_redis):
    # Every reply is read before the error is raised: the pooled connection answers its next command correctly.
    server = redis.Redis(port=spare_redis.port, db=1)
    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        _job_published(connection, "in-step")
        qos = connection.default_channel.qos
        server.delete(qos.unacked_index_key)
        server.set(qos.unacked_index_key, "not a sorted set")  # ZADD then answers WRONGTYPE, HSET still succeeds
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            _job_taken(connection, "in-step")
        with connection.default_channel.conn_or_acquire() as client:
            assert client.echo("next") == b"next"


def _job_taken_while_full(server: redis.Redis, connection, queue_name: str):
    """A job published, then taken while the broker's memory is full (maxmemory 1, under Redis's default
    noeviction): the pop frees memory and is allowed, the record as unacknowledged is refused."""
    _job_published(connection, queue_name)
    server.config_set("maxmemory", "1")
    try:
        return _job_taken(connection, queue_name)
    finally:
        server.config_set("maxmemory", "0")


def test_a_job_whose_record_is_refused_is_still_handed_over(spare_redis, caplog):
    # The job is off its queue before it is recorded as unacknowledged. When the record was refused (here the
    # broker's memory is full, under its required noeviction: the pop frees memory and is allowed, the record is
    # not; a failover between the two answers READONLY alike), kombu raised and the job was in neither place.
    server = redis.Redis(port=spare_redis.port, db=1)
    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        message = _job_taken_while_full(server, connection, "refused-record")
        assert message.payload == {"n": 1} and server.llen("refused-record") == 0
        assert not server.hexists(connection.default_channel.qos.unacked_key, message.delivery_tag)
        assert "not recorded as unacknowledged" in caplog.text
        message.ack()


def test_a_refused_brpop_pauses_before_the_worker_reconnects(spare_redis):
    # BRPOP is a write: while the broker refuses writes for its own state, each reconnect met the refusal at once
    # and the worker spun through Celery's restarts, five a second with a critical line each second (a review).
    from core import broker

    server = redis.Redis(port=spare_redis.port, db=1)
    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        _job_published(connection, "paused")
        channel = connection.default_channel
        channel.basic_consume("paused", False, lambda message: None, "paused-consumer")
        channel.client.connection = channel.client.connection_pool.get_connection()  # as kombu's poller does
        server.config_set("min-replicas-to-write", "1")
        try:
            channel._brpop_start(timeout=1)
            started = time.monotonic()
            with pytest.raises(NoReplicasError):
                channel._brpop_read()
            assert time.monotonic() - started >= broker.REFUSAL_PAUSE_SECONDS
        finally:
            server.config_set("min-replicas-to-write", "0")


@pytest.mark.parametrize("put_back", ["reject", "close"])
def test_a_job_whose_record_was_refused_goes_back_to_its_queue_from_memory(spare_redis, put_back):
    # kombu restores a job in hand from its record, at a reject with requeue and when the channel closes (a
    # reconnect, a shutdown): without a record it restored nothing and the job was gone (found by a review).
    server = redis.Redis(port=spare_redis.port, db=1)
    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        message = _job_taken_while_full(server, connection, "put-back")
        assert server.llen("put-back") == 0
        if put_back == "reject":
            message.reject(requeue=True)
        else:
            connection.default_channel.close()
        assert server.llen("put-back") == 1
        restored = json.loads(server.lindex("put-back", 0))
        assert json.loads(base64.b64decode(restored["body"])) == {"n": 1} and restored["headers"]["redelivered"]


def test_a_failed_bookkeeping_write_disconnects_and_the_next_one_succeeds(spare_redis, monkeypatch):
    from core import broker

    server = redis.Redis(port=spare_redis.port, db=1)
    real = broker._commands_exchange
    failures = []

    def fail_once(connection, commands):
        if not failures:
            failures.append(connection)
            raise redis.ConnectionError("dropped mid-write")
        return real(connection, commands)

    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        _job_published(connection, "fails-once")
        message = _job_taken(connection, "fails-once")
        monkeypatch.setattr(broker, "_commands_exchange", fail_once)
        with pytest.raises(redis.ConnectionError):
            message.ack()
        assert failures and not failures[0].is_connected  # disconnected: the pool lends no half-used socket
        message.ack()
        assert not server.hexists(connection.default_channel.qos.unacked_key, message.delivery_tag)


def test_a_key_prefix_keeps_kombus_own_bookkeeping(spare_redis):
    # kombu's global_keyprefix is added by its prefixing client; the direct write would miss it, so it is not used.
    server = redis.Redis(port=spare_redis.port, db=1)
    broker_app = Celery(broker=redis_url_of(spare_redis, 1))
    broker_app.conf.broker_transport_options = {"global_keyprefix": "pfx:"}
    with broker_app.connection_for_write() as connection:
        _job_published(connection, "prefixed")
        message = _job_taken(connection, "prefixed")
        assert server.exists("pfx:unacked") and not server.exists("unacked")
        message.ack()
        assert not server.hexists("pfx:unacked", message.delivery_tag)


def test_the_broker_is_not_the_cache_database():
    assert settings.REDIS_URL and settings.CELERY_BROKER_URL.rsplit("/", 1)[0] == settings.REDIS_URL.rsplit("/", 1)[0]
    assert int(settings.CELERY_BROKER_URL.rsplit("/", 1)[1]) == int(settings.REDIS_URL.rsplit("/", 1)[1]) + 1


@pytest.mark.django_db(transaction=True)
def test_a_cache_flush_keeps_the_queued_jobs(email_address, broker_redis):
    # Django's cache.clear() is FLUSHDB on REDIS_URL's database: with the broker on that database, it deleted
    # every job waiting to be sent.
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    assert broker_redis.llen("email") == 1
    cache.clear()
    assert broker_redis.llen("email") == 1


def test_a_noeviction_broker_apart_from_the_cache_passes(spare_redis):
    broker_redis_check(Celery(broker=redis_url_of(spare_redis, 1)), cache_url=redis_url_of(spare_redis, 0))


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl"])
def test_a_broker_that_may_evict_jobs_is_refused_with_one_line(spare_redis, policy):
    redis.Redis(port=spare_redis.port).config_set("maxmemory-policy", policy)
    with pytest.raises(BrokerUnfit) as refused:
        broker_redis_check(Celery(broker=redis_url_of(spare_redis, 1)), cache_url=redis_url_of(spare_redis, 0))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("Invalid setting CELERY_BROKER_URL") and policy in message


def test_one_server_named_two_ways_is_still_one_database(spare_redis):
    # The settings compare URLs; only the server can tell that localhost and 127.0.0.1 are one Redis.
    with pytest.raises(BrokerUnfit, match="apart from REDIS_URL"):
        broker_redis_check(Celery(broker=redis_url_of(spare_redis, 3, "localhost")),
                           cache_url=redis_url_of(spare_redis, 3))


def test_a_broker_database_redis_does_not_have_is_refused(spare_redis):
    # REDIS_URL on the last database leaves the default broker (the next one) outside the server's databases.
    with pytest.raises(BrokerUnfit, match="database 16"):
        broker_redis_check(Celery(broker=redis_url_of(spare_redis, 16)), cache_url=redis_url_of(spare_redis, 15))


def test_an_unreachable_broker_is_not_taken_for_a_bad_policy():
    port = free_port()  # nothing listens there
    with pytest.raises(BrokerUnreachable):
        broker_redis_check(Celery(broker=f"redis://127.0.0.1:{port}/1"), cache_url=settings.REDIS_URL)


def test_brokers_that_are_not_redis_are_not_checked():
    broker_redis_check(Celery(broker="memory://"), cache_url=settings.REDIS_URL)


def test_the_brokers_connections_retry_no_refusal_themselves(spare_redis):
    # kombu restores unacknowledged jobs in redis-py WATCH transactions, which turn a retried error into a
    # WatchError and start again without end or pause (a helper's review of the failover change): a failover's
    # refusal is a connection error of the transport instead, answered by kombu with a new connection.
    from core import broker
    from core.redis_failover import FAILOVER_ERRORS

    with Celery(broker=redis_url_of(spare_redis, 1)).connection_for_write() as connection:
        pool = connection.default_channel.client.connection_pool
        lent = pool.get_connection()
        try:
            assert lent.retry.get_retries() == 0
        finally:
            pool.release(lent)
    assert set(FAILOVER_ERRORS) <= set(broker.Transport.connection_errors)


def test_a_redis_py_with_its_own_classes_for_the_write_refusals_still_has_them_counted():
    # NOREPLICAS and MISCONF get classes of ours only where redis-py has none (setdefault); a release bringing its
    # own would have made them 500s again, WRITE_REFUSALS naming only ours (noticed in an earlier session).
    script = """
import redis
from redis._parsers.base import BaseParser

class TheirNoReplicas(redis.exceptions.ResponseError): pass
class TheirMisconf(redis.exceptions.ResponseError): pass
BaseParser.EXCEPTION_CLASSES["NOREPLICAS"] = TheirNoReplicas
BaseParser.EXCEPTION_CLASSES["MISCONF"] = TheirMisconf
from core import errors, redis_failover
assert {TheirNoReplicas, TheirMisconf} <= set(redis_failover.WRITE_REFUSALS), redis_failover.WRITE_REFUSALS
assert {TheirNoReplicas, TheirMisconf} <= set(errors.CACHE_OUTAGES)
"""
    subprocess.run([sys.executable, "-c", script], cwd=BACKEND_DIR, check=True, timeout=60)
