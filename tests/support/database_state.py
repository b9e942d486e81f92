"""PostgreSQL for the tests: the one way they end the database's other connections, as a restart or a failover
would, and a database turned read-only as a failover leaves it for a pool's sessions."""
import psycopg
from psycopg import sql

# pg_terminate_backend(pid, timeout) with a timeout in milliseconds returns once the backend has exited
# (PostgreSQL 14+, "Server Signaling Functions"). Without one it returns once the signal is sent, and a query issued
# within that millisecond meets a backend still running: a test would race the server instead of meeting an ended
# connection.
TERMINATED_WITHIN_MS = 5000


def backend_end(cursor, pid: int) -> bool:
    """End the backend `pid` through `cursor` (a DB-API cursor), waiting until it has exited; return whether it
    did within TERMINATED_WITHIN_MS."""
    cursor.execute("SELECT pg_terminate_backend(%s, %s)", [pid, TERMINATED_WITHIN_MS])
    return cursor.fetchone()[0]


def backends_end(cursor) -> int:
    """End every backend connected to the cursor's database except the cursor's own, waiting until each has
    exited; return how many did within TERMINATED_WITHIN_MS."""
    cursor.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, %s)) FROM pg_stat_activity "
                   "WHERE datname = current_database() AND pid <> pg_backend_pid()", [TERMINATED_WITHIN_MS])
    return cursor.fetchone()[0]


class ReadOnlyDatabase:
    """The test database as a failover leaves it for the sessions a pool holds: on a server that takes no writes.

    `on()` sets `default_transaction_read_only` for the database's new sessions and ends every open one (this
    process's Django connection is given back first), so the pools reconnect to a database that refuses every
    write with SQLSTATE 25006, as a standby does. `off()` makes new sessions writable and leaves the open ones
    read-only, as sessions still on the old primary stay. `close()` undoes it all, ending every session again.
    `admin_url` is a URL of the test database; its own session is spared.
    """

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.admin = psycopg.connect(admin_url, autocommit=True)

    def _set(self, value: str) -> None:
        self.admin.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
            sql.Identifier(self.admin.info.dbname), sql.SQL(value)))

    def sessions_end(self) -> None:
        """End every open session (this process's Django connection is given back first)."""
        from django.db import connection

        connection.close()  # given back to its pool, which replaces it once it finds it ended
        backends_end(self.admin.cursor())

    def on(self) -> None:
        self._set("on")
        self.sessions_end()

    def off(self) -> None:
        self._set("DEFAULT")

    def close(self) -> None:
        """Undo it all, whatever state the test left the admin session in."""
        if self.admin.closed or self.admin.broken:
            self.admin = psycopg.connect(self.admin_url, autocommit=True)
        try:
            self.off()
        finally:
            self.sessions_end()
            self.admin.close()
