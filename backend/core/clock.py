"""The service's clock: the database's, read about once a minute by each process and carried forward between two
readings on the process's monotonic clock.

Why: a code's expiry, a delivery's lease and the housekeeping cut-offs are written by one host and compared by
another (an API host issues a code, a worker claims its delivery, another API host verifies it, beat's worker
purges it). On each host's own wall clock, a worker a few minutes ahead dropped codes as expired the moment they
were issued, an API host behind issued codes that another host found expired, a worker ahead took over a delivery
whose lease had not lapsed and sent the same code twice, and a maintenance worker ahead deleted live codes (a
helper's clock-skew review, docs/reliability.md "Clocks"). Read off one clock, those comparisons hold whatever
the hosts' clocks say. The monotonic clock is never stepped (NTP or an operator setting the date does not move
it), so the carried-forward reading stays right in between.

Not on this clock: JWTs (minted and checked on each API host's own clock, with CLOCK_SKEW_TOLERANCE_SECONDS of
leeway) and the throttles (Redis's clock, core.ratelimit).
"""
import logging
import threading
import time
from datetime import UTC, datetime

import django.db
import psycopg
from django.db import connection

logger = logging.getLogger(__name__)

# How often a process reads the database's clock again. The monotonic clock runs at the rate NTP sets for the
# wall clock, so in between the reading drifts by microseconds at most.
CLOCK_READ_INTERVAL_SECONDS = 60.0
# After a failed reading, when the process has a reading of the database's clock to carry forward: rare enough that
# a request meeting an outage waits for the reading (CLOCK_READ_POOL_TIMEOUT_SECONDS) only that often.
CLOCK_READ_RETRY_SECONDS = 30.0
# After a failed reading, when the process has none and runs on its own clock meanwhile: soon, since a first
# reading also fails when the pool's first connection takes longer than CLOCK_READ_POOL_TIMEOUT_SECONDS to open
# (a remote database over TLS, a loaded host), which the next try usually finds open.
CLOCK_FIRST_READ_RETRY_SECONDS = 2.0
# How long a reading waits for a connection from the pool, in seconds. A reading taken while the database is down
# waited out the pool's own timeout (5 s), and the request that took it then waited as long again for its own
# statement: its 503 came after 10 s, not 5 (tests/faults/test_faults.py).
CLOCK_READ_POOL_TIMEOUT_SECONDS = 1.0

_lock = threading.Lock()
# (the database's clock in Unix seconds, this process's time.monotonic() at that moment), or None before a reading.
_reading: tuple[float, float] | None = None
_reading_is_databases = False  # False while _reading is this host's clock, taken when the database could not be read
_next_read_at = 0.0  # time.monotonic() seconds


def _database_clock_read() -> tuple[float, float]:
    """One reading: PostgreSQL's clock_timestamp() (the real time, not the transaction's start as now() is), paired
    with the monotonic clock at the middle of the round trip. The quick local run (SQLite) has one host: its own
    clock.

    A thread that holds no connection yet borrows one from the pool for the reading, waiting at most
    CLOCK_READ_POOL_TIMEOUT_SECONDS for it; one that holds a connection (inside a transaction, say) reads on it.
    Raises django.db.Error or psycopg.Error (psycopg_pool.PoolTimeout among them) when the database fails.
    """
    if connection.vendor != "postgresql":
        return time.time(), time.monotonic()
    pool = connection.pool if connection.connection is None else None
    if pool is None:
        connection.ensure_connection()  # the round trip's middle below must not include connecting
        with connection.cursor() as cursor:
            before = time.monotonic()
            cursor.execute(_CLOCK_QUERY)
            (seconds,) = cursor.fetchone()
            after = time.monotonic()
    else:
        pool.open()  # as Django does before its first connection; nothing once open
        with pool.connection(timeout=CLOCK_READ_POOL_TIMEOUT_SECONDS) as pooled:
            before = time.monotonic()
            (seconds,) = pooled.execute(_CLOCK_QUERY).fetchone()
            after = time.monotonic()
    return float(seconds), (before + after) / 2


_CLOCK_QUERY = "SELECT extract(epoch FROM clock_timestamp())"


def clock_seconds() -> float:
    """The service's current time, in Unix seconds (float): the database's clock, as last read, plus the
    monotonic seconds since (a reading every CLOCK_READ_INTERVAL_SECONDS).

    Never raises: when a reading fails (the database unreachable), the last reading is carried forward, and a
    process that never had one uses its own clock (whatever it compares next with the database's rows needs the
    database, which is not there); it reads again CLOCK_READ_RETRY_SECONDS later, or CLOCK_FIRST_READ_RETRY_SECONDS
    while on its own clock. A reading waits at most CLOCK_READ_POOL_TIMEOUT_SECONDS for a connection
    (_database_clock_read). While one thread reads, the others carry the last reading forward rather than wait for
    it: every thread of a worker had queued behind a reading that met an outage (a review of a slow 503 in a
    PostgreSQL outage). Only a process with no reading yet waits for its first.
    """
    global _reading, _reading_is_databases, _next_read_at
    if time.monotonic() >= _next_read_at and _lock.acquire(blocking=_reading is None):
        try:
            if time.monotonic() >= _next_read_at:
                try:
                    reading = _database_clock_read()
                except (django.db.Error, psycopg.Error) as exc:
                    if _reading is None:
                        logger.warning("the database's clock could not be read (%s): this host's clock is used "
                                       "until it can", exc.__class__.__name__)
                        _reading = (time.time(), time.monotonic())
                    _next_read_at = time.monotonic() + (CLOCK_READ_RETRY_SECONDS if _reading_is_databases
                                                        else CLOCK_FIRST_READ_RETRY_SECONDS)
                else:
                    if _reading is not None and not _reading_is_databases:
                        logger.warning("the database's clock was read: this host's clock is no longer used")
                    _reading, _reading_is_databases = reading, True
                    _next_read_at = time.monotonic() + CLOCK_READ_INTERVAL_SECONDS
        finally:
            _lock.release()
    seconds, monotonic_then = _reading
    return seconds + (time.monotonic() - monotonic_then)


def clock_now() -> datetime:
    """clock_seconds() as an aware datetime in UTC, for the models' DateTimeFields. Never raises."""
    return datetime.fromtimestamp(clock_seconds(), tz=UTC)
