"""Refresh tokens as single-use credentials: rotation races, reuse detection (RFC 9700 section 4.14.2), logout with
the refresh token alone, accounts deleted or deactivated, and signing-key rotation. Races run on the real
PostgreSQL with committed transactions and one connection per thread."""
import time

import jwt
import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from otp.models import OneTimeCode
from tests.support import factories
from tests.support.http import post
from tests.support.parallel import run_in_parallel
from tests.support.redis_state import redis_flush
from tests.unit.test_settings import start
from users.models import User

pytestmark = pytest.mark.django_db(transaction=True)

OLD_KEY = "old-jwt-signing-key-rotated-out-last-week-0001"
NEW_KEY = "new-jwt-signing-key-rotated-in-this-morning-0002"
STRANGER_KEY = "a-key-this-service-never-had-in-any-list-0003"


@pytest.fixture
def client():
    return APIClient()


def sign_in(fixed_code, email="alice@example.com"):
    """A fresh sign-in through /register/ and /verify-otp/: its access and refresh tokens."""
    client = APIClient()
    redis_flush(django_settings_redis(), "*otp:cooldown:*")  # a second sign-in for one address in one test
    assert post(client, "/register/", {"email": email}).status_code == 202
    response = post(client, "/verify-otp/", {"email": email, "code": fixed_code[-1]})
    assert response.status_code == 200, response.content
    return response.json()


def django_settings_redis():
    import redis

    return redis.Redis.from_url(django_settings.REDIS_URL)


def refresh(token):
    return post(APIClient(), "/token/refresh/", {"refresh": token})


def logout(token, access=None):
    extra = {"HTTP_AUTHORIZATION": f"Bearer {access}"} if access else {}
    return post(APIClient(), "/logout/", {"refresh": token}, **extra)


def profile(access):
    return APIClient().get("/profile/", HTTP_AUTHORIZATION=f"Bearer {access}")


def resigned(token, *, key, **claims):
    """`token`'s claims, changed by `claims` (None deletes one), signed HS256 with `key`."""
    payload = jwt.decode(token, options={"verify_signature": False})
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm="HS256")


def signing_key_of(token):
    """Which of the known keys signed `token`."""
    for key in (OLD_KEY, NEW_KEY, django_settings.SECRET_KEY):
        try:
            jwt.decode(token, key, algorithms=["HS256"])
            return key
        except jwt.InvalidSignatureError:
            continue
    return None


# --- item 3: one refresh token, used concurrently or twice --------------------------------------


def test_eight_parallel_refreshes_of_one_token_let_exactly_one_win(fixed_code):
    tokens = sign_in(fixed_code)
    results = run_in_parallel(8, lambda i: refresh(tokens["refresh"]))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [401] * 7, statuses
    assert all(r.json()["code"] == "token_not_valid" for r in results if r.status_code == 401)
    # The losers presented a token that had been rotated: reuse, which revokes the whole sign-in (the service
    # cannot tell a thief from a client that double-submits; docs/reliability.md).
    winner = next(r.json() for r in results if r.status_code == 200)
    assert refresh(winner["refresh"]).status_code == 401
    assert profile(winner["access"]).status_code == 401


def test_reuse_of_a_rotated_refresh_token_revokes_every_token_rotated_from_it(fixed_code):
    first = sign_in(fixed_code)
    second = refresh(first["refresh"]).json()
    third = refresh(second["refresh"]).json()
    assert profile(third["access"]).status_code == 200

    replay = refresh(first["refresh"])  # a thief, or the victim, presents a token already rotated
    assert replay.status_code == 401 and replay.json()["code"] == "token_not_valid"
    assert refresh(third["refresh"]).status_code == 401
    assert refresh(second["refresh"]).status_code == 401
    assert profile(third["access"]).status_code == 401


def test_reuse_in_one_sign_in_leaves_other_sign_ins_alone(fixed_code):
    laptop = sign_in(fixed_code)
    phone = sign_in(fixed_code)
    refresh(laptop["refresh"])
    assert refresh(laptop["refresh"]).status_code == 401  # reuse: the laptop's sign-in is revoked
    renewed = refresh(phone["refresh"])
    assert renewed.status_code == 200 and profile(renewed.json()["access"]).status_code == 200


def test_a_refresh_token_used_one_at_a_time_keeps_rotating(fixed_code):
    tokens = sign_in(fixed_code)
    for _ in range(5):
        response = refresh(tokens["refresh"])
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"
        tokens = response.json()
    assert set(tokens) == {"access", "refresh"} and profile(tokens["access"]).status_code == 200


def test_logout_with_a_rotated_token_revokes_the_tokens_rotated_from_it(fixed_code):
    first = sign_in(fixed_code)
    second = refresh(first["refresh"]).json()
    assert logout(first["refresh"]).status_code == 205
    assert refresh(second["refresh"]).status_code == 401
    assert profile(second["access"]).status_code == 401


def test_logout_racing_a_refresh_leaves_no_token_of_that_sign_in_working(fixed_code):
    for _ in range(3):
        tokens = sign_in(fixed_code)
        results = run_in_parallel(2, lambda i: refresh(tokens["refresh"]) if i == 0 else logout(tokens["refresh"]))
        refreshed, logged_out = results
        assert logged_out.status_code == 205
        assert refreshed.status_code in (200, 401)
        if refreshed.status_code == 200:
            assert refresh(refreshed.json()["refresh"]).status_code == 401
            assert profile(refreshed.json()["access"]).status_code == 401


def test_a_code_racing_its_supersession_leaves_one_active_code(fixed_code):
    """Verify of the old code and issue of a new one, in parallel: the old code is either used (verify won) or
    superseded (issue won, verify refused); the new code is the one active code either way and signs in."""
    email = "racer@example.com"
    assert post(APIClient(), "/register/", {"email": email}).status_code == 202
    old_code = fixed_code[-1]
    redis_flush(django_settings_redis(), "*otp:cooldown:*")
    results = run_in_parallel(2, lambda i: post(APIClient(), "/verify-otp/", {"email": email, "code": old_code})
                              if i == 0 else post(APIClient(), "/register/", {"email": email}))
    verified, issued = results
    assert issued.status_code == 202 and verified.status_code in (200, 400)
    old = OneTimeCode.objects.order_by("created_at").first()
    assert old.status == ("used" if verified.status_code == 200 else "superseded")
    assert OneTimeCode.objects.filter(status="active").count() == 1
    again = post(APIClient(), "/verify-otp/", {"email": email, "code": fixed_code[-1]})
    assert again.status_code == 200 and User.objects.filter(email=email).count() == 1


def test_parallel_refreshes_of_a_token_issued_before_families_let_exactly_one_win():
    from rest_framework_simplejwt.tokens import RefreshToken as SimpleJwtRefreshToken

    user = factories.user(email="alice@example.com")
    legacy = str(SimpleJwtRefreshToken.for_user(user))  # as the release before this one issued them: no `fam`
    statuses = sorted(r.status_code for r in run_in_parallel(8, lambda i: refresh(legacy)))
    assert statuses == [200] + [401] * 7, statuses


# --- item 4: logout takes the refresh token alone ----------------------------------------------


def test_logout_needs_only_the_refresh_token_and_revokes_it(fixed_code):
    tokens = sign_in(fixed_code)
    response = logout(tokens["refresh"])
    assert response.status_code == 205 and response.content == b""
    assert refresh(tokens["refresh"]).status_code == 401
    assert profile(tokens["access"]).status_code == 401


def test_logout_ignores_an_expired_access_token(fixed_code):
    """The issue's input: with an expired access token, /logout/ answered 401 and the refresh kept working."""
    tokens = sign_in(fixed_code)
    expired = resigned(tokens["access"], key=django_settings.SECRET_KEY, exp=int(time.time()) - 60)
    assert profile(expired).status_code == 401
    assert logout(tokens["refresh"], access=expired).status_code == 205
    assert refresh(tokens["refresh"]).status_code == 401


def test_logout_with_a_forged_or_another_accounts_access_token_is_401_and_revokes_nothing(fixed_code):
    alice = sign_in(fixed_code, "alice@example.com")
    bob = sign_in(fixed_code, "bob@example.com")
    forged = resigned(alice["access"], key=STRANGER_KEY)
    for header in (forged, bob["access"], "garbage", alice["refresh"]):
        response = logout(alice["refresh"], access=header)
        assert response.status_code == 401 and response.json()["code"] == "token_not_valid", header
    renewed = refresh(alice["refresh"])
    assert renewed.status_code == 200
    assert logout(renewed.json()["refresh"], access=renewed.json()["access"]).status_code == 205


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_read_in_any_case(fixed_code, scheme):
    # RFC 9110 section 11.1: the scheme is case-insensitive. `bearer <token>` was taken for no token: a 401 at
    # /profile/, and at /logout/ another account's access token went unchecked (found by an attack pass).
    alice = sign_in(fixed_code, "alice@example.com")
    bob = sign_in(fixed_code, "bob@example.com")
    assert APIClient().get("/profile/", HTTP_AUTHORIZATION=f"{scheme} {alice['access']}").status_code == 200
    response = post(APIClient(), "/logout/", {"refresh": alice["refresh"]},
                    HTTP_AUTHORIZATION=f"{scheme} {bob['access']}")
    assert response.status_code == 401 and response.json()["code"] == "token_not_valid"
    assert refresh(alice["refresh"]).status_code == 200


def test_logout_again_with_a_revoked_token_is_205_but_a_token_not_genuine_is_401(fixed_code):
    tokens = sign_in(fixed_code)
    assert logout(tokens["refresh"]).status_code == 205
    assert logout(tokens["refresh"]).status_code == 205
    for not_genuine in ("garbage", tokens["access"], resigned(tokens["refresh"], key=STRANGER_KEY),
                        resigned(tokens["refresh"], key=django_settings.SECRET_KEY, token_type="access")):
        response = logout(not_genuine)
        assert response.status_code == 401 and response.json()["code"] == "token_not_valid"


def test_logout_with_an_expired_refresh_token_is_205(fixed_code):
    tokens = sign_in(fixed_code)
    expired = resigned(tokens["refresh"], key=django_settings.SECRET_KEY, exp=int(time.time()) - 60)
    assert refresh(expired).status_code == 401
    assert logout(expired).status_code == 205


def test_logout_body_errors_are_400(client):
    for body in ({}, {"refresh": 5}, {"refresh": None}):
        response = post(client, "/logout/", body)
        assert response.status_code == 400 and "refresh" in response.json()


# --- item 5: tokens of deleted and deactivated accounts -----------------------------------------


def test_refresh_after_the_account_was_deleted_is_401_not_500(fixed_code):
    """The issue's input: /admin/ deletes the account; /token/refresh/ answered 500."""
    tokens = sign_in(fixed_code)
    User.objects.get(email="alice@example.com").delete()  # what the admin's delete does
    response = refresh(tokens["refresh"])
    assert response.status_code == 401 and response.json()["code"] == "token_not_valid"
    assert profile(tokens["access"]).status_code == 401
    assert logout(tokens["refresh"]).status_code == 205  # genuine, and nothing of it works any more
    assert logout(tokens["refresh"], access=tokens["access"]).status_code == 205


def test_the_admins_delete_and_revoke_end_every_token_of_the_account(fixed_code):
    alice = sign_in(fixed_code, "alice@example.com")
    bob = sign_in(fixed_code, "bob@example.com")
    admin = User.objects.create_superuser(email="admin@example.com", password="a-long-admin-password")
    staff = APIClient()
    staff.force_login(admin)

    account = User.objects.get(email="alice@example.com")
    page = staff.post(f"/admin/users/user/{account.pk}/delete/", {"post": "yes"})
    assert page.status_code == 302 and not User.objects.filter(email="alice@example.com").exists()
    assert refresh(alice["refresh"]).status_code == 401
    assert profile(alice["access"]).status_code == 401

    sign_ins = staff.get("/admin/users/tokenfamily/?q=bob")
    assert sign_ins.status_code == 200 and "bob@example.com" in sign_ins.content.decode()
    family = jwt.decode(bob["refresh"], options={"verify_signature": False})["fam"]
    page = staff.post("/admin/users/tokenfamily/", {"action": "revoke", "_selected_action": [family]})
    assert page.status_code == 302
    assert refresh(bob["refresh"]).status_code == 401 and profile(bob["access"]).status_code == 401


def test_a_register_code_for_a_deactivated_accounts_address_opens_nothing(fixed_code):
    """/register/ still answers 202 for the address (it never tells), but its code opens nothing: before, the
    verify tried to create a second account for the address and answered 500."""
    factories.user(email="alice@example.com", is_active=False)
    assert post(APIClient(), "/register/", {"email": "alice@example.com"}).status_code == 202
    verified = post(APIClient(), "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]})
    assert verified.status_code == 400 and verified.json()["code"] == "invalid_code"
    assert User.objects.filter(email="alice@example.com").count() == 1


def test_a_deactivated_account_cannot_refresh_or_use_its_tokens(fixed_code):
    tokens = sign_in(fixed_code)
    User.objects.filter(email="alice@example.com").update(is_active=False)
    response = refresh(tokens["refresh"])
    assert response.status_code == 401 and response.json()["code"] == "token_not_valid"
    assert profile(tokens["access"]).status_code == 401
    assert logout(tokens["refresh"]).status_code == 205
    # Reactivated, the old sign-in stays revoked by the logout.
    User.objects.filter(email="alice@example.com").update(is_active=True)
    assert refresh(tokens["refresh"]).status_code == 401


def test_a_deactivated_account_reactivated_refreshes_again_if_it_never_logged_out(fixed_code):
    tokens = sign_in(fixed_code)
    User.objects.filter(email="alice@example.com").update(is_active=False)
    assert refresh(tokens["refresh"]).status_code == 401
    User.objects.filter(email="alice@example.com").update(is_active=True)
    assert refresh(tokens["refresh"]).status_code == 200


def test_refresh_token_for_an_account_id_that_never_existed_is_401(fixed_code):
    tokens = sign_in(fixed_code)
    ghost = resigned(tokens["refresh"], key=django_settings.SECRET_KEY, user_id="999999999")
    assert refresh(ghost).status_code == 401
    no_user = resigned(tokens["refresh"], key=django_settings.SECRET_KEY, user_id=None)
    assert refresh(no_user).status_code == 401
    assert logout(no_user).status_code == 401


# Claims that a key we hold signed but our code never writes: a leaked or shared key can sign anything. Each was a
# 500 at /token/refresh/ and /logout/ (the first two) or a 401 by luck; each is a 401 at every route now.
ODD_CLAIMS = [
    {"exp": 1e20},  # beyond a datetime: OverflowError in simplejwt's expiry check
    {"user_id": "abc", "fam": None},  # not an account id: ValueError in the account lookup
    {"user_id": "9" * 30},  # beyond PostgreSQL's bigint
    {"user_id": "１２"},  # digits, but not ASCII ones
    {"user_id": 12},  # a number: simplejwt writes the id as a string
    {"iat": -1e20}, {"nbf": "soon"},
    {"jti": 5}, {"fam": ["x"]},
]


@pytest.mark.parametrize("claims", ODD_CLAIMS, ids=[",".join(f"{k}={v!r}" for k, v in c.items()) for c in ODD_CLAIMS])
def test_a_token_signed_with_our_key_but_claims_we_never_write_is_401_everywhere(fixed_code, claims):
    tokens = sign_in(fixed_code)
    access = resigned(tokens["access"], key=django_settings.SECRET_KEY, **claims)
    odd_refresh = resigned(tokens["refresh"], key=django_settings.SECRET_KEY, **claims)
    answers = {"profile": profile(access), "refresh": refresh(odd_refresh), "logout": logout(odd_refresh),
               "logout with the odd access": logout(tokens["refresh"], access=access)}
    assert {route: r.status_code for route, r in answers.items()} == dict.fromkeys(answers, 401)
    assert all(r.json()["code"] for r in answers.values())
    assert refresh(tokens["refresh"]).status_code == 200  # the genuine sign-in was not touched


# A token issued by a host whose clock is a little ahead: PyJWT refuses an `iat` in the future, and the user who had
# just signed in got a 401 on the next host, and a 401 from /logout/ for a genuine token (a known-failures pass).
@pytest.mark.parametrize("ahead", [1, 4])
def test_tokens_from_a_host_whose_clock_is_a_few_seconds_ahead_work(fixed_code, ahead):
    tokens = sign_in(fixed_code)
    issued = int(time.time()) + ahead
    access = resigned(tokens["access"], key=django_settings.SECRET_KEY, iat=issued)
    assert profile(access).status_code == 200
    rotated = refresh(resigned(tokens["refresh"], key=django_settings.SECRET_KEY, iat=issued))
    assert rotated.status_code == 200, rotated.content
    later = resigned(rotated.json()["refresh"], key=django_settings.SECRET_KEY, iat=issued)
    assert logout(later).status_code == 205
    assert refresh(later).status_code == 401  # logged out


def test_a_token_issued_a_minute_in_the_future_is_401(fixed_code):
    # Beyond the leeway: no clock in a working deployment is a minute off (NTP), so such a token is refused.
    tokens = sign_in(fixed_code)
    issued = int(time.time()) + 60
    assert profile(resigned(tokens["access"], key=django_settings.SECRET_KEY, iat=issued)).status_code == 401
    assert refresh(resigned(tokens["refresh"], key=django_settings.SECRET_KEY, iat=issued)).status_code == 401


# --- item 9: rotating the signing key signs nobody out ------------------------------------------


def test_rotating_jwt_signing_key_keeps_old_tokens_working_and_signs_new_ones_with_the_new_key(fixed_code, settings):
    settings.JWT_SIGNING_KEY = OLD_KEY
    tokens = sign_in(fixed_code)
    assert signing_key_of(tokens["refresh"]) == OLD_KEY

    settings.JWT_SIGNING_KEY = NEW_KEY
    settings.JWT_SIGNING_KEY_FALLBACKS = [OLD_KEY]
    assert profile(tokens["access"]).status_code == 200
    renewed = refresh(tokens["refresh"])
    assert renewed.status_code == 200
    assert signing_key_of(renewed.json()["refresh"]) == NEW_KEY
    assert signing_key_of(renewed.json()["access"]) == NEW_KEY
    assert profile(renewed.json()["access"]).status_code == 200

    # Once the old key leaves the list, what it signed is refused.
    settings.JWT_SIGNING_KEY_FALLBACKS = []
    later = sign_in(fixed_code, "bob@example.com")
    assert profile(later["access"]).status_code == 200
    stale = resigned(later["refresh"], key=OLD_KEY)
    assert refresh(stale).status_code == 401
    assert logout(stale).status_code == 401


def test_rotating_secret_key_keeps_tokens_signed_with_the_old_one_when_jwt_key_derives_from_it(fixed_code, settings):
    assert settings.JWT_SIGNING_KEY == settings.SECRET_KEY  # the suite leaves JWT_SIGNING_KEY unset
    old_secret = settings.SECRET_KEY
    tokens = sign_in(fixed_code)
    settings.SECRET_KEY = settings.JWT_SIGNING_KEY = NEW_KEY
    settings.SECRET_KEY_FALLBACKS = [old_secret]
    assert profile(tokens["access"]).status_code == 200
    renewed = refresh(tokens["refresh"])
    assert renewed.status_code == 200 and signing_key_of(renewed.json()["refresh"]) == NEW_KEY


def test_a_token_signed_with_a_key_in_no_list_is_401(fixed_code):
    tokens = sign_in(fixed_code)
    for token in (resigned(tokens["refresh"], key=STRANGER_KEY), resigned(tokens["access"], key=STRANGER_KEY)):
        assert refresh(token).status_code == 401
    assert profile(resigned(tokens["access"], key=STRANGER_KEY)).status_code == 401


@pytest.mark.parametrize("overrides, name", [
    ({"JWT_SIGNING_KEY": NEW_KEY, "JWT_SIGNING_KEY_FALLBACKS": f"{OLD_KEY},too-short"}, "JWT_SIGNING_KEY_FALLBACKS"),
    ({"SECRET_KEY_FALLBACKS": "short-old-secret"}, "SECRET_KEY_FALLBACKS"),
])
def test_a_fallback_key_shorter_than_32_characters_stops_start_up(overrides, name):
    result = start(**overrides)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"Invalid setting {name}=" in lines[0] and "too-short" not in lines[0], result.stderr


def test_good_fallback_keys_start():
    result = start(JWT_SIGNING_KEY=NEW_KEY, JWT_SIGNING_KEY_FALLBACKS=f"{OLD_KEY}, {STRANGER_KEY}",
                   SECRET_KEY_FALLBACKS=OLD_KEY)
    assert result.returncode == 0, result.stderr
