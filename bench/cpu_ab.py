#!/usr/bin/env python
"""CPU time per delivered /login/, commits alternated: A, B, A, B, ...

usage: .venv/bin/python bench/cpu_ab.py 768f8cc 6960c75 [--rounds 5] [--seconds 20]

Not part of `make bench`: a finer measure for one question, whether a change moved the CPU a login costs, where
the bench's throughput ratios are too noisy on a shared machine (docs/performance-log.md, issue 14's guard).

Each cell: a git worktree of the commit (var/cpu-ab/<sha>, this checkout's .venv linked in), a fresh database
(--db, default otp_ab) migrated and seeded as that commit's bench/run.py seeds it (users_seed: `ACCOUNTS` users
bench<i>@example.com), a private redis-server (fresh each cell), an SMTP sink in a process of its own answering
250 at once, then that commit's bin/stack up with its bench's BASE_ENV and DJANGO_SETTINGS_MODULE (read by
importing the commit's bench/run.py in a child process), ports moved off the bench's. Warm-up (wrk, not
measured, its mail waited for), then wrk -t2 -c16 with the commit's bench/post.lua ("login": a fresh seeded
address per request) through nginx for --seconds. utime+stime of every process of the stack is read from
/proc/<pid>/stat, sampled every 0.25 s (so short-lived processes are counted up to their last sample), from the
start of wrk to when every 202 has reached the sink (then 0.3 s quiet) or 1 s quiet after wrk, cap 30 s.
Printed: per cell rps, delivered, CPU ms per delivered login, total and per kind; then per-commit medians and
B/A. Not counted: PostgreSQL's shared processes (walwriter, checkpointer, autovacuum, ...), the kernel's softirq
time not charged to a process, wrk itself.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
try:
    import psycopg
except ImportError:  # the system python: run again under the project's venv (psycopg, aiosmtpd)
    os.execv(VENV_PYTHON, [VENV_PYTHON, *sys.argv])

MAIN = REPO
CLK_TCK = os.sysconf("SC_CLK_TCK")
KINDS = ("api", "worker", "postgres", "redis", "nginx", "smtp")
STACK_KIND = {"api": "api", "worker-email": "worker", "worker-sms": "worker", "beat": "worker", "nginx": "nginx"}

SINK_CODE = r"""
import asyncio, sys
from aiosmtpd.controller import Controller
out = open(sys.argv[2], "a", buffering=1)
class Sink:
    async def handle_DATA(self, server, session, envelope):
        out.write(" ".join(envelope.rcpt_tos) + "\n")
        return "250 OK"
c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
import signal, threading
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
c.stop()
"""

# Reads the commit's bench/run.py as the bench does (importing it sets os.environ) and returns what it set.
ENV_PROBE = r"""
import importlib.util, json, os, sys
before = dict(os.environ)
spec = importlib.util.spec_from_file_location("bench_run", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
changed = {k: v for k, v in os.environ.items() if before.get(k) != v}
print(json.dumps({"env": changed, "base_env": module.BASE_ENV, "accounts": module.ACCOUNTS,
                  "wrk_threads": module.WRK_THREADS}))
"""


def log(message: str) -> None:
    print(f"[ab {time.strftime('%H:%M:%S')}] {message}", flush=True)


def git(*args: str, cwd: Path = MAIN) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout.strip()


def worktree(sha: str) -> Path:
    path = REPO / "var" / "cpu-ab" / sha
    if not path.exists():
        git("worktree", "add", "--detach", str(path), sha)
    if git("rev-parse", "HEAD", cwd=path) != git("rev-parse", sha):
        raise SystemExit(f"{path} is not at {sha}")
    if not (path / ".venv").exists():
        (path / ".venv").symlink_to(MAIN / ".venv")
    return path


def commit_env(repo: Path, args, stack_dir: Path) -> tuple[dict, int]:
    probe = json.loads(subprocess.run([VENV_PYTHON, "-c", ENV_PROBE, str(repo / "bench" / "run.py")], check=True,
                                      capture_output=True, text=True, cwd=repo).stdout)
    env = {**os.environ, **probe["env"]}
    env.update({
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.db}",
        "REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
        "STACK_DIR": str(stack_dir),
        "HTTP_PORT": str(args.http_port),
        "API_PORT": str(args.api_port),
        "EMAIL_PORT": str(args.smtp_port),
        "EMAIL_HOST": "127.0.0.1",
        # /login/ sends email only; nothing is sent here, the worker only needs a URL to start.
        "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
    })
    env["PATH"] = f"{Path(VENV_PYTHON).parent}{os.pathsep}{env['PATH']}"
    return env, probe


# --- /proc ---------------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(utime+stime ticks, starttime ticks since boot) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12]), int(fields[19])


def tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def uptime_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * CLK_TCK)


class CpuSampler(threading.Thread):
    """Samples the CPU ticks of the stack's processes until stopped; ticks() gives each kind's use since start."""

    def __init__(self, stack_dir: Path, db: str, own: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.stack_dir, self.db, self.own = stack_dir, db, own
        self.first: dict[tuple[int, int], int] = {}
        self.last: dict[tuple[int, int], int] = {}
        self.kind: dict[tuple[int, int], str] = {}
        self.halt = threading.Event()
        self.conn = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
        self.started = uptime_ticks()
        self.sample()  # the baseline, before the load

    def pids(self) -> dict[int, str]:
        found = {}
        for name, kind in STACK_KIND.items():
            try:
                root = int((self.stack_dir / "run" / f"{name}.pid").read_text())
            except (FileNotFoundError, ValueError):
                continue
            for pid in tree(root):
                found[pid] = kind
        for pid, in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                      "AND backend_type = 'client backend'", [self.db]):
            found[pid] = "postgres"
        for kind, root in self.own.items():
            for pid in tree(root):
                found[pid] = kind
        return found

    def sample(self) -> None:
        for pid, kind in self.pids().items():
            stat = proc_stat(pid)
            if stat is None:
                continue
            key = (pid, stat[1])
            if key not in self.first:
                # Started since the baseline: all its time is the cell's; else from the first sight on.
                self.first[key] = 0 if stat[1] >= self.started else stat[0]
                self.kind[key] = kind
            self.last[key] = stat[0]

    def run(self) -> None:
        while not self.halt.wait(0.25):
            self.sample()

    def stop(self) -> dict[str, float]:
        self.halt.set()
        self.join()
        self.sample()
        self.conn.close()
        ms = {kind: 0.0 for kind in KINDS}
        for key, last in self.last.items():
            ms[self.kind[key]] += (last - self.first[key]) * 1000 / CLK_TCK
        return ms


# --- one cell ---------------------------------------------------------------------------------------------------


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stack(repo: Path, env: dict, action: str) -> None:
    result = subprocess.run([str(repo / "bin" / "stack"), action], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bin/stack {action} failed:\n{result.stdout}\n{result.stderr}")


def database_fresh(repo: Path, env: dict, db: str, accounts: int) -> None:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
    subprocess.run([VENV_PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=repo / "backend", env=env,
                   check=True)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}", autocommit=True) as conn:
        # bench/run.py's users_seed(0, ACCOUNTS), the same at both commits.
        conn.execute("INSERT INTO users_user (password, is_superuser, email, mobile, is_active, is_staff, "
                     "date_joined) SELECT '!', false, 'bench' || g || '@example.com', NULL, true, false, now() "
                     "FROM generate_series(%s, %s) g", [0, accounts - 1])
        # Not in the bench: so that autovacuum's analyze of the fresh rows does not land in one cell and not another.
        conn.execute("VACUUM ANALYZE")


def wrk(repo: Path, args, start: int, accounts: int, seconds: int) -> dict:
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s", "--timeout", "5s",
           "-s", str(repo / "bench" / "post.lua"), f"http://127.0.0.1:{args.http_port}/login/", "--", "login",
           str(start), "0", str(accounts), str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def cell(commit: str, repo: Path, args, offset: int) -> dict:
    stack_dir = repo / "var" / "ab-stack"
    env, probe = commit_env(repo, args, stack_dir)
    accounts = probe["accounts"]
    inbox = Path(tempfile.mkstemp(prefix="ab-sink-", suffix=".txt")[1])
    processes: list[subprocess.Popen] = []
    stack_started = False
    try:
        redis_proc = subprocess.Popen(["redis-server", "--port", str(args.redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--daemonize", "no"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        processes.append(redis_proc)
        sink = subprocess.Popen([VENV_PYTHON, "-c", SINK_CODE, str(args.smtp_port), str(inbox)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        processes.append(sink)
        if sink.stdout.readline().strip() != "ready":
            raise RuntimeError("the SMTP sink did not start")
        database_fresh(repo, env, args.db, accounts)
        stack(repo, env, "down")  # a leftover of an interrupted run
        stack_started = True
        stack(repo, env, "up")

        warm = wrk(repo, args, offset, accounts, args.warmup)
        warm_ok = warm["requests"] - warm["non2xx"]
        wait_until(lambda: lines(inbox) >= warm_ok, 60, "the warm-up's mail")
        offset += args.warmup * 3000  # more than wrk can send: no address twice within a cooldown
        quiet_since, count = time.monotonic(), lines(inbox)
        while time.monotonic() - quiet_since < 0.5:  # strays of the warm-up (requests wrk cut off)
            time.sleep(0.05)
            if lines(inbox) != count:
                quiet_since, count = time.monotonic(), lines(inbox)

        before = lines(inbox)
        sampler = CpuSampler(stack_dir, args.db, {"redis": redis_proc.pid, "smtp": sink.pid})
        sampler.start()
        t0 = time.monotonic()
        raw = wrk(repo, args, offset, accounts, args.seconds)
        wrk_done = time.monotonic()
        accepted = raw["requests"] - raw["non2xx"]
        # End: every 202 has reached the sink and 0.3 s passed with nothing new (in-flight requests that wrk cut
        # off may still deliver), or 1 s quiet if some never arrive; at most 30 s after wrk.
        quiet_since, count = time.monotonic(), lines(inbox)
        while time.monotonic() - wrk_done < 30:
            time.sleep(0.05)
            now_count = lines(inbox)
            if now_count != count:
                quiet_since, count = time.monotonic(), now_count
            quiet = time.monotonic() - quiet_since
            if (count - before >= accepted and quiet >= 0.3) or quiet >= 1.0:
                break
        ms = sampler.stop()
        t1 = time.monotonic()
        delivered = lines(inbox) - before
        result = {"commit": commit, "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
                  "requests": raw["requests"], "non2xx": raw["non2xx"], "socket_errors": raw["socket_errors"],
                  "delivered": delivered, "drain_s": round(t1 - wrk_done, 2), "cell_s": round(t1 - t0, 2),
                  "cpu_ms": {k: round(v) for k, v in ms.items()},
                  "ms_per_login": round(sum(ms.values()) / max(delivered, 1), 3),
                  "ms_per_login_by_kind": {k: round(v / max(delivered, 1), 3) for k, v in ms.items()},
                  "machine_load1": os.getloadavg()[0]}
        return result
    finally:
        if stack_started:
            try:
                stack(repo, env, "down")
            except RuntimeError as error:
                log(str(error))
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        inbox.unlink(missing_ok=True)


def show(r: dict) -> None:
    by_kind = "  ".join(f"{k} {r['ms_per_login_by_kind'][k]:.2f}" for k in KINDS)
    log(f"{r['commit']}: {r['rps']:>7} req/s  requests {r['requests']}  non2xx {r['non2xx']}  delivered "
        f"{r['delivered']}  drain {r['drain_s']} s  CPU {r['ms_per_login']:.2f} ms/login  ({by_kind})  "
        f"load1 {r['machine_load1']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("commits", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--db", default="otp_ab")
    parser.add_argument("--http-port", type=int, default=18580)
    parser.add_argument("--api-port", type=int, default=18500)
    parser.add_argument("--redis-port", type=int, default=18579)
    parser.add_argument("--smtp-port", type=int, default=18525)
    parser.add_argument("--json", type=Path, default=REPO / "var" / "cpu-ab.json")
    args = parser.parse_args()
    if args.db == "otp_bench" or args.http_port == 18480 or args.api_port == 18400:
        raise SystemExit("otp_bench and ports 18480/18400 are the bench's")

    shas = [git("rev-parse", "--short=7", f"{c}^{{commit}}") for c in args.commits]
    repos = {sha: worktree(sha) for sha in shas}
    log(f"commits {shas}, {args.rounds} round(s) of {args.seconds} s, wrk -t{args.threads} -c{args.connections}")
    results: list[dict] = []
    offset = 0
    try:
        for round_index in range(args.rounds):
            for sha in shas:
                result = cell(sha, repos[sha], args, offset)
                result["round"] = round_index
                results.append(result)
                show(result)
                args.json.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {args.db} WITH (FORCE)")

    print()
    medians = {}
    for sha in shas:
        mine = [r for r in results if r["commit"] == sha]
        medians[sha] = statistics.median(r["ms_per_login"] for r in mine)
        kinds = "  ".join(f"{k} {statistics.median(r['ms_per_login_by_kind'][k] for r in mine):.2f}" for k in KINDS)
        print(f"{sha}: median {medians[sha]:.2f} CPU ms/login over {len(mine)} cell(s)  "
              f"(rps median {statistics.median(r['rps'] for r in mine)})  [{kinds}]")
    a = shas[0]
    for b in shas[1:]:
        print(f"ratio {b}/{a}: {medians[b] / medians[a]:.3f}")
        pairs = [rb["ms_per_login"] / ra["ms_per_login"] for ra, rb in
                 zip([r for r in results if r["commit"] == a], [r for r in results if r["commit"] == b])]
        print(f"  per-round ratios {b}/{a}: {[round(p, 3) for p in pairs]}, median {statistics.median(pairs):.3f}")


if __name__ == "__main__":
    main()
