"""The PostgreSQL connection pool's health check (DATABASES OPTIONS "pool" in config/settings.py)."""
import logging

from psycopg import pq
from psycopg_pool import ConnectionPool
from urllib3.util.wait import wait_for_read

logger = logging.getLogger(__name__)


def connection_quiet(conn) -> bool:
    """Whether a pooled connection is idle and open with nothing waiting on its socket: no round trip.

    Args: conn, a psycopg Connection. Returns True when libpq sees it open and idle (no transaction) and its
    socket has no byte to read. False otherwise, including when PostgreSQL ended it: a backend ended by a restart,
    a failover or pg_terminate_backend sends its FATAL error and closes the socket, which makes it readable
    (PostgreSQL protocol, "Termination"); so might an asynchronous notice, which the full check then reads.
    """
    if conn.pgconn.status != pq.ConnStatus.OK:  # BAD once closed, by us or by the server
        return False
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return False
    return not wait_for_read(conn.pgconn.socket, timeout=0)


def pool_connection_check(conn) -> None:
    """Check one pooled connection as it leaves the pool; when it is dead, check every idle one at once.

    Args: conn, a psycopg Connection taken out of the process's pool.
    Returns None. Raises the check's psycopg error when `conn` is broken; the pool then discards it, starts a
    replacement and tries again.

    A quiet connection (connection_quiet) is taken as it is; only one whose socket has something to read gets
    psycopg_pool's own check, a round trip (an empty query). That round trip on every checkout cost a statement
    per request and two per delivery (docs/performance.md). A network gone silent (no FIN, no reset) the round trip
    could not see either: it would wait as long as the first real statement. The connections' TCP keepalives
    (DATABASES OPTIONS) make the kernel end such a connection, and its socket then reads as not quiet.

    Why the whole pool: psycopg_pool sleeps a growing backoff (about 1, 2, 4 s) between two failed checks within one
    getconn(). After PostgreSQL restarts, or ends every backend, all idle connections are dead, and with the pool's
    5 s timeout the first request to meet them waited out its timeout (a 503) while dead connections were still
    queued. `ConnectionPool.check()` tests the idle connections without that backoff, discards the dead ones and
    starts their replacements, so one backoff later the request gets a fresh connection.
    """
    if connection_quiet(conn):
        return
    try:
        ConnectionPool.check_connection(conn)
    except Exception:
        from django.db import connections

        pool = connections["default"].pool
        if pool is not None:
            logger.warning("a pooled database connection was dead: checking every idle one")
            pool.check()
        raise
