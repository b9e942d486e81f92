"""The connection pool after PostgreSQL ended every connection (a restart, a failover): the next query gets a fresh
connection at once instead of waiting out the pool's timeout behind the dead ones (core/database.py). And after a
failover left its sessions on a server that takes no writes: they are replaced (core/postgresql)."""
import time

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection
from psycopg_pool import ConnectionPool, PoolTimeout

from core.database import connection_quiet
from core.errors import DATABASE_OUTAGES
from tests.support.database_state import backend_end, backends_end
from tests.support.env import database_url
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

IDLE_CONNECTIONS = 6
# A fresh connection and one of psycopg_pool's backoff pauses (about 1 s); the pool's own timeout is 5 s.
WITHIN_SECONDS = 3.5


def pool_filled_then_cut(count: int) -> None:
    """Leave `count` idle connections in this process's pool, then have PostgreSQL end every one of them."""
    pool = connection.pool
    held = [pool.getconn() for _ in range(count)]
    for conn in held:
        pool.putconn(conn)
    connection.close()
    with psycopg.connect(database_url(), autocommit=True) as admin:
        ended = backends_end(admin.cursor())
    assert ended >= count


def test_the_first_query_after_every_connection_was_ended_gets_a_fresh_one_quickly():
    pool_filled_then_cut(IDLE_CONNECTIONS)
    started = time.monotonic()
    assert get_user_model().objects.count() == 0
    assert time.monotonic() - started < WITHIN_SECONDS


def test_after_one_dead_connection_is_found_the_others_are_already_replaced():
    pool_filled_then_cut(IDLE_CONNECTIONS)
    get_user_model().objects.count()
    connection.close()
    # The pool holds only live connections now: the next query pays no check failure and no backoff.
    started = time.monotonic()
    get_user_model().objects.count()
    assert time.monotonic() - started < 0.5


def test_a_quiet_pooled_connection_is_lent_without_a_round_trip(monkeypatch):
    # psycopg_pool's own check is an empty query: a statement on every checkout. A connection whose socket has
    # nothing to read is lent as it is (core.database.connection_quiet).
    checks = []
    original = ConnectionPool.check_connection
    monkeypatch.setattr(ConnectionPool, "check_connection",
                        staticmethod(lambda conn: (checks.append(conn), original(conn))[1]))
    for _ in range(3):
        get_user_model().objects.count()
        connection.close()  # back to the pool: the next query takes it out again

    assert checks == []


def test_a_connection_postgresql_ended_is_not_quiet():
    pool = connection.pool
    conn = pool.getconn()
    try:
        assert connection_quiet(conn)
        with psycopg.connect(database_url(), autocommit=True) as admin:
            backend_end(admin.cursor(), conn.info.backend_pid)
        wait_for(lambda: not connection_quiet(conn), timeout=5, message="the ended connection's socket to be readable")
    finally:
        pool.putconn(conn)


def read_only_session_end() -> None:
    """Give this thread's connection back; were it still lent to the pool (the change under test missing), make it
    writable first, so no later test meets a read-only session."""
    if connection.connection is not None and not connection.connection.closed:
        connection.connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
    connection.close()


def test_a_write_refused_as_read_only_is_an_outage_and_replaces_the_pools_connections():
    # A session on a standby, or on a primary a failover demoted, refuses every write with SQLSTATE 25006; psycopg
    # calls that an InternalError. Here the session itself is made read-only, as such a server's sessions are.
    pool = connection.pool
    idle = [pool.getconn() for _ in range(3)]
    idle_pids = {conn.info.backend_pid for conn in idle}
    for conn in idle:
        pool.putconn(conn)
    connection.ensure_connection()
    lent_pid = connection.connection.info.backend_pid
    try:
        with pytest.raises(OperationalError) as raised:
            with connection.cursor() as cursor:
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                cursor.execute("SELECT nextval('otp_delivery_id_seq')")
    finally:
        read_only_session_end()
    assert isinstance(raised.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
    assert isinstance(raised.value, DATABASE_OUTAGES)

    held = [pool.getconn() for _ in range(3)]
    try:
        assert not {conn.info.backend_pid for conn in held} & (idle_pids | {lent_pid})
        for conn in held:
            assert conn.execute("SELECT current_setting('transaction_read_only')").fetchone()[0] == "off"
    finally:
        for conn in held:
            pool.putconn(conn)


def test_readiness_fails_on_a_read_only_database_and_its_connection_is_replaced():
    connection.ensure_connection()
    read_only_pid = connection.connection.info.backend_pid
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        with pytest.raises(OperationalError, match="takes no writes"):
            connection.writable_check()
    finally:
        read_only_session_end()
    connection.writable_check()  # a new session: writable
    assert connection.connection.info.backend_pid != read_only_pid


def test_each_session_has_the_server_end_a_client_gone_silent():
    # PostgreSQL kept the session of a client whose network went silent, with its locks, for as long as the server's
    # kernel waits to probe an idle connection (2 hours): a verify's row lock would have answered 503 to that user
    # all along. The session's own TCP settings (config/settings.py) end it about 5 s after its last packet. The
    # fault tests cannot drop the packets of the server's end: a proxy stands between them (tests/faults).
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('tcp_user_timeout'), current_setting('tcp_keepalives_idle'), "
                       "current_setting('tcp_keepalives_interval'), current_setting('tcp_keepalives_count'), "
                       "current_setting('statement_timeout')")
        assert cursor.fetchone() == ("5000", "4", "1", "1", "5s")  # milliseconds, seconds, probes


# Long enough for psycopg_pool's own backoff (1, 2, 4, 8 s from the first failed attempt) to have its next attempt
# more than 5 s past the database's return; the capped one tries again within POOL_RECONNECT_MAX_DELAY_SECONDS.
OUTAGE_SECONDS = 8


def test_after_an_outage_the_pool_reconnects_within_its_capped_delay():
    # psycopg_pool doubles the pause between failed connection attempts without a bound, so after a 60 s outage
    # the API answered 503 for 18.7 s more, until its next attempt. The service's pool caps the pause.
    from core.postgresql.base import POOL_RECONNECT_MAX_DELAY_SECONDS

    proxy = TcpProxy(int(connection.settings_dict["PORT"] or 5432)).start()
    pool = type(connection.pool)(
        kwargs={**connection.get_connection_params(), "host": proxy.host, "port": proxy.port, "autocommit": True},
        min_size=1, max_size=2, timeout=1, open=True)
    try:
        pool.wait(timeout=5)
        proxy.cut()
        cut_at = time.monotonic()
        while time.monotonic() - cut_at < OUTAGE_SECONDS:  # requests through the outage, as an API meets it
            with pytest.raises((PoolTimeout, psycopg.OperationalError)):
                with pool.connection(timeout=0.5) as conn:
                    conn.execute("SELECT 1")
        proxy.start()
        back_at = time.monotonic()

        def answered() -> bool:
            try:
                with pool.connection(timeout=0.5) as conn:
                    return conn.execute("SELECT 1").fetchone() == (1,)
            except (PoolTimeout, psycopg.OperationalError):
                return False

        wait_for(answered, timeout=20, interval=0.05, message="a connection after the outage")
        # The cap, its 10 % jitter, a connection's set-up and the polling's last 0.5 s.
        assert time.monotonic() - back_at < POOL_RECONNECT_MAX_DELAY_SECONDS * 1.1 + 1.0
    finally:
        pool.close()
        proxy.stop()
