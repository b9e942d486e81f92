"""Device tokens (contract: One-time codes, device tokens; OWASP's "device cookie" against targeted lockout): a
returning client's device has its own class of limits and codes, and every other token is ignored, answered
exactly as a request without one."""
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from otp import throttles
from otp.addresses import email_normalize
from otp.models import OneTimeCode
from otp.services import device_token_purge
from tests.support import factories
from tests.support.http import post
from tests.support.redis_state import redis_flush
from users.device_tokens import device_token_generate, device_token_hash
from users.models import DeviceToken, User
from users.services import device_token_issue

pytestmark = pytest.mark.django_db

VICTIM = "alice@example.com"
# Differ between any two requests by design.
PER_REQUEST_HEADERS = {"Date", "X-Request-ID"}


@pytest.fixture
def client():
    return APIClient()


def sign_in(client, fixed_code, address: str, **extra) -> dict:
    """/register/ then /verify-otp/ with the code just sent; returns the 200 body (tokens and device_token)."""
    assert post(client, "/register/", {"email": address, **extra}).status_code == 202
    response = post(client, "/verify-otp/", {"email": address, "code": fixed_code[-1], **extra})
    assert response.status_code == 200, response.content
    return response.json()


def answer(response) -> tuple:
    """What a client can read of an answer, but for the per-request headers."""
    headers = {name: value for name, value in response.headers.items() if name not in PER_REQUEST_HEADERS}
    return response.status_code, response.content, headers


def wait_of(response) -> int:
    return int(response.headers["Retry-After"])


def without_wait(response) -> tuple:
    """The answer with the seconds left blanked: they tick between two requests."""
    status, content, headers = answer(response)
    return status, re.sub(rb"\d+", b"N", content), {**headers, "Retry-After": "N"}


def assert_answered_as_without_token(send, body_without_token: dict, token) -> None:
    """A throttled request carrying `token` gets the answer of one without a token: the same status, body and
    headers, its wait between those of the requests without a token sent just before and after it."""
    before = send(body_without_token)
    carrying = send({**body_without_token, "device_token": token})
    after = send(body_without_token)
    assert before.status_code == 429
    assert without_wait(carrying) == without_wait(before) == without_wait(after)
    assert wait_of(before) >= wait_of(carrying) >= wait_of(after)
    assert carrying.json()["detail"] == f"Too many requests. Try again in {wait_of(carrying)} seconds."


# Every kind of token the service must ignore, made for the victim's address (alice@example.com, an account with
# a mobile too) by a function of (client, fixed_code, victim) -> the value sent as device_token.
def _attackers_own(client, fixed_code, victim):
    return sign_in(client, fixed_code, "mallory@example.com")["device_token"]  # genuine, live, for mallory@


def _forged(client, fixed_code, victim):
    return device_token_generate()  # well formed, never issued


def _expired(client, fixed_code, victim):
    token = device_token_issue(user=victim, address=VICTIM)
    DeviceToken.objects.filter(token_hash=device_token_hash(token)).update(expires_at=timezone.now())
    return token


def _revoked_by_logout(client, fixed_code, victim):
    signed_in = sign_in(client, fixed_code, VICTIM)
    assert post(client, "/logout/", {"refresh": signed_in["refresh"],
                                     "device_token": signed_in["device_token"]}).status_code == 205
    return signed_in["device_token"]


def _for_the_accounts_other_address(client, fixed_code, victim):
    return device_token_issue(user=victim, address=victim.mobile)


def _of_a_deactivated_account(client, fixed_code, victim):
    token = device_token_issue(user=victim, address=VICTIM)
    User.objects.filter(pk=victim.pk).update(is_active=False)
    return token


def _for_an_address_the_account_no_longer_has(client, fixed_code, victim):
    token = device_token_issue(user=victim, address=VICTIM)
    User.objects.filter(pk=victim.pk).update(email="alice.new@example.com")
    factories.user(email=VICTIM)  # someone else holds the address now
    return token


def _for_an_address_no_account_has(client, fixed_code, victim):
    token = device_token_issue(user=victim, address=VICTIM)
    User.objects.filter(pk=victim.pk).update(email="alice.new@example.com")
    return token


IGNORED = {
    "attackers_own_valid_token": _attackers_own,
    "forged": _forged,
    "expired": _expired,
    "revoked_by_logout": _revoked_by_logout,
    "for_the_accounts_other_address": _for_the_accounts_other_address,
    "of_a_deactivated_account": _of_a_deactivated_account,
    "for_an_address_the_account_no_longer_has": _for_an_address_the_account_no_longer_has,
    "for_an_address_no_account_has": _for_an_address_no_account_has,
    "garbage_string": lambda *_: "garbage",
    "empty": lambda *_: "",
    "null": lambda *_: None,
    "number": lambda *_: 5,
    "object": lambda *_: {"token": "x"},
    "list": lambda *_: ["x"],
    "too_long": lambda *_: "A" * 20000,
    "a_token_with_a_character_changed": lambda client, fixed_code, victim: (
        lambda token: ("B" if token[0] != "B" else "C") + token[1:])(device_token_issue(user=victim, address=VICTIM)),
}


@pytest.fixture
def victim():
    return factories.user(email=VICTIM, mobile="+14155552671")


@pytest.mark.parametrize("kind", list(IGNORED))
def test_a_token_that_is_not_the_addresses_live_token_is_ignored_with_an_identical_answer(
        client, fixed_code, settings, redis_clean, victim, kind):
    token = IGNORED[kind](client, fixed_code, victim)
    redis_flush(redis_clean)
    victim_body = {"email": VICTIM}

    # A code is sent, answered as without a token, and judged so: the no-token cooldown is taken, the code is the
    # no-token class's.
    plain = post(client, "/login/", victim_body)
    redis_flush(redis_clean)
    OneTimeCode.objects.filter(address=VICTIM).delete()
    carrying = post(client, "/login/", {**victim_body, "device_token": token})
    assert answer(carrying) == answer(plain) and carrying.status_code == 202
    assert list(OneTimeCode.objects.filter(address=VICTIM).values_list("device", flat=True)) == [False]
    assert throttles.SEND_COOLDOWN.current(email_normalize(VICTIM)) > 0
    assert throttles.DEVICE_SEND_COOLDOWN.current(email_normalize(VICTIM)) == 0

    # While the no-token class is throttled, so is the request carrying the token, with the same answer.
    assert_answered_as_without_token(lambda body: post(client, "/login/", body), victim_body, token)
    assert_answered_as_without_token(lambda body: post(client, "/register/", body), victim_body, token)

    # A wrong guess carrying it spends the no-token failure budget, with the same answer; past that budget, it is
    # refused as a request without a token is.
    settings.OTP_MAX_FAILURES_PER_HOUR = 3
    wrong = {**victim_body, "code": "000000"}
    first = post(client, "/verify-otp/", wrong)
    second = post(client, "/verify-otp/", {**wrong, "device_token": token})
    assert answer(second) == answer(first) and first.status_code == 400
    assert throttles.FAILURES_PER_HOUR.current(email_normalize(VICTIM)) == 2
    assert throttles.DEVICE_FAILURES_PER_HOUR.current(email_normalize(VICTIM)) == 0
    post(client, "/verify-otp/", wrong)
    assert_answered_as_without_token(lambda body: post(client, "/verify-otp/", body), wrong, token)


def test_a_token_made_under_a_key_no_longer_configured_is_ignored(client, fixed_code, settings, victim):
    settings.OTP_HMAC_KEY = "old-otp-hmac-key-" + "o" * 32
    token = device_token_issue(user=victim, address=VICTIM)
    settings.OTP_HMAC_KEY, settings.OTP_HMAC_KEY_FALLBACKS = "new-otp-hmac-key-" + "n" * 32, []
    assert post(client, "/login/", {"email": VICTIM}).status_code == 202
    assert_answered_as_without_token(lambda body: post(client, "/login/", body), {"email": VICTIM}, token)


@pytest.mark.parametrize("rotate", ["OTP_HMAC_KEY", "SECRET_KEY"])
def test_a_token_issued_before_the_key_was_rotated_still_counts(client, fixed_code, settings, rotate):
    old, new = "old-key-" + "o" * 40, "new-key-" + "n" * 40
    if rotate == "OTP_HMAC_KEY":
        settings.OTP_HMAC_KEY = old
    else:
        settings.OTP_HMAC_KEY, settings.SECRET_KEY = "", old
    device_token = sign_in(client, fixed_code, VICTIM)["device_token"]
    setattr(settings, rotate, new)
    setattr(settings, f"{rotate}_FALLBACKS", [old])
    assert post(client, "/login/", {"email": VICTIM}).status_code == 202
    assert post(client, "/login/", {"email": VICTIM, "device_token": device_token}).status_code == 202
    assert OneTimeCode.objects.get(address=VICTIM, device=True, status="active")


def test_verify_returns_a_device_token_stored_only_as_a_keyed_hash(client, fixed_code, settings):
    started = timezone.now()
    body = sign_in(client, fixed_code, VICTIM)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body["device_token"])
    row = DeviceToken.objects.get()
    assert row.user.email == VICTIM and row.address == VICTIM and row.revoked_at is None
    assert row.token_hash == device_token_hash(body["device_token"]) != body["device_token"]
    assert body["device_token"] not in str(DeviceToken.objects.values().get())
    lifetime = row.expires_at - started
    assert timedelta(days=90) <= lifetime < timedelta(days=90, minutes=1)  # OTP_DEVICE_TOKEN_TTL_DAYS

    settings.OTP_DEVICE_TOKEN_TTL_DAYS = 7
    again = sign_in(client, fixed_code, "bob@example.com")
    assert DeviceToken.objects.get(token_hash=device_token_hash(again["device_token"])).expires_at \
        < timezone.now() + timedelta(days=7, minutes=1)


def test_the_device_class_signs_in_while_the_no_token_class_is_locked_out(client, fixed_code):
    device_token = sign_in(client, fixed_code, VICTIM)["device_token"]
    # The attacker, without a token: a /login/ (the cooldown taken, then refused), and wrong guesses until the
    # failure budget is spent (OTP_MAX_FAILURES_PER_HOUR, 20).
    post(client, "/login/", {"email": VICTIM})
    assert post(client, "/login/", {"email": VICTIM}).status_code == 429
    statuses = [post(client, "/verify-otp/", {"email": VICTIM, "code": f"{i:06d}"}).status_code for i in range(21)]
    assert statuses == [400] * 20 + [429]

    # The victim's device is judged on its own: a code is sent, and verifying it signs in.
    mine = {"email": VICTIM, "device_token": device_token}
    assert post(client, "/login/", mine).status_code == 202
    signed_in = post(client, "/verify-otp/", {**mine, "code": fixed_code[-1]})
    assert signed_in.status_code == 200 and signed_in.json()["access"]
    # The new token replaced the one sent, which now counts for nothing.
    renewed = signed_in.json()["device_token"]
    assert renewed != device_token
    assert DeviceToken.objects.get(token_hash=device_token_hash(device_token)).revoked_at is not None
    # The attacker is still locked out, and the device's cooldown is its own.
    assert post(client, "/verify-otp/", {"email": VICTIM, "code": "000000"}).status_code == 429
    assert post(client, "/login/", {"email": VICTIM, "device_token": renewed}).status_code == 429
    assert post(client, "/login/", {"email": VICTIM}).status_code == 429


def test_wrong_guesses_with_the_device_token_spend_only_the_device_class_budget(client, fixed_code, settings):
    device_token = sign_in(client, fixed_code, VICTIM)["device_token"]
    settings.OTP_MAX_FAILURES_PER_HOUR = 2
    mine = {"email": VICTIM, "device_token": device_token, "code": "000000"}
    assert [post(client, "/verify-otp/", mine).status_code for _ in range(3)] == [400, 400, 429]
    assert post(client, "/verify-otp/", {"email": VICTIM, "code": "000000"}).status_code == 400


def test_codes_are_superseded_only_within_their_class_and_verified_in_their_own(client, fixed_code, redis_clean):
    device_token = sign_in(client, fixed_code, VICTIM)["device_token"]
    redis_flush(redis_clean)  # the sign-in's cooldown
    plain, mine = {"email": VICTIM}, {"email": VICTIM, "device_token": device_token}
    assert post(client, "/login/", plain).status_code == 202
    plain_code = fixed_code[-1]
    assert post(client, "/login/", mine).status_code == 202
    device_code = fixed_code[-1]
    active = OneTimeCode.objects.filter(address=VICTIM, status="active")
    assert sorted(active.values_list("device", flat=True)) == [False, True]

    # A newer code without a token supersedes the older one without a token, never the device's.
    redis_flush(redis_clean, "*otp:cooldown:*")
    assert post(client, "/login/", plain).status_code == 202
    newer_plain_code = fixed_code[-1]
    assert sorted(active.values_list("device", flat=True)) == [False, True]  # at most two: one per class
    assert OneTimeCode.objects.get(address=VICTIM, status="superseded").device is False

    # Each class compares only its own code.
    assert post(client, "/verify-otp/", {**plain, "code": device_code}).status_code == 400
    assert post(client, "/verify-otp/", {**plain, "code": plain_code}).status_code == 400
    assert post(client, "/verify-otp/", {**mine, "code": newer_plain_code}).status_code == 400
    signed_in = post(client, "/verify-otp/", {**mine, "code": device_code})
    assert signed_in.status_code == 200
    assert post(client, "/verify-otp/", {**plain, "code": newer_plain_code}).status_code == 200

    # And a newer device code supersedes the device's older one, never the other class's.
    mine["device_token"] = signed_in.json()["device_token"]
    redis_flush(redis_clean)
    assert post(client, "/login/", plain).status_code == 202
    assert post(client, "/login/", mine).status_code == 202
    older_device_code = fixed_code[-1]
    redis_flush(redis_clean, "*otp:device:cooldown:*")
    assert post(client, "/login/", mine).status_code == 202
    assert sorted(active.values_list("device", flat=True)) == [False, True]
    assert post(client, "/verify-otp/", {**mine, "code": older_device_code}).status_code == 400
    assert post(client, "/verify-otp/", {**mine, "code": fixed_code[-1]}).status_code == 200


def test_a_device_token_from_a_sign_in_by_mobile_counts_for_that_number(client, fixed_code):
    assert post(client, "/register/", {"mobile": "(415) 555-2671"}).status_code == 202
    device_token = post(client, "/verify-otp/", {"mobile": "+14155552671", "code": fixed_code[-1]}).json()["device_token"]
    assert DeviceToken.objects.get().address == "+14155552671"
    assert post(client, "/login/", {"mobile": "4155552671"}).status_code == 429
    assert post(client, "/login/", {"mobile": "4155552671", "device_token": device_token}).status_code == 202
    assert post(client, "/verify-otp/", {"mobile": "+1 415 555 2671", "device_token": device_token,
                                         "code": fixed_code[-1]}).status_code == 200


def test_register_with_a_device_token_is_judged_in_the_device_class(client, fixed_code):
    device_token = sign_in(client, fixed_code, VICTIM)["device_token"]
    post(client, "/register/", {"email": VICTIM})
    assert post(client, "/register/", {"email": VICTIM}).status_code == 429
    assert post(client, "/register/", {"email": VICTIM, "device_token": device_token}).status_code == 202
    assert OneTimeCode.objects.get(address=VICTIM, status="active", device=True).purpose == "register"


def test_logout_revokes_the_device_token_and_only_its_own_accounts(client, fixed_code):
    alice = sign_in(client, fixed_code, VICTIM)
    mallory = sign_in(client, fixed_code, "mallory@example.com")
    # Mallory's logout cannot revoke Alice's device token.
    assert post(client, "/logout/", {"refresh": mallory["refresh"], "device_token": alice["device_token"]}).status_code == 205
    assert DeviceToken.objects.get(token_hash=device_token_hash(alice["device_token"])).revoked_at is None
    # Garbage beside a genuine refresh token is still a 205 with no body.
    for garbage in ("garbage", 5, None, ["x"]):
        response = post(client, "/logout/", {"refresh": mallory["refresh"], "device_token": garbage})
        assert response.status_code == 205 and response.content == b""

    logout = post(client, "/logout/", {"refresh": alice["refresh"], "device_token": alice["device_token"]})
    assert logout.status_code == 205 and logout.content == b""
    assert DeviceToken.objects.get(token_hash=device_token_hash(alice["device_token"])).revoked_at is not None
    post(client, "/login/", {"email": VICTIM})
    assert post(client, "/login/", {"email": VICTIM, "device_token": alice["device_token"]}).status_code == 429


def test_the_admin_revokes_device_tokens(client, fixed_code):
    alice = sign_in(client, fixed_code, VICTIM)
    admin = User.objects.create_superuser(email="admin@example.com", password="a-long-admin-password")
    client.force_login(admin)
    listing = client.get("/admin/users/devicetoken/")
    assert listing.status_code == 200 and VICTIM in listing.content.decode()
    assert alice["device_token"] not in listing.content.decode()
    row = DeviceToken.objects.get(address=VICTIM)
    response = client.post("/admin/users/devicetoken/", {"action": "revoke", "_selected_action": [row.pk]})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.revoked_at is not None
    client.logout()
    post(client, "/login/", {"email": VICTIM})
    assert post(client, "/login/", {"email": VICTIM, "device_token": alice["device_token"]}).status_code == 429


def test_housekeeping_deletes_expired_device_tokens_in_batches(fixed_code):
    user = factories.user(email=VICTIM)
    for _ in range(5):
        device_token_issue(user=user, address=VICTIM)
    DeviceToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    live = device_token_issue(user=user, address=VICTIM)
    assert device_token_purge(batch_size=2) == 5
    assert list(DeviceToken.objects.values_list("token_hash", flat=True)) == [device_token_hash(live)]


def test_the_device_class_has_its_own_throttle_keys():
    address = email_normalize(VICTIM)
    plain = {throttles.SEND_COOLDOWN.key(address), throttles.SENDS_PER_HOUR.key(address),
             *(limit.key(address) for limit in throttles.FAILURE_BUDGET)}
    device = {throttles.DEVICE_SEND_COOLDOWN.key(address), throttles.DEVICE_SENDS_PER_HOUR.key(address),
              *(limit.key(address) for limit in throttles.DEVICE_FAILURE_BUDGET)}
    assert len(plain) == len(device) == 4 and not plain & device
    assert {limit.name for limit in throttles.ADDRESS_LIMITS} >= {"device_send_cooldown", "device_failures_per_day"}
