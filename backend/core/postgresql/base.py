"""Django's PostgreSQL backend with this project's pool health check and the prepared cursor of the hot statements
(DATABASES ENGINE "core.postgresql")."""
import logging
import threading
import time

import psycopg
from django.db import DatabaseError, OperationalError
from django.db.backends.postgresql import base, operations
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.db.utils import DatabaseErrorWrapper
from django.utils.asyncio import async_unsafe
from django.utils.functional import cached_property
from psycopg.pq import Format
from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff, BasePool

from core.database import pool_connection_check

logger = logging.getLogger(__name__)

# What PostgreSQL answers when a statement prepared on a connection no longer fits the schema: its result's type
# changed under it ("cached plan must not change result type"), or it is gone (a DEALLOCATE psycopg did not see).
_PREPARED_STATEMENT_STALE = (psycopg.errors.FeatureNotSupported, psycopg.errors.InvalidSqlStatementName)

# A process replaces its whole pool at most this often (DatabaseWrapper.connections_replace): while the database
# stays read-only, new sessions are read-only too, and replacing them at every refused write would reconnect at
# the rate of requests to a database already in trouble.
POOL_REPLACE_INTERVAL_SECONDS = 1.0
_pool_replaced_at: dict[str, float] = {}
_pool_replaced_lock = threading.Lock()

# The longest pause between two failed connection attempts of a pool, in seconds. psycopg_pool doubles the pause
# (about 1, 2, 4, 8... s) with no bound below its reconnect_timeout (300 s): after a 60 s outage the API answered
# 503 for 18.7 s more, waiting for its next attempt. Every process's pool tries at most this often, with 10 %
# jitter, so a database back from an outage is found within it and meets no stampede of reconnections.
POOL_RECONNECT_MAX_DELAY_SECONDS = 2.0


class _ReconnectBackoff(AttemptWithBackoff):
    """psycopg_pool's backoff between a pool's failed connection attempts (1 s, then doubling, until the pool's
    reconnect_timeout), its pause capped at POOL_RECONNECT_MAX_DELAY_SECONDS, jittered by the library's 10 %."""

    def update_delay(self, now: float) -> None:
        """Set `self.delay`, the seconds until the next attempt; `now` is time.monotonic(). Returns None."""
        super().update_delay(now)
        if self.delay > POOL_RECONNECT_MAX_DELAY_SECONDS:
            capped = BasePool._jitter(POOL_RECONNECT_MAX_DELAY_SECONDS, -self.DELAY_JITTER, self.DELAY_JITTER)
            self.delay = min(capped, max(0.0, self.give_up_at - now))


class ServiceConnectionPool(ConnectionPool):
    """psycopg_pool's ConnectionPool whose reconnection attempts after an outage pause at most
    POOL_RECONNECT_MAX_DELAY_SECONDS (_ReconnectBackoff); everything else is the library's.

    psycopg_pool takes no bound for its backoff, so the attempt that its maintenance task carries from one try to
    the next (`_add_connection`, pinned psycopg-pool's) starts as ours.
    """

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _ReconnectBackoff(timeout=self.reconnect_timeout), growing=growing)


class _ErrorWrapper(DatabaseErrorWrapper):
    """Django's translation of psycopg's errors into django.db's, with a write refused by a read-only server
    translated as the outage it is.

    A hot standby, or a primary that a failover demoted while this process's pool still holds connections to it,
    answers every write with SQLSTATE 25006, "cannot execute ... in a read-only transaction" (PostgreSQL
    documentation, "Hot Standby"). psycopg counts it an InternalError, which the service treated as a bug: a 500,
    the throttles kept, a delivery job acknowledged and lost. As an OperationalError it is a database outage
    everywhere (core.errors.DATABASE_OUTAGES): 503 naming the database, throttles given back, jobs retried. And the
    pool's connections are replaced (DatabaseWrapper.connections_replace), since a session on a read-only server
    stays there: new ones reach whatever server the database's address names now.
    """

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None and issubclass(exc_type, psycopg.errors.ReadOnlySqlTransaction):
            self.wrapper.connections_replace(reason="the database refused a write as read-only")
            exc_type = psycopg.OperationalError
        return super().__exit__(exc_type, exc_value, traceback)


class DatabaseOperations(operations.DatabaseOperations):
    def last_executed_query(self, cursor, sql, params):
        """The SQL a cursor ran, with its values, for Django's query log (DEBUG, CaptureQueriesContext).

        Django reads it from a client-side-binding cursor's own record; a prepared cursor (prepared_cursor) keeps
        no text of a prepared run, so its statement is composed here, as Django does when server-side binding is
        on for every query. Returns None when the values cannot be composed."""
        if not isinstance(cursor, psycopg.Cursor) or isinstance(cursor, psycopg.ClientCursor):
            return super().last_executed_query(cursor, sql, params)
        try:
            return self.compose_sql(sql, params)
        except psycopg.errors.DataError:
            return None


class DatabaseWrapper(base.DatabaseWrapper):
    """Django's own wrapper with four additions: the pool is a ServiceConnectionPool (reconnecting at least every
    POOL_RECONNECT_MAX_DELAY_SECONDS), its `check` is core.database.pool_connection_check, `prepared_cursor` gives
    the hot statements a cursor that PostgreSQL plans once per connection, and a server that takes no writes is a
    database outage whose connections are replaced (_ErrorWrapper, writable_check).

    Django passes its own `check` to psycopg_pool (CONN_HEALTH_CHECKS), so another one cannot go through
    OPTIONS["pool"]: the pool is built here with the same arguments as Django's, before Django would build it.
    """

    ops_class = DatabaseOperations
    # Set by connections_replace: this thread's connection is closed when given back, never lent again.
    _connection_discard = False

    @property
    def pool(self):
        options = self.settings_dict["OPTIONS"].get("pool")
        if options and self.alias != base.NO_DB_ALIAS and self.alias not in self._connection_pools:
            pool = ServiceConnectionPool(kwargs={**self.get_connection_params(), "autocommit": True}, open=False,
                                         configure=self._configure_connection, check=pool_connection_check,
                                         **({} if options is True else options))
            self._connection_pools.setdefault(self.alias, pool)
        return super().pool

    @cached_property
    def wrap_database_errors(self):
        return _ErrorWrapper(self)

    def connections_replace(self, *, reason: str) -> None:
        """Never lend this thread's connection again, and replace every connection of this process's pool
        (psycopg_pool's `drain`: the idle ones now, each lent one when it is given back) unless that was done less
        than POOL_REPLACE_INTERVAL_SECONDS ago; `reason` (a phrase) goes into the warning logged when the pool is
        replaced. Returns None.

        For a database whose sessions cannot recover in place: after a failover, the pool's sessions still reach the
        server that is now a standby, and they would until the pool's maximum lifetime ended them (an hour). This
        thread's connection is closed when it is given back (`_close`), or, without a pool, at the end of the
        request (`is_usable`).
        """
        self._connection_discard = True
        pool = self.pool
        if pool is None:
            return
        now = time.monotonic()
        with _pool_replaced_lock:
            if now - _pool_replaced_at.get(self.alias, float("-inf")) < POOL_REPLACE_INTERVAL_SECONDS:
                return
            _pool_replaced_at[self.alias] = now
        logger.warning("%s (a standby, or a primary a failover demoted): replacing this process's database "
                       "connections", reason)
        pool.drain()

    def _close(self):
        if self._connection_discard and self.connection is not None:
            self._connection_discard = False
            self.connection.close()  # a closed connection given back is dropped by the pool, which opens another
        return super()._close()

    def is_usable(self):
        return not self._connection_discard and super().is_usable()

    def writable_check(self) -> None:
        """Raise django.db.OperationalError when this connection's server takes no writes (`transaction_read_only`
        on: a hot standby, a primary a failover demoted, or `default_transaction_read_only` set), after replacing the
        pool's connections as for a write refused. Returns None when it takes them; raises what cursor() raises.

        For /readyz: a standby answers `SELECT 1` as a primary does."""
        with self.cursor() as cursor:
            cursor.execute("SELECT current_setting('transaction_read_only')")
            read_only = cursor.fetchone()[0] == "on"
        if read_only:
            self.connections_replace(reason="the database is read-only")
            raise OperationalError("the database takes no writes (transaction_read_only is on)")

    @async_unsafe
    def prepared_cursor(self):
        """A cursor whose statements psycopg prepares: once a statement has run `prepare_threshold` times on a
        connection (5, config/settings.py; Django's default, None, prepares nothing), PostgreSQL reuses its parse and
        plan from the next run on instead of redoing both each time (psycopg 3 documentation, "Prepared statements").

        Returns Django's cursor wrapper, as cursor() does (its health check, query log, execute wrappers and error
        translation to django.db errors), around a psycopg server-side-binding cursor, set up as Django's
        create_cursor sets up its own. Django's own cursors bind client-side and never prepare. Raises what
        cursor() raises.

        Only for the hot statements of otp.queries, which are written for it (docs/decisions.md, "Raw SQL on the hot
        paths"): a prepared statement may run on a generic plan, made without its parameters' values, and such a
        plan cannot use a partial index whose predicate compares a column with a parameter (PostgreSQL
        documentation, "Partial Indexes" and PREPARE's "Notes"), so those statements write their constants as
        literals.
        """
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            cursor = psycopg.Cursor(self.connection)
            tzloader = self.connection.adapters.get_loader(base.TIMESTAMPTZ_OID, Format.TEXT)
            if self.timezone != tzloader.timezone:
                register_tzloader(self.timezone, cursor)
            return self._prepare_cursor(cursor)

    def prepared_execute(self, cursor, sql: str, params) -> None:
        """`cursor.execute(sql, params)` for a cursor of prepared_cursor, which survives a schema change.

        A migration run by another process can change the type of a column a statement prepared here returns, and
        PostgreSQL then refuses every run of it on this connection; psycopg forgets its prepared statements only
        for DDL run on its own connection. When that happens outside a transaction (autocommit, as the hot
        statements run), this connection stops preparing (psycopg's `prepare_threshold` None: until the pool
        replaces it, within the hour) and the statement runs once more, unprepared, so no request or delivery fails
        for it. Inside a transaction the error is raised: the transaction is aborted. Raises what execute raises.
        """
        try:
            cursor.execute(sql, params)
        except DatabaseError as exc:
            if (not isinstance(exc.__cause__, _PREPARED_STATEMENT_STALE) or self.in_atomic_block
                    or not self.get_autocommit()):
                raise
            logger.warning("a prepared statement no longer fits the schema (%s): this database connection prepares "
                           "nothing more until it is replaced", exc.__cause__.sqlstate)
            self.connection.prepare_threshold = None
            cursor.execute(sql, params)
