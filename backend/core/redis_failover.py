"""What the service's Redis clients do when a server refuses writes: one left behind a failover (a managed Redis
promotes the replica and moves its endpoint's address; the old primary becomes a replica and refuses every write,
the connections opened before the move still reach it), or one whose own state forbids them (WRITE_REFUSALS).

A command refused after a failover was not run (a replica runs no write, a script's included), so the throttles',
the cache's and the metrics' clients run it once more on a new connection, which reaches whatever server the
address names now; the broker's refusals are kombu connection errors (core.broker). Connection errors and timeouts
are not retried: a command that timed out may have run, and the throttles' scripts count. WRITE_REFUSALS are not
retried either (they last until an operator acts); every one of these is an outage of its Redis, never a 500.
"""
import redis
from redis._parsers.base import BaseParser
from redis.backoff import NoBackoff
from redis.retry import Retry

# What a server left behind a failover answers instead of running a command, so running it again elsewhere is
# safe: READONLY (a replica refuses writes: "You can't write against a read only replica"), LOADING (a demoted
# primary loading its new primary's data), MASTERDOWN (a replica that serves nothing while its link is down). A
# client blocked in BRPOP gets "UNBLOCKED force unblock from blocking operation, instance state changed (master ->
# replica?)" instead, a plain ResponseError with that prefix (Redis documentation, "Replication").
FAILOVER_ERRORS = (redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError, redis.exceptions.MasterDownError)
UNBLOCKED_PREFIX = "UNBLOCKED"


class NoReplicasError(redis.exceptions.ResponseError):
    """NOREPLICAS: a primary run with min-replicas-to-write refuses writes while too few replicas keep up."""


class PersistenceFailedError(redis.exceptions.ResponseError):
    """MISCONF: a server whose last snapshot or append-only write failed (a full disk) refuses writes, by its
    default stop-writes-on-bgsave-error."""


# redis-py picks an error's class by its first word from this table (redis._parsers.base.BaseParser), for its
# pure-Python parser and hiredis's alike. It has a class for OOM only; the other two get theirs here, so that they
# can be told from a bad command, unless a redis-py release brings its own, which is then the one counted below.
BaseParser.EXCEPTION_CLASSES.setdefault("NOREPLICAS", NoReplicasError)
BaseParser.EXCEPTION_CLASSES.setdefault("MISCONF", PersistenceFailedError)
# What a server answers when its own state forbids writes, until an operator acts (Redis documentation: the
# min-replicas-to-write, stop-writes-on-bgsave-error and maxmemory directives). OOM is what the broker's required
# maxmemory-policy noeviction answers once its memory is full. The classes are read back from the table: with
# NoReplicasError and PersistenceFailedError listed here and a redis-py of the future raising its own, NOREPLICAS
# and MISCONF would have been 500s again.
WRITE_REFUSALS = (redis.exceptions.OutOfMemoryError, BaseParser.EXCEPTION_CLASSES["NOREPLICAS"],
                  BaseParser.EXCEPTION_CLASSES["MISCONF"])


def failover_retry() -> Retry:
    """redis-py's retry policy for the throttles', the cache's and the metrics' connections (the `retry` option of
    a client or of Django's RedisCache): one more try, on a new connection, after one of FAILOVER_ERRORS; nothing
    else retried. Not for the broker's connections (core.broker.Channel says why).

    Returns a new redis.retry.Retry (redis-py copies it into each connection). A second such answer is raised as
    it came, and the service counts it an outage (core.errors.CACHE_OUTAGES: 503 "cache")."""
    return Retry(NoBackoff(), retries=1, supported_errors=FAILOVER_ERRORS)
