"""Send budgets against live processes: gunicorn and a real Celery worker on a private Redis, the test SMTP server
and the Twilio stand-in; and the abuse suite's SMS pumping run through nginx (`make up`) from ten client
addresses, with default settings."""
import http.client
import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from otp.models import Delivery
from otp.services.delivering import BUDGET_SPENT_ERROR
from tests.support.processes import REPO_DIR
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

FINAL = ("sent", "failed", "unknown")


@pytest.fixture
def live(base_env, stacks, private_redis):
    """Start an API and a worker with these settings on a private Redis (its own throttles, budgets and queues)."""

    def start(**settings):
        stack = stacks({**base_env, "REDIS_URL": private_redis.url, **settings}).start_api()
        stack.start_worker()
        return stack

    return start


def deliveries_final(addresses: list[str]) -> list[Delivery]:
    return wait_for(lambda: (rows if len(rows := list(Delivery.objects.filter(address__in=addresses,
                                                                              status__in=FINAL))) == len(addresses)
                             else None), timeout=30, message=f"{len(addresses)} deliveries final")


def gauge(stack, name: str, budget: str) -> float:
    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    return next(sample.value for family in text_string_to_metric_families(text) if family.name == name
                for sample in family.samples if sample.labels["budget"] == budget)


def test_the_sms_budget_counts_handoffs_in_the_worker_then_answers_429_while_email_goes_on(live, sms, inbox):
    # 5 SMS an hour in all, 4 for requests without a device token; 80 % raises the soft-threshold gauge.
    stack = live(OTP_SMS_PER_HOUR="5")
    unknown = [f"+1415555310{n}" for n in range(3)]
    for number in unknown:  # logins for numbers without an account: the worker sends nothing, so nothing is spent
        assert stack.post("/login/", {"mobile": number}).status_code == 202
    assert all(row.status == "failed" for row in deliveries_final(unknown))

    numbers = [f"+1{area}5553200" for area in (212, 312, 415)]
    for number in numbers:
        assert stack.post("/register/", {"mobile": number}).status_code == 202
    deliveries_final(numbers)
    assert gauge(stack, "otp_send_budget_soft_exceeded", "sms") == 0  # 3 of 5
    assert stack.post("/register/", {"mobile": "+16465553100"}).status_code == 202
    wait_for(lambda: len(sms.accepted) == 4, timeout=30, message="four SMS")
    assert gauge(stack, "otp_send_budget_used_ratio", "sms") == pytest.approx(0.8, abs=0.01)
    assert gauge(stack, "otp_send_budget_soft_exceeded", "sms") == 1

    refused = stack.post("/register/", {"mobile": "+17185553100"})
    assert refused.status_code == 429 and refused.json()["code"] == "sms_budget"
    assert 800 < int(refused.headers["Retry-After"]) <= 900  # one message back every 3600 / 4 s
    assert stack.post("/register/", {"email": "mail-still@example.com"}).status_code == 202
    inbox.wait_for_message("mail-still@example.com")
    assert sorted(message["to"] for message in sms.accepted) == sorted(numbers + ["+16465553100"])


def test_zero_turns_sms_off_through_the_api_and_the_worker(live, sms, inbox):
    stack = live(OTP_SMS_PER_HOUR="0")
    refused = stack.post("/register/", {"mobile": "+14155553200"})
    assert refused.status_code == 429 and refused.json()["code"] == "sms_budget"
    assert int(refused.headers["Retry-After"]) == 3600
    assert stack.post("/register/", {"email": "off-switch@example.com"}).status_code == 202
    inbox.wait_for_message("off-switch@example.com")
    assert sms.requests == []


def test_the_email_domain_budget_and_the_auto_submitted_header(live, inbox):
    stack = live(OTP_EMAIL_PER_DOMAIN_PER_HOUR="3")
    for role in ("admin", "info", "postmaster"):
        assert stack.post("/register/", {"email": f"{role}@bombed.example"}).status_code == 202
    for role in ("admin", "info", "postmaster"):
        message = inbox.wait_for_message(f"{role}@bombed.example")
        assert message["Auto-Submitted"] == "auto-generated"  # RFC 3834: no auto-reply comes back
    refused = stack.post("/register/", {"email": "sales@bombed.example"})
    assert refused.status_code == 429 and refused.json()["code"] == "email_budget"
    assert int(refused.headers["Retry-After"]) > 0
    assert stack.post("/register/", {"email": "someone@elsewhere.example"}).status_code == 202
    inbox.wait_for_message("someone@elsewhere.example")


def test_a_recipient_refused_with_550_at_rcpt_is_suppressed_with_the_same_answer(live, inbox):
    stack = live(OTP_RESEND_COOLDOWN_SECONDS="1")
    inbox.refuse_rcpt.add("gone@example.com")
    assert stack.post("/register/", {"email": "gone@example.com"}).status_code == 202
    (first,) = deliveries_final(["gone@example.com"])
    assert first.status == "failed" and "550" in first.last_error and "suppressed" in first.last_error

    def answer_after_cooldown(address):
        return wait_for(lambda: (r if (r := stack.post("/register/", {"email": address})).status_code != 429
                                 else None), timeout=10, message="the cooldown to pass")

    again, other = answer_after_cooldown("gone@example.com"), answer_after_cooldown("present@example.com")
    assert again.status_code == other.status_code == 202 and again.json() == other.json()  # no oracle
    inbox.wait_for_message("present@example.com")
    second = wait_for(lambda: Delivery.objects.filter(address="gone@example.com", status="failed")
                      .exclude(id=first.id).first(), timeout=30, message="the second delivery final")
    assert "suppressed" in second.last_error.lower() and "not sent" in second.last_error
    assert inbox.rcpts_seen.count("gone@example.com") == 1
    # Each process writes its counts to Redis once a second.
    wait_for(lambda: all(line in requests.get(f"{stack.url}/metrics", timeout=10).text
                         for line in ('otp_email_suppressed_total{event="added"} 1.0',
                                      'otp_email_suppressed_total{event="skipped"} 1.0')),
             timeout=10, message="both suppression counts in /metrics")


# --- The abuse suite's pumping run -------------------------------------------------------------------------------

PUMP_SECONDS = 15
PUMP_CLIENTS = [f"127.0.0.{20 + n}" for n in range(10)]
# Allowed destinations over three prefixes, and the kinds a pumping run is after, which must never be texted.
ALLOWED_AREAS = ("415", "212", "312")
REFUSED = ("+19005551234", "+449012345678", "+97912345678", "+881612345678", "+447400123456")


def post_from(port: int, source_ip: str, body: dict) -> tuple[int, dict, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source_ip, 0))
    try:
        connection.request("POST", "/register/", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"{}")
    finally:
        connection.close()


@pytest.fixture
def default_stack(django_db_setup, django_db_blocker, smtp_server, twilio_standin, private_redis):
    """`make up` (nginx, gunicorn, a worker per queue, beat) with the contract's default limits and budgets."""
    from tests.e2e.conftest import Stack, stack_env
    from tests.support.env import delivery_env

    with django_db_blocker.unblock():
        base_env = delivery_env(smtp_server=smtp_server, twilio_standin=twilio_standin)
    http_port, api_port = free_port(), free_port()
    stack_dir = REPO_DIR / "var" / f"test-pump-{http_port}"
    env = stack_env(base_env, http_port=http_port, api_port=api_port, stack_dir=stack_dir)
    for name in ("OTP_IP_SEND_RATE", "OTP_IP_VERIFY_RATE", "EDGE_SEND_RATE", "EDGE_SEND_BURST"):
        env.pop(name)  # the e2e stack's own tighter values: the contract's defaults here
    env["REDIS_URL"] = private_redis.url
    running = Stack(f"http://127.0.0.1:{http_port}", http_port, api_port, stack_dir, env)
    result = running.make("up")
    assert result.returncode == 0, f"make up failed:\n{result.stdout}\n{result.stderr}"
    yield running
    assert running.make("down").returncode == 0
    shutil.rmtree(stack_dir, ignore_errors=True)


def test_an_sms_pumping_run_from_ten_clients_sends_at_most_the_budget(default_stack, sms, capsys):
    answers: Counter = Counter()
    lock = threading.Lock()
    serial = iter(range(10**6))
    deadline = time.monotonic() + PUMP_SECONDS

    def pump(source_ip: str) -> None:
        while time.monotonic() < deadline:
            with lock:
                n = next(serial)
            # Four requests in five to fresh allowed numbers (a new number each time, so no per-address limit
            # applies), one to a premium, foreign or satellite number.
            number = REFUSED[n % len(REFUSED)] if n % 5 == 4 else \
                f"+1{ALLOWED_AREAS[n % len(ALLOWED_AREAS)]}555{n % 10_000:04d}"
            status, headers, body = post_from(default_stack.http_port, source_ip, {"mobile": number})
            if status == 429:
                assert int(headers["Retry-After"]) > 0
            with lock:
                answers[(status, body.get("code", ""))] += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=pump, args=(ip,)) for ip in PUMP_CLIENTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PUMP_SECONDS + 30)
    accepted = answers[(202, "")]
    # Everything accepted reaches a final state (bounded: each code lives 120 s, most are sent at once).
    wait_for(lambda: Delivery.objects.filter(channel="sms").exclude(status__in=FINAL).count() == 0,
             timeout=60, message="every queued SMS delivered or refused")
    texted = Counter(message["to"][:5] for message in sms.accepted)
    sent_rows = Delivery.objects.filter(channel="sms", status="sent").count()

    # Per prefix, at most the budget's share for requests without a device token (50 less 20 %); in all, at
    # most what those prefixes allow, far under the global 800; nothing to a refused destination.
    assert all(count <= 40 for count in texted.values()), texted
    assert set(texted) <= {f"+1{area}" for area in ALLOWED_AREAS}
    assert sum(texted.values()) == len(sms.accepted) == sent_rows <= 3 * 40
    assert not any(request["To"] in REFUSED for request in sms.requests)
    assert answers[(429, "sms_budget")] > 0 and answers[(400, "number_not_allowed")] > 0
    assert Delivery.objects.filter(channel="sms").count() == accepted
    at_handoff = Delivery.objects.filter(channel="sms", last_error__startswith=BUDGET_SPENT_ERROR).count()
    assert accepted == sent_rows + at_handoff  # the rest of what was accepted: refused by the worker's count
    with capsys.disabled():
        print(f"\nSMS pumping, {len(PUMP_CLIENTS)} clients x {PUMP_SECONDS} s through nginx: "
              f"{sum(answers.values())} requests, {accepted} accepted, {len(sms.accepted)} SMS sent, "
              f"{at_handoff} refused by the worker at handoff "
              f"({dict(texted)}), refused: {dict((f'{s} {c}', k) for (s, c), k in answers.items() if s != 202)}")
