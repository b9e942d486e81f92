"""What the service's Redis clients do when a server answers as one left behind a failover does (a managed Redis
promotes the replica and moves its endpoint's address; the old primary becomes a replica and refuses every write,
the connections opened before the move still reach it).

A command refused that way was not run (a replica runs no write, a script's included), so the throttles', the
cache's and the metrics' clients run it once more on a new connection, which reaches whatever server the address
names now; the broker's refusals are kombu connection errors (core.broker). Connection errors and timeouts are
not retried: a command that timed out may have run, and the throttles' scripts count.
"""
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# What a server left behind a failover answers instead of running a command, so running it again elsewhere is
# safe: READONLY (a replica refuses writes: "You can't write against a read only replica"), LOADING (a demoted
# primary loading its new primary's data), MASTERDOWN (a replica that serves nothing while its link is down). A
# client blocked in BRPOP gets "UNBLOCKED force unblock from blocking operation, instance state changed (master ->
# replica?)" instead, a plain ResponseError with that prefix (Redis documentation, "Replication").
FAILOVER_ERRORS = (redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError, redis.exceptions.MasterDownError)
UNBLOCKED_PREFIX = "UNBLOCKED"


def failover_retry() -> Retry:
    """redis-py's retry policy for the throttles', the cache's and the metrics' connections (the `retry` option of
    a client or of Django's RedisCache): one more try, on a new connection, after one of FAILOVER_ERRORS; nothing
    else retried. Not for the broker's connections (core.broker.Channel says why).

    Returns a new redis.retry.Retry (redis-py copies it into each connection). A second such answer is raised as
    it came, and the service counts it an outage (core.errors.CACHE_OUTAGES: 503 "cache")."""
    return Retry(NoBackoff(), retries=1, supported_errors=FAILOVER_ERRORS)
