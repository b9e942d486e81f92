"""`make bench`: the service's throughput and latency, as ratios to a bare view measured in the same run.

It starts the native stack (bin/stack: nginx, gunicorn, workers, beat) on a database and Redis database of its
own, an SMTP server and a Twilio stand-in in this process, drives load through nginx with wrk (bench/post.lua)
or, for open-loop delivery timing, with aiohttp, then prints a table and writes bench/results/latest.json and
latest.png. Figures are medians of what wrk reports; these machines are shared, so read the ratios.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "backend")]

BENCH_DB = "otp_bench"
REDIS_URL = "redis://127.0.0.1:6379/11"
BROKER_URL = "redis://127.0.0.1:6379/12"  # the settings' default for this REDIS_URL: its next database
ACCOUNTS = 300_000
LARGE_ACCOUNTS = 1_000_000  # scenario 6's extra users
# A step takes STEP_SECONDS x this many addresses, more than it can use: with ACCOUNTS, an address comes round
# again only after minutes, so no request meets the resend cooldown (which would answer 429, not the service).
MAX_RATE = 2_000
SYNC_RATE = 10  # scenario 2's arrival rate, below the synchronous design's capacity
# mobile(59_000 + i): numbers no scenario uses within a cooldown of a warm-up; 20 fresh ones for each warm-up.
warm_up_mobiles = itertools.count(59_000, 20)
STEP_SECONDS = int(os.environ.get("BENCH_STEP_SECONDS", "6"))
CONNECTIONS = [2, 4, 8, 16, 32, 64]
PAIRS = 5  # adjacent bare and /login/ steps behind each ratio to the bare view; the ratio is their median
WRK_THREADS = 2
STACK_DIR = REPO / "var" / "bench-stack"
RESULTS = REPO / "bench" / "results"

BASE_ENV = {
    "ENV_FILE": "",
    "SECRET_KEY": "bench-only-secret-key-not-used-anywhere-else",
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}",
    "REDIS_URL": REDIS_URL,
    "STACK_DIR": str(STACK_DIR),
    "HTTP_PORT": "18480",
    "API_PORT": "18400",
    # The load must measure the service, not its guards.
    "OTP_IP_SEND_RATE": "100000000/min",
    "OTP_IP_VERIFY_RATE": "100000000/min",
    "OTP_SENDS_PER_HOUR": "100000",
    "OTP_MAX_FAILURES_PER_HOUR": "100000",
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
# The product's settings plus the bare view and scenario 2's switch (bench/settings.py). Every process started
# from here (manage.py, bin/stack's gunicorn, workers and beat) only sets a default, so this wins; they run from
# backend/, so the repository root goes on PYTHONPATH for `bench` to import.
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
# The start scripts run `celery` from PATH: this interpreter's, i.e. the project's .venv.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- services this process runs ---------------------------------------------------------------------


class TimedInbox:
    """aiosmtpd handler: accepts after an optional delay and notes when each recipient's message arrived."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.arrivals: dict[str, float] = {}
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        now = time.time()
        for rcpt in envelope.rcpt_tos:
            self.arrivals.setdefault(rcpt, now)
        self.count += 1
        return "250 OK"


def start_mail_and_sms():
    from aiosmtpd.controller import Controller

    from tests.support.twilio_standin import TwilioStandIn
    from tests.support.waiting import free_port

    inbox = TimedInbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    sms = TwilioStandIn().start()
    os.environ.update({"EMAIL_PORT": str(port), "TWILIO_API_BASE_URL": sms.base_url})
    return inbox, controller, sms


# --- database ------------------------------------------------------------------------------------------


def database_prepare() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO / "backend", check=True)


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
                         "expires_at) FROM STDIN") as copy:
            for i in range(count):
                address = f"bench{i}@example.com"
                copy.write_row((address, "email", "login", code_hash(address=address, code="123456"), "active", 0,
                                "now", "2100-01-01"))


def old_codes_seed(count: int) -> None:
    """Codes as they pile up: expired and used, spread over many addresses."""
    sql("INSERT INTO otp_onetimecode (address, channel, purpose, code_hash, status, attempts, created_at, expires_at) "
        "SELECT 'old' || mod(g, 500000) || '@example.com', 'email', 'login', md5(g::text) || md5(g::text), "
        "CASE WHEN mod(g, 2) = 0 THEN 'used' ELSE 'superseded' END, 0, now() - interval '2 days', "
        "now() - interval '2 days' + interval '2 minutes' FROM generate_series(1, %s) g", [count])


# --- the stack ---------------------------------------------------------------------------------------------


def stack(action: str, **env) -> None:
    result = subprocess.run([str(REPO / "bin" / "stack"), action], env={**os.environ, **env},
                            capture_output=True, text=True)
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

    return redis.Redis.from_url(BROKER_URL).llen(queue)


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
# Scenario 6's users: the million seeded beside the first ACCOUNTS, with no code of their own yet, as scenario 1's.
large_accounts = Accounts(ACCOUNTS, LARGE_ACCOUNTS)


def wrk(path: str, kind: str, connections: int, seconds: int = STEP_SECONDS, pool: Accounts = accounts) -> dict:
    url = f"http://127.0.0.1:{BASE_ENV['HTTP_PORT']}{path}"
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


async def open_loop(rate: float, seconds: float, make_request,
                    latencies: list[tuple[int, float]] | None = None) -> list[tuple[str, float]]:
    """Requests at a steady rate (not waiting for answers); returns (address, time the 202 arrived).

    `latencies`, when given, receives (status, milliseconds) for every request.
    """
    import aiohttp

    answered: list[tuple[str, float]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session:
        async def one(index: int) -> None:
            path, body, address = make_request(index)
            sent = time.monotonic()
            async with session.post(f"http://127.0.0.1:{BASE_ENV['HTTP_PORT']}{path}", json=body) as response:
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


# --- scenarios ---------------------------------------------------------------------------------------------


def mobile(index: int) -> str:
    area = (212, 312, 415, 646, 718, 917)[index // 10000 % 6]
    return f"+1{area}555{index % 10000:04d}"


def main() -> None:
    import logging

    import django

    results: dict = {"machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, "
                                f"Python {platform.python_version()}", "step_seconds": STEP_SECONDS}
    inbox, controller, sms = start_mail_and_sms()
    log("preparing the bench database")
    database_prepare()
    django.setup()
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP line at info
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    redis.Redis.from_url(BROKER_URL).flushdb()
    users_seed(0, ACCOUNTS)
    stack("down")
    stack("up")
    warm_up(sms)
    extra_processes: list[subprocess.Popen] = []  # workers started outside bin/stack, stopped whatever happens
    try:
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
        delivered_before = inbox.count
        drain = subprocess.Popen([str(REPO / "worker" / "start-worker.sh"), "email,maintenance"],
                                 env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        extra_processes.append(drain)
        wait_until(lambda: inbox.count > delivered_before, 60, "the first drained email")
        drain_started = time.monotonic()
        first_count = inbox.count
        wait_until(lambda: queue_length("email") == 0, 900, "the backlog to drain")
        wait_until(lambda: inbox.count - delivered_before >= backlog * 0.99, 120, "the last drained emails")
        results["drain_rps"] = round((inbox.count - first_count) / (time.monotonic() - drain_started), 1)
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

        answered = asyncio.run(open_loop(100, 10, make_request))
        sent_at.update(answered)
        requested = 100 * 10
        def arrived() -> int:
            return (sum(1 for a in sent_at if "@" in a and a in inbox.arrivals)
                    + len({m["to"] for m in sms.accepted if m["to"] in sent_at}))

        wait_until(lambda: arrived() >= len(sent_at) * 0.99, 60, "the deliveries")
        # The last few may still be on their way: what has not arrived 30 s later counts as an error.
        deadline = time.monotonic() + 30
        while arrived() < len(sent_at) and time.monotonic() < deadline:
            time.sleep(0.2)
        sms_arrivals = {m["to"]: m["received_at"] for m in sms.accepted}
        latencies = [((inbox.arrivals.get(a) if "@" in a else sms_arrivals.get(a)) - t) * 1000
                     for a, t in sent_at.items() if (inbox.arrivals.get(a) if "@" in a else sms_arrivals.get(a))]
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

        log("scenario 2: a synchronous send in the request vs the queue, mail server answering in 300 ms")
        inbox.delay = 0.3
        results["sync"] = {}
        for design, env in (("queued", {}), ("synchronous", {"BENCH_SYNC_SEND": "true"})):
            stack("up", **env)
            warm_up(sms)
            # The same users arriving at both: 10 req/s, 60 % of what the synchronous design can hold
            # (5 gunicorn workers / 0.3 s). Then the same 16 connections asking as fast as each is answered.
            first = accounts.take(SYNC_RATE * 30)
            timed: list[tuple[int, float]] = []
            asyncio.run(open_loop(SYNC_RATE, 30, lambda i: ("/login/", {"email": f"bench{first + i}@example.com"}, ""),
                                  latencies=timed))
            ms = [t for _, t in timed]
            same_rate = {"rate": SYNC_RATE, "p50_ms": round(statistics.median(ms), 1),
                         "p95_ms": round(percentile(ms, 95), 1), "p99_ms": round(percentile(ms, 99), 1),
                         "errors": sum(1 for st, _ in timed if st != 202)}
            results["sync"][design] = {"same_rate": same_rate, "same_connections": wrk("/login/", "login", 16,
                                                                                      seconds=10)}
            stack("down")
        inbox.delay = 0.0
        queued, synchronous = results["sync"]["queued"], results["sync"]["synchronous"]
        results["sync_ratio_p99"] = round(synchronous["same_rate"]["p99_ms"] / max(queued["same_rate"]["p99_ms"], 0.01), 1)
        results["sync_ratio_p99_same_connections"] = round(
            synchronous["same_connections"]["p99_ms"] / max(queued["same_connections"]["p99_ms"], 0.01), 1)
        results["sync_ratio_rps"] = round(queued["same_connections"]["rps"] / max(synchronous["same_connections"]["rps"], 0.01), 1)
        log(f"at {SYNC_RATE} req/s: queued p99 {queued['same_rate']['p99_ms']} ms, synchronous p99 "
            f"{synchronous['same_rate']['p99_ms']} ms; 16 connections: queued {queued['same_connections']['rps']} "
            f"req/s p99 {queued['same_connections']['p99_ms']} ms, synchronous {synchronous['same_connections']['rps']} "
            f"req/s p99 {synchronous['same_connections']['p99_ms']} ms")

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
                                        env={**os.environ, "CELERY_WORKER_CONCURRENCY": "64"},
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
        controller.stop()
        sms.stop()

    results["login_vs_bare"] = results["login_pairs"]["median"]
    results["api_only_vs_bare"] = results["login_api_only_pairs"]["median"]
    # The ratios of the sweeps' best steps, as the bench reported them before it paired steps.
    results["login_vs_bare_best_steps"] = round(results["login"]["rps"] / results["bare"]["rps"], 3)
    results["api_only_vs_bare_best_steps"] = round(results["login_api_only"]["rps"] / results["bare"]["rps"], 3)
    results["steps"] = {"bare": bare_steps, "login": login_steps, "login_api_only": api_only_steps,
                        "login_large_tables": large_steps}
    report(results)


def report(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
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
        ("2  vs synchronous send", f"{results['sync_ratio_rps']}x req/s",
         f"{results['sync_ratio_p99']}x lower p99 at {SYNC_RATE} req/s",
         f"{results['sync_ratio_p99_same_connections']}x at 16 connections; target 10x p99"),
        ("3  delivery latency", f"p50 {results['delivery']['p50_ms']} ms",
         f"p95 {results['delivery']['p95_ms']} ms, p99 {results['delivery']['p99_ms']} ms",
         f"targets 50 / 250 ms; {results['delivery']['errors']} not delivered"),
        ("4  SMS workers 1 / 2 / 4", " / ".join(f"{v}" for v in results["worker_scaling"].values()) + " SMS/s", "",
         "target 150/s from one; CPU busy "
         + " / ".join(f"{v:.0%}" for v in results["worker_scaling_cpu_busy"].values())),
        ("5  /verify-otp/", f"{results['verify']['rps']} req/s",
         f"p50 {results['verify']['p50_ms']} ms, p99 {results['verify']['p99_ms']} ms",
         f"{results['verify']['errors']} errors"),
        ("5  purge 1M codes", f"{results['purge_1m_s']} s", f"API p99 {results.get('purge_api_p99_ms')} ms meanwhile",
         "target 30 s"),
        ("6  1M users + 1M old codes", f"{results['login_large_tables']['rps']} req/s",
         f"p99 {results['login_large_tables']['p99_ms']} ms",
         f"{results['large_tables_ratio']:.0%} of scenario 1, paired medians (target 90 %); best steps "
         f"{results['large_tables_ratio_best_steps']:.0%}"),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"\n{results['machine']}")
    for row in rows:
        print(f"{row[0]:<{width}}  {row[1]:<24} {row[2]:<34} {row[3]}")
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
