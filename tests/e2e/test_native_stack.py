"""A user's round trips through nginx on the native stack, reading codes from the SMTP server and the SMS stand-in."""
import fcntl
import json
import os
import re
import signal
import socket
import subprocess

import pytest
import requests

from tests.support.http import post, post_from
from tests.support.processes import REPO_DIR
from tests.support.smtp import code_from_email
from tests.support.twilio_standin import code_from_sms
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_email_round_trip_through_nginx(stack, inbox):
    assert post(stack, "/register/", {"email": "E2E-Alice@Example.com"}).status_code == 202
    code = code_from_email(inbox.wait_for_message("e2e-alice@example.com"))

    verified = post(stack, "/verify-otp/", {"email": "e2e-alice@example.com", "code": code})
    assert verified.status_code == 200, verified.text
    assert verified.headers["Cache-Control"] == "no-store"  # tokens: never kept by a browser or a shared cache
    tokens = verified.json()
    profile = requests.get(f"{stack.url}/profile/", headers={"Authorization": f"Bearer {tokens['access']}"}, timeout=10)
    assert profile.status_code == 200 and profile.json()["email"] == "e2e-alice@example.com"

    rotated = post(stack, "/token/refresh/", {"refresh": tokens["refresh"]})
    assert rotated.status_code == 200 and rotated.headers["Cache-Control"] == "no-store"
    assert post(stack, "/token/refresh/", {"refresh": tokens["refresh"]}).status_code == 401

    new = rotated.json()
    logout = post(stack, "/logout/", {"refresh": new["refresh"]}, headers={"Authorization": f"Bearer {new['access']}"})
    assert logout.status_code == 205 and logout.content == b""
    assert post(stack, "/token/refresh/", {"refresh": new["refresh"]}).status_code == 401

    # nginx's access line carries the request id it handed to the API (and the API returned).
    logouts = [line for line in stack.log("nginx-access").splitlines() if '"POST /logout/ ' in line]
    assert logouts and re.search(r"rid=[0-9a-f]{32}", logouts[-1])

    # No process wrote the code or a token to its log.
    for name in ("api", "worker-email", "worker-sms", "beat", "nginx-access", "nginx-error"):
        log = stack.log(name)
        for secret in (code, tokens["access"], tokens["refresh"], new["access"], new["refresh"]):
            assert secret not in log, f"{name} logged a secret"


def test_the_request_id_follows_the_code_into_the_worker(stack, inbox):
    response = post(stack, "/register/", {"email": "traced@example.com"})
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # made by nginx, passed through the API
    inbox.wait_for_message("traced@example.com")

    def sent_line():
        entries = [json.loads(line) for line in stack.log("worker-email").splitlines() if line.startswith("{")]
        return [e for e in entries if e["request_id"] == request_id and "sent by email" in e["message"]]

    assert wait_for(sent_line, message="the worker's log line for this request")


def test_the_api_workers_and_beat_log_one_json_object_a_line(stack):
    # gunicorn wrote its own lines (its start, its workers, the requests it refuses) in plain text, and Celery's
    # beat and workers a banner, between the JSON lines a log pipeline parses (found reading the stack's logs).
    refused = socket.create_connection(("127.0.0.1", stack.api_port), timeout=10)
    refused.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n")
    assert refused.recv(100).startswith(b"HTTP/1.1 400")  # gunicorn's own answer, which it logs
    refused.close()

    def logged_refusal():
        return [line for line in stack.log("api").splitlines() if "Invalid request" in line]

    assert wait_for(logged_refusal, message="gunicorn's line for the request it refused")
    for name in ("api", "beat", "worker-email", "worker-sms"):
        # The workers' Python warnings (Celery's SecurityWarning when run as root, as CI is) were plain text.
        lines = [line for line in stack.log(name).splitlines() if line.strip()]
        assert any('"gunicorn.error"' in line or '"celery.' in line for line in lines), name
        for line in lines:
            assert isinstance(json.loads(line), dict), (name, line)


def test_a_non_ascii_mailbox_gets_its_code_over_smtputf8_and_signs_in(stack, inbox):
    # With EMAIL_ALLOW_SMTPUTF8 on, the worker mailed =?utf-8?b?asO2cmc=?=@xn--strae-oqa.de (RFC 2047 in an address).
    assert post(stack, "/register/", {"email": "Jörg@Straße.de"}).status_code == 202
    message = inbox.wait_for_message("jörg@xn--strae-oqa.de")
    assert "TO:<jörg@xn--strae-oqa.de>" in inbox.rcpt_commands
    assert "SMTPUTF8" in message["X-Envelope-Mail-Options"].split()
    verified = post(stack, "/verify-otp/", {"email": "jörg@straße.de", "code": code_from_email(message)})
    assert verified.status_code == 200, verified.text
    profile = requests.get(f"{stack.url}/profile/", headers={"Authorization": f"Bearer {verified.json()['access']}"},
                           timeout=10)
    assert profile.json()["email"] == "jörg@xn--strae-oqa.de"


def test_sms_round_trip_through_nginx(stack, sms):
    assert post(stack, "/register/", {"mobile": "+1 415 555 2699"}).status_code == 202
    code = code_from_sms(sms.wait_for_message("+14155552699"))
    verified = post(stack, "/verify-otp/", {"mobile": "4155552699", "code": code})
    assert verified.status_code == 200
    profile = requests.get(f"{stack.url}/profile/", headers={"Authorization": f"Bearer {verified.json()['access']}"},
                           timeout=10)
    assert profile.json()["mobile"] == "+14155552699"


def test_per_ip_throttle_keys_on_the_client_nginx_saw_not_a_forged_header(stack):
    # OTP_IP_SEND_RATE is 5/min in this stack.
    statuses = [post_from(stack, "127.0.0.2", "/register/", {"email": f"ip{i}@example.com"},
                          {"X-Forwarded-For": f"198.51.100.{i}"})[0] for i in range(6)]
    assert statuses == [202] * 5 + [429]
    status, headers, _ = post_from(stack, "127.0.0.2", "/register/", {"email": "ip9@example.com"})
    assert status == 429 and int(headers["Retry-After"]) > 0
    # Another client is not throttled: the key is the forwarded client address, not nginx's own.
    assert post_from(stack, "127.0.0.3", "/register/", {"email": "other@example.com"})[0] == 202


def test_edge_limit_answers_json_429_with_retry_after(stack):
    # EDGE_SEND_RATE 2r/s with a burst of 5: a quick run of 15 requests meets nginx's limit.
    results = [post_from(stack, "127.0.0.4", "/login/", {"email": "not-an-email"}) for _ in range(15)]
    # nginx's own answers carry no `Allow` header; the API's (its per-IP limit may also answer) do.
    limited = [r for r in results if r[0] == 429 and "Allow" not in r[1]]
    assert limited, [(r[0], r[1].get("Allow")) for r in results]
    status, headers, body = limited[0]
    assert headers["Retry-After"] == "1" and json.loads(body)["code"] == "throttled"
    assert headers["Content-Type"] == "application/json"


def test_nginx_answers_its_own_errors_in_json(stack):
    too_large = requests.post(f"{stack.url}/register/", data=b"x" * (200 * 1024),
                              headers={"Content-Type": "application/json"}, timeout=10)
    assert too_large.status_code == 413 and too_large.json()["code"] == "request_too_large"
    metrics = requests.get(f"{stack.url}/metrics", timeout=10)
    assert metrics.status_code == 404 and metrics.json()["code"] == "not_found"
    missing = requests.get(f"{stack.url}/nowhere", timeout=10)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    ready = requests.get(f"{stack.url}/readyz", timeout=10)
    assert ready.status_code == 200
    for header in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy"):
        assert ready.headers[header] and "," not in ready.headers[header]  # one copy, not the API's and nginx's


def test_a_second_checkout_runs_beside_and_make_down_stops_exactly_its_own(stack, tmp_path):
    from tests.e2e.conftest import Stack, stack_env

    http_port, api_port = free_port(), free_port()
    other_dir = stack.stack_dir.parent / f"test-stack-{http_port}"
    other = Stack(f"http://127.0.0.1:{http_port}", http_port, api_port, other_dir,
                  stack_env(stack.env, http_port=http_port, api_port=api_port, stack_dir=other_dir))
    started = other.make("up")
    assert started.returncode == 0, started.stderr
    pids = {path.stem: int(path.read_text()) for path in (other_dir / "run").glob("*.pid")}
    assert set(pids) == {"api", "worker-email", "worker-sms", "beat", "nginx"}
    assert requests.get(f"{other.url}/readyz", timeout=10).status_code == 200

    again = other.make("up")
    assert again.returncode != 0 and "already running" in again.stderr
    # A process that died is named, and how to restart (natively nothing restarts it; a careless-operator pass
    # met only "already running").
    os.killpg(pids["worker-sms"], signal.SIGKILL)
    wait_for(lambda: not _alive(pids["worker-sms"]), message="the killed worker to go")
    again = other.make("up")
    assert again.returncode != 0 and "without worker-sms" in again.stderr and "make down && make up" in again.stderr

    stopped = other.make("down")
    assert stopped.returncode == 0

    def all_gone():
        for pid in pids.values():
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True

    wait_for(all_gone, timeout=30, message="the second stack's processes to exit")
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200  # the first is untouched


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_two_make_ups_at_once_start_one_stack(stack):
    # A careless-operator pass: `(make up &); make up` both said "Stack up", and `make down` then stopped only one.
    from tests.e2e.conftest import Stack, stack_env

    http_port, api_port = free_port(), free_port()
    twice_dir = stack.stack_dir.parent / f"test-stack-{http_port}"
    twice = Stack(f"http://127.0.0.1:{http_port}", http_port, api_port, twice_dir,
                  stack_env(stack.env, http_port=http_port, api_port=api_port, stack_dir=twice_dir))
    first = subprocess.Popen(["make", "up"], cwd=REPO_DIR, env=twice.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        def lock_held() -> bool:
            lock_file = twice_dir / ".lock"
            if not lock_file.exists():
                return False
            with open(lock_file) as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(handle, fcntl.LOCK_UN)
                return False

        wait_for(lock_held, message="the first make up to take the stack's lock")
        second = twice.make("up")
        assert second.returncode != 0 and "Another 'make up' or 'make down' is running" in second.stderr
        assert first.wait(timeout=240) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
        twice.make("down")


def test_make_down_leaves_alone_a_process_that_took_over_a_stale_pid(stack, tmp_path):
    # A pid file from a stack that died (a reboot, a kill) may name someone else's process since; run as root,
    # `make down` killed its whole process group (a careless-operator pass).
    from tests.e2e.conftest import Stack, stack_env

    stale_dir = tmp_path / "stale-stack"
    (stale_dir / "run").mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        # Our api had this pid once, with another start time (clock ticks since boot) than the process that has it now.
        (stale_dir / "run" / "api.pid").write_text(f"{stranger.pid}\n")
        (stale_dir / "run" / "api.start").write_text("1\n")
        stale = Stack("", free_port(), free_port(), stale_dir,
                      stack_env(stack.env, http_port=free_port(), api_port=free_port(), stack_dir=stale_dir))
        assert stale.make("down").returncode == 0
        assert stranger.poll() is None, "make down killed a process that was not its own"
    finally:
        stranger.kill()


def test_make_up_asks_nginx_only_once_the_api_answers(stack):
    # make up polled /readyz through nginx before gunicorn listened: each poll was a 502 in nginx's access log and a
    # "connect() failed" in its error log, the first errors a newcomer met there (found by a new-user pass).
    polls = [line for line in stack.log("nginx-access").splitlines()
             if '"GET /readyz ' in line and 'ua="curl/' in line]
    assert polls and not [line for line in polls if '" 502 ' in line], polls


def test_make_up_refuses_a_port_in_use(stack):
    from tests.e2e.conftest import Stack, stack_env

    http_port = free_port()
    busy_dir = stack.stack_dir.parent / f"test-stack-{http_port}"
    busy = Stack("", http_port, stack.api_port, busy_dir,
                 stack_env(stack.env, http_port=http_port, api_port=stack.api_port, stack_dir=busy_dir))
    result = busy.make("up")
    assert result.returncode != 0
    assert f"API_PORT {stack.api_port} (from the environment) is in use" in result.stderr, result.stderr
    assert not list((busy_dir / "run").glob("*.pid"))
    # The same port from an env file: the refusal names the file (it said only "in use", and a newcomer who had
    # set no port in the shell looked for what else used it).
    busy_dir.mkdir(parents=True, exist_ok=True)
    env_file = busy_dir / "stack.env"
    env_file.write_text(f"API_PORT={stack.api_port}\n")
    busy.env = {**{name: value for name, value in busy.env.items() if name != "API_PORT"}, "ENV_FILE": str(env_file)}
    result = busy.make("up")
    assert result.returncode != 0
    assert f"API_PORT {stack.api_port} (from {env_file}) is in use" in result.stderr, result.stderr
    assert not list((busy_dir / "run").glob("*.pid"))
    # Set empty in the environment, the setting is its default whatever the file says: said "from the environment".
    default_port = socket.socket()
    try:
        default_port.bind(("127.0.0.1", 8000))  # taken here, if nothing else holds it: make up must refuse it
    except OSError:
        pass
    try:
        result = busy.make("up", API_PORT="")
    finally:
        default_port.close()
    assert result.returncode != 0
    assert "API_PORT 8000 (the default) is in use" in result.stderr, result.stderr
    assert not list((busy_dir / "run").glob("*.pid"))


def test_make_up_fails_with_the_logs_when_the_stack_is_not_ready(stack):
    from tests.e2e.conftest import Stack, stack_env

    http_port, api_port = free_port(), free_port()
    broken_dir = stack.stack_dir.parent / f"test-stack-{http_port}"
    broken = Stack("", http_port, api_port, broken_dir,
                   stack_env(stack.env, http_port=http_port, api_port=api_port, stack_dir=broken_dir))
    # Every process starts, and none can be ready within no time at all. (A broker that does not answer is now
    # caught before anything starts, in one line: tests/stack/test_stack_start.py.)
    result = broken.make("up", STACK_READY_TIMEOUT="0")
    assert result.returncode != 0
    assert "did not become ready within 0s" in result.stderr and re.search(r"/readyz: \d{3}", result.stderr)
    assert "worker-email.log" in result.stderr
    assert not list((broken_dir / "run").glob("*.pid"))  # what it started, it stopped


def test_bad_setting_stops_make_up_with_one_line(stack):
    from tests.e2e.conftest import Stack, stack_env

    http_port = free_port()
    bad_dir = stack.stack_dir.parent / f"test-stack-{http_port}"
    bad = Stack("", http_port, free_port(), bad_dir,
                stack_env(stack.env, http_port=http_port, api_port=free_port(), stack_dir=bad_dir))
    result = bad.make("up", EDGE_SEND_RATE="fast")
    assert result.returncode != 0 and "Invalid setting EDGE_SEND_RATE" in result.stderr
