"""Every endpoint through DRF's test client: status codes and bodies exactly as the contract says."""
import json
from datetime import timedelta

import pytest
import redis
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from otp.models import Delivery, OneTimeCode
from tests.support import factories
from tests.support.http import post
from tests.support.redis_state import redis_flush
from users.models import User

pytestmark = pytest.mark.django_db
INVALID = {"detail": "Invalid or expired code.", "code": "invalid_code"}


@pytest.fixture
def client():
    return APIClient()


def sign_in(client, fixed_code, **address):
    assert post(client, "/register/", address).status_code == 202
    response = post(client, "/verify-otp/", {**address, "code": fixed_code[-1]})
    assert response.status_code == 200, response.content
    return response.json()


# --- /register/ and /login/ ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/register/", "/login/"])
def test_send_endpoints_answer_202_with_channel_and_lifetime(client, path):
    response = post(client, path, {"email": "alice@example.com"})
    assert response.status_code == 202
    assert response.json() == {"detail": "If the address can receive it, a code is on its way.",
                               "channel": "email", "expires_in": 120}
    assert post(client, path, {"mobile": "+14155552672"}).json()["channel"] == "sms"


@pytest.mark.parametrize("body, field", [
    ({}, "non_field_errors"),
    ({"email": "alice@example.com", "mobile": "+14155552671"}, "non_field_errors"),
    ({"email": "not-an-email"}, "email"),
    ({"email": "alice@example.com\r\nBcc: victim@example.com"}, "email"),
    ({"email": 5}, "email"),
    ({"email": ["alice@example.com"]}, "email"),
    ({"email": None}, "email"),
    ({"mobile": 4155552671}, "mobile"),
    ({"mobile": "12"}, "mobile"),
    ({"mobile": "%s%s%s%n"}, "mobile"),
    ({"email": "x" * 10000 + "@example.com"}, "email"),
    # An RFC 2047 encoded word, which Django's SMTP backend decoded: the code went to x@example.com.
    ({"email": "=?utf-8?q?x?=@example.com"}, "email"),
])
def test_bad_addresses_get_field_errors(client, body, field):
    response = post(client, "/register/", body)
    assert response.status_code == 400
    assert field in response.json() and isinstance(response.json()[field], list)
    assert not OneTimeCode.objects.exists()


@pytest.mark.parametrize("raw", [b"[" * 60000, b"{bad", b"\xff\xfe", b'{"email": "a@b.c"', b"{'email': 'a@b.c'}"])
def test_malformed_json_is_a_parse_error(client, raw):
    response = client.post("/register/", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error" and "detail" in response.json()


@pytest.mark.parametrize("raw", [b'{"email": ' + b"9" * 5000 + b"}", b'{"email": "a@example.com", "x": -' + b"1" * 4301 + b"}"])
def test_a_number_too_long_for_python_is_a_parse_error_that_names_no_python_function(client, raw):
    # DRF passed on CPython's "use sys.set_int_max_str_digits() to increase the limit" (an attack pass).
    response = client.post("/register/", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"detail": "JSON parse error - a number has more than 4300 digits.",
                               "code": "parse_error"}


@pytest.mark.parametrize("raw", [b"", b"null", b"[1, 2]", b'"alice@example.com"'])
def test_empty_or_non_object_body_is_a_400(client, raw):
    response = client.post("/register/", data=raw, content_type="application/json")
    assert response.status_code == 400 and "non_field_errors" in response.json()


def test_other_content_types_are_415_json(client):
    response = client.post("/register/", data="email=a@b.c", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"


def test_login_reads_the_same_for_known_and_unknown_accounts(client, redis_clean):
    factories.user(email="known@example.com")
    known = post(client, "/login/", {"email": "known@example.com"})
    unknown = post(client, "/login/", {"email": "unknown@example.com"})
    assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
    assert sorted(known.headers) == sorted(unknown.headers)
    # The API did the same work for both; whether to send is the worker's call (tests/worker).
    assert sorted(Delivery.objects.values_list("address", flat=True)) == ["known@example.com", "unknown@example.com"]
    # The throttle counted both, so the second try reads the same too.
    again_known = post(client, "/login/", {"email": "known@example.com"})
    again_unknown = post(client, "/login/", {"email": "unknown@example.com"})
    assert again_known.status_code == again_unknown.status_code == 429
    assert again_known.json() == again_unknown.json()


def test_resend_cooldown_answers_429_with_retry_after(client):
    assert post(client, "/register/", {"email": "alice@example.com"}).status_code == 202
    response = post(client, "/register/", {"email": "ALICE@example.com "})  # same address, other spelling
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 30
    assert response.json()["code"] == "throttled"


def test_per_ip_send_rate(client, settings):
    settings.OTP_IP_SEND_RATE = "3/min"
    statuses = [post(client, "/register/", {"email": f"user{i}@example.com"}).status_code for i in range(4)]
    assert statuses == [202, 202, 202, 429]
    other_ip = post(client, "/register/", {"email": "user9@example.com"}, REMOTE_ADDR="10.9.9.9")
    assert other_ip.status_code == 202


def test_per_ip_send_rate_counts_refused_requests_too(client, settings):
    # A client probing with garbage (invalid addresses, refused numbers, broken JSON) spends its own limit, as
    # docs/api.md says; the mailboxes it names are not touched.
    settings.OTP_IP_SEND_RATE = "3/min"
    refused = [post(client, "/register/", {"email": "not an address"}),
               post(client, "/login/", {"mobile": "+18005550199"}),  # toll-free: number_not_allowed
               client.post("/register/", data="{", content_type="application/json")]
    assert [r.status_code for r in refused] == [400, 400, 400]
    assert refused[1].json()["code"] == "number_not_allowed" and refused[2].json()["code"] == "parse_error"
    assert post(client, "/register/", {"email": "user@example.com"}).status_code == 429
    assert not Delivery.objects.exists()  # nothing was sent to anyone
    assert post(client, "/register/", {"email": "user@example.com"}, REMOTE_ADDR="10.9.9.9").status_code == 202


def test_per_ip_limit_uses_the_address_the_trusted_proxy_forwarded(client, settings):
    settings.OTP_IP_SEND_RATE = "1/min"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    # The client forged the first entry; the proxy appended the real one, which is what counts.
    first = post(client, "/register/", {"email": "a@example.com"}, HTTP_X_FORWARDED_FOR="1.1.1.1, 203.0.113.7")
    forged = post(client, "/register/", {"email": "b@example.com"}, HTTP_X_FORWARDED_FOR="2.2.2.2, 203.0.113.7")
    other = post(client, "/register/", {"email": "c@example.com"}, HTTP_X_FORWARDED_FOR="203.0.113.8")
    assert (first.status_code, forged.status_code, other.status_code) == (202, 429, 202)


def test_per_ip_limit_counts_an_ipv6_client_by_its_64(client, settings):
    settings.OTP_IP_SEND_RATE = "1/min"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    first = post(client, "/register/", {"email": "a@example.com"}, HTTP_X_FORWARDED_FOR="2001:db8:1:2::1")
    same_64 = post(client, "/register/", {"email": "b@example.com"}, HTTP_X_FORWARDED_FOR="2001:db8:1:2:ffff::9")
    other_64 = post(client, "/register/", {"email": "c@example.com"}, HTTP_X_FORWARDED_FOR="2001:db8:1:3::1")
    assert (first.status_code, same_64.status_code, other_64.status_code) == (202, 429, 202)


# --- /verify-otp/ ---------------------------------------------------------------------------------


def test_full_round_trip_by_mobile(client, fixed_code):
    tokens = sign_in(client, fixed_code, mobile="(415) 555-2671")
    assert set(tokens) == {"access", "refresh", "token_type", "expires_in", "device_token"}
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 300
    profile = client.get("/profile/", HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert profile.status_code == 200
    body = profile.json()
    assert set(body) == {"id", "email", "mobile", "date_joined", "last_login"}
    assert body["mobile"] == "+14155552671" and body["email"] is None


def test_address_spellings_share_one_account(client, fixed_code, settings):
    settings.OTP_RESEND_COOLDOWN_SECONDS = 1
    sign_in(client, fixed_code, email="Alice@Example.COM")
    OneTimeCode.objects.all().delete()
    User.objects.update()  # noqa: the next sign-in must find this same account
    from django.core.cache import cache
    cache.clear()
    sign_in(client, fixed_code, email="  alice@example.com")
    assert User.objects.count() == 1


@pytest.mark.parametrize("case", ["wrong", "expired", "used", "burned", "unknown", "superseded"])
def test_every_failed_verify_reads_the_same(client, fixed_code, settings, case):
    settings.OTP_MAX_ATTEMPTS = 2
    address = {"email": "alice@example.com"}
    if case != "unknown":
        post(client, "/register/", address)
    code = fixed_code[-1] if fixed_code else "123456"
    if case == "wrong":
        code = "000000"
    elif case == "expired":
        OneTimeCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    elif case == "used":
        assert post(client, "/verify-otp/", {**address, "code": code}).status_code == 200
    elif case == "burned":
        for _ in range(2):
            post(client, "/verify-otp/", {**address, "code": "000000"})
    elif case == "superseded":
        from otp.services import code_issue
        from otp.addresses import email_normalize
        code_issue(address=email_normalize("alice@example.com"), purpose="register")
    response = post(client, "/verify-otp/", {**address, "code": code})
    assert (response.status_code, response.json()) == (400, INVALID)


def test_a_cache_outage_right_after_the_code_is_consumed_still_signs_in(client, fixed_code, monkeypatch):
    # The code is consumed in a committed transaction, then the failure budget is reset in Redis: an outage
    # between the two answered 503 and burned the code (found by a new-user pass that killed Redis's connections).
    from core import ratelimit
    from otp.services import verifying

    assert post(client, "/register/", {"email": "alice@example.com"}).status_code == 202
    dead = ratelimit._RedisCounters("redis://127.0.0.1:1/0")  # nothing listens
    consume = verifying._code_consume

    def consume_then_cache_down(**kwargs):
        user = consume(**kwargs)
        monkeypatch.setattr(ratelimit, "_store", lambda: dead)
        return user

    monkeypatch.setattr(verifying, "_code_consume", consume_then_cache_down)
    response = post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]})
    assert response.status_code == 200 and response.json()["access"] and response.json()["device_token"]
    assert User.objects.filter(email="alice@example.com").exists()


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_at_verify_spends_none_of_the_failure_budget(client, fixed_code, settings,
                                                                        read_only_database):
    # A guess the database never compared is not the user's failure: one who retries through an outage must not
    # find the address locked once it is over. The send throttles are given back likewise (code_request).
    settings.OTP_MAX_FAILURES_PER_HOUR = 2
    assert post(client, "/register/", {"email": "alice@example.com"}).status_code == 202
    read_only_database.on()
    for _ in range(3):
        response = post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]})
        assert response.status_code == 503 and "database" in response.json()["detail"], response.json()
    read_only_database.off()
    read_only_database.sessions_end()  # the test client keeps its session between requests: a new one, writable
    response = post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]})
    assert response.status_code == 200, response.json()


def _writes_refused(*, table: str, operation: str) -> None:
    """PostgreSQL refuses `operation` on `table` from now on as a server gone read-only does (SQLSTATE 25006),
    until _writes_allowed; the trigger is the test's own, so it goes with the test's transaction."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                       "RAISE EXCEPTION 'read-only' USING ERRCODE = 'read_only_sql_transaction'; END $$")
        cursor.execute(f"CREATE TRIGGER refuse BEFORE {operation} ON {table} FOR EACH ROW "
                       "EXECUTE FUNCTION pg_temp.refuse()")


def _writes_allowed(*, table: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER refuse ON {table}")


def test_a_database_outage_after_the_code_was_compared_keeps_the_failure(client, fixed_code, settings):
    # Given back, a compared guess whose record the database then refused would be free: an attacker who can
    # make the database fail after the comparison (load, a failover) would guess past the budget. PostgreSQL
    # itself refuses the attempt's record here, as a server gone read-only does.
    settings.OTP_MAX_FAILURES_PER_HOUR = 2
    assert post(client, "/register/", {"email": "alice@example.com"}).status_code == 202
    _writes_refused(table="otp_onetimecode", operation="UPDATE")
    statuses = [post(client, "/verify-otp/", {"email": "alice@example.com", "code": "000000"}).status_code
                for _ in range(3)]
    assert statuses == [503, 503, 429]


@pytest.mark.parametrize("path, table, operation, with_device_token", [
    ("/register/", "users_user", "INSERT", False),  # the account born at its first verify
    ("/login/", "users_user", "UPDATE", False),  # its last login
    ("/login/", "users_tokenfamily", "INSERT", False),  # the sign-in's refresh token family
    ("/login/", "users_devicetoken", "INSERT", False),  # the new device token
    ("/login/", "users_devicetoken", "UPDATE", True),  # the device token it replaces
])
def test_a_database_outage_after_the_right_code_leaves_the_code_for_a_retry(client, fixed_code, path, table,
                                                                            operation, with_device_token):
    # The code's use was committed on its own and the token rows after it: a failover between the two answered
    # 503 with the code spent, and the user had to wait out the cooldown for another (found by a helper's review).
    body = {"email": "alice@example.com"}
    if with_device_token:
        body["device_token"] = sign_in(client, fixed_code, **body)["device_token"]
    elif path == "/login/":
        factories.user(email=body["email"])
    assert post(client, path, body).status_code == 202
    _writes_refused(table=table, operation=operation)
    response = post(client, "/verify-otp/", {**body, "code": fixed_code[-1]})
    assert response.status_code == 503 and "database" in response.json()["detail"], response.json()
    _writes_allowed(table=table)
    response = post(client, "/verify-otp/", {**body, "code": fixed_code[-1]})
    assert response.status_code == 200, response.json()
    assert User.objects.filter(email="alice@example.com").count() == 1
    assert client.get("/profile/", HTTP_AUTHORIZATION=f"Bearer {response.json()['access']}").status_code == 200


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", 123456, "１２３４５６", "", None])
def test_malformed_code_is_a_field_error(client, code):
    response = post(client, "/verify-otp/", {"email": "alice@example.com", "code": code})
    assert response.status_code == 400 and "code" in response.json()


def test_verify_failure_budget_answers_429_with_retry_after(client, fixed_code, settings):
    settings.OTP_MAX_FAILURES_PER_HOUR = 3
    post(client, "/register/", {"email": "alice@example.com"})
    for _ in range(3):
        assert post(client, "/verify-otp/", {"email": "alice@example.com", "code": "000000"}).status_code == 400
    response = post(client, "/verify-otp/", {"email": "alice@example.com", "code": fixed_code[-1]})
    assert response.status_code == 429 and int(response["Retry-After"]) > 0


def test_per_ip_verify_rate(client, settings):
    settings.OTP_IP_VERIFY_RATE = "2/min"
    statuses = [post(client, "/verify-otp/", {"email": f"u{i}@example.com", "code": "000000"}).status_code
                for i in range(3)]
    assert statuses == [400, 400, 429]


# --- tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer garbage", "Token abc", "Bearer a.b.c"])
def test_profile_without_a_valid_token_is_401(client, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get("/profile/", **extra)
    assert response.status_code == 401
    assert "detail" in response.json() and "code" in response.json()
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path, body, header", [
    ("/token/refresh/", {"refresh": "x.y.z"}, None),
    ("/logout/", {"refresh": "x.y.z"}, None),
    ("/logout/", {"refresh": "x.y.z"}, "Bearer a b"),
    ("/logout/", {"refresh": "x.y.z"}, "Bearer x.y.z"),
])
def test_every_401_names_the_bearer_scheme(client, path, body, header):
    # RFC 9110 section 15.5.2: a 401 MUST carry WWW-Authenticate. /token/refresh/ and /logout/ judge their tokens
    # themselves, outside DRF's authentication, which is what adds the header (found by an attack pass).
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = post(client, path, body, **extra)
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_expired_access_token_is_401(client, fixed_code, settings):
    from rest_framework_simplejwt.tokens import AccessToken

    tokens = sign_in(client, fixed_code, email="alice@example.com")
    token = AccessToken(tokens["access"])
    # Past its expiry by more than the leeway for clocks between hosts (RFC 7519 section 4.1.4).
    token.set_exp(lifetime=timedelta(seconds=-(settings.CLOCK_SKEW_TOLERANCE_SECONDS + 1)))
    response = client.get("/profile/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 401 and response.json()["code"] == "token_not_valid"


def test_refresh_rotates_and_the_old_refresh_stops_working(client, fixed_code):
    tokens = sign_in(client, fixed_code, email="alice@example.com")
    rotated = post(client, "/token/refresh/", {"refresh": tokens["refresh"]})
    assert rotated.status_code == 200 and set(rotated.json()) == {"access", "refresh"}
    assert rotated.json()["refresh"] != tokens["refresh"]
    assert client.get("/profile/", HTTP_AUTHORIZATION=f"Bearer {rotated.json()['access']}").status_code == 200
    replay = post(client, "/token/refresh/", {"refresh": tokens["refresh"]})
    assert replay.status_code == 401 and replay.json()["code"] == "token_not_valid"
    assert post(client, "/token/refresh/", {"refresh": "garbage"}).status_code == 401
    assert post(client, "/token/refresh/", {"refresh": tokens["access"]}).status_code == 401


def test_refresh_ignores_a_bad_authorization_header(client, fixed_code):
    tokens = sign_in(client, fixed_code, email="alice@example.com")
    response = post(client, "/token/refresh/", {"refresh": tokens["refresh"]}, HTTP_AUTHORIZATION="Bearer garbage")
    assert response.status_code == 200


def test_logout_answers_205_without_body_and_revokes_the_refresh(client, fixed_code):
    tokens = sign_in(client, fixed_code, email="alice@example.com")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {tokens['access']}"}
    response = post(client, "/logout/", {"refresh": tokens["refresh"]}, **auth)
    assert response.status_code == 205 and response.content == b""
    assert post(client, "/token/refresh/", {"refresh": tokens["refresh"]}).status_code == 401
    # The contract: 205 again for a token already revoked, with or without an access token.
    assert post(client, "/logout/", {"refresh": tokens["refresh"]}, **auth).status_code == 205
    assert post(client, "/logout/", {"refresh": tokens["refresh"]}).status_code == 205


# --- errors, health, docs ---------------------------------------------------------------------------


def test_unknown_path_and_wrong_method_are_json(client):
    missing = client.get("/nope/")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not found.", "code": "not_found"}
    wrong = client.get("/register/")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_readyz_reuses_its_broker_connection(client):
    # Each probe opened a new connection to the broker's Redis (an attack pass: 21 connections for 20 probes, and
    # hundreds of sockets in TIME-WAIT), and /readyz is public.
    from django.conf import settings

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    assert client.get("/readyz").status_code == 200
    before = broker.info("stats")["total_connections_received"]
    for _ in range(20):
        assert client.get("/readyz").status_code == 200
    assert broker.info("stats")["total_connections_received"] - before <= 3


def test_readyz_names_the_dependency_that_fails(client, monkeypatch):
    from core import ratelimit

    dead = ratelimit._RedisCounters("redis://127.0.0.1:1/0")  # nothing listens
    monkeypatch.setattr(ratelimit, "_store", lambda: dead)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == "cache" and response.json()["code"] == "not_ready"


def test_redis_outage_is_a_503_json_not_a_500(client, monkeypatch):
    from core import ratelimit

    dead = ratelimit._RedisCounters("redis://127.0.0.1:1/0")  # nothing listens
    monkeypatch.setattr(ratelimit, "_store", lambda: dead)
    response = post(client, "/register/", {"email": "alice@example.com"})
    assert response.status_code == 503 and response.json()["code"] == "service_unavailable"
    assert response.has_header("Retry-After")


def test_schema_covers_every_route_and_docs_render(client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = set(json.loads(schema.content)["paths"])
    assert {"/register/", "/login/", "/verify-otp/", "/profile/", "/token/refresh/", "/logout/",
            "/webhooks/twilio/status/", "/healthz", "/readyz"} <= paths
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    assert b"cdn" not in docs.content.lower()  # assets come from the sidecar, so it works offline


@pytest.mark.parametrize("method", ["OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE"])
@pytest.mark.parametrize("accept", ["*/*", "text/html"])
def test_the_docs_page_answers_other_methods_with_a_json_405(client, method, accept):
    # OPTIONS was a 500: DRF's metadata answer went to the page's HTML renderer, which has no template for it.
    # The others were text/html "405 Method Not Allowed".
    response = client.generic(method, "/api/docs/", HTTP_ACCEPT=accept)
    assert response.status_code == 405, response.content[:200]
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "method_not_allowed"
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "POST"])
def test_the_docs_page_answers_an_accept_it_cannot_serve_with_a_json_406(client, method):
    # As every API endpoint does (DRF negotiates before it looks at the method); it was text/html.
    response = client.generic(method, "/api/docs/", HTTP_ACCEPT="application/xml")
    assert response.status_code == 406, response.content[:200]
    assert response.json()["code"] == "not_acceptable"


# --- Twilio status webhook ------------------------------------------------------------------------


def post_form(client, params, **extra):
    from urllib.parse import urlencode

    return client.post("/webhooks/twilio/status/", urlencode(params),
                       content_type="application/x-www-form-urlencoded", **extra)


def _signed(settings, params):
    from twilio.request_validator import RequestValidator

    url = f"{settings.PUBLIC_BASE_URL}/webhooks/twilio/status/"
    return RequestValidator(settings.TWILIO_AUTH_TOKEN).compute_signature(url, params)


def test_twilio_webhook_rejects_unsigned_and_forged_calls(client, settings):
    settings.TWILIO_AUTH_TOKEN = "test-auth-token"
    params = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    assert post_form(client, params).status_code == 403
    forged = post_form(client, params, HTTP_X_TWILIO_SIGNATURE="bm9wZQ==")
    assert forged.status_code == 403 and forged.json()["code"] == "permission_denied"


def test_twilio_webhook_updates_the_delivery(client, settings):
    settings.TWILIO_AUTH_TOKEN = "test-auth-token"
    delivery = factories.delivery_row("+14155552671", channel="sms", status="sent", provider_id="SM1",
                                      expires_at=timezone.now())
    params = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    response = post_form(client, params, HTTP_X_TWILIO_SIGNATURE=_signed(settings, params))
    assert response.status_code == 204 and response.content == b""
    delivery.refresh_from_db()
    assert delivery.provider_status == "delivered"


# --- SMS destinations (SMS pumping) ----------------------------------------------------------------


@pytest.mark.parametrize("mobile, why", [
    ("+1 900 555 1234", "premium rate"),
    ("+1 800 555 1234", "toll free"),
    ("+44 7400 123456", "another country"),
    ("+44 90 1234 5678", "another country's premium rate"),
    ("+881 6 1234 5678", "satellite: phonenumbers calls it MOBILE, its region is 001"),
])
@pytest.mark.parametrize("path", ["/register/", "/login/"])
def test_sms_to_a_refused_destination_is_400_number_not_allowed(client, path, mobile, why):
    response = post(client, path, {"mobile": mobile})
    assert response.status_code == 400, why
    assert response.json()["code"] == "number_not_allowed" and response.json()["detail"]
    assert not Delivery.objects.exists()


def test_an_invalid_number_keeps_its_field_error(client):
    response = post(client, "/register/", {"mobile": "+979 1234 5678"})
    assert response.status_code == 400 and "mobile" in response.json()


def test_allowed_regions_and_number_types_follow_the_settings(client, settings):
    settings.OTP_SMS_ALLOWED_REGIONS = ["US", "GB"]
    assert post(client, "/register/", {"mobile": "+44 7400 123456"}).status_code == 202
    settings.OTP_SMS_ALLOWED_REGIONS = ["*"]
    assert post(client, "/register/", {"mobile": "+881 6 1234 5678"}).json()["code"] == "number_not_allowed"
    assert post(client, "/register/", {"mobile": "+1 900 555 1234"}).json()["code"] == "number_not_allowed"


# --- Mail bombing through plus-tags ------------------------------------------------------------------


def test_plus_tags_share_the_mailbox_cooldown_and_hourly_cap(client, settings):
    settings.OTP_RESEND_COOLDOWN_SECONDS = 1
    first = post(client, "/register/", {"email": "victim+1@example.com"})
    second = post(client, "/register/", {"email": "Victim+2@Example.com"})
    assert (first.status_code, second.status_code) == (202, 429)
    assert Delivery.objects.get().address == "victim+1@example.com"  # sent as given


def test_plus_tag_bombing_stops_at_the_mailbox_hourly_cap(client, settings, redis_clean):
    from otp import throttles
    from otp.addresses import email_normalize

    settings.OTP_SENDS_PER_HOUR = 3
    statuses = []
    for n in range(6):
        statuses.append(post(client, "/register/", {"email": f"victim+{n}@example.com"}).status_code)
        redis_flush(redis_clean, "*otp:cooldown*")  # past each cooldown
    assert statuses == [202, 202, 202, 429, 429, 429]
    assert (throttles.SENDS_PER_HOUR.key(email_normalize("victim@example.com"))
            == throttles.SENDS_PER_HOUR.key(email_normalize("victim+9@example.com")))


def test_wrong_guesses_at_a_plus_tag_do_not_spend_the_mailbox_owners_budget(client, settings, fixed_code):
    settings.OTP_MAX_FAILURES_PER_HOUR = 3
    for _ in range(4):
        post(client, "/verify-otp/", {"email": "victim+1@example.com", "code": "000000"})
    assert post(client, "/verify-otp/", {"email": "victim+1@example.com", "code": "000000"}).status_code == 429
    assert post(client, "/register/", {"email": "victim@example.com"}).status_code == 202
    verified = post(client, "/verify-otp/", {"email": "victim@example.com", "code": fixed_code[-1]})
    assert verified.status_code == 200


@pytest.mark.parametrize("path", ["/register/", "/login/", "/verify-otp/", "/token/refresh/", "/logout/",
                                  "/webhooks/twilio/status/"])
def test_a_415_for_the_bodys_charset_carries_allow_as_every_api_answer_does(client, path):
    # api.md: `Allow` on every answer of an API endpoint. The charset's 415 is answered before the view (by
    # core.middleware.BodyCharsetMiddleware) and had none (found by a new-user pass).
    other_type = client.generic("POST", path, b"x", content_type="text/plain")
    charset = client.generic("POST", path, b"{}", content_type="application/json; charset=utf-16")
    assert other_type.status_code == charset.status_code == 415
    assert charset["Allow"] == other_type["Allow"]
