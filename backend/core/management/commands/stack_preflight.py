"""Before the native stack starts (bin/stack up): can PostgreSQL and Redis be reached with the URLs configured?

A newcomer's first `make up` met a missing database, a stopped PostgreSQL or a stopped Redis as a 25-line
traceback, or as a 90 s wait and 109 lines that named neither variable. This answers within seconds, with one
line naming the variable and what failed, and creates the database when the server says it does not exist and
the server is on this machine (the README's setup: a local PostgreSQL with trust authentication).
"""
import ipaddress
import re

import psycopg
import redis
from django.conf import settings
from django.core.management.base import BaseCommand
from psycopg import sql

# Bounded, so an address that drops packets fails within seconds instead of hanging start-up.
CONNECT_TIMEOUT_SECONDS = 3
_MISSING_DATABASE = re.compile(r'database "(?P<name>[^"]+)" does not exist')


class DependencyFailed(Exception):
    """`line` is the one line start-up prints: the variable, its URL without a password, and what failed."""

    def __init__(self, line: str) -> None:
        self.line = line
        super().__init__(line)


def url_shown(url: str) -> str:
    """`url` with any password replaced by `***`, so the line can go to a terminal or a log."""
    return re.sub(r"^(?P<head>[a-z0-9+.-]+://[^:/@]*):[^@/]*@", r"\g<head>:***@", url)


def database_url_shown(params: dict) -> str:
    """DATABASE_URL rebuilt from settings.DATABASES["default"] (`params`), without its password."""
    user = f"{params['USER']}@" if params["USER"] else ""
    port = f":{params['PORT']}" if params["PORT"] else ""
    return f"postgres://{user}{params['HOST']}{port}/{params['NAME']}"


def host_is_local(host: str) -> bool:
    """True for a Unix socket directory, `localhost` or a loopback address: a server on this machine.

    Only such a server gets a database created for it: on a shared or remote one, a database name that does not
    exist is more likely a typo in DATABASE_URL, and an empty database created under it would hide that.
    """
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _postgres_reason(exc: psycopg.Error) -> str:
    # libpq's message: "connection failed: connection to server at "h", port p failed: FATAL:  <reason>\n<hint>".
    text = str(exc).strip()
    reason = text.split(" failed: ")[-1].split("\n")[0].replace("FATAL:", "").strip()
    if "Connection refused" in reason:
        return "connection refused: is PostgreSQL running there?"
    if "timeout expired" in reason:
        return f"no answer within {CONNECT_TIMEOUT_SECONDS} s: is the host right, and reachable?"
    if text.startswith("failed to resolve host") or "could not translate host name" in text:
        return "host not found"
    return reason[:200] or text.splitlines()[0][:200]


def _postgres_connect(params: dict, dbname: str) -> psycopg.Connection:
    return psycopg.connect(dbname=dbname, user=params["USER"] or None, password=params["PASSWORD"] or None,
                           host=params["HOST"] or None, port=params["PORT"] or None,
                           connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True)


def database_check(*, params: dict, url: str) -> str | None:
    """Connect to the configured PostgreSQL database, creating it first when it is missing on a local server.

    `params` is settings.DATABASES["default"]; `url` is DATABASE_URL as shown (no password).
    Returns a line to print when the database was created, else None. Raises DependencyFailed.
    """
    try:
        _postgres_connect(params, params["NAME"]).close()
        return None
    except psycopg.Error as exc:
        missing = _MISSING_DATABASE.search(str(exc))
        if not missing:
            raise DependencyFailed(f"DATABASE_URL ({url}): {_postgres_reason(exc)}") from None
    name, host = params["NAME"], params["HOST"] or "the local socket"
    if not host_is_local(params["HOST"]):
        raise DependencyFailed(f'DATABASE_URL ({url}): database "{name}" does not exist on {host}: create it '
                               "(make up creates one only on a server on this machine)")
    # CREATE DATABASE runs from the server's maintenance database, as createdb does.
    try:
        with _postgres_connect(params, "postgres") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        return None  # another start-up made it meanwhile
    except psycopg.Error as exc:
        reason = getattr(getattr(exc, "diag", None), "message_primary", None) or _postgres_reason(exc)
        raise DependencyFailed(f'DATABASE_URL ({url}): database "{name}" does not exist, and creating it '
                               f"failed: {reason}") from None
    return f'Created database "{name}" on {host} (DATABASE_URL named one that did not exist).'


def _redis_reason(exc: redis.RedisError, *, password_given: bool) -> str:
    text = str(exc).strip().rstrip(".")
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text or "HELLO must" in text:
        if not password_given:  # the server's own words (about HELLO and RESP) do not say this plainly
            return "authentication failed: the server wants a password, and the URL gives none"
        return f"authentication failed ({text})"
    if isinstance(exc, redis.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_SECONDS} s: is the host right, and reachable?"
    if "Connection refused" in text:
        return "connection refused: is Redis running there?"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "host not found"
    return text[:200]


def redis_check(*, name: str, url: str) -> None:
    """PING the Redis at `url`, which the variable `name` configures. Raises DependencyFailed."""
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                  socket_timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        client.ping()
    except redis.RedisError as exc:
        password_given = bool(client.connection_pool.connection_kwargs.get("password"))
        raise DependencyFailed(f"{name} ({url_shown(url)}): {_redis_reason(exc, password_given=password_given)}") from None
    finally:
        client.close()


class Command(BaseCommand):
    help = ("Check that DATABASE_URL, REDIS_URL and the broker answer, creating a missing database on a local "
            "PostgreSQL; on failure print one line naming the variable and exit 1.")
    # The system checks import every URL and view; migrate runs them next anyway, and this must answer fast.
    requires_system_checks = []

    def handle(self, *args, **options):
        database = settings.DATABASES["default"]
        try:
            if database["ENGINE"] != "core.postgresql":  # what config/settings.py makes of a postgres:// URL
                raise DependencyFailed("DATABASE_URL is not a postgres:// URL: the native stack runs several "
                                       "processes on one database, which SQLite is not for (make run is the quick "
                                       "run on SQLite)")
            if not settings.REDIS_URL:
                raise DependencyFailed("REDIS_URL is not set: the native stack's processes share throttles, "
                                       "metrics and jobs through Redis (make run is the quick run without it)")
            created = database_check(params=database, url=database_url_shown(database))
            if created:
                self.stdout.write(created)
            redis_check(name="REDIS_URL", url=settings.REDIS_URL)
            if settings.CELERY_BROKER_URL != settings.REDIS_URL and settings.CELERY_BROKER_URL.startswith(
                    ("redis://", "rediss://", "unix://")):
                # The broker's own setting, whether the operator set it or it took its default from REDIS_URL.
                # A newcomer's pass: REDIS_URL on database 15 failed naming CELERY_BROKER_URL, never set.
                try:
                    redis_check(name="CELERY_BROKER_URL", url=settings.CELERY_BROKER_URL)
                except DependencyFailed as failure:
                    if settings.CELERY_BROKER_URL_FROM_REDIS_URL and "DB index is out of range" in failure.line:
                        raise DependencyFailed(f"{failure.line} (unset, it is REDIS_URL's next database: set "
                                               f"CELERY_BROKER_URL, or give REDIS_URL a lower database)") from None
                    raise
        except DependencyFailed as failure:
            raise SystemExit(failure.line) from None
