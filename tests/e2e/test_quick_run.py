"""The README's first command, `make run`: SQLite, jobs in-process, the email printed on the console.

Started with `make run` itself (bin/quick-run), on a database file of its own (QUICK_RUN_DB).
"""
import http.client
import json
import os
import re
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.http import post
from tests.support.parallel import run_in_parallel
from tests.support.processes import REPO_DIR, ManagedProcess
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.timeout(120)


def code_from_console(log: str, address: str) -> str:
    """The code in the last email to `address` the console backend printed, read as a person would."""
    emails = [block for block in log.split("-" * 79) if f"To: {address}" in block]
    assert emails, f"no email to {address} on the console:\n{log[-2000:]}"
    runs = set(re.findall(r"\b\d{6}\b", emails[-1]))
    assert len(runs) == 1, f"expected one code in the email, found {runs}"
    return runs.pop()


@pytest.fixture(autouse=True)
def stack_redis_clean():
    """The quick run uses no Redis: the native stack's database (tests/e2e/conftest.py) is left alone."""
    yield


def make_run(tmp_path, **env) -> ManagedProcess:
    """`make run` from the checkout, on a database file in `tmp_path`, once it serves. The suite's environment
    (PostgreSQL, Redis, the SMTP backend) stays in place: the quick run must not use it."""
    env = {**os.environ, "QUICK_RUN_DB": str(tmp_path / "db.sqlite3"), **env}
    server = ManagedProcess("quick-run", ["make", "run"], env=env, log_dir=tmp_path, cwd=REPO_DIR).start()
    server.wait_for_log("Quit the server with", timeout=90)
    return server


@pytest.fixture
def quick_run(tmp_path):
    port = free_port()
    server = make_run(tmp_path, ENV_FILE="", API_PORT=str(port))
    yield f"http://127.0.0.1:{port}", server, server.env, tmp_path
    server.stop()


def quick_shell(quick_run, name: str, script: str) -> str:
    """Runs `script` in `manage.py shell` on the quick run's settings and database; returns what it printed."""
    _, _, env, tmp_path = quick_run
    shell = ManagedProcess(name, ["bin/quick-run", "manage", "shell", "-c", script], env=env, log_dir=tmp_path,
                           cwd=REPO_DIR).start()
    assert shell.process.wait(timeout=60) == 0, shell.log()
    return shell.log()


def test_register_verify_and_profile_on_the_embedded_defaults(quick_run):
    url, server, _, _ = quick_run
    assert post(url, "/register/", {"email": "quick@example.com"}).status_code == 202
    code = wait_for(lambda: "To: quick@example.com" in server.log() and code_from_console(server.log(), "quick@example.com"),
                    message="the email on the console")

    tokens = post(url, "/verify-otp/", {"email": "quick@example.com", "code": code})
    assert tokens.status_code == 200, tokens.text
    profile = requests.get(f"{url}/profile/", headers={"Authorization": f"Bearer {tokens.json()['access']}"},
                           timeout=10)
    assert profile.json()["email"] == "quick@example.com"
    # Refresh, reuse detection and logout on SQLite, which has no SELECT ... FOR UPDATE (it locks the file).
    rotated = post(url, "/token/refresh/", {"refresh": tokens.json()["refresh"]})
    assert rotated.status_code == 200, rotated.text
    assert post(url, "/token/refresh/", {"refresh": tokens.json()["refresh"]}).status_code == 401
    assert post(url, "/token/refresh/", {"refresh": rotated.json()["refresh"]}).status_code == 401
    assert post(url, "/logout/", {"refresh": rotated.json()["refresh"]}).status_code == 205
    # The in-process job recorded its delivery as sent, through the same claim the workers use.
    wait_for(lambda: "delivery 1 sent by email" in server.log(), message="the delivery line")
    # Static files are served, and a missing one is a JSON 404 like any unknown path (it was Django's HTML page).
    css = requests.get(f"{url}/static/admin/css/base.css", timeout=10)
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
    for missing in ("/static/nope.js", "/static/", "/static/otp/home.js/", "/static/../config/settings.py",
                    "/static/%2e%2e/config/settings.py", "/static/otp/../../config/settings.py"):
        connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)
        connection.request("GET", missing)  # as sent: requests would resolve the dot segments first
        response = connection.getresponse()
        body = response.read()
        assert response.status == 404 and response.getheader("Content-Type") == "application/json", (missing, body[:200])
        assert json.loads(body) == {"detail": "Not found.", "code": "not_found"}, missing  # no "with the slash" hint
    posted = requests.post(f"{url}/static/nope.js", data="x", timeout=10)  # not a CSRF page, as for any unknown path
    assert posted.status_code == 404 and posted.json()["code"] == "not_found", posted.text[:200]


def test_sqlite_answers_parallel_requests_without_a_503(quick_run):
    # SQLite allows one writer at a time. Its default deferred transactions took the write lock only at the first
    # write and gave up at once when another held it ("database is locked", a 503): 10 parallel verifies of the
    # right code answered one 200 and nine 503s. Each now waits its turn (the losers find the code used).
    url, server, _, _ = quick_run
    assert post(url, "/register/", {"email": "racer@example.com"}).status_code == 202
    code = wait_for(lambda: "To: racer@example.com" in server.log() and code_from_console(server.log(), "racer@example.com"),
                    message="the email on the console")
    answers = run_in_parallel(10, lambda _: post(url, "/verify-otp/", {"email": "racer@example.com", "code": code}))
    assert sorted(a.status_code for a in answers) == [200] + [400] * 9, [(a.status_code, a.text) for a in answers]
    # And writes of every kind at once: sign-ups for ten addresses.
    answers = run_in_parallel(10, lambda i: post(url, "/register/", {"email": f"crowd{i}@example.com"}))
    assert [a.status_code for a in answers] == [202] * 10, [(a.status_code, a.text) for a in answers]


def test_a_forged_x_forwarded_for_does_not_reset_the_per_ip_limit(tmp_path):
    # Nothing stands in front of runserver: the client's own X-Forwarded-For must not name its address. With the
    # stack's TRUSTED_PROXY_COUNT=1 each new value was a new client (35 logins a minute, all 202).
    port = free_port()
    server = make_run(tmp_path, ENV_FILE="", API_PORT=str(port), OTP_IP_SEND_RATE="3/min", TRUSTED_PROXY_COUNT="1")
    try:
        statuses = [post(f"http://127.0.0.1:{port}", "/login/", {"email": f"nobody{i}@example.org"},
                         headers={"X-Forwarded-For": f"10.9.{i}.1"}).status_code for i in range(4)]
    finally:
        server.stop()
    assert statuses == [202, 202, 202, 429], statuses


def test_sqlite_supersedes_the_older_code_and_keeps_the_cooldown_in_process(quick_run):
    # PostgreSQL issues a code in one statement that SQLite cannot run; the quick run takes the ORM's way.
    url = quick_run[0]
    script = ("from otp.addresses import email_normalize; from otp.models import OneTimeCode; "
              "from otp.services import code_issue; address = email_normalize('twice@example.com'); "
              "[code_issue(address=address, purpose='register') for _ in range(2)]; "
              "print('statuses', sorted(OneTimeCode.objects.filter(address=address.value)"
              ".values_list('status', flat=True)))")
    assert "statuses ['active', 'superseded']" in quick_shell(quick_run, "quick-shell", script)

    # The send limits live in the server's own process when there is no Redis.
    first = post(url, "/login/", {"email": "again@example.com"})
    again = post(url, "/login/", {"email": "again@example.com"})
    assert (first.status_code, again.status_code) == (202, 429)
    assert 1 <= int(again.headers["Retry-After"]) <= 60
    # The address-status command runs in a process of its own: it says it cannot see them, not "0 sends".
    _, _, env, tmp_path = quick_run
    status = ManagedProcess("quick-status", ["bin/quick-run", "manage", "address_status", "again@example.com"], env=env,
                            log_dir=tmp_path, cwd=REPO_DIR).start()
    assert status.process.wait(timeout=60) == 0, status.log()
    assert "Throttles: not visible here" in status.log() and "cooldown 0s" not in status.log(), status.log()


def test_sqlite_gives_the_mailed_code_back_when_a_login_sends_nothing(quick_run):
    # code_withdraw through the ORM on SQLite (no SELECT ... FOR UPDATE): the register code is mailed (on the console,
    # by the in-process job), the login for the address, which has no account yet, is not sent.
    script = ("from otp.addresses import email_normalize; from otp.models import OneTimeCode; "
              "from otp.services import code_issue; address = email_normalize('withdrawn@example.com'); "
              "code_issue(address=address, purpose='register'); code_issue(address=address, purpose='login')\n"
              # The jobs run on the process's job thread: wait for the login's, with a deadline.
              "import time\n"
              "for _ in range(200):\n"
              "    if OneTimeCode.objects.filter(address=address.value, purpose='login', status='unsent').exists(): break\n"
              "    time.sleep(0.1)\n"
              "print('statuses', sorted(OneTimeCode.objects.filter(address=address.value)"
              ".values_list('purpose', 'status')))")
    assert ("statuses [('login', 'unsent'), ('register', 'active')]"
            in quick_shell(quick_run, "quick-withdraw", script))


def test_sqlite_claim_reads_the_expiry_back_as_an_aware_datetime(quick_run):
    # The claim reads its row through a plain cursor; SQLite gives datetimes back as text, and the retry decision
    # compares the expiry with timezone.now().
    # A queued delivery of its own: code_issue would run the job in-process at once, and it would be sent.
    script = ("from datetime import timedelta; from django.utils import timezone; from otp.models import Delivery; "
              "from otp.queries import delivery_claim; "
              "delivery = Delivery.objects.create(address='claim@example.com', channel='email', purpose='register', "
              "expires_at=timezone.now() + timedelta(minutes=5)); "
              "claimed = delivery_claim(delivery_id=delivery.id, now=timezone.now(), lease_until=timezone.now() + timedelta(seconds=15)); "
              "print('expiry', type(claimed.expires_at).__name__, claimed.expires_at.utcoffset(), "
              "claimed.expires_at == delivery.expires_at, claimed.status)")
    assert "expiry datetime 0:00:00 True sending" in quick_shell(quick_run, "quick-claim", script)


def test_make_run_does_what_the_readme_says_whatever_dotenv_holds(tmp_path):
    # A .env written for the native stack: every value the quick run must not use points at nothing that answers,
    # or would stop start-up if read (DEBUG off without a SECRET_KEY, Twilio without credentials). Of it, the
    # quick run reads API_PORT only. Saved with a byte order mark, as Windows editors may: API_PORT on its first
    # line was read as another name, and the quick run served on 8000 (a careless-operator pass).
    port = free_port()
    dotenv = tmp_path / ".env"
    dotenv.write_text("\ufeff" + "\n".join([
        f"API_PORT={port}", "DEBUG=false", "SECRET_KEY=", "DATABASE_URL=postgres://postgres@127.0.0.1:1/nowhere",
        "REDIS_URL=redis://127.0.0.1:1/0", "CELERY_BROKER_URL=redis://127.0.0.1:1/1", "EMAIL_BACKEND=smtp",
        "EMAIL_HOST=127.0.0.1", "EMAIL_PORT=1", "SMS_BACKEND=twilio", ""]))
    server = make_run(tmp_path, ENV_FILE=str(dotenv))
    try:
        url = f"http://127.0.0.1:{port}"
        log = server.log()
        # The banner points at the front end and the API docs, on the port .env gave.
        assert f"{url}/home/" in log and f"{url}/api/docs/" in log, log
        root = requests.get(f"{url}/", allow_redirects=False, timeout=10)
        assert root.status_code == 302 and root.headers["Location"] == "/home/"

        response = post(url, "/register/", {"email": "dotenv@example.com"}, headers={"X-Request-ID": "quick-env-1"})
        assert response.status_code == 202, response.text
        code = wait_for(lambda: "To: dotenv@example.com" in server.log()
                        and code_from_console(server.log(), "dotenv@example.com"), message="the email on the console")
        assert post(url, "/verify-otp/", {"email": "dotenv@example.com", "code": code}).status_code == 200
        # The job ran in-process, right after the request, and its line carries the request's id.
        wait_for(lambda: "[quick-env-1] delivery 1 sent by email" in server.log(), message="the delivery line")
        assert "No hostname was supplied" not in server.log()  # kombu's warning: there is no broker to name
    finally:
        server.stop()


def test_make_run_on_a_port_in_use_says_where_the_port_came_from(tmp_path):
    # With a .env written for the native stack, `make run` took API_PORT from it, and the refusal said only "API_PORT
    # 8000 is in use": a newcomer who had set no port looked for what else used it (a newcomer pass).
    import socket
    import subprocess

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"API_PORT={port}\n")
    environment = {name: value for name, value in os.environ.items() if name != "API_PORT"}
    try:
        for extra, origin in (({"ENV_FILE": str(dotenv)}, f"from {dotenv}"),
                              ({"ENV_FILE": str(dotenv), "API_PORT": str(port)}, "from the environment")):
            result = subprocess.run([str(REPO_DIR / "bin" / "quick-run")], env={**environment, **extra},
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 1
            assert f"API_PORT {port} ({origin}) is in use: choose another" in result.stderr, result.stderr
    finally:
        taken.close()


def test_make_run_serves_on_a_port_whose_last_connections_are_in_time_wait(tmp_path):
    # For a minute after a Ctrl-C the port's closed connections are in TIME-WAIT: the quick run's own check, a bind
    # without SO_REUSEADDR, called the port in use, where runserver (which sets it) would have served (an attack
    # pass).
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server's side closes first: its end of the connection waits in TIME-WAIT
    listener.close()
    client.close()
    with pytest.raises(OSError):
        socket.socket().bind(("127.0.0.1", port))  # what the check did
    server = make_run(tmp_path, ENV_FILE="", API_PORT=str(port))
    try:
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_make_run_with_an_env_file_that_names_no_file_stops_with_one_line():
    import subprocess

    result = subprocess.run([str(REPO_DIR / "bin" / "quick-run")], env={**os.environ, "ENV_FILE": "no-such.env"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Invalid setting ENV_FILE='no-such.env': expected a file; {REPO_DIR / 'no-such.env'} is none (a relative "
        f"path is read from {REPO_DIR})."], result.stderr


@pytest.mark.parametrize("content, line", [
    ("API_PORT=8012\nAPI_PORT=8013\n", "Invalid setting API_PORT: set twice in {dotenv}, on lines 1 and 2; keep one."),
    ("API_PORT=8012 # my port\n", "Invalid line 1 of {dotenv} (API_PORT): a comment or text after the value; put the "
                                  "value in quotes if the # belongs to it."),
    ("garbage line\nAPI_PORT=8012\n", "Invalid line 1 of {dotenv} (<no =>): expected NAME=value, with nothing before "
                                      "the name and no space around the =."),
], ids=["a name set twice", "a comment after the value", "a line that is no setting"])
def test_make_run_reads_env_files_api_port_as_the_settings_do(tmp_path, content, line):
    # `make run` read API_PORT from .env with django-environ's own loader: of a name set twice the last won in
    # silence, a comment after the value was called "expected an integer", and a line that is no setting was
    # passed over, where the stack's settings stop on each with one line (a newcomer pass).
    import subprocess

    dotenv = tmp_path / ".env"
    dotenv.write_text(content)
    environment = {name: value for name, value in os.environ.items() if name != "API_PORT"}
    result = subprocess.run([str(REPO_DIR / "bin" / "quick-run")], env={**environment, "ENV_FILE": str(dotenv)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [line.format(dotenv=dotenv)], result.stderr
