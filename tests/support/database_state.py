"""PostgreSQL for the tests: the one way they end the database's other connections, as a restart or a failover
would."""

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
