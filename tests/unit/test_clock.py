"""The service's clock (core.clock): PostgreSQL's, carried forward on the monotonic clock, whatever this host's
wall clock says. What it changes for codes, deliveries and housekeeping: tests/unit/test_services.py, "Hosts
whose clocks are off"."""
import threading
import time

import psycopg_pool
import pytest
from django.db import OperationalError, connection

from core import clock

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock_unread(monkeypatch):
    """This process's clock as if never read yet; put back as it was afterwards."""
    monkeypatch.setattr(clock, "_reading", None)
    monkeypatch.setattr(clock, "_reading_is_databases", False)
    monkeypatch.setattr(clock, "_next_read_at", 0.0)


def _database_seconds() -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM clock_timestamp())")
        return float(cursor.fetchone()[0])


def test_the_clock_is_the_databases_whatever_this_hosts_clock_says(clock_unread, monkeypatch):
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # this host an hour ahead
    read = clock.clock_seconds()
    monkeypatch.setattr(time, "time", real_time)
    assert abs(read - _database_seconds()) < 1
    assert abs((clock.clock_now().timestamp()) - _database_seconds()) < 1


def test_the_clock_is_read_once_an_interval_and_carried_forward_between(clock_unread, django_assert_num_queries):
    with django_assert_num_queries(1):
        first = clock.clock_seconds()
    with django_assert_num_queries(0):
        second = clock.clock_seconds()
    assert 0 <= second - first < 0.5


def test_a_failed_reading_carries_the_last_one_forward_and_reads_again_later(clock_unread, monkeypatch, caplog):
    first = clock.clock_seconds()
    reads = []

    def database_down():
        reads.append(1)
        raise OperationalError("connection refused")

    monkeypatch.setattr(clock, "_database_clock_read", database_down)
    monkeypatch.setattr(clock, "_next_read_at", 0.0)  # a reading is due
    assert 0 <= clock.clock_seconds() - first < 0.5 and reads == [1]
    assert 0 <= clock.clock_seconds() - first < 0.5 and reads == [1]  # not again at once: it waits its retry
    assert clock._next_read_at - time.monotonic() > clock.CLOCK_READ_RETRY_SECONDS - 1
    assert "could not be read" not in caplog.text  # it had a reading: nothing changed for the service


def test_a_process_that_never_read_the_database_uses_its_own_clock_while_it_is_down(clock_unread, monkeypatch,
                                                                                      caplog):
    def database_down():
        raise OperationalError("connection refused")

    real_read, real_time = clock._database_clock_read, time.time
    monkeypatch.setattr(clock, "_database_clock_read", database_down)
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # this host an hour ahead
    assert abs(clock.clock_seconds() - time.time()) < 0.5
    assert "the database's clock could not be read (OperationalError): this host's clock is used" in caplog.text
    # Soon read again: a first reading also fails when the pool's first connection is merely slow to open (a review
    # of the 1 s wait for a connection). It had waited CLOCK_READ_RETRY_SECONDS (30 s) on this host's clock.
    assert clock._next_read_at - time.monotonic() <= clock.CLOCK_FIRST_READ_RETRY_SECONDS

    monkeypatch.setattr(clock, "_database_clock_read", real_read)
    monkeypatch.setattr(clock, "_next_read_at", 0.0)  # the retry is due
    assert abs(clock.clock_seconds() - _database_seconds()) < 1
    assert "the database's clock was read: this host's clock is no longer used" in caplog.text
    assert clock._next_read_at - time.monotonic() > clock.CLOCK_READ_INTERVAL_SECONDS - 5


def test_while_one_thread_waits_on_a_slow_reading_the_others_carry_the_last_one_forward(clock_unread, monkeypatch):
    # A database that takes its time to answer (during an outage, the pool waits its 5 s timeout): the thread
    # reading waits, the others go on with the last reading. They had queued behind it on the clock's lock.
    first = clock.clock_seconds()
    reading, answer = threading.Event(), threading.Event()

    def database_slow():
        reading.set()
        answer.wait(timeout=10)
        raise OperationalError("connection timeout")

    monkeypatch.setattr(clock, "_database_clock_read", database_slow)
    monkeypatch.setattr(clock, "_next_read_at", 0.0)  # a reading is due
    reader = threading.Thread(target=clock.clock_seconds)
    reader.start()
    try:
        assert reading.wait(timeout=5)
        started = time.monotonic()
        other = clock.clock_seconds()
        assert time.monotonic() - started < 0.5  # did not wait for the reader
        assert 0 <= other - first < 5
    finally:
        answer.set()
        reader.join(timeout=10)
    assert not reader.is_alive()
    assert clock._next_read_at - time.monotonic() > clock.CLOCK_READ_RETRY_SECONDS - 1  # the failure was recorded


@pytest.mark.django_db(transaction=True)
def test_a_reading_waits_for_a_pooled_connection_at_most_its_own_timeout(clock_unread):
    # While the pool has no connection to lend (every one taken, as in an outage, when none can be opened), the
    # reading waited out the pool's own timeout (5 s), and then the caller's statement waited as long again.
    first = clock.clock_seconds()
    connection.close()  # this thread's connection back to the pool, so the reading below borrows one
    pool = connection.pool
    assert pool is not None, "the PostgreSQL settings give each process a pool"
    held = []
    try:
        # Every connection the pool will lend, taken (other threads of the test run may hold some): it can lend
        # none until one comes back. Each is given 2 s, so that none still opening is lent to the reading instead.
        # One at a time into `held`, so that each goes back whatever happens.
        while True:
            try:
                held.append(pool.getconn(timeout=2))
            except psycopg_pool.PoolTimeout:
                break
        clock._next_read_at = 0.0  # a reading is due
        started = time.monotonic()
        read = clock.clock_seconds()
        waited = time.monotonic() - started
    finally:
        for conn in held:
            pool.putconn(conn)
    assert clock.CLOCK_READ_POOL_TIMEOUT_SECONDS - 0.1 < waited < clock.CLOCK_READ_POOL_TIMEOUT_SECONDS + 1
    assert 0 <= read - first < 5  # the last reading, carried forward
    assert clock._next_read_at - time.monotonic() > clock.CLOCK_READ_RETRY_SECONDS - 5


def test_a_reading_inside_a_transaction_takes_the_connection_it_holds(clock_unread, django_assert_num_queries):
    # Inside a transaction this thread holds a connection: borrowing a second one for the reading would take two
    # of the pool's connections for one request.
    with django_assert_num_queries(1):
        clock.clock_seconds()
