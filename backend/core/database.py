"""The PostgreSQL connection pool's health check (DATABASES OPTIONS "pool" in config/settings.py)."""
import logging

from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)


def pool_connection_check(conn) -> None:
    """Check one pooled connection as it leaves the pool; when it is dead, check every idle one at once.

    Args: conn, a psycopg Connection taken out of the process's pool.
    Returns None. Raises the check's psycopg error when `conn` is broken; the pool then discards it, starts a
    replacement and tries again.

    Why the whole pool: psycopg_pool sleeps a growing backoff (about 1, 2, 4 s) between two failed checks within one
    getconn(). After PostgreSQL restarts, or ends every backend, all idle connections are dead, and with the pool's
    5 s timeout the first request to meet them waited out its timeout (a 503) while dead connections were still
    queued. `ConnectionPool.check()` tests the idle connections without that backoff, discards the dead ones and
    starts their replacements, so one backoff later the request gets a fresh connection.
    """
    try:
        ConnectionPool.check_connection(conn)
    except Exception:
        from django.db import connections

        pool = connections["default"].pool
        if pool is not None:
            logger.warning("a pooled database connection was dead: checking every idle one")
            pool.check()
        raise
