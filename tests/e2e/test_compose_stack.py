"""The same round trip as test_native_stack, through the compose stack, where a Docker engine runs.

CI here has no Docker engine (only the client), so this module is skipped there with that reason; the native
variant always runs.
"""
import os
import shutil
import subprocess

import pytest
import requests

from tests.support.env import TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER
from tests.support.http import post
from tests.support.processes import REPO_DIR
from tests.support.smtp import SmtpServer, code_from_email
from tests.support.twilio_standin import TwilioStandIn, code_from_sms
from tests.support.waiting import free_port


def docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    checks = (["docker", "info"], ["docker", "compose", "version"])
    return all(subprocess.run(check, capture_output=True, timeout=20).returncode == 0 for check in checks)


pytestmark = pytest.mark.skipif(not docker_engine_answers(),
                                reason="no Docker engine (or no compose plugin) on this machine")

HTTP_PORT = free_port()


@pytest.fixture(scope="module")
def host_services():
    smtp = SmtpServer(host="0.0.0.0").start()
    twilio = TwilioStandIn(host="0.0.0.0").start()
    os.environ.update({
        "SECRET_KEY": "compose-test-secret-key-not-used-anywhere-else", "REDIS_PASSWORD": "compose-test",
        "HTTP_PORT": str(HTTP_PORT), "TEST_SMTP_PORT": str(smtp.port), "TEST_TWILIO_PORT": str(twilio.port),
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": TWILIO_FROM_NUMBER,
    })
    yield smtp, twilio
    smtp.stop()
    twilio.stop()


@pytest.fixture(scope="module")
def docker_compose_file():
    return [str(REPO_DIR / "docker-compose.yml"), str(REPO_DIR / "tests" / "e2e" / "docker-compose.test.yml")]


@pytest.fixture(scope="module")
def docker_setup():
    return ["up --build --wait --scale worker-sms=2"]


@pytest.fixture(scope="module")
def compose_url(host_services, docker_services):
    url = f"http://127.0.0.1:{HTTP_PORT}"

    def ready():
        try:
            return requests.get(f"{url}/readyz", timeout=3).status_code == 200
        except requests.RequestException:
            return False

    docker_services.wait_until_responsive(check=ready, timeout=300, pause=1)
    return url


def test_round_trip_through_the_compose_stack(compose_url, host_services):
    smtp, twilio = host_services
    assert post(compose_url, "/register/", {"email": "compose@example.com"}).status_code == 202
    code = code_from_email(smtp.inbox.wait_for_message("compose@example.com", timeout=60))
    tokens = post(compose_url, "/verify-otp/", {"email": "compose@example.com", "code": code}).json()
    profile = requests.get(f"{compose_url}/profile/", headers={"Authorization": f"Bearer {tokens['access']}"},
                           timeout=10)
    assert profile.json()["email"] == "compose@example.com"

    assert post(compose_url, "/register/", {"mobile": "+14155552698"}).status_code == 202
    code = code_from_sms(twilio.wait_for_message("+14155552698", timeout=60))
    assert post(compose_url, "/verify-otp/", {"mobile": "+14155552698", "code": code}).status_code == 200
    assert requests.get(f"{compose_url}/metrics", timeout=10).status_code == 404
