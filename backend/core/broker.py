"""Celery's Redis transport, with one redis-py client per channel instead of one per message, the bookkeeping
of unacknowledged jobs sent without a MULTI/EXEC transaction around it, and a broker that refuses writes (a
failover's replica, full memory, too few replicas, a failed snapshot) met as an outage: the worker reconnects and
keeps every job it took.

kombu's Redis channel builds a new redis-py client for every publish and every acknowledgement, and building
one copies all of redis-py's response callbacks (its cost: docs/performance.md).
A client is only a handle on the channel's connection pool, and redis-py clients are safe to share between
threads, so the channel keeps one for as long as it keeps that pool (a fork or a reconnect makes a new pool).
config/celery.py makes it the transport of redis:// and rediss:// URLs.

It also holds the start-up check that the broker's Redis keeps every job (broker_redis_check).
"""
import logging
import time
from contextlib import contextmanager

import kombu.exceptions
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual

from core.redis_failover import FAILOVER_ERRORS, UNBLOCKED_PREFIX, WRITE_REFUSALS

logger = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation (the visibility timeout), its two writes per step sent as one plain write.

    For every job a worker takes, kombu records it as unacknowledged (ZADD to an index, HSET of the message) and
    removes both once it is acknowledged (ZREM, HDEL), each pair wrapped in MULTI/EXEC: four commands where two
    do the work (its cost: docs/performance-log.md, issue 19's seventh round). The transaction guards nothing
    here. Each pair goes out in one write either way, and a client that dies before the EXEC loses the same job
    the plain pipeline would (it was already popped from its queue). The restore scan
    that another worker may run between the two commands reads only entries older than the visibility timeout,
    never one just added. Restoring (`restore_by_tag`) keeps kombu's WATCH/MULTI transaction: it passes its own
    pipeline in. `reject`, which is rare, keeps kombu's code (through pipe_or_acquire below).

    The pair is written straight to a pooled connection (`_bookkeeping_write`) rather than through a redis-py
    pipeline, whose own bookkeeping cost more than the write (ninth round): the same two commands in one write,
    and a failure handled as the pipeline handles it.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._unrecorded: set[str] = set()  # tags of jobs in hand whose record was refused (append)

    def append(self, message, delivery_tag) -> None:
        """Record a job just taken as unacknowledged (kombu_redis.QoS.append's two commands, in one write) and keep
        it in hand for the worker to run.

        The job is already off its queue. kombu let a refused record raise, and the consumer dropped the job with
        it (a worker whose broker's memory was full, or a failover between the pop and the record, lost the job and
        stopped: "Unrecoverable error"). Here a record refused by an outage (_RECORD_OUTAGES) is logged and the job
        runs all the same; if it is to go back to its queue before it ends (the channel closes, a reconnect, a
        shutdown, a reject with requeue), restore_by_tag puts it back from memory. Only a crash of the worker while
        it holds the job loses it now. Any other error is raised as it comes.
        """
        try:
            if self.channel.global_keyprefix:  # kombu's prefixing client adds it; a raw write would not
                return super().append(message, delivery_tag)  # records, then keeps it in hand
            delivery = message.delivery_info
            entry = kombu_redis.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
            self._bookkeeping_write(("ZADD", self.unacked_index_key, time.time(), delivery_tag),
                                    ("HSET", self.unacked_key, delivery_tag, entry))
        except _RECORD_OUTAGES as exc:
            logger.warning("job %s taken from the broker but not recorded as unacknowledged (%s): it runs now, and "
                           "a worker crash before it ends would lose it", delivery_tag, exc)
            self._unrecorded.add(delivery_tag)
        kombu_virtual.QoS.append(self, message, delivery_tag)

    def restore_by_tag(self, tag, client=None, leftmost=False) -> None:
        """Put a job in hand back on its queue: kombu's restore, which reads the job from its record, or, for a job
        whose record was refused (append), from the worker's memory; kombu's found no record and dropped it (found
        by a review). Raises the broker's connection errors as kombu's does."""
        if tag not in self._unrecorded:
            return super().restore_by_tag(tag, client=client, leftmost=leftmost)
        message = self._delivered.get(tag)
        if message is not None:
            delivery = message.delivery_info
            with self.channel.conn_or_acquire(client) as client, client.pipeline() as pipe:
                self.channel._do_restore_message(message._raw, delivery["exchange"], delivery["routing_key"], pipe,
                                                 leftmost)
                pipe.execute()
        self._unrecorded.discard(tag)

    def restore_visible(self, start=0, num=10, interval=10) -> None:
        """kombu's scan that puts jobs whose visibility timeout passed back on their queues; skipped, with a
        warning, while the broker refuses writes for its own state (WRITE_REFUSALS): kombu's scan takes a lock (a
        write) first, and a worker that started or reconnected while its broker's memory was full looped on that
        refusal and never took a job, not even to drain the backlog that filled it (found by a review)."""
        try:
            super().restore_visible(start=start, num=num, interval=interval)
        except WRITE_REFUSALS as exc:
            logger.warning("overdue jobs not restored while the broker refuses writes: %s", exc)

    def ack(self, delivery_tag) -> None:
        """Forget an acknowledged job: kombu_redis.QoS.ack's two commands, in one write."""
        self._unrecorded.discard(delivery_tag)
        if self.channel.global_keyprefix:
            return super().ack(delivery_tag)
        self._bookkeeping_write(("ZREM", self.unacked_index_key, delivery_tag),
                                ("HDEL", self.unacked_key, delivery_tag))
        kombu_virtual.QoS.ack(self, delivery_tag)

    def _bookkeeping_write(self, *commands: tuple) -> list:
        """Send `commands` (each a tuple of a Redis command's words) in one write on a connection of the channel's
        pool and read their replies, as a pipeline without a transaction would.

        Returns the raw replies in order (no response callbacks applied). Raises redis.ResponseError for the first
        error reply (every reply is read first, so the connection stays in step), and redis.ConnectionError or
        redis.TimeoutError when the connection fails: it is disconnected first, and the write is tried again only
        as far as the connection's retry policy allows (kombu gives its connections none, as for its pipelines).
        Errors taking a connection from the pool (refused, too many connections) are raised as they come.
        """
        with self.channel.conn_or_acquire() as client:
            pool = client.connection_pool
            connection = pool.get_connection()
            try:
                return connection.retry.call_with_retry(lambda: _commands_exchange(connection, commands),
                                                        lambda error: connection.disconnect())
            finally:
                pool.release(connection)

    @contextmanager
    def pipe_or_acquire(self, pipe=None, client=None):
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as client:
                yield client.pipeline(transaction=False)


# The broker's Redis gone or refusing writes: connection errors, a failover's refusals, a server's own refusals.
_RECORD_OUTAGES = (redis.ConnectionError, redis.TimeoutError, *FAILOVER_ERRORS, *WRITE_REFUSALS)
# Seconds a worker's consumer waits after its BRPOP is refused by WRITE_REFUSALS, before it reconnects.
REFUSAL_PAUSE_SECONDS = 1.0


def _commands_exchange(connection: redis.Connection, commands: tuple[tuple, ...]) -> list:
    connection.send_packed_command(connection.pack_commands(commands))
    replies, error = [], None
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as exc:
            error = error or exc
    if error is not None:
        raise error
    return replies


class Channel(kombu_redis.Channel):
    """kombu's Redis channel keeping one client (see the module's docstring), and surviving a failover: a
    `BRPOP` unblocked because its server became a replica ends the connection, so the worker connects again (to
    the server the address names now) instead of stopping with "Unrecoverable error".

    Its connections get no retry policy of their own (core.redis_failover's is for the other clients): a refused
    command is a connection error of the Transport, which kombu answers with a new connection (a publish is
    retried on it, a worker's consumer reconnects), and redis-py's WATCH transactions, which kombu's restore of
    unacknowledged jobs uses, would turn each retried refusal into a WatchError and try again without end."""

    QoS = QoS
    _kept_client = None

    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except WRITE_REFUSALS:
            # BRPOP is a write: refused until an operator acts. A pause before the reconnect, or the worker spins
            # through Celery's restarts (five a second, a critical line each second; found by a review).
            time.sleep(REFUSAL_PAUSE_SECONDS)
            raise
        except redis.ResponseError as exc:
            if not str(exc).startswith(UNBLOCKED_PREFIX):  # failover's other answers are connection_errors
                raise
            self.client.connection.disconnect()
            raise redis.ConnectionError(str(exc)) from exc

    def _queue_bind(self, exchange, routing_key, pattern, queue) -> None:
        """kombu's binding of a queue, written as a worker starts (its task queues, whose bindings the first
        worker or publish wrote, and its own remote-control queue); skipped, with a warning, while the broker
        refuses writes for its own state, so the worker still takes jobs and drains what filled the memory. A
        new worker's remote-control queue stays unbound until it reconnects: `celery inspect` misses it."""
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)
        except WRITE_REFUSALS as exc:
            logger.warning("queue %s not bound while the broker refuses writes: %s", queue, exc)

    def _size(self, queue) -> int:
        """The jobs waiting in `queue` (kombu's sum over its priority lists), read without MULTI/EXEC: Redis refuses
        every command queued in a transaction while its memory is full, reads included, and kombu reads a queue's
        size as a worker declares it at start-up, so a worker started then never took a job (found by a review)."""
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for priority in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, priority))
            return sum(size for size in pipe.execute() if isinstance(size, int))

    def _create_client(self, asynchronous=False):
        if asynchronous:  # the event loop's own client, which kombu already keeps
            return super()._create_client(asynchronous=True)
        client = self._kept_client
        if client is None or client.connection_pool is not self.pool:
            client = self._kept_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
    # A replica's refusals (core.redis_failover.FAILOVER_ERRORS) and a server's own (WRITE_REFUSALS: full memory,
    # too few replicas, a failed snapshot) are the broker lost, not a bad message: the worker reconnects until the
    # broker takes writes again (it stopped with "Unrecoverable error" before), an acknowledgement refused is
    # logged, and a publish is retried by kombu on a new connection, then answered 503 "broker".
    connection_errors = (*kombu_redis.Transport.connection_errors, *FAILOVER_ERRORS, *WRITE_REFUSALS)


# The one eviction policy under which Redis never drops a key to make room: any other may drop a queued job
# (a list), the unacknowledged hash, or Celery's bindings once memory is full (Redis's own documentation on
# key eviction; contract: Configuration, "the broker's Redis runs with maxmemory-policy noeviction").
REQUIRED_POLICY = "noeviction"


class BrokerUnfit(Exception):
    """The broker's Redis answers but would lose jobs; the message is one line naming the setting to change."""


class BrokerUnreachable(Exception):
    """The broker's Redis did not answer, so nothing is known yet about how it keeps jobs."""


def _database(client: redis.Redis) -> int:
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


def broker_redis_check(app, *, cache_url: str = "") -> None:
    """Check that the Redis behind Celery `app`'s broker keeps every job: it evicts nothing (maxmemory-policy
    noeviction) and is not the database of the cache at `cache_url` (REDIS_URL), whose routine flush would
    delete the queued jobs (contract: Configuration).

    Returns quietly when the broker is not Redis (an in-process run, another transport). Raises BrokerUnfit
    (one line naming CELERY_BROKER_URL) when the broker would lose jobs, and BrokerUnreachable when it cannot
    be asked: an unreachable Redis says nothing about its policy. A Redis that refuses INFO (a managed service's
    ACL) cannot be checked: that is logged as a warning, not refused.
    """
    if app.conf.task_always_eager:
        return
    with app.connection_for_write() as connection:
        if connection.transport.driver_type != "redis":
            return
        try:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
            client = connection.default_channel.client
            memory, server = client.info("memory"), client.info("server")
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
            # Redis answers SELECT of a database it does not have with an error, which kombu reports as a
            # connection error.
            if "DB index is out of range" in str(exc):
                raise BrokerUnfit(f"Invalid setting CELERY_BROKER_URL: expected a database its Redis has (database "
                                  f"{connection.virtual_host}: {exc}); unset, it is REDIS_URL's plus one.") from exc
            if isinstance(exc, redis.ResponseError):  # INFO refused, as a managed service's ACL may
                logger.warning("the broker's maxmemory-policy could not be read (%s): make sure it is %s", exc,
                               REQUIRED_POLICY)
                return
            raise BrokerUnreachable(str(exc)) from exc
        policy = memory.get("maxmemory_policy")
        if policy is None:
            logger.warning("the broker's Redis does not report a maxmemory-policy: make sure it is %s", REQUIRED_POLICY)
        elif policy != REQUIRED_POLICY:
            raise BrokerUnfit(f"Invalid setting CELERY_BROKER_URL: expected a Redis whose maxmemory-policy is "
                              f"{REQUIRED_POLICY} (this one's is {policy}, which may drop queued jobs).")
        if cache_url:
            _cache_apart_check(broker_server=server, broker_database=_database(client), cache_url=cache_url)


def _cache_apart_check(*, broker_server: dict, broker_database: int, cache_url: str) -> None:
    # The settings compare the two URLs; this also catches one server named two ways (localhost, 127.0.0.1).
    cache = redis.Redis.from_url(cache_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        cache_server, cache_memory = cache.info("server"), cache.info("memory")
    except redis.RedisError as exc:  # the cache has its own readiness check; this one is about the broker
        logger.warning("REDIS_URL could not be compared with the broker's Redis: %s", exc)
        return
    finally:
        cache.close()
    if cache_server.get("run_id") != broker_server.get("run_id"):
        policy = cache_memory.get("maxmemory_policy")
        if policy not in (None, REQUIRED_POLICY):
            # Throttle counters carry expiries, so even volatile-* policies drop them: limits would reset.
            logger.warning("REDIS_URL's Redis evicts keys (maxmemory-policy %s): throttle state may be dropped "
                           "when its memory is full", policy)
    elif _database(cache) == broker_database:
        raise BrokerUnfit(f"Invalid setting CELERY_BROKER_URL: expected a Redis database apart from REDIS_URL's "
                          f"(both are database {broker_database} of one server, so a cache flush would delete "
                          f"the queued jobs).")
