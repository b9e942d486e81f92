"""What keeps two test runs on one machine apart, so that two checkouts can run `make test` at the same time.

Each run has an id: TEST_RUN_ID from the environment, or else a short hash of the checkout's path, so two clones
differ without any setting. The test database takes it as a suffix (`test_otp_service_<id>`), and the run gets a
redis-server of its own on a free port, started before Django reads its settings and stopped when the run ends.
Every process the tests start (workers, the native stack, the fault tests' APIs) inherits its REDIS_URL; those that
keep their state apart from the tests' use another numbered database of that server (`redis_db_url`). A REDIS_URL
already in the environment is used as given instead (then isolating it is the caller's business). Two runs in
one checkout at the same time need two TEST_RUN_IDs (or two DATABASE_URLs).
"""
import hashlib
import os
import re
import shutil
import signal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.processes import REPO_DIR
from tests.support.redis_state import RedisServer


def run_id_for(checkout: Path) -> str:
    return hashlib.sha256(str(checkout.resolve()).encode()).hexdigest()[:8]


RUN_ID = os.environ.get("TEST_RUN_ID") or run_id_for(REPO_DIR)
if not re.fullmatch(r"[a-z0-9_]{1,32}", RUN_ID):
    raise ValueError(f"TEST_RUN_ID must be 1 to 32 of a-z, 0-9 and _ (it names a database), not {RUN_ID!r}")

REDIS_DIR = REPO_DIR / "var" / f"test-redis-{RUN_ID}"
redis_server: RedisServer | None = None  # this run's, unless REDIS_URL was given


def redis_start() -> None:
    """Unless REDIS_URL is set, start this run's redis-server and point REDIS_URL at it."""
    global redis_server
    if os.environ.get("REDIS_URL"):
        return
    if not shutil.which("redis-server"):
        raise pytest.UsageError("redis-server is missing: install Debian's redis-server package, or set REDIS_URL")
    _stop_orphan()
    redis_server = RedisServer(REDIS_DIR, name=f"redis-{RUN_ID}").start()
    (REDIS_DIR / "owner").write_text(f"{redis_server.process.pid} {os.getpid()}")
    os.environ["REDIS_URL"] = redis_server.url


def redis_stop() -> None:
    if redis_server:
        redis_server.stop()
        (REDIS_DIR / "owner").unlink(missing_ok=True)


def _stop_orphan() -> None:
    """A run of this id that was killed (so never stopped its server) left it running: stop it now."""
    try:
        server_pid, runner_pid = map(int, (REDIS_DIR / "owner").read_text().split())
    except (OSError, ValueError):
        return
    if _alive(runner_pid):
        return  # another run of the same id is still going: not ours to stop
    try:  # the pid may have been reused since: only a redis-server is stopped
        if Path(f"/proc/{server_pid}/cmdline").read_bytes().startswith(b"redis-server"):
            os.kill(server_pid, signal.SIGTERM)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def redis_db_url(db: int) -> str:
    """Database `db` on this run's Redis server."""
    return urlunsplit(urlsplit(os.environ["REDIS_URL"])._replace(path=f"/{db}"))


def name_test_database() -> None:
    """Give the test database pytest-django creates this run's suffix: test_<NAME>_<RUN_ID>."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return  # an in-memory database, private to the process anyway
    test = db.setdefault("TEST", {})
    test["NAME"] = f"{test.get('NAME') or 'test_' + db['NAME']}_{RUN_ID}"
