"""The compose stack (docker-compose.yml as shipped, plus tests/e2e/docker-compose.test.yml pointing the app at this
process's SMTP server and Twilio stand-in) on a Docker engine, driven over HTTP through nginx's published port only.

`make test-compose` runs this module: tests/e2e/compose_engine.py uses the Docker engine that answers, or on a
disposable CI host installs and starts one of its own. There, no registry can be reached, and the engine's
python, postgres, redis and nginx images are local stand-ins built from Debian packages (tests/e2e/images/), NOT
the official images: they reproduce only what the compose file relies on. Where a real Docker is installed, the
same tests run on the official images. Under `make test` with no engine this module is skipped; under
`make test-compose` (COMPOSE_E2E_REQUIRED=1) a missing engine fails it instead.

The tests share one stack and run in this file's order; the last one takes it down.
"""
import os
import random
import re
import shutil
import socket
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.e2e.test_nginx_errors import SECURITY_HEADERS
from tests.support.env import TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER
from tests.support.http import post
from tests.support.processes import LOG_DIR, REPO_DIR
from tests.support.smtp import SmtpServer, code_from_email
from tests.support.twilio_standin import TwilioStandIn, code_from_sms
from tests.support.waiting import wait_for

REQUIRED = os.environ.get("COMPOSE_E2E_REQUIRED") == "1"
PROJECT = "otp-e2e"
# The input: passwords with the characters that end a URL's userinfo or path.
# A client address a load balancer in front of nginx would name in X-Forwarded-For (TEST-NET-2, RFC 5737).
FORWARDED_CLIENT = "198.51.100.77"
POSTGRES_PASSWORD = "pg/pass@word#1"
REDIS_PASSWORD = "redis/pass@word#1"


def docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    checks = (["docker", "info"], ["docker", "compose", "version"])
    return all(subprocess.run(check, capture_output=True, timeout=20).returncode == 0 for check in checks)


pytestmark = [
    pytest.mark.skipif(not REQUIRED and not docker_engine_answers(),
                       reason="no Docker engine (or no compose plugin) here: `make test-compose` starts one"),
    # The first test's set-up builds the app image (pip inside `docker build`: minutes when cold).
    pytest.mark.timeout(900),
]


class Compose:
    """`docker compose` on the project's file and the test overrides, with the test's variables."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self.files = ["-f", str(REPO_DIR / "docker-compose.yml"),
                      "-f", str(REPO_DIR / "tests" / "e2e" / "docker-compose.test.yml")]

    def __call__(self, *args: str, timeout: float = 300, check: bool = True, **env) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker", "compose", "-p", PROJECT, *self.files, *args], cwd=REPO_DIR,
                                env={**self.env, **env}, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"docker compose {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def docker(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stderr}"
        return result.stdout.strip()

    def container_ids(self, service: str) -> list[str]:
        return self("ps", "-q", service).stdout.split()

    def logs(self, *services: str) -> str:
        return self("logs", "--no-color", *services).stdout

    def redis_cli(self, *args: str) -> str:
        # REDISCLI_AUTH in the redis service's environment carries the password.
        return self("exec", "-T", "redis", "redis-cli", *args).stdout.strip()


def on_every_address(server_class):
    """`server_class(host="0.0.0.0")`, started: the containers reach it through the Docker host's gateway. A port
    free on 127.0.0.1 (tests.support.waiting.free_port) may be taken on another address: then another one."""
    for _ in range(10):
        try:
            return server_class(host="0.0.0.0").start()
        except OSError:
            continue
    raise AssertionError(f"no free port on every address for {server_class.__name__}")


def published_port() -> int:
    """A port for nginx to publish: free on every address, and below the kernel's ephemeral range. The engine
    binds it on 0.0.0.0 a minute or more after it is chosen (images built, the API healthy), and any socket on that
    port meanwhile, on any address, makes `up` fail ("address already in use"): within the ephemeral range, the
    outgoing connections of every process on the host (tests sending from 127.0.0.x included) take such ports."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(20000, lowest_ephemeral), 50):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port on every address below the ephemeral range")

@pytest.fixture(scope="module")
def host_services():
    smtp = on_every_address(SmtpServer)
    twilio = on_every_address(TwilioStandIn)
    yield smtp, twilio
    smtp.stop()
    twilio.stop()


@pytest.fixture(scope="module")
def compose(host_services):
    smtp, twilio = host_services
    http_port = published_port()
    env = {
        **os.environ,
        "SECRET_KEY": "compose-test-secret-key-not-used-anywhere-else", "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
        "REDIS_PASSWORD": REDIS_PASSWORD, "EMAIL_BACKEND": "smtp", "SMS_BACKEND": "twilio",
        "HTTP_PORT": str(http_port), "EDGE_SEND_RATE": "100r/s", "EDGE_SEND_BURST": "100",
        "TEST_SMTP_PORT": str(smtp.port), "TEST_TWILIO_PORT": str(twilio.port),
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": TWILIO_FROM_NUMBER,
    }
    for name in ("WEB_CONCURRENCY", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME"):
        env.pop(name, None)
    running = Compose(env)
    running.url = f"http://127.0.0.1:{http_port}"
    running("down", "-v", "--remove-orphans", check=False)  # a run killed half-way leaves its stack
    running("up", "-d", "--build", timeout=900)
    wait_for(lambda: ready(running.url), timeout=120, interval=1, message="/readyz through nginx")
    yield running
    save_logs(running)
    running("down", "-v", "--remove-orphans", check=False)


def save_logs(compose) -> None:
    """The stack's logs into var/test-logs/compose-stack.log, unless the stack is gone already (the last test
    takes it down, after saving them)."""
    logs = compose("logs", "--no-color", check=False).stdout
    if logs.strip():
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        (LOG_DIR / "compose-stack.log").write_text(logs)


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def sign_in_by_sms(compose, twilio, number: str) -> str:
    assert post(compose.url, "/register/", {"mobile": number}).status_code == 202
    code = code_from_sms(twilio.wait_for_message(number, timeout=60))
    response = post(compose.url, "/verify-otp/", {"mobile": number, "code": code})
    assert response.status_code == 200, response.text
    return code


def test_round_trip_by_email_through_nginx(compose, host_services):
    smtp, _ = host_services
    assert post(compose.url, "/register/", {"email": "compose@example.com"}).status_code == 202
    code = code_from_email(smtp.inbox.wait_for_message("compose@example.com", timeout=60))
    tokens = post(compose.url, "/verify-otp/", {"email": "compose@example.com", "code": code}).json()
    profile = requests.get(f"{compose.url}/profile/", headers={"Authorization": f"Bearer {tokens['access']}"},
                           timeout=10)
    assert profile.status_code == 200 and profile.json()["email"] == "compose@example.com"
    assert requests.get(f"{compose.url}/metrics", timeout=10).status_code == 404  # nginx does not expose it
    # The README's promise: no line of the stack's logs holds a code (no console backend unless chosen).
    assert not re.search(rf"\b{code}\b", compose.logs()), "a code is in the compose stack's logs"


def test_round_trip_by_mobile_through_nginx(compose, host_services):
    _, twilio = host_services
    code = sign_in_by_sms(compose, twilio, "+14155552698")
    assert not re.search(rf"\b{code}\b", compose.logs()), "a code is in the compose stack's logs"


def test_admin_is_a_json_404_through_compose_nginx_by_default(compose):
    # ADMIN_PUBLIC is unset, so compose passes `false`: the API serves the admin, nginx does not let it through.
    for path in ("/admin/", "/admin/login/", "/admin"):
        response = requests.get(f"{compose.url}{path}", timeout=10, allow_redirects=False)
        assert response.status_code == 404, (path, response.text[:300])
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"detail": "Not found.", "code": "not_found"}
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (path, name, response.headers)


def test_compose_nginx_sets_the_security_headers_on_the_apis_answers(compose):
    response = requests.get(f"{compose.url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.headers["Referrer-Policy"] == "same-origin"  # one copy: nginx's, not the API's as well
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


def nginx_logged_client(compose, headers: dict | None = None) -> str:
    """The client address ($remote_addr) compose's nginx logs for a request sent now with `headers`."""
    probe = uuid.uuid4().hex
    assert requests.get(f"{compose.url}/healthz?probe={probe}", headers=headers, timeout=10).status_code == 200

    def logged():
        # otp_access: '$remote_addr [$time_iso8601] "$request" ...', after compose's "nginx-1  | " prefix.
        for line in compose.logs("nginx").splitlines():
            match = re.search(rf"\|\s*(\S+) \[[^]]+\] \"GET /healthz\?probe={probe} ", line)
            if match:
                return match[1]
        return None

    return wait_for(logged, timeout=20, interval=0.5, message=f"nginx's access log line of probe {probe}")


@contextmanager
def nginx_recreated_with(compose, **env):
    """Compose's nginx recreated with `env` for the compose file's variables, then as it was."""
    try:
        compose("up", "-d", "--no-deps", "nginx", **env)
        wait_for(lambda: ready(compose.url), timeout=60, interval=0.5, message="/readyz through the new nginx")
        yield
    finally:
        compose("up", "-d", "--no-deps", "nginx")
        wait_for(lambda: ready(compose.url), timeout=60, interval=0.5, message="/readyz through nginx again")


def test_trusted_proxy_ranges_make_compose_nginx_honour_x_forwarded_for(compose):
    # The address nginx sees for this test process (the engine's gateway or its port proxy), which plays the load
    # balancer: by default (no TRUSTED_PROXY_RANGES) what it claims in X-Forwarded-For is not believed.
    forwarded = {"X-Forwarded-For": FORWARDED_CLIENT}
    balancer = nginx_logged_client(compose)
    assert balancer != FORWARDED_CLIENT
    assert nginx_logged_client(compose, forwarded) == balancer
    # With the balancer's address in TRUSTED_PROXY_RANGES, nginx's image runs 15-trusted-proxies.sh before it
    # starts (real-ip.conf), and the client the balancer names is the one every limit keys on.
    with nginx_recreated_with(compose, TRUSTED_PROXY_RANGES=f"192.0.2.0/24,{balancer}"):
        assert nginx_logged_client(compose, forwarded) == FORWARDED_CLIENT
        assert nginx_logged_client(compose) == balancer  # no header: the balancer itself


def test_admin_public_lets_compose_nginx_pass_the_admin_through(compose):
    with nginx_recreated_with(compose, ADMIN_PUBLIC="true"):
        response = requests.get(f"{compose.url}/admin/login/", timeout=10)
        assert response.status_code == 200, response.text[:300]
        assert "csrfmiddlewaretoken" in response.text
        assert response.headers["Referrer-Policy"] == "same-origin"
    assert requests.get(f"{compose.url}/admin/login/", timeout=10).status_code == 404


def test_every_app_service_runs_the_one_image_built_once(compose):
    images = {service: {compose.docker("inspect", "-f", "{{.Image}}", cid) for cid in compose.container_ids(service)}
              for service in ("api", "worker-email", "worker-sms", "beat")}
    images["migrate"] = {compose.docker("inspect", "-f", "{{.Image}}", cid)
                         for cid in compose("ps", "-a", "-q", "migrate").stdout.split()}
    assert len(set().union(*images.values())) == 1, images
    # Passwords with / @ # reached PostgreSQL and Redis intact: the stack is ready (database, cache and broker).
    assert ready(compose.url)


def test_scaled_sms_workers_share_the_jobs(compose, host_services):
    _, twilio = host_services
    compose("up", "-d", "--scale", "worker-sms=3")
    replicas = compose.container_ids("worker-sms")
    assert len(replicas) == 3
    # Every replica consuming before the jobs arrive, or the first one would take them all.
    wait_for(lambda: compose.logs("worker-sms").count(" ready.") >= 3, timeout=90, interval=1,
             message="three SMS workers ready")
    numbers = [f"+1415555{2700 + n}" for n in range(12)]
    for number in numbers:
        assert post(compose.url, "/register/", {"mobile": number}).status_code == 202
    for number in numbers:
        twilio.wait_for_message(number, timeout=60)
        assert len(twilio.to(number)) == 1
    logs = compose.logs("worker-sms")
    sent_by = [line.split("|", 1)[0].strip() for line in logs.splitlines() if " sent by sms (provider id " in line]
    assert len(sent_by) >= len(numbers)
    assert len(set(sent_by)) >= 2, f"the jobs went to {set(sent_by)} only"
    compose("up", "-d", "--scale", "worker-sms=1")


def test_jobs_queued_across_a_redis_restart_are_all_delivered(compose, host_services):
    _, twilio = host_services
    assert compose.redis_cli("config", "get", "maxmemory-policy").split()[-1] == "noeviction"
    compose("stop", "worker-sms")
    numbers = [f"+1415555{2750 + n}" for n in range(4)]
    for number in numbers:
        assert post(compose.url, "/register/", {"mobile": number}).status_code == 202
    # The jobs wait in the broker's database (1), apart from the cache's (0), whose flush would delete them.
    wait_for(lambda: compose.redis_cli("-n", "1", "llen", "sms") == "4", timeout=20, message="4 jobs queued")
    assert compose.redis_cli("-n", "0", "exists", "sms") == "0"
    compose("restart", "redis")
    wait_for(lambda: compose.redis_cli("ping") == "PONG", timeout=60, interval=0.5, message="redis back")
    assert compose.redis_cli("-n", "1", "llen", "sms") == "4"
    compose("start", "worker-sms")
    for number in numbers:
        twilio.wait_for_message(number, timeout=90)
    wait_for(lambda: ready(compose.url), timeout=30, interval=0.5, message="/readyz after the restart")
    assert [len(twilio.to(number)) for number in numbers] == [1] * 4
    code = code_from_sms(twilio.to(numbers[0])[0])
    assert post(compose.url, "/verify-otp/", {"mobile": numbers[0], "code": code}).status_code == 200


def test_worker_container_killed_mid_send_is_redelivered_and_delivered_once(compose, host_services):
    smtp, _ = host_services
    address = "killed-worker@example.com"
    smtp.inbox.hold_next_rcpt_seconds = 30  # the SMTP server stalls mid-conversation, before it accepts anything
    assert post(compose.url, "/register/", {"email": address}).status_code == 202
    wait_for(lambda: address in smtp.inbox.rcpts_seen, timeout=60, message="the send to start")
    (worker,) = compose.container_ids("worker-email")
    compose.docker("kill", worker)
    compose("up", "-d", "worker-email")
    # Late ack: the unacknowledged job comes back after the visibility timeout (51 s here), once the dead send's
    # lease has run out; then it is sent, once.
    message = smtp.inbox.wait_for_message(address, timeout=150)
    assert smtp.inbox.rcpts_seen.count(address) == 2
    assert len(smtp.inbox.to(address)) == 1
    assert post(compose.url, "/verify-otp/", {"email": address, "code": code_from_email(message)}).status_code == 200


def test_nginx_follows_the_api_recreated_by_build_and_up(compose, host_services):
    # The input: nginx resolves `api` once at start; after a routine build + up -d the API had a new
    # address and nginx answered 502 indefinitely. `depends_on: {api: {restart: true}}` restarts nginx after it.
    _, twilio = host_services
    (api_before,) = compose.container_ids("api")
    stamp = uuid.uuid4().hex  # a new release: a new image
    compose("build", E2E_BUILD_STAMP=stamp, timeout=600)
    compose("up", "-d", E2E_BUILD_STAMP=stamp, timeout=300)
    (api_after,) = compose.container_ids("api")
    assert api_after != api_before, "up -d did not recreate the API: the test proves nothing"
    # Whether the new API got a new address is up to Docker's address allocation (it did in most runs here, not
    # in all): what must hold either way is that nginx started again after the new API did.
    (nginx,) = compose.container_ids("nginx")
    api_started = compose.docker("inspect", "-f", "{{.State.StartedAt}}", api_after)
    nginx_started = compose.docker("inspect", "-f", "{{.State.StartedAt}}", nginx)
    assert nginx_started > api_started, "nginx still runs with the address of the API it started with"
    wait_for(lambda: ready(compose.url), timeout=10, interval=0.2, message="/readyz through nginx within 10 s")
    sign_in_by_sms(compose, twilio, "+14155552790")


def test_down_leaves_nothing_running(compose):
    save_logs(compose)
    compose("down")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert compose.docker("ps", "-a", "-q", "--filter", label) == ""
    assert compose.docker("network", "ls", "-q", "--filter", label) == ""
    assert not ready(compose.url)
