"""What every Redis client of the service does when Redis answers READONLY: the answer of a replica, which a
failover leaves behind the connections opened before it (a managed Redis promotes the replica and moves its
endpoint's address; the old primary becomes a replica and refuses every write).

A command refused that way was not run (a replica runs no write, a script's included), so it runs once more on a
new connection, which reaches whatever server the address names now. Connection errors and timeouts are not
retried: a command that timed out may have run, and the throttles' scripts count.
"""
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# "READONLY You can't write against a read only replica" (redis-py's ReadOnlyError), and "UNBLOCKED force unblock
# from blocking operation, instance state changed (master -> replica?)", which a client blocked in BRPOP gets when
# its server becomes a replica (Redis documentation, "Replication"; a ResponseError with that prefix).
UNBLOCKED_PREFIX = "UNBLOCKED"


def failover_retry() -> Retry:
    """redis-py's retry policy for the service's connections (the `retry` option of a client, a connection pool
    or Django's RedisCache): one more try, on a new connection, after a READONLY answer; nothing else retried.

    Returns a new redis.retry.Retry (redis-py copies it into each connection). A second READONLY answer is raised
    as redis.exceptions.ReadOnlyError, which the service counts an outage (core.errors.CACHE_OUTAGES; the broker's
    transport counts it a connection error, core.broker)."""
    return Retry(NoBackoff(), retries=1, supported_errors=(redis.exceptions.ReadOnlyError,))
