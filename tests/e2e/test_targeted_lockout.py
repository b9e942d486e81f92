"""Abuse suite, targeted lockout (issue 16): a returning user with a device token signs in through nginx while
another client floods wrong guesses and /login/s for that address from several loopback addresses.

The native stack's per-address limits are the contract's defaults (OTP_RESEND_COOLDOWN_SECONDS 30,
OTP_SENDS_PER_HOUR 10, OTP_MAX_FAILURES_PER_HOUR 20, OTP_MAX_FAILURES_PER_DAY 27); its per-client-address
limits are tighter than the defaults (tests/e2e/conftest.py), which only makes each attacking address weaker.
"""
import json
import threading
import time
from collections import Counter

import pytest
import requests

from tests.support.http import post_from
from tests.support.smtp import code_from_email
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

VICTIM = "returning@example.com"
USER_IP = "127.0.0.20"
ATTACKER_IPS = [f"127.0.0.{n}" for n in range(21, 26)]
# Bounded in count and time; each thread paces itself (PACE_SECONDS between requests, about 40 a second in all:
# far past every per-address limit, and gentle enough for a shared test machine).
FLOOD_MAX_REQUESTS = 4000
FLOOD_MAX_SECONDS = 90
PACE_SECONDS = 0.05


class Flood:
    """Wrong /verify-otp/ guesses and /login/s for one address, round-robin over the attacker's addresses, from
    two threads until stopped (or FLOOD_MAX_REQUESTS / FLOOD_MAX_SECONDS). Records (path, status, code).
    Every third request is a /login/, the rest wrong guesses."""

    def __init__(self, stack, address: str) -> None:
        self.stack, self.address = stack, address
        self.results: list[tuple[str, int, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(2)]

    def _run(self, thread: int) -> None:
        deadline = time.monotonic() + FLOOD_MAX_SECONDS
        n = thread
        while not self.stop.is_set() and time.monotonic() < deadline and len(self.results) < FLOOD_MAX_REQUESTS:
            ip = ATTACKER_IPS[n % len(ATTACKER_IPS)]
            if n % 3 == 2:
                path, body = "/login/", {"email": self.address}
            else:
                path, body = "/verify-otp/", {"email": self.address, "code": f"{(n * 7919) % 10**6:06d}"}
            status, _, content = post_from(self.stack, ip, path, body)
            try:
                code = json.loads(content).get("code", "")
            except ValueError:
                code = ""
            with self.lock:
                self.results.append((path, status, code))
            n += 2
            self.stop.wait(PACE_SECONDS)

    def start(self) -> "Flood":
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> Counter:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        with self.lock:
            return Counter((path, status) for path, status, _ in self.results)

    def total(self) -> int:
        with self.lock:
            return len(self.results)

    def count(self, path: str, status: int) -> int:
        with self.lock:
            return sum(1 for p, s, _ in self.results if (p, s) == (path, status))


def user_post(stack, path: str, body: dict) -> tuple[int, dict]:
    status, _, content = post_from(stack, USER_IP, path, body)
    return status, json.loads(content) if content else {}


def test_a_returning_user_with_a_device_token_signs_in_during_a_lockout_flood(stack, inbox, capsys):
    # Day one: the user signs up from this device and keeps the device token the verify returns.
    assert user_post(stack, "/register/", {"email": VICTIM})[0] == 202
    code = code_from_email(inbox.wait_for_message(VICTIM))
    status, signed_up = user_post(stack, "/verify-otp/", {"email": VICTIM, "code": code})
    assert status == 200, signed_up
    device_token = signed_up["device_token"]

    flood = Flood(stack, VICTIM).start()
    flood_started = time.monotonic()
    try:
        # The flood spends the address's failure budget: past 20 wrong guesses compared, every guess is refused.
        wait_for(lambda: flood.total() >= 200 and flood.count("/verify-otp/", 429) >= 10, timeout=60,
                 message="the flood to be under way and throttled")
        assert flood.count("/verify-otp/", 400) <= 20  # OTP_MAX_FAILURES_PER_HOUR

        # Without the device token, the user is locked out like anyone else.
        assert user_post(stack, "/login/", {"email": VICTIM})[0] == 429
        status, body = user_post(stack, "/verify-otp/", {"email": VICTIM, "code": "123456"})
        assert status == 429 and body["code"] == "throttled"

        # With it: a code is sent, read from the delivered email, and it signs in, while the flood goes on.
        started = time.monotonic()
        before = len(inbox.to(VICTIM))
        mine = {"email": VICTIM, "device_token": device_token}
        assert user_post(stack, "/login/", mine)[0] == 202
        wait_for(lambda: len(inbox.to(VICTIM)) > before, timeout=30, message="the device's code")
        # Newest first: a code the flood's /login/ had sent would belong to the other class and be refused.
        signed_in = None
        for message in reversed(inbox.to(VICTIM)[before:]):
            status, body = user_post(stack, "/verify-otp/", {**mine, "code": code_from_email(message)})
            if status == 200:
                signed_in = body
                break
        assert signed_in is not None, "the device's code did not sign in"
        seconds = time.monotonic() - started
        profile = requests.get(f"{stack.url}/profile/", headers={"Authorization": f"Bearer {signed_in['access']}"},
                               timeout=10)
        assert profile.status_code == 200 and profile.json()["email"] == VICTIM
        assert signed_in["device_token"] != device_token

        # The flood is still locked out after the user signed in: a device's success resets only its own class.
        before_429s = flood.count("/verify-otp/", 429)
        wait_for(lambda: flood.count("/verify-otp/", 429) > before_429s + 50, timeout=30,
                 message="more refused guesses")
    finally:
        outcome = flood.finish()
    flood_seconds = time.monotonic() - flood_started

    # No guess of the flood got in, at most OTP_MAX_FAILURES_PER_HOUR were compared, and its /login/s sent at most
    # one code per OTP_RESEND_COOLDOWN_SECONDS (the rest refused by the cooldown, the per-client or nginx's limit).
    compared = outcome[("/verify-otp/", 400)]
    assert compared <= 20
    assert {status for path, status in outcome if path == "/verify-otp/"} <= {400, 429}
    assert {status for path, status in outcome if path == "/login/"} <= {202, 429}
    assert outcome[("/login/", 202)] <= 1 + flood_seconds // 30
    with capsys.disabled():
        print(f"\ntargeted lockout: flood of {sum(outcome.values())} requests in {flood_seconds:.0f} s from "
              f"{len(ATTACKER_IPS)} addresses "
              f"({dict(sorted((f'{p} {s}', n) for (p, s), n in outcome.items()))}); {compared} wrong guesses "
              f"compared; the device signed in {seconds:.1f} s after asking for its code")
