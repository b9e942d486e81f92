"""Checks of the bench's own measuring parts: `.venv/bin/pytest bench/tests -q` (not part of `make test`; under a
minute). They need what `make bench` needs: PostgreSQL on 127.0.0.1, redis-server, nginx and wrk."""
import json
import smtplib
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest

from bench import run

BURN = "import sys, time\n" \
       "def burn(seconds):\n" \
       "    start = time.process_time()\n" \
       "    while time.process_time() - start < seconds:\n" \
       "        pass\n"


def busy_process(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BURN + script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_cpu_meter_counts_the_cpu_spent_in_its_window_and_by_processes_born_in_it():
    before_and_after = busy_process("burn(0.3)\nprint('ready', flush=True)\nsys.stdin.readline()\nburn(0.4)\n"
                                    "print('done', flush=True)\nsys.stdin.readline()\n")
    ends_inside = busy_process("print('ready', flush=True)\nsys.stdin.readline()\n")
    born_inside: list[subprocess.Popen] = []
    assert before_and_after.stdout.readline().strip() == "ready"
    assert ends_inside.stdout.readline().strip() == "ready"

    meter = run.CpuMeter(lambda: {"old": [before_and_after.pid, ends_inside.pid],
                                  "new": [process.pid for process in born_inside]})
    meter.start()
    born_inside.append(busy_process("burn(0.3)\nprint('done', flush=True)\nsys.stdin.readline()\n"))
    before_and_after.stdin.write("go\n")
    before_and_after.stdin.flush()
    assert before_and_after.stdout.readline().strip() == "done"
    assert born_inside[0].stdout.readline().strip() == "done"
    ends_inside.communicate("bye\n", timeout=10)
    counted = meter.stop()
    for process in (before_and_after, born_inside[0]):
        process.communicate("bye\n", timeout=10)

    # The 0.3 s burnt before the window is not counted; a process born in it counts from its birth (the
    # interpreter's start-up included); one that ended in it is reported, its CPU lost.
    assert 380 <= counted["by_role_ms"]["old"] <= 600
    assert 280 <= counted["by_role_ms"]["new"] <= 800
    assert counted["exited"] == 1
    assert counted["total_ms"] == pytest.approx(sum(counted["by_role_ms"].values()))


def test_database_backends_leave_out_the_bench_s_own_connections():
    with run.driver_connect("postgres") as driver, \
            psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as served:
        served_pid = served.info.backend_pid
        backends = run.database_backends(driver, "postgres")
        assert served_pid in backends
        assert driver.info.backend_pid not in backends


def test_mail_sink_logs_each_recipient_and_answers_after_its_delay():
    sink = run.MailSink()
    try:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
            smtp.sendmail("from@example.com", ["a@example.com"], "Subject: x\r\n\r\nbody")
            sink.delay = 0.3
            started = time.monotonic()
            smtp.sendmail("from@example.com", ["b@example.com"], "Subject: y\r\n\r\nbody")
            assert time.monotonic() - started >= 0.3
        deadline = time.monotonic() + 10
        while sink.count < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [address for address, _ in sink.log] == ["a@example.com", "b@example.com"]
        assert set(sink.first_arrivals(1)) == {"b@example.com"}
    finally:
        sink.stop()


@pytest.fixture
def peer_database(monkeypatch):
    """The peer's database under a name of the test's own, with a few of the bench's accounts."""
    name = "otp_bench_peer_selftest"
    monkeypatch.setattr(run, "PEER_DB", name)
    monkeypatch.setitem(run.PEER_ENV, "PEER_DATABASE_NAME", name)
    run.peer_database_prepare(10)
    yield name
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def post(port: int, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_the_peer_sends_a_code_through_nginx_trades_it_and_its_cells_count_its_processes(peer_database, monkeypatch):
    sink = run.MailSink()
    monkeypatch.setenv("EMAIL_PORT", str(sink.port))
    peer = run.Peer(*run.PEER_VARIANTS[0])
    driver = run.driver_connect(peer_database)
    try:
        peer.start()
        assert post(peer.http_port, "/auth/email/", {"email": "Bench3@example.com"})[0] == 200
        assert sink.log and sink.log[-1][0] == "bench3@example.com"
        code = driver.execute("SELECT key FROM drfpasswordless_callbacktoken WHERE is_active").fetchone()[0]
        status, body = post(peer.http_port, "/auth/token/", {"email": "bench3@example.com", "token": code})
        assert status == 200 and body["token"]

        meter = run.CpuMeter(lambda: {**peer.pids(), "postgres": run.database_backends(driver, peer_database),
                                      "smtp": [sink.process.pid]})
        monkeypatch.setattr(run, "peer_accounts", run.Accounts(0, 10))
        cell = run.cell_peer(peer, driver, sink, meter, 2)
        assert cell["errors"] == 0 and cell["logins"] >= 1
        assert cell["tokens"] == cell["logins"]  # the table was emptied before the cell
        # Every role is counted; nginx's share of a short cell can stay under the kernel's 10 ms tick.
        assert set(cell["cpu_ms_per_login_by_process"]) == {"api", "nginx", "postgres", "smtp"}
        assert cell["cpu_ms_per_login_by_process"]["api"] > 0
    finally:
        peer.stop()
        driver.close()
        sink.stop()
