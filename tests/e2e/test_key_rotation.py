"""Rotating SECRET_KEY on the native stack the way docs/operations.md says ("Rotating secrets", one host): the new
key in `.env`, the old one in SECRET_KEY_FALLBACKS, `make down` and `make up`; later the fallback dropped.

Before the fallbacks were in force, this signed everyone out, voided the codes already sent (counting them as
wrong tries) and left jobs already queued undeliverable (issue 18, item 6). The stack reads its keys from a
`.env` file, as an operator's would, and runs on Redis databases of its own, so no other stack's worker can take
the job this test leaves queued across the restart.
"""
import os
import signal
import subprocess

import jwt
import pytest
import redis
import requests

from tests.support.env import delivery_env
from tests.support.isolation import redis_db_url
from tests.support.processes import REPO_DIR
from tests.support.redis_state import redis_flush
from tests.support.smtp import code_from_email
from tests.support.waiting import free_port, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

OLD_KEY = "rotation-test-old-secret-key-0123456789abcdef"
NEW_KEY = "rotation-test-new-secret-key-fedcba9876543210"
# Whatever the run's environment holds for these, the stack must take them from its .env file alone.
KEY_SETTINGS = ("SECRET_KEY", "SECRET_KEY_FALLBACKS", "JWT_SIGNING_KEY", "JWT_SIGNING_KEY_FALLBACKS", "OTP_HMAC_KEY",
                "OTP_HMAC_KEY_FALLBACKS")


class RotatingStack:
    """The native stack of this checkout on free ports, its keys in a `.env` file the test edits."""

    def __init__(self, base_env: dict, tmp_path) -> None:
        self.http_port, self.api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dir = tmp_path / "stack"
        self.dotenv = tmp_path / ".env"
        self.broker = redis.Redis.from_url(redis_db_url(11))
        self.env = {key: value for key, value in base_env.items() if key not in KEY_SETTINGS}
        self.env.update({
            "ENV_FILE": str(self.dotenv), "STACK_DIR": str(self.dir), "HTTP_PORT": str(self.http_port),
            "API_PORT": str(self.api_port), "REDIS_URL": redis_db_url(10), "CELERY_BROKER_URL": redis_db_url(11),
            # As the operations guide advises: a throttle key of its own, so the rotation keeps the throttles.
            "OTP_THROTTLE_KEY": "rotation-test-throttle-key-0123456789abcdef",
            # Long enough that the restarts of a loaded machine never outlive a code or an access token: an
            # expiry must not pass for a refusal by key, nor the other way round.
            "OTP_TTL_SECONDS": "900", "ACCESS_TOKEN_LIFETIME_SECONDS": "1800",
            "REFRESH_TOKEN_LIFETIME_SECONDS": "3600", "OTP_RESEND_COOLDOWN_SECONDS": "1",
            "OTP_IP_SEND_RATE": "1000/min", "OTP_IP_VERIFY_RATE": "1000/min",
            "WEB_CONCURRENCY": "1", "CELERY_WORKER_CONCURRENCY": "2",
        })

    def keys(self, **keys: str) -> None:
        """Write the `.env` the stack reads: the operator's edit."""
        self.dotenv.write_text("".join(f"{name}={value}\n" for name, value in keys.items()))

    def make(self, target: str) -> None:
        result = subprocess.run(["make", target], cwd=REPO_DIR, env=self.env, capture_output=True, text=True,
                                timeout=240)
        assert result.returncode == 0, f"make {target}:\n{result.stdout}\n{result.stderr}"

    def restart(self) -> None:
        """The documented restart after an edit of `.env`: `make down`, then `make up`, which returns once the
        new workers are ready (their logs are appended to across starts: the previous start's "ready." must
        not count)."""
        ready_before = {name: self.log(name).count(" ready.") for name in ("worker-email", "worker-sms")}
        self.make("down")
        self.make("up")
        for name, count in ready_before.items():
            assert self.log(name).count(" ready.") == count + 1, f"make up returned before {name} was ready"

    def log(self, name: str) -> str:
        path = self.dir / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def post(self, path: str, body: dict, *, retry_throttled: bool = False) -> requests.Response:
        def send():
            response = requests.post(f"{self.url}{path}", json=body, timeout=15)
            return response if not (retry_throttled and response.status_code == 429) else None

        # The per-address cooldown (1 s here) may still run from this address's previous code.
        return wait_for(send, timeout=10, interval=0.3, message=f"{path} past the cooldown") if retry_throttled \
            else send()

    def profile(self, access: str) -> requests.Response:
        return requests.get(f"{self.url}/profile/", headers={"Authorization": f"Bearer {access}"}, timeout=15)

    def stop_email_worker(self) -> None:
        """Stop the email worker alone, so the next email job waits in the broker."""
        pid = int((self.dir / "run" / "worker-email.pid").read_text())
        os.killpg(pid, signal.SIGTERM)

        def gone():
            try:
                os.killpg(pid, 0)
                return False
            except ProcessLookupError:
                return True

        wait_for(gone, timeout=30, message="the email worker to stop")


def sign_in(stack: RotatingStack, inbox, address: str) -> dict:
    assert stack.post("/register/", {"email": address}, retry_throttled=True).status_code == 202
    code = code_from_email(inbox.wait_for_message(address, timeout=60))
    verified = stack.post("/verify-otp/", {"email": address, "code": code})
    assert verified.status_code == 200, verified.text
    return verified.json()


def signed_with(token: str, key: str) -> bool:
    try:
        jwt.decode(token, key, algorithms=["HS256"])
        return True
    except jwt.InvalidSignatureError:
        return False


@pytest.fixture
def rotating_stack(django_db_setup, django_db_blocker, smtp_server, twilio_standin, tmp_path):
    with django_db_blocker.unblock():
        base_env = delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)
    stack = RotatingStack(base_env, tmp_path)
    for db in (10, 11):
        client = redis.Redis.from_url(redis_db_url(db))
        redis_flush(client)
        client.close()
    yield stack
    subprocess.run(["make", "down"], cwd=REPO_DIR, env=stack.env, capture_output=True, timeout=240)
    stack.broker.close()


def test_rotating_secret_key_as_documented_signs_nobody_out_and_voids_no_code(rotating_stack, inbox):
    from otp.models import OneTimeCode

    stack = rotating_stack
    stack.keys(SECRET_KEY=OLD_KEY)
    stack.make("up")

    # Before the rotation: two sign-ins, a code sent and not yet typed, and an email job left waiting in the broker.
    alice = sign_in(stack, inbox, "alice-rotation@example.com")
    bob = sign_in(stack, inbox, "bob-rotation@example.com")
    assert signed_with(alice["access"], OLD_KEY) and signed_with(bob["refresh"], OLD_KEY)
    assert stack.post("/login/", {"email": "alice-rotation@example.com"}, retry_throttled=True).status_code == 202
    pending_code = code_from_email(inbox.wait_for_message("alice-rotation@example.com", count=2, timeout=60))
    stack.stop_email_worker()
    assert stack.post("/register/", {"email": "carol-rotation@example.com"}).status_code == 202
    wait_for(lambda: stack.broker.llen("email") == 1, timeout=10, message="carol's job queued in the broker")
    assert not inbox.to("carol-rotation@example.com")

    # The rotation, as documented: the new key, the old one as the fallback, then down and up.
    stack.keys(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=OLD_KEY)
    stack.restart()

    # The old access token still reads the profile; the old refresh token still refreshes, into a new-key token.
    assert stack.profile(alice["access"]).status_code == 200
    refreshed = stack.post("/token/refresh/", {"refresh": alice["refresh"]})
    assert refreshed.status_code == 200, refreshed.text
    renewed = refreshed.json()
    assert signed_with(renewed["refresh"], NEW_KEY) and not signed_with(renewed["refresh"], OLD_KEY)

    # The code sent before the rotation verifies, at the first try: it was not counted as a wrong one.
    verified = stack.post("/verify-otp/", {"email": "alice-rotation@example.com", "code": pending_code})
    assert verified.status_code == 200, verified.text
    row = OneTimeCode.objects.filter(address="alice-rotation@example.com").latest("created_at")
    assert (row.status, row.attempts) == (OneTimeCode.Status.USED, 0)

    # The job sealed under the old key before the restart is delivered by the new workers, and its code works.
    queued_code = code_from_email(inbox.wait_for_message("carol-rotation@example.com", timeout=90))
    carol = stack.post("/verify-otp/", {"email": "carol-rotation@example.com", "code": queued_code})
    assert carol.status_code == 200, carol.text
    assert stack.broker.llen("email") == 0

    # Once the old tokens' lifetime is over, the documented last step: the fallback dropped, down and up.
    stack.keys(SECRET_KEY=NEW_KEY)
    stack.restart()
    assert stack.profile(alice["access"]).status_code == 401
    assert stack.profile(bob["access"]).status_code == 401
    refused = stack.post("/token/refresh/", {"refresh": bob["refresh"]})
    assert refused.status_code == 401 and refused.json()["code"] == "token_not_valid"
    # The refusals are the old key's, not the stack's: tokens signed with the new key still work.
    assert stack.profile(renewed["access"]).status_code == 200
    assert stack.post("/token/refresh/", {"refresh": renewed["refresh"]}).status_code == 200
