"""Abuse suite, mail bombing through plus-tags (issue 16): `victim+1@`, `victim+2@`, ... asked for from several
client addresses through nginx reach one mailbox, so they share its send cooldown and hourly cap (contract: the
canonical mailbox). Default per-address settings (OTP_RESEND_COOLDOWN_SECONDS 30, OTP_SENDS_PER_HOUR 10).

Before: 40 /register/ for victim+N@example.com from one client put 40 codes in one mailbox in 12 s.
"""
import json
import time
from collections import Counter

import pytest

from otp.models import Delivery
from tests.support.http import post_from
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT_IPS = [f"127.0.0.{n}" for n in range(40, 50)]
TAGGED = [f"bombed+{n}@example.com" for n in range(40)]
COOLDOWN_SECONDS = 30


def test_plus_tag_bombing_from_ten_clients_reaches_the_mailbox_once_per_cooldown(stack, inbox, capsys):
    started = time.monotonic()
    answers = Counter()
    for n, address in enumerate(TAGGED):
        status, headers, content = post_from(stack, CLIENT_IPS[n % len(CLIENT_IPS)], "/register/", {"email": address})
        answers[(status, json.loads(content).get("code", "") if status != 202 else "")] += 1
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
    seconds = time.monotonic() - started
    assert seconds < COOLDOWN_SECONDS, "the run must fit in one cooldown for its bound to be one email"

    # One delivery was ever recorded (every email is one), and it arrived.
    assert Delivery.objects.filter(address__startswith="bombed+").count() == 1
    wait_for(lambda: any(inbox.to(address) for address in TAGGED), timeout=30, message="the one email")
    delivered = {address: len(inbox.to(address)) for address in TAGGED if inbox.to(address)}
    assert sum(delivered.values()) == 1, delivered
    assert answers[(202, "")] == 1 and answers[(429, "throttled")] == len(TAGGED) - 1, answers
    with capsys.disabled():
        print(f"\nplus-tag bombing: {len(TAGGED)} requests from {len(CLIENT_IPS)} addresses in {seconds:.1f} s: "
              f"{dict(answers)}; {sum(delivered.values())} email reached the mailbox")
