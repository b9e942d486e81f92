"""Django's PostgreSQL backend with this project's pool health check (DATABASES ENGINE "core.postgresql")."""
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

from core.database import pool_connection_check


class DatabaseWrapper(base.DatabaseWrapper):
    """Django's own wrapper; only the pool's `check` differs: core.database.pool_connection_check.

    Django passes its own `check` to psycopg_pool (CONN_HEALTH_CHECKS), so another one cannot go through
    OPTIONS["pool"]: the pool is built here with the same arguments as Django's, before Django would build it.
    """

    @property
    def pool(self):
        options = self.settings_dict["OPTIONS"].get("pool")
        if options and self.alias != base.NO_DB_ALIAS and self.alias not in self._connection_pools:
            pool = ConnectionPool(kwargs={**self.get_connection_params(), "autocommit": True}, open=False,
                                  configure=self._configure_connection, check=pool_connection_check,
                                  **({} if options is True else options))
            self._connection_pools.setdefault(self.alias, pool)
        return super().pool
