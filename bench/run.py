"""`make bench`: the service's throughput and latency, as ratios to a bare view and to the real peer, measured
in the same run.

It starts the native stack (bin/stack: nginx, gunicorn, workers, beat) on a database and a redis-server of its
own, an SMTP server in a process of its own (bench/smtp_sink.py) and a Twilio stand-in in this process, drives
load through nginx with wrk (bench/post.lua) or, for open-loop delivery timing, with aiohttp, then prints a table
and writes bench/results/latest.json and latest.png. Scenario 2 runs the real peer, drfpasswordless (bench/peer/),
beside the service, in alternating cells, and counts the CPU of every process of each system under test from
/proc. Figures are medians of what wrk reports; these machines are shared, so read the ratios.

BENCH_ONLY_PEER=1 runs scenario 2 alone and writes var/bench-peer.json instead (latest.json is left as is).
BENCH_EMAIL_WORKERS=N runs scenario 2 with N email worker processes instead of the stack's one.
"""
import asyncio
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "backend")]

BENCH_DB = "otp_bench"
PEER_DB = "otp_bench_peer"
ACCOUNTS = 300_000
LARGE_ACCOUNTS = 1_000_000  # scenario 6's extra users
# A step takes STEP_SECONDS x this many addresses, more than it can use: with ACCOUNTS, an address comes round
# again only after minutes, so no request meets the resend cooldown (which would answer 429, not the service).
MAX_RATE = 2_000
SYNC_RATE = 10  # scenario 2's same-rate arrivals, below the synchronous peer's capacity (4 workers / 0.3 s)
# mobile(59_000 + i): numbers no scenario uses within a cooldown of a warm-up; 20 fresh ones for each warm-up.
warm_up_mobiles = itertools.count(59_000, 20)
STEP_SECONDS = int(os.environ.get("BENCH_STEP_SECONDS", "6"))
CONNECTIONS = [2, 4, 8, 16, 32, 64]
PAIRS = 5  # adjacent bare and /login/ steps behind each ratio to the bare view; the ratio is their median
WRK_THREADS = 2
STACK_DIR = REPO / "var" / "bench-stack"
RESULTS = REPO / "bench" / "results"
# Scenario 2, the real peer: cells of wrk at 16 connections (as the measurement), alternating the service and
# the peer, PEER_ROUNDS rounds with the mail server answering at once and SLOW_ROUNDS with it answering in
# SLOW_SMTP_SECONDS.
CELL_SECONDS = int(os.environ.get("BENCH_CELL_SECONDS", "10"))
CELL_CONNECTIONS = 16
PEER_ROUNDS = int(os.environ.get("BENCH_PEER_ROUNDS", "5"))
SLOW_ROUNDS = int(os.environ.get("BENCH_SLOW_ROUNDS", "2"))
SLOW_SMTP_SECONDS = 0.3
# A cell ends when the system under test has finished the work its requests started: nothing new for this long.
QUIET_SECONDS = 1.0
SAME_RATE_SECONDS = int(os.environ.get("BENCH_SAME_RATE_SECONDS", "15"))
# Every code must reach the mail server within this long of its request (the rule for counting CPU).
DELIVERY_DEADLINE_SECONDS = 10
# The delivery target at SLOW_SMTP_SECONDS: 95 % within 5 s, none over 30 s.
DELIVERY_TARGET_SECONDS = 5
ONLY_PEER = os.environ.get("BENCH_ONLY_PEER", "") not in ("", "0", "false")
# BENCH_PROFILE=1: after scenario 2's rounds at 0 ms, one more cell of each system under py-spy (not counted in
# any figure); collapsed stacks and a summary go to var/bench-profiles/.
PROFILE = os.environ.get("BENCH_PROFILE", "") not in ("", "0", "false")
PROFILE_DIR = REPO / "var" / "bench-profiles"
# BENCH_EMAIL_WORKERS=N: scenario 2 runs N email worker processes (default 1, the stack's own; the others started
# as `docker compose up --scale worker-email=N` would, each with its own EMAIL_MAX_CONNECTIONS). Their CPU counts
# under worker-email.
EMAIL_WORKERS = int(os.environ.get("BENCH_EMAIL_WORKERS", "1"))

BASE_ENV = {
    "ENV_FILE": "",
    "SECRET_KEY": "bench-only-secret-key-not-used-anywhere-else",
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}",
    # REDIS_URL: a redis-server of the bench's own, started in main(), so that its CPU is the stack's alone.
    "STACK_DIR": str(STACK_DIR),
    "HTTP_PORT": "18480",
    "API_PORT": "18400",
    # The load must measure the service, not its guards.
    "OTP_IP_SEND_RATE": "100000000/min",
    "OTP_IP_VERIFY_RATE": "100000000/min",
    "OTP_SENDS_PER_HOUR": "100000",
    "OTP_MAX_FAILURES_PER_HOUR": "100000",
    # The send budgets (issue 16) count every message handed over; every bench address is at example.com, so the
    # per-domain budget's default of 500 an hour would answer most of a step 429.
    "OTP_EMAIL_PER_HOUR": "100000000",
    "OTP_EMAIL_PER_DOMAIN_PER_HOUR": "100000000",
    "OTP_SMS_PER_HOUR": "100000000",
    "OTP_SMS_PER_PREFIX_PER_HOUR": "100000000",
    "EDGE_SEND_RATE": "100000r/s",
    "EDGE_SEND_BURST": "100000",
    "SMS_BACKEND": "twilio",
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "bench-token",
    "TWILIO_FROM_NUMBER": "+14155550100",
    "EMAIL_BACKEND": "smtp",
    "EMAIL_HOST": "127.0.0.1",
    "CELERY_WORKER_CONCURRENCY": "32",
    # Long enough that a backlog drained at bench rates never meets the codes' expiry (which would drop them).
    "OTP_TTL_SECONDS": "1800",
    # Beat's own purge must not run during scenario 5's timed one.
    "OTP_PURGE_INTERVAL_SECONDS": "86400",
}
os.environ.update(BASE_ENV)
# The product's settings plus the bare view (bench/settings.py). Every process started from here (manage.py,
# bin/stack's gunicorn, workers and beat) only sets a default, so this wins; they run from backend/, so the
# repository root goes on PYTHONPATH for `bench` to import.
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
# The start scripts run `celery` from PATH: this interpreter's, i.e. the project's .venv.
# Debian's nginx lives in /usr/sbin, which a non-login root shell may not have on PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin"
# The peer's processes (and its migrate) run with these on top of the bench's environment.
PEER_ENV = {"DJANGO_SETTINGS_MODULE": "bench.peer.settings", "PEER_DATABASE_NAME": PEER_DB}
DRIVER_APPLICATION = "bench-driver"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- services the bench runs ---------------------------------------------------------------------------


class MailSink:
    """The SMTP server (bench/smtp_sink.py) in a process of its own, and what it received.

    `log` lists (address, unix time) for every recipient accepted, in order; `count` is its length; `delay`
    (seconds) makes it answer DATA as a slow relay.
    """

    def __init__(self) -> None:
        from tests.support.waiting import free_port

        self.port = free_port()
        self.log: list[tuple[str, float]] = []
        self._delay = 0.0
        self._delay_set = threading.Event()
        self.process = subprocess.Popen([sys.executable, str(REPO / "bench" / "smtp_sink.py"), str(self.port)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                        start_new_session=True)
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the bench's SMTP server did not start")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            first, _, second = line.strip().partition(" ")
            if first == "delay":
                self._delay_set.set()
                continue
            self.log.append((second, float(first)))

    @property
    def count(self) -> int:
        return len(self.log)

    @property
    def delay(self) -> float:
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._delay_set.clear()
        self.process.stdin.write(f"delay {seconds}\n")
        self.process.stdin.flush()
        if not self._delay_set.wait(10):
            raise SystemExit("the bench's SMTP server did not take its new delay")
        self._delay = seconds

    def first_arrivals(self, since: int) -> dict[str, float]:
        """Each address's first arrival among the entries of `log` from index `since` on."""
        found: dict[str, float] = {}
        for address, arrived in self.log[since:]:
            found.setdefault(address, arrived)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # the sink stops when its stdin closes
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)


def start_services():
    """The bench's redis-server, mail server and Twilio stand-in; their addresses go into the environment that
    every process started from here inherits."""
    from tests.support.redis_state import RedisServer
    from tests.support.twilio_standin import TwilioStandIn

    # The system's Redis is shared with other checkouts' tests: the stack gets a server of its own (the same
    # settings: no persistence, noeviction), whose CPU is then the stack's alone.
    redis_server = RedisServer(REPO / "var" / "bench-redis", log_dir=STACK_DIR / "log", name="bench-redis").start()
    sink = MailSink()
    sms = TwilioStandIn().start()
    os.environ.update({"REDIS_URL": redis_server.url, "EMAIL_PORT": str(sink.port),
                       "TWILIO_API_BASE_URL": sms.base_url})
    return redis_server, sink, sms


# --- database ------------------------------------------------------------------------------------------


def database_create(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")


def database_prepare() -> None:
    database_create(BENCH_DB)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO / "backend", check=True)


def driver_connect(name: str):
    """A connection of the bench's own (named, so that the CPU count leaves its backend out)."""
    import psycopg

    return psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", autocommit=True,
                           application_name=DRIVER_APPLICATION)


def peer_database_prepare(count: int) -> None:
    """The peer's database: its migrations (drfpasswordless's own and its user model's), and `count` users with the
    service's seeded addresses."""
    database_create(PEER_DB)
    subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v0"], cwd=REPO, check=True,
                   env={**os.environ, **PEER_ENV})
    with driver_connect(PEER_DB) as conn:
        conn.execute("INSERT INTO peeraccounts_user (password, email, is_active) "
                     "SELECT '!', 'bench' || g || '@example.com', true FROM generate_series(%s::int, %s::int) g",
                     [0, count - 1])
        conn.execute("ANALYZE")


def sql(statement: str, params=None) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")  # seeding a million rows takes longer than the API's 5 s cap
        cursor.execute(statement, params)


def users_seed(first: int, count: int) -> None:
    sql("INSERT INTO users_user (password, is_superuser, email, mobile, is_active, is_staff, date_joined) "
        "SELECT '!', false, 'bench' || g || '@example.com', NULL, true, false, now() "
        "FROM generate_series(%s, %s) g", [first, first + count - 1])


def codes_seed_for_verify(count: int) -> None:
    """An active code 123456 for accounts 0..count-1, hashed as the service hashes it."""
    from django.db import connection

    from otp.codes import code_hash

    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")
        with cursor.copy("COPY otp_onetimecode (address, channel, purpose, code_hash, status, attempts, created_at, "
                         "expires_at, device) FROM STDIN") as copy:
            for i in range(count):
                address = f"bench{i}@example.com"
                copy.write_row((address, "email", "login", code_hash(address=address, code="123456"), "active", 0,
                                "now", "2100-01-01", False))


def old_codes_seed(count: int) -> None:
    """Codes as they pile up: expired and used, spread over many addresses."""
    sql("INSERT INTO otp_onetimecode (address, channel, purpose, code_hash, status, attempts, created_at, expires_at, "
        "device) "
        "SELECT 'old' || mod(g, 500000) || '@example.com', 'email', 'login', md5(g::text) || md5(g::text), "
        "CASE WHEN mod(g, 2) = 0 THEN 'used' ELSE 'superseded' END, 0, now() - interval '2 days', "
        "now() - interval '2 days' + interval '2 minutes', false FROM generate_series(1, %s) g", [count])


# --- the stack ---------------------------------------------------------------------------------------------


def stack(action: str, unset: tuple[str, ...] = (), **env) -> None:
    """bin/stack `action` with the bench's environment, plus `env`, less the variables named in `unset`."""
    environment = {name: value for name, value in {**os.environ, **env}.items() if name not in unset}
    result = subprocess.run([str(REPO / "bin" / "stack"), action], env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bin/stack {action} failed:\n{result.stdout}\n{result.stderr}")


def stack_pid(name: str) -> int:
    return int((STACK_DIR / "run" / f"{name}.pid").read_text())


def process_tree_rss_mb(pid: int) -> dict[int, float]:
    found = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        found[current] = rss / 1024
        pending += [int(child) for child in children]
    return found


def cpu_times() -> tuple[int, int]:
    """The machine's (busy, total) CPU ticks since boot, all cores, from /proc/stat."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def queue_length(queue: str) -> int:
    import redis
    from django.conf import settings

    # The broker's URL as the stack reads it (it may be another database than the cache's).
    return redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(queue)


# --- load ------------------------------------------------------------------------------------------------


class Accounts:
    """Hands each load step a fresh range of account numbers, cycling through `count` accounts from `first`."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count
        self.next = 0

    def take(self, count: int) -> int:
        start = self.first + self.next
        self.next = (self.next + count) % self.count
        return start


accounts = Accounts(0, ACCOUNTS)
# Scenario 2's peer cells: the same addresses, seeded in the peer's database, taken apart from the service's so that
# the service's cells in scenario 2 never meet an address they used before.
peer_accounts = Accounts(0, ACCOUNTS)
# Scenario 6's users: the million seeded beside the first ACCOUNTS, with no code of their own yet, as scenario 1's.
large_accounts = Accounts(ACCOUNTS, LARGE_ACCOUNTS)


def wrk(path: str, kind: str, connections: int, seconds: int = STEP_SECONDS, pool: Accounts = accounts,
        port: int | str = BASE_ENV["HTTP_PORT"]) -> dict:
    url = f"http://127.0.0.1:{port}{path}"
    start = pool.first if kind == "bare" else pool.take(seconds * MAX_RATE)
    cmd = ["wrk", "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s",
           "-s", str(REPO / "bench" / "post.lua"), url, "--", kind, str(start), str(pool.first), str(pool.count),
           str(WRK_THREADS)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return {
        "connections": connections,
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p95_ms": round(raw["p95_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "errors": raw["non2xx"] + raw["socket_errors"],
    }


def warm_up(sms) -> None:
    """Load nobody measures, after each start: each gunicorn worker opens its database and Redis connections and
    imports what it imports lazily, which would otherwise land in the p99 of the first step. A few SMS too: the
    SMS worker's first send imports the twilio client and opens its pools, about 300 ms that scenario 3's p99
    would otherwise carry."""
    wrk("/login/", "login", 8, seconds=3)
    accepted_before = len(sms.accepted)
    first = next(warm_up_mobiles)  # numbers of their own each time: two warm-ups may fall within a cooldown
    asyncio.run(open_loop(20, 1, lambda i: ("/register/", {"mobile": mobile(first + i)}, "")))
    wait_until(lambda: queue_length("email") == 0, 60, "the warm-up's emails to be sent")
    wait_until(lambda: len(sms.accepted) - accepted_before >= 20, 60, "the warm-up's SMS to be sent")


def sweep(path: str, kind: str, label: str, pool: Accounts = accounts) -> tuple[dict, list[dict]]:
    """Rising load; the best step is the highest rate held with p99 under 100 ms and no errors."""
    steps = []
    for connections in CONNECTIONS:
        step = wrk(path, kind, connections, pool=pool)
        steps.append(step)
        log(f"{label:<14} c={connections:<3} {step['rps']:>8} req/s  p50 {step['p50_ms']:>7} ms  "
            f"p99 {step['p99_ms']:>7} ms  errors {step['errors']}")
    held = [s for s in steps if s["p99_ms"] < 100 and s["errors"] == 0]
    best = max(held, key=lambda s: s["rps"]) if held else min(steps, key=lambda s: s["p99_ms"])
    return best, steps


def paired_ratio(step: dict, bare: dict, label: str, pool: Accounts = accounts, delivering: bool = True) -> dict:
    """`/login/` at `step`'s connections over the bare view at `bare`'s, in adjacent steps, PAIRS times.

    The machine's speed drifts by a quarter within a minute, so the best steps of two sweeps taken a minute apart
    can differ by that much for no reason in the code. The two steps of a pair share most of the drift; the
    median of the pairs' ratios is the figure the targets are read against.
    """
    pairs = []
    for _ in range(PAIRS):
        if delivering:  # the bare step must not share the CPU with the last login step's emails
            wait_until(lambda: queue_length("email") == 0, 60, "the last step's emails to be sent")
        bare_step = wrk("/bench/bare/", "bare", bare["connections"])
        login_step = wrk("/login/", "login", step["connections"], pool=pool)
        pairs.append({"bare_rps": bare_step["rps"], "rps": login_step["rps"], "p99_ms": login_step["p99_ms"],
                      "errors": login_step["errors"], "ratio": round(login_step["rps"] / bare_step["rps"], 3)})
        log(f"{label:<14} pair: bare {bare_step['rps']:>8} req/s, /login/ {login_step['rps']:>8} req/s  "
            f"p99 {login_step['p99_ms']:>7} ms  ratio {pairs[-1]['ratio']}")
    return {"median": statistics.median(p["ratio"] for p in pairs),
            "p99_ms_median": statistics.median(p["p99_ms"] for p in pairs), "pairs": pairs}


OPEN_LOOP_SOURCES = [f"127.0.0.{n}" for n in range(11, 15)]


async def open_loop(rate: float, seconds: float, make_request,
                    latencies: list[tuple[int, float]] | None = None,
                    port: int | str = BASE_ENV["HTTP_PORT"]) -> list[tuple[str, float]]:
    """Requests at a steady rate (not waiting for answers) to nginx on `port`; returns (address, time the 202
    arrived).

    `latencies`, when given, receives (status, milliseconds) for every request.
    """
    import aiohttp

    answered: list[tuple[str, float]] = []
    # From several loopback addresses: nginx lets one client address hold at most 100 requests at once (limit_conn,
    # issue 16), and an open loop at 400 requests/s holds more whenever answers slow down.
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100, local_addr=(source, 0)))
                for source in OPEN_LOOP_SOURCES]
    try:
        async def one(index: int) -> None:
            path, body, address = make_request(index)
            sent = time.monotonic()
            session = sessions[index % len(sessions)]
            async with session.post(f"http://127.0.0.1:{port}{path}", json=body) as response:
                await response.read()
                if latencies is not None:
                    latencies.append((response.status, (time.monotonic() - sent) * 1000))
                if response.status == 202:
                    answered.append((address, time.time()))

        started = time.monotonic()
        tasks = []
        for index in range(int(rate * seconds)):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    finally:
        for session in sessions:
            await session.close()
    return answered


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- scenario 2: the real peer -----------------------------------------------------------------------------

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# The peer as the issue ran it (4 sync workers: the targets are read against it), and with threads, which a
# synchronous design needs against a slow relay (and which may also serve it better when the relay is fast).
PEER_VARIANTS = (("peer", "drfpasswordless, gunicorn 4 sync", ["--workers", "4", "--worker-class", "sync"]),
                 ("peer_gthread", "drfpasswordless, gunicorn gthread 4x8",
                  ["--workers", "4", "--worker-class", "gthread", "--threads", "8"]))


def process_cpu_ms(pid: int) -> float | None:
    """utime + stime of process `pid` (all its threads, living and ended), in ms; None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # fields[0] is proc(5)'s field 3 (state); utime and stime are its fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS_PER_SECOND


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (the children of any of their threads)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except FileNotFoundError:
            continue
        found.append(current)
        for task in tasks:
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except FileNotFoundError:
                pass
    return found


def database_backends(driver, database: str) -> list[int]:
    """The PostgreSQL backends connected to `database`, less the bench's own (by their application name).

    The server's shared processes (WAL writer, checkpointer, autovacuum launcher) also work for other checkouts'
    tests on this machine, so they are left out of both systems' counts."""
    rows = driver.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name <> %s",
                          [database, DRIVER_APPLICATION]).fetchall()
    return [pid for (pid,) in rows]


class CpuMeter:
    """CPU time of the processes of one system under test, by role, between `start()` and `stop()`.

    `processes()` returns {role: [pid, ...]}; it is read at both ends, so a process born in between (a database
    backend) counts from its birth. One that ended in between takes its CPU since `start()` with it; `stop()`
    says how many did (`exited`), so a figure that lost some can be told."""

    def __init__(self, processes) -> None:
        self.processes = processes
        self.before: dict[str, dict[int, float]] = {}

    def read(self) -> dict[str, dict[int, float]]:
        return {role: {pid: ms for pid in pids if (ms := process_cpu_ms(pid)) is not None}
                for role, pids in self.processes().items()}

    def start(self) -> None:
        self.before = self.read()

    def stop(self) -> dict:
        after = self.read()
        by_role = {role: sum(ms - self.before.get(role, {}).get(pid, 0.0) for pid, ms in pids.items())
                   for role, pids in after.items()}
        exited = sum(1 for role, pids in self.before.items() for pid in pids if pid not in after.get(role, {}))
        return {"by_role_ms": by_role, "total_ms": sum(by_role.values()), "exited": exited}


class Peer:
    """drfpasswordless (bench/peer/) under gunicorn, behind an nginx rendered from the service's own template by
    the service's own `manage.py nginx_config`, only the ports changed: both systems answer through the same proxy
    configuration. gunicorn gets the service's options where they apply (config/gunicorn.conf.py: preload, 30 s
    timeout and keep-alive, no control socket); its workers are `worker_args`."""

    def __init__(self, name: str, label: str, worker_args: list[str]) -> None:
        from tests.support.waiting import free_port

        self.name, self.label, self.worker_args = name, label, worker_args
        self.api_port, self.http_port = free_port(), free_port()
        self.dir = REPO / "var" / f"bench-{name.replace('_', '-')}"
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        (self.dir / "log").mkdir(parents=True, exist_ok=True)
        (self.dir / "nginx" / "tmp").mkdir(parents=True, exist_ok=True)
        (self.dir / "nginx" / "tmp").chmod(0o777)  # nginx's workers run as `nobody` and write request bodies there
        self._spawn("api", [str(Path(sys.executable).parent / "gunicorn"), "bench.peer.wsgi:application",
                            "--bind", f"127.0.0.1:{self.api_port}", *self.worker_args, "--preload",
                            "--timeout", "30", "--keep-alive", "30", "--no-control-socket"],
                    env={**os.environ, **PEER_ENV})
        subprocess.run([sys.executable, "manage.py", "nginx_config", str(self.dir)], cwd=REPO / "backend",
                       check=True, capture_output=True,
                       env={**os.environ, "HTTP_PORT": str(self.http_port), "API_PORT": str(self.api_port)})
        config = ["-c", str(self.dir / "nginx" / "nginx.conf"), "-e", str(self.dir / "log" / "nginx-error.log")]
        subprocess.run(["nginx", "-t", "-q", *config], check=True)
        self._spawn("nginx", ["nginx", *config, "-g", "daemon off;"], env=dict(os.environ))
        wait_until(self._answers, 60, f"the peer ({self.label}) to answer through nginx")

    def _spawn(self, role: str, args: list[str], env: dict) -> None:
        with open(self.dir / "log" / f"{role}.log", "ab") as log_file:
            self.processes[role] = subprocess.Popen(args, cwd=REPO, env=env, stdout=log_file,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                    start_new_session=True)

    def _answers(self) -> bool:
        import urllib.error
        import urllib.request

        for role, process in self.processes.items():
            if process.poll() is not None:
                raise SystemExit(f"the peer's {role} exited: see {self.dir / 'log' / (role + '.log')}")
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/auth/email/", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=2)
        except urllib.error.HTTPError as error:
            # drfpasswordless's own field error for the missing address: the peer itself answered.
            return error.code == 400 and b"email" in error.read()
        except OSError:
            return False
        return False

    def pids(self) -> dict[str, list[int]]:
        return {role: process_tree(process.pid) for role, process in self.processes.items()}

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def cell_ours(driver, sink: MailSink, meter: CpuMeter, seconds: int) -> dict:
    """One cell of `/login/` through the stack at CELL_CONNECTIONS: its rate, when each of its codes reached the
    mail server, and the CPU of every process of the stack from the cell's start until its last code arrived.

    `logins` are the codes the cell issued (from the database, with the time each was issued; each request of a
    cell is for another address, bench/post.lua); a code that has not arrived DELIVERY_DEADLINE_SECONDS after its
    request counts in `late`, one that never arrived (the wait is bounded) in `undelivered` too."""
    mark = len(sink.log)
    started = time.time()
    meter.start()
    step = wrk("/login/", "login", CELL_CONNECTIONS, seconds=seconds)

    def issued_since() -> dict[str, float]:
        return dict(driver.execute(
            "SELECT address, extract(epoch FROM created_at)::float8 FROM otp_onetimecode "
            "WHERE created_at >= to_timestamp(%s) AND channel = 'email'", [started]).fetchall())

    # Requests in flight when wrk stopped (and any that nginx had queued) still issue their codes: the cell ends
    # once no code has been issued for QUIET_SECONDS and every issued one has arrived.
    issued = issued_since()
    deadline = time.monotonic() + 60 + len(issued) / 10
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_issued = issued_since()
        if len(now_issued) != len(issued):
            issued, steady_since = now_issued, time.monotonic()
        elif time.monotonic() - steady_since >= QUIET_SECONDS and issued.keys() <= sink.first_arrivals(mark).keys():
            break
    cpu = meter.stop()
    arrivals = sink.first_arrivals(mark)
    waits = sorted(arrivals[address] - at for address, at in issued.items() if address in arrivals)
    logins = max(1, len(issued))
    return {**step, "logins": len(issued), "undelivered": len(issued) - len(waits),
            "late": len(issued) - sum(1 for wait in waits if wait <= DELIVERY_DEADLINE_SECONDS),
            "within_5s": sum(1 for wait in waits if wait <= DELIVERY_TARGET_SECONDS),
            "delivery_p50_s": round(statistics.median(waits), 3) if waits else None,
            "delivery_max_s": round(waits[-1], 3) if waits else None,
            "counted_for_s": round(time.time() - started, 1),
            "cpu_ms_per_login": round(cpu["total_ms"] / logins, 2),
            "cpu_ms_per_login_by_process": {role: round(ms / logins, 2) for role, ms in cpu["by_role_ms"].items()},
            "cpu_processes_exited": cpu["exited"]}


def cell_peer(peer: Peer, driver, sink: MailSink, meter: CpuMeter, seconds: int) -> dict:
    """One cell of the peer's `/auth/email/` through its nginx at CELL_CONNECTIONS: its rate, and the CPU of its
    processes until its last email arrived. It sends inside the request, so `logins` are the emails that arrived.

    Its token table is emptied first: drfpasswordless checks each new code against the active ones with no index
    and never deletes a token, so it would slow down cell after cell. Each cell measures it at its best."""
    driver.execute("TRUNCATE drfpasswordless_callbacktoken")
    mark = len(sink.log)
    meter.start()
    step = wrk("/auth/email/", "login", CELL_CONNECTIONS, seconds=seconds, pool=peer_accounts, port=peer.http_port)
    # Requests in flight when wrk stopped (and any that nginx had queued) still send their email: the cell ends
    # once the mail server has been quiet for QUIET_SECONDS.
    sink_quiet(sink)
    cpu = meter.stop()
    logins = sink.count - mark
    per = max(1, logins)
    return {**step, "logins": logins,
            "tokens": driver.execute("SELECT count(*) FROM drfpasswordless_callbacktoken").fetchone()[0],
            "cpu_ms_per_login": round(cpu["total_ms"] / per, 2),
            "cpu_ms_per_login_by_process": {role: round(ms / per, 2) for role, ms in cpu["by_role_ms"].items()},
            "cpu_processes_exited": cpu["exited"]}


def sink_quiet(sink: MailSink, timeout: float = 60) -> None:
    """Wait until the mail server has received nothing for QUIET_SECONDS."""
    deadline, last_count, quiet_since = time.monotonic() + timeout, sink.count, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < QUIET_SECONDS:
        time.sleep(0.05)
        if sink.count != last_count:
            last_count, quiet_since = sink.count, time.monotonic()


def profile(run_cell, targets: dict[str, int]) -> None:
    """Runs `run_cell()` while py-spy samples each target process and its children, 100 times a second, keeping
    the threads that hold the GIL (the Python work; C code that releases it, as in a socket wait, is left out);
    writes var/bench-profiles/<target>.txt (collapsed stacks) and <target>-summary.txt, and logs the summary."""
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    spies = {name: subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                                     "--subprocesses", "--gil", "--nolineno", "--format", "raw",
                                     "--output", str(PROFILE_DIR / f"{name}.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in targets.items()}
    run_cell()
    for spy in spies.values():
        spy.send_signal(signal.SIGINT)  # py-spy writes its file and stops
    for name, spy in spies.items():
        spy.wait(timeout=60)
        summary = profile_summary(PROFILE_DIR / f"{name}.txt")
        (PROFILE_DIR / f"{name}-summary.txt").write_text(summary)
        log(f"profile of {name}:\n{summary}")


def profile_summary(path: Path, top: int = 40) -> str:
    """Shares of the samples: by the module running (the frame on top: where the CPU went, by library), and by
    function anywhere on the stack (inclusive: what a call costs with everything under it), leaving out the trunk
    every sample shares (gunicorn's or Celery's main loop)."""
    import collections

    modules, inclusive = collections.Counter(), collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        if not frames:
            continue
        samples = int(count)
        total += samples
        # "function (package/module.py)": the first component of the path, as py-spy shortens it to sys.path.
        modules[frames[-1].rpartition("(")[2].rstrip(")").split("/")[0].removesuffix(".py")] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    total = max(total, 1)
    below_trunk = collections.Counter({frame: count for frame, count in inclusive.items() if count < 0.95 * total})

    def table(counter) -> str:
        return "\n".join(f"  {count / total:6.1%}  {name}" for name, count in counter.most_common(top))

    return (f"{total} samples\nby module running:\n{table(modules)}\n"
            f"by function on the stack (below the trunk):\n{table(below_trunk)}\n")


def cells_summary(cells: dict[str, list[dict]]) -> dict:
    """Medians of each system's cells, and each peer's ratios to the service, median of the rounds' pairs."""
    summary: dict = {}
    for name, runs in cells.items():
        roles = sorted({role for run in runs for role in run["cpu_ms_per_login_by_process"]})
        summary[name] = {
            "rps": round(statistics.median(run["rps"] for run in runs), 1),
            "cpu_ms_per_login": round(statistics.median(run["cpu_ms_per_login"] for run in runs), 2),
            "cpu_ms_per_login_by_process": {
                role: round(statistics.median(run["cpu_ms_per_login_by_process"].get(role, 0.0) for run in runs), 2)
                for role in roles},
            **{f"{q}_ms": round(statistics.median(run[f"{q}_ms"] for run in runs), 2) for q in ("p50", "p95", "p99")},
            "errors": sum(run["errors"] for run in runs),
            "cells": runs,
        }
    for name in cells:
        if name == "ours":
            continue
        pairs = list(zip(cells["ours"], cells[name]))
        summary[f"vs_{name}"] = round(statistics.median(o["rps"] / max(p["rps"], 0.01) for o, p in pairs), 3)
        summary[f"cpu_vs_{name}"] = round(statistics.median(
            o["cpu_ms_per_login"] / max(p["cpu_ms_per_login"], 0.01) for o, p in pairs), 3)
    return summary


def scenario_peer(sink: MailSink, sms, redis_server) -> dict:
    """Scenario 2: the service beside the real peer, in alternating cells, with the mail server answering at once
    and in SLOW_SMTP_SECONDS; the service's stack at default settings (only the guards raised, as everywhere here,
    and codes living long enough to measure a backlog's wait)."""
    results: dict = {}
    peers = [Peer(*variant) for variant in PEER_VARIANTS]
    ours_driver, peer_driver = driver_connect(BENCH_DB), driver_connect(PEER_DB)
    own = {"redis": process_tree(redis_server.process.pid), "smtp": [sink.process.pid]}

    extra_email_workers: list[subprocess.Popen] = []

    def ours_processes() -> dict[str, list[int]]:
        found = {name: process_tree(stack_pid(name)) for name in ("api", "worker-email", "worker-sms", "beat", "nginx")}
        for worker in extra_email_workers:
            found["worker-email"] = found["worker-email"] + process_tree(worker.pid)
        return {**found, "postgres": database_backends(ours_driver, BENCH_DB), **own}

    def peer_processes(peer: Peer):
        return lambda: {**peer.pids(), "postgres": database_backends(peer_driver, PEER_DB), "smtp": own["smtp"]}

    ours_meter = CpuMeter(ours_processes)
    try:
        stack("up", unset=("CELERY_WORKER_CONCURRENCY",))
        env = {key: value for key, value in os.environ.items() if key != "CELERY_WORKER_CONCURRENCY"}
        extra_email_workers.extend(
            subprocess.Popen([str(REPO / "worker" / "start-worker.sh"), "email", "-n", f"email{k}@%h"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            for k in range(2, EMAIL_WORKERS + 1))
        for peer in peers:
            peer.start()
        warm_up(sms)
        for peer in peers:  # each worker (and thread) opens its database connection and finishes its imports
            wrk("/auth/email/", "login", CELL_CONNECTIONS, seconds=3, pool=peer_accounts, port=peer.http_port)
            sink_quiet(sink)
        for latency, rounds in ((0.0, PEER_ROUNDS), (SLOW_SMTP_SECONDS, SLOW_ROUNDS)):
            sink.delay = latency
            label = f"{round(latency * 1000)}ms"
            cells: dict[str, list[dict]] = {"ours": [], **{peer.name: [] for peer in peers}}
            for number in range(1, rounds + 1):
                cell = cell_ours(ours_driver, sink, ours_meter, CELL_SECONDS)
                cells["ours"].append(cell)
                log(f"SMTP {label:>5} round {number}: ours {cell['rps']:>7} req/s p99 {cell['p99_ms']:>8} ms, "
                    f"CPU {cell['cpu_ms_per_login']:>6} ms/login, codes {cell['logins']}, late {cell['late']}, "
                    f"last after {cell['delivery_max_s']} s, counted {cell['counted_for_s']} s")
                for peer in peers:
                    cell = cell_peer(peer, peer_driver, sink, CpuMeter(peer_processes(peer)), CELL_SECONDS)
                    cells[peer.name].append(cell)
                    log(f"SMTP {label:>5} round {number}: {peer.name:<12} {cell['rps']:>7} req/s p99 "
                        f"{cell['p99_ms']:>8} ms, CPU {cell['cpu_ms_per_login']:>6} ms/login, errors {cell['errors']}")
            results[label] = cells_summary(cells)
            if PROFILE and latency == 0.0:
                profile(lambda: cell_ours(ours_driver, sink, ours_meter, CELL_SECONDS),
                        {"ours-api": stack_pid("api"), "ours-worker-email": stack_pid("worker-email")})
                profile(lambda: cell_peer(peers[0], peer_driver, sink, CpuMeter(peer_processes(peers[0])),
                                          CELL_SECONDS), {"peer-api": peers[0].processes["api"].pid})
        slow = results[f"{round(SLOW_SMTP_SECONDS * 1000)}ms"]
        slow_cells = slow["ours"]["cells"]
        codes = sum(cell["logins"] for cell in slow_cells)
        results["delivery_slow"] = {
            "email_worker_processes": EMAIL_WORKERS,
            "codes": codes, "within_5s": sum(cell["within_5s"] for cell in slow_cells),
            "late_10s": sum(cell["late"] for cell in slow_cells),
            "undelivered": sum(cell["undelivered"] for cell in slow_cells),
            "max_wait_s": max((cell["delivery_max_s"] or 0.0) for cell in slow_cells)}

        # The same arrival rate at both, below the synchronous peer's capacity (4 workers / 0.3 s): what a user
        # waits for the answer when neither is saturated.
        for name, port, path in (("ours", BASE_ENV["HTTP_PORT"], "/login/"),
                                 ("peer", peers[0].http_port, "/auth/email/")):
            first = accounts.take(SYNC_RATE * SAME_RATE_SECONDS)
            timed: list[tuple[int, float]] = []
            asyncio.run(open_loop(SYNC_RATE, SAME_RATE_SECONDS,
                                  lambda i: (path, {"email": f"bench{first + i}@example.com"}, ""),
                                  latencies=timed, port=port))
            ms = [t for _, t in timed]
            results[f"same_rate_{name}"] = {
                "rate": SYNC_RATE, "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(percentile(ms, 95), 1),
                "p99_ms": round(percentile(ms, 99), 1), "errors": sum(1 for st, _ in timed if st not in (200, 202))}
            if name == "ours":
                wait_until(lambda: queue_length("email") == 0, 120, "the same-rate step's emails to be sent")
        sink.delay = 0.0
    finally:
        for worker in extra_email_workers:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        for peer in peers:
            peer.stop()
        stack("down")
        ours_driver.close()
        peer_driver.close()
    return results


def peer_results(comparison: dict) -> dict:
    """The deliverable's keys (bench/results/latest.json), from scenario 2's figures."""
    fast, slow = comparison["0ms"], comparison[f"{round(SLOW_SMTP_SECONDS * 1000)}ms"]
    delivery = comparison["delivery_slow"]

    def step(summary: dict) -> dict:
        return {"connections": CELL_CONNECTIONS, "rps": summary["rps"], "p50_ms": summary["p50_ms"],
                "p95_ms": summary["p95_ms"], "p99_ms": summary["p99_ms"], "errors": summary["errors"]}

    return {
        "peer_0ms": {"rps": fast["peer"]["rps"], "cpu_ms_per_login": fast["peer"]["cpu_ms_per_login"]},
        "ours_0ms": {"rps": fast["ours"]["rps"], "cpu_ms_per_login": fast["ours"]["cpu_ms_per_login"]},
        "vs_peer_0ms": fast["vs_peer"],
        "cpu_vs_peer_0ms": fast["cpu_vs_peer"],
        "vs_peer_300ms": slow["vs_peer"],
        "delivery_300ms_within_5s": round(delivery["within_5s"] / max(1, delivery["codes"]), 3),
        "delivery_300ms_max_wait_s": round(delivery["max_wait_s"], 1),
        "peer_comparison": comparison,
        # Scenario 2's figures as they were kept before the peer replaced the bench's synchronous switch: the
        # synchronous design is now the peer (4 sync workers).
        "sync": {"queued": {"same_rate": comparison["same_rate_ours"], "same_connections": step(slow["ours"])},
                 "synchronous": {"same_rate": comparison["same_rate_peer"], "same_connections": step(slow["peer"])}},
        "sync_ratio_p99": round(comparison["same_rate_peer"]["p99_ms"]
                                / max(comparison["same_rate_ours"]["p99_ms"], 0.01), 1),
        "sync_ratio_p99_same_connections": round(slow["peer"]["p99_ms"] / max(slow["ours"]["p99_ms"], 0.01), 1),
        "sync_ratio_rps": round(slow["vs_peer"], 1),
    }


# --- scenarios ---------------------------------------------------------------------------------------------


def mobile(index: int) -> str:
    area = (212, 312, 415, 646, 718, 917)[index // 10000 % 6]
    return f"+1{area}555{index % 10000:04d}"


def main() -> None:
    import django
    import redis

    results: dict = {"machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, "
                                f"Python {platform.python_version()}", "step_seconds": STEP_SECONDS,
                     "cell_seconds": CELL_SECONDS}
    bench_started = time.monotonic()
    stack("down")  # whatever an interrupted run left behind
    redis_server, sink, sms = start_services()
    extra_processes: list[subprocess.Popen] = []  # workers started outside bin/stack, stopped whatever happens
    try:
        log("preparing the bench databases (the service's and the peer's)")
        database_prepare()
        django.setup()
        users_seed(0, ACCOUNTS)
        peer_database_prepare(ACCOUNTS)

        log(f"scenario 2: the service beside the real peer, {CELL_SECONDS} s cells at {CELL_CONNECTIONS} connections, "
            f"{PEER_ROUNDS} rounds with the mail server answering at once, {SLOW_ROUNDS} in "
            f"{round(SLOW_SMTP_SECONDS * 1000)} ms")
        results.update(peer_results(scenario_peer(sink, sms, redis_server)))
        log(f"scenario 2 took {time.monotonic() - bench_started:.0f} s from the start")
        if ONLY_PEER:
            report(results, REPO / "var" / "bench-peer.json")
            return

        # The other scenarios start as they always have: a fresh database and Redis, the first accounts again.
        from django.db import connection

        connection.close()
        connection.close_pool()
        database_prepare()
        users_seed(0, ACCOUNTS)
        redis.Redis.from_url(redis_server.url).flushall()
        accounts.next = 0
        stack("up")
        warm_up(sms)

        log("ceiling: a bare DRF view doing one INSERT, behind the same nginx and gunicorn")
        results["bare"], bare_steps = sweep("/bench/bare/", "bare", "bare")

        log("scenario 1: /login/ for existing accounts, whole stack delivering to an instant SMTP server")
        results["login"], login_steps = sweep("/login/", "login", "login")
        results["login_pairs"] = paired_ratio(results["login"], results["bare"], "login")

        log("scenario 1b: the same with the workers stopped (jobs queue in Redis)")
        for name in ("worker-email", "worker-sms"):
            os.killpg(stack_pid(name), 15)
        results["login_api_only"], api_only_steps = sweep("/login/", "login", "login (queue)")
        results["login_api_only_pairs"] = paired_ratio(results["login_api_only"], results["bare"], "login (queue)",
                                                       delivering=False)
        backlog = queue_length("email")
        log(f"draining {backlog} queued jobs with one email worker")
        delivered_before = sink.count
        drain = subprocess.Popen([str(REPO / "worker" / "start-worker.sh"), "email,maintenance"],
                                 env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        extra_processes.append(drain)
        wait_until(lambda: sink.count > delivered_before, 60, "the first drained email")
        drain_started = time.monotonic()
        first_count = sink.count
        wait_until(lambda: queue_length("email") == 0, 900, "the backlog to drain")
        wait_until(lambda: sink.count - delivered_before >= backlog * 0.99, 120, "the last drained emails")
        results["drain_rps"] = round((sink.count - first_count) / (time.monotonic() - drain_started), 1)
        log(f"drained at {results['drain_rps']} emails/s")

        results["rss_mb"] = {}
        for name in ("api", "worker-email", "worker-sms", "beat", "nginx"):
            try:
                tree = process_tree_rss_mb(stack_pid(name))
            except (FileNotFoundError, ValueError):
                continue
            if tree:
                results["rss_mb"][name] = round(max(tree.values()), 1)
        results["rss_mb"]["worker-email (drain)"] = round(max(process_tree_rss_mb(drain.pid).values()), 1)
        os.killpg(drain.pid, 15)
        drain.wait(timeout=30)
        stack("down")

        log("scenario 3: end-to-end delivery latency at 100 requests/s (half email, half SMS)")
        stack("up")
        warm_up(sms)
        sent_at: dict[str, float] = {}

        def make_request(index: int):
            if index % 2:
                number = mobile(index)
                return "/register/", {"mobile": number}, number
            email = f"bench{accounts.take(1)}@example.com"
            return "/login/", {"email": email}, email

        mark = sink.count  # the mail server's arrivals from here on are this scenario's
        answered = asyncio.run(open_loop(100, 10, make_request))
        sent_at.update(answered)
        requested = 100 * 10
        def arrived() -> int:
            emails = sink.first_arrivals(mark)
            return (sum(1 for a in sent_at if "@" in a and a in emails)
                    + len({m["to"] for m in sms.accepted if m["to"] in sent_at}))

        wait_until(lambda: arrived() >= len(sent_at) * 0.99, 60, "the deliveries")
        # The last few may still be on their way: what has not arrived 30 s later counts as an error.
        deadline = time.monotonic() + 30
        while arrived() < len(sent_at) and time.monotonic() < deadline:
            time.sleep(0.2)
        sms_arrivals = {m["to"]: m["received_at"] for m in sms.accepted}
        email_arrivals = sink.first_arrivals(mark)
        latencies = [((email_arrivals.get(a) if "@" in a else sms_arrivals.get(a)) - t) * 1000
                     for a, t in sent_at.items() if (email_arrivals.get(a) if "@" in a else sms_arrivals.get(a))]
        results["delivery"] = {"rate": 100, "p50_ms": round(statistics.median(latencies), 1),
                               "p95_ms": round(percentile(latencies, 95), 1),
                               "p99_ms": round(percentile(latencies, 99), 1), "messages": len(latencies),
                               # requests not answered 202, and answered ones whose message never arrived
                               "errors": requested - len(latencies)}
        log(f"delivery latency p50 {results['delivery']['p50_ms']} ms, p99 {results['delivery']['p99_ms']} ms")

        log("scenario 5: /verify-otp/ with a valid code per request")
        codes_seed_for_verify(ACCOUNTS)
        verify = wrk("/verify-otp/", "verify", 16)
        results["verify"] = verify
        log(f"verify {verify['rps']} req/s, p99 {verify['p99_ms']} ms, errors {verify['errors']}")

        log("scenario 6: scenario 1 again with one million users and one million old codes in the tables")
        users_seed(ACCOUNTS, LARGE_ACCOUNTS)
        old_codes_seed(1_000_000)
        sql("ANALYZE")
        # Scenario 1's sweep, best step against best step, for users who have no live code, as scenario 1's had
        # none: the verify codes seeded above belong to the first ACCOUNTS, and superseding them would add work
        # that is not the tables' size.
        large, large_steps = sweep("/login/", "login", "large tables", pool=large_accounts)
        results["login_large_tables"] = large
        # Each against the bare view beside it, minutes apart; the bare view's INSERT touches none of the seeded
        # tables, so it measures the machine's speed in both.
        results["login_large_tables_pairs"] = paired_ratio(large, results["bare"], "large tables", pool=large_accounts)
        results["large_tables_ratio"] = round(
            results["login_large_tables_pairs"]["median"] / results["login_pairs"]["median"], 3)
        results["large_tables_ratio_best_steps"] = round(large["rps"] / results["login"]["rps"], 3)
        log(f"large tables: {large['rps']} req/s (p99 {large['p99_ms']} ms) vs {results['login']['rps']}")

        log("scenario 5b: purging one million expired codes while the API answers")
        from otp.services import code_purge

        purge_load = subprocess.Popen(
            ["wrk", "-t", "1", "-c", "4", "-d", "60s", "--timeout", "5s", "-s", str(REPO / "bench" / "post.lua"),
             f"http://127.0.0.1:{BASE_ENV['HTTP_PORT']}/login/", "--", "login", str(accounts.take(60 * 500)),
             str(accounts.first), str(accounts.count), "1"], stdout=subprocess.PIPE, text=True)
        time.sleep(2)  # the load runs before, during and after the purge
        started = time.monotonic()
        deleted = code_purge()
        results["purge_1m_s"] = round(time.monotonic() - started, 2)
        purge_load.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        out = purge_load.communicate(timeout=30)[0]
        during = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if during:
            results["purge_api_p99_ms"] = round(during[0]["p99_us"] / 1000, 2)
            results["purge_api"] = {"rps": round(during[0]["requests"] / (during[0]["duration_us"] / 1e6), 1),
                                    **{f"p{q}_ms": round(during[0][f"p{q}_us"] / 1000, 2) for q in (50, 95, 99)},
                                    "errors": during[0]["non2xx"] + during[0]["socket_errors"]}
        log(f"purged {deleted} codes in {results['purge_1m_s']} s")
        stack("down")

        log("scenario 4: SMS sends per second with 1, 2 and 4 worker processes, Twilio answering in 200 ms")
        sms.latency_seconds = 0.2
        stack("up")
        os.killpg(stack_pid("worker-sms"), 15)
        results["worker_scaling"], results["worker_scaling_errors"], results["worker_scaling_cpu_busy"] = {}, {}, {}
        for processes in (1, 2, 4):
            jobs = 1200
            first = accounts.take(jobs)
            asyncio.run(open_loop(400, jobs / 400, lambda i: ("/register/", {"mobile": mobile(first + i)}, "")))
            wait_until(lambda: queue_length("sms") >= jobs * 0.99, 60, "the SMS jobs to queue")
            accepted_before = len(sms.accepted)
            workers = [subprocess.Popen([str(REPO / "worker" / "start-worker.sh"), "sms", "-n", f"sms{k}@%h"],
                                        # As before issue 19: a connection to the stand-in for each thread.
                                        env={**os.environ, "CELERY_WORKER_CONCURRENCY": "64",
                                             "SMS_MAX_CONNECTIONS": "64"},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                       for k in range(processes)]
            extra_processes.extend(workers)
            wait_until(lambda: len(sms.accepted) > accepted_before, 60, "the first SMS")  # start-up is not sending
            busy_before, total_before = cpu_times()
            wait_until(lambda: len(sms.accepted) - accepted_before >= jobs * 0.99, 300, "the SMS to be sent")
            busy_after, total_after = cpu_times()
            # Whether the cores were the limit: the share of both that was busy while the workers sent.
            results["worker_scaling_cpu_busy"][str(processes)] = round(
                (busy_after - busy_before) / max(1, total_after - total_before), 2)
            stamps = sorted(m["received_at"] for m in sms.accepted[accepted_before:])
            # From the first send to the last: worker start-up is not sending.
            rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
            results["worker_scaling"][str(processes)] = round(rate, 1)
            # The rate is read at 99 %; every number that has not reached the stand-in 30 s later is an error.
            # Counted by number, not from accepted_before: the stack's own SMS worker, stopping, may send one.
            numbers = {mobile(first + i) for i in range(jobs)}
            deadline = time.monotonic() + 30
            while len(numbers & {m["to"] for m in sms.accepted}) < jobs and time.monotonic() < deadline:
                time.sleep(0.2)
            results["worker_scaling_errors"][str(processes)] = jobs - len(numbers & {m["to"] for m in sms.accepted})
            log(f"{processes} worker process(es): {rate:.1f} SMS/s, "
                f"{results['worker_scaling_errors'][str(processes)]} not sent, CPU "
                f"{results['worker_scaling_cpu_busy'][str(processes)]:.0%} busy")
            for worker in workers:
                os.killpg(worker.pid, 15)
                worker.wait(timeout=30)
        sms.latency_seconds = 0.0
    finally:
        for process in extra_processes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
        stack("down")
        sink.stop()
        sms.stop()
        redis_server.stop()

    results["login_vs_bare"] = results["login_pairs"]["median"]
    results["api_only_vs_bare"] = results["login_api_only_pairs"]["median"]
    # The ratios of the sweeps' best steps, as the bench reported them before it paired steps.
    results["login_vs_bare_best_steps"] = round(results["login"]["rps"] / results["bare"]["rps"], 3)
    results["api_only_vs_bare_best_steps"] = round(results["login_api_only"]["rps"] / results["bare"]["rps"], 3)
    results["steps"] = {"bare": bare_steps, "login": login_steps, "login_api_only": api_only_steps,
                        "login_large_tables": large_steps}
    results["bench_seconds"] = round(time.monotonic() - bench_started)
    report(results, RESULTS / "latest.json")


def peer_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """Scenario 2's rows of the printed table: medians of the cells, ratios as medians of the rounds' pairs."""
    comparison = results["peer_comparison"]
    fast, slow = comparison["0ms"], comparison[f"{round(SLOW_SMTP_SECONDS * 1000)}ms"]
    delivery = comparison["delivery_slow"]
    slow_label = f"{round(SLOW_SMTP_SECONDS * 1000)} ms"
    return [
        ("2  vs peer, SMTP at once", f"{results['ours_0ms']['rps']} / {results['peer_0ms']['rps']} req/s",
         f"CPU {results['ours_0ms']['cpu_ms_per_login']} / {results['peer_0ms']['cpu_ms_per_login']} ms a login",
         f"ours/peer {results['vs_peer_0ms']:.2f}x req/s (target >= 1.0), {results['cpu_vs_peer_0ms']:.2f}x CPU "
         f"(target <= 1.0), medians of {len(fast['ours']['cells'])} pairs; p99 {fast['ours']['p99_ms']} / {fast['peer']['p99_ms']} "
         f"ms; gthread peer {fast['peer_gthread']['rps']} req/s, CPU {fast['peer_gthread']['cpu_ms_per_login']} ms, "
         f"ours/gthread {fast['vs_peer_gthread']:.2f}x req/s"),
        (f"2  vs peer, SMTP {slow_label}",
         f"{slow['ours']['rps']} / {slow['peer']['rps']} / {slow['peer_gthread']['rps']} req/s",
         f"p99 {slow['ours']['p99_ms']} / {slow['peer']['p99_ms']} / {slow['peer_gthread']['p99_ms']} ms",
         f"ours / sync peer / gthread peer: {results['vs_peer_300ms']:.1f}x and {slow['vs_peer_gthread']:.1f}x, "
         f"medians of {len(slow['ours']['cells'])} pairs"),
        (f"2  delivery, SMTP {slow_label}", f"{results['delivery_300ms_within_5s']:.1%} within 5 s",
         f"longest wait {results['delivery_300ms_max_wait_s']} s",
         f"default settings, {delivery.get('email_worker_processes', 1)} email worker process(es); targets 95 % "
         f"and 30 s; {delivery['late_10s']} of {delivery['codes']} codes over "
         f"{DELIVERY_DEADLINE_SECONDS} s"),
        (f"2  same {SYNC_RATE} req/s, SMTP {slow_label}",
         f"p99 {comparison['same_rate_ours']['p99_ms']} / {comparison['same_rate_peer']['p99_ms']} ms",
         f"p50 {comparison['same_rate_ours']['p50_ms']} / {comparison['same_rate_peer']['p50_ms']} ms",
         f"{results['sync_ratio_p99']}x lower p99 than the sync peer"),
    ]


def cpu_split_lines(results: dict) -> list[str]:
    fast = results["peer_comparison"]["0ms"]
    lines = []
    for name in ("ours", *(variant[0] for variant in PEER_VARIANTS)):
        split = fast[name]["cpu_ms_per_login_by_process"]
        late = sum(cell.get("late", 0) for cell in fast[name]["cells"])
        lines.append(f"CPU a login at SMTP 0 ms, {name} (ms, medians of cells): {fast[name]['cpu_ms_per_login']} = "
                     + ", ".join(f"{role} {ms}" for role, ms in sorted(split.items(), key=lambda item: -item[1]))
                     + (f"; codes over {DELIVERY_DEADLINE_SECONDS} s: {late}" if name == "ours" else ""))
    return lines


def report(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    if ONLY_PEER:
        rows = peer_rows(results)
    else:
        rows = [
            ("bare view (ceiling)", f"{results['bare']['rps']} req/s", f"p99 {results['bare']['p99_ms']} ms", ""),
            ("1  /login/, whole stack", f"{results['login']['rps']} req/s", f"p99 {results['login']['p99_ms']} ms",
             f"{results['login_vs_bare']:.1%} of bare, median of {PAIRS} pairs (target 20 %); best steps "
             f"{results['login_vs_bare_best_steps']:.1%}"),
            ("1b /login/, workers stopped", f"{results['login_api_only']['rps']} req/s",
             f"p99 {results['login_api_only']['p99_ms']} ms",
             f"{results['api_only_vs_bare']:.1%} of bare, median of {PAIRS} pairs (target 35 %); best steps "
             f"{results['api_only_vs_bare_best_steps']:.1%}"),
            ("1b backlog drain", f"{results['drain_rps']} emails/s", "", "one email worker"),
            *peer_rows(results),
            ("3  delivery latency", f"p50 {results['delivery']['p50_ms']} ms",
             f"p95 {results['delivery']['p95_ms']} ms, p99 {results['delivery']['p99_ms']} ms",
             f"targets 50 / 250 ms; {results['delivery']['errors']} not delivered"),
            ("4  SMS workers 1 / 2 / 4", " / ".join(f"{v}" for v in results["worker_scaling"].values()) + " SMS/s",
             "", "target 150/s from one; CPU busy "
             + " / ".join(f"{v:.0%}" for v in results["worker_scaling_cpu_busy"].values())),
            ("5  /verify-otp/", f"{results['verify']['rps']} req/s",
             f"p50 {results['verify']['p50_ms']} ms, p99 {results['verify']['p99_ms']} ms",
             f"{results['verify']['errors']} errors"),
            ("5  purge 1M codes", f"{results['purge_1m_s']} s",
             f"API p99 {results.get('purge_api_p99_ms')} ms meanwhile", "target 30 s"),
            ("6  1M users + 1M old codes", f"{results['login_large_tables']['rps']} req/s",
             f"p99 {results['login_large_tables']['p99_ms']} ms",
             f"{results['large_tables_ratio']:.0%} of scenario 1, paired medians (target 90 %); best steps "
             f"{results['large_tables_ratio_best_steps']:.0%}"),
        ]
    width = max(len(row[0]) for row in rows)
    print(f"\n{results['machine']}")
    for row in rows:
        print(f"{row[0]:<{width}}  {row[1]:<24} {row[2]:<34} {row[3]}")
    for line in cpu_split_lines(results):
        print(line)
    if not ONLY_PEER:
        print("resident memory (MB, largest process of each): "
              + ", ".join(f"{name} {mb}" for name, mb in results["rss_mb"].items()))
        plot(results)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for key, label in (("bare", "bare view (ceiling)"), ("login", "/login/, whole stack"),
                       ("login_api_only", "/login/, workers stopped"),
                       ("login_large_tables", "/login/, 1M users and 1M old codes")):
        steps = results["steps"][key]
        axis.plot([s["rps"] for s in steps], [s["p99_ms"] for s in steps], marker="o", label=label)
    axis.axhline(100, color="grey", linestyle="--", linewidth=1, label="p99 100 ms")
    axis.set_xlabel("throughput (requests/s)")
    axis.set_ylabel("p99 latency (ms)")
    axis.set_yscale("log")
    axis.set_title(f"Rising load through nginx ({results['machine']})", fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "latest.png", dpi=110)


if __name__ == "__main__":
    main()
