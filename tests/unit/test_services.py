"""The service rules, called directly, on the real PostgreSQL and Redis."""
import threading
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings as settings_h, strategies as st
from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from core.errors import InvalidCode, RateLimited, TokenRejected
from otp import codes, providers, queries, services, throttles
from otp.providers.twilio import TwilioSmsProvider
from otp.services import delivering
from otp.models import Delivery, OneTimeCode, Purpose
from otp.providers import SendOutcomeUnknownError, SendPermanentError, SendRecipientRefusedError, SendTransientError
from tests.support import factories
from tests.support.redis_state import redis_flush
from users import services as user_services
from users.models import User

pytestmark = pytest.mark.django_db


def test_register_issues_a_hashed_code_and_a_queued_delivery(email_address, fixed_code):
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    code = OneTimeCode.objects.get()
    assert code.address == "alice@example.com" and code.status == OneTimeCode.Status.ACTIVE
    assert code.code_hash != fixed_code[0] and fixed_code[0] not in code.code_hash
    assert abs((code.expires_at - code.created_at).total_seconds() - 120) < 1
    delivery = Delivery.objects.get()
    assert (delivery.address, delivery.channel, delivery.status) == ("alice@example.com", "email", "queued")
    assert not User.objects.exists()


def test_database_never_holds_the_plaintext_code(email_address, fixed_code):
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    with connection.cursor() as cursor:
        for table in (OneTimeCode._meta.db_table, Delivery._meta.db_table):
            cursor.execute(f"SELECT * FROM {table}")
            assert fixed_code[0] not in repr(cursor.fetchall())


def test_verify_creates_the_account_once_and_consumes_the_code(email_address, fixed_code):
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    tokens = services.code_verify(address=email_address, code=fixed_code[0])
    user = User.objects.get()
    assert user.email == "alice@example.com" and user.mobile is None and user.last_login is not None
    assert RefreshToken(tokens.refresh)["user_id"] == str(user.id)
    assert OneTimeCode.objects.get().status == OneTimeCode.Status.USED
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])


def test_login_for_unknown_account_does_the_same_work_and_counts_the_throttle(email_address, fixed_code):
    services.code_request(address=email_address, purpose=Purpose.LOGIN)
    assert OneTimeCode.objects.get().purpose == Purpose.LOGIN
    assert Delivery.objects.get().purpose == Purpose.LOGIN
    with pytest.raises(RateLimited):  # the cooldown was taken all the same
        services.code_request(address=email_address, purpose=Purpose.LOGIN)
    with pytest.raises(InvalidCode):  # and the code opens nothing
        services.code_verify(address=email_address, code=fixed_code[0])
    assert not User.objects.exists()


def test_login_code_for_unknown_account_is_never_sent(email_address, sender):
    recorder = sender()
    delivery = services.code_issue(address=email_address, purpose=Purpose.LOGIN)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "No account" in delivery.last_error and not recorder.sent
    factories.user(email="alice@example.com")
    delivery = services.code_issue(address=email_address, purpose=Purpose.LOGIN)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    assert len(recorder.sent) == 1


@pytest.mark.parametrize("account", ["by mobile", "deactivated", "other channel"])
def test_login_code_goes_only_to_the_active_account_of_that_address(mobile_address, sender, account):
    # The claim answers whether an active account has the address; the email and mobile columns both count.
    recorder = sender()
    if account == "by mobile":
        factories.user(mobile=mobile_address.value)
    elif account == "deactivated":
        factories.user(mobile=mobile_address.value, is_active=False)
    else:
        factories.user(email="alice@example.com")
    delivery = services.code_issue(address=mobile_address, purpose=Purpose.LOGIN)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert (delivery.status == "sent") == (account == "by mobile")
    assert [to for to, _ in recorder.sent] == ([mobile_address.value] if account == "by mobile" else [])


def test_login_for_known_account_issues_a_code(email_address, fixed_code):
    factories.user(email="alice@example.com")
    services.code_request(address=email_address, purpose=Purpose.LOGIN)
    assert OneTimeCode.objects.get().purpose == Purpose.LOGIN
    services.code_verify(address=email_address, code=fixed_code[0])


def test_login_code_never_creates_an_account(email_address, fixed_code):
    user = factories.user(email="alice@example.com")
    services.code_request(address=email_address, purpose=Purpose.LOGIN)
    user.delete()
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])
    assert not User.objects.exists()


def test_new_code_supersedes_the_older_one(email_address, fixed_code, settings):
    settings.OTP_RESEND_COOLDOWN_SECONDS = 1
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    first, second = fixed_code
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=first)
    services.code_verify(address=email_address, code=second)
    assert sorted(OneTimeCode.objects.values_list("status", flat=True)) == ["superseded", "used"]


def test_expired_code_is_refused(email_address, fixed_code):
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    OneTimeCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])
    assert not User.objects.exists()


def test_wrong_code_burns_after_max_attempts(email_address, fixed_code, settings):
    settings.OTP_MAX_ATTEMPTS = 3
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    for _ in range(3):
        with pytest.raises(InvalidCode):
            services.code_verify(address=email_address, code="000000")
    code = OneTimeCode.objects.get()
    assert (code.attempts, code.status) == (3, OneTimeCode.Status.BURNED)
    with pytest.raises(InvalidCode):  # even the right code is now refused
        services.code_verify(address=email_address, code=fixed_code[0])


def test_failure_budget_spans_fresh_codes(email_address, fixed_code, settings):
    settings.OTP_MAX_ATTEMPTS = 5
    settings.OTP_MAX_FAILURES_PER_HOUR = 7
    wrong = 0
    for _ in range(2):  # asking for a fresh code does not reset the budget
        services.code_issue(address=email_address, purpose=Purpose.REGISTER)
        for _ in range(5):
            try:
                services.code_verify(address=email_address, code="000000")
            except InvalidCode:
                wrong += 1
            except RateLimited as exc:
                assert 0 < exc.wait_seconds <= 3600
    assert wrong == 7
    with pytest.raises(RateLimited):  # past the budget even the right code waits
        services.code_verify(address=email_address, code=fixed_code[-1])


def test_success_does_not_spend_the_failure_budget(email_address, fixed_code, settings):
    settings.OTP_MAX_FAILURES_PER_HOUR = 1
    for _ in range(3):
        services.code_issue(address=email_address, purpose=Purpose.REGISTER)
        services.code_verify(address=email_address, code=fixed_code[-1])


def test_resend_cooldown_and_hourly_cap(email_address, settings, redis_clean):
    settings.OTP_RESEND_COOLDOWN_SECONDS = 30
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    with pytest.raises(RateLimited) as exc:
        services.code_request(address=email_address, purpose=Purpose.REGISTER)
    assert 28 <= exc.value.wait_seconds <= 30

    settings.OTP_SENDS_PER_HOUR = 3
    for _ in range(2):
        redis_flush(redis_clean, "*otp:cooldown:*")  # as if the cooldown had passed
        services.code_request(address=email_address, purpose=Purpose.REGISTER)
    redis_flush(redis_clean, "*otp:cooldown:*")
    with pytest.raises(RateLimited) as exc:
        services.code_request(address=email_address, purpose=Purpose.REGISTER)
    assert 0 < exc.value.wait_seconds <= 3600
    assert Delivery.objects.count() == 3


def test_throttle_keys_hold_no_address_in_clear(email_address, redis_clean):
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    keys = [key.decode() for key in redis_clean.keys("*")]
    assert keys and not any("alice" in key for key in keys)


def test_a_refresh_token_from_before_families_refreshes_once_and_its_reuse_revokes_the_new_one():
    alice = factories.user(email="alice@example.com")
    legacy = str(RefreshToken.for_user(alice))  # simplejwt's own, as issued before this release: no `fam` claim
    rotated = user_services.token_refresh(refresh=legacy)
    with pytest.raises(TokenRejected):
        user_services.token_refresh(refresh=legacy)
    with pytest.raises(TokenRejected):
        user_services.token_refresh(refresh=rotated.refresh)


def test_logout_of_a_token_from_before_families_checks_the_access_token_then_revokes_it():
    alice = factories.user(email="alice@example.com")
    bob = factories.user(email="bob@example.com")
    legacy = str(RefreshToken.for_user(alice))
    with pytest.raises(TokenRejected):
        user_services.token_revoke(refresh=legacy, access=user_services.token_pair_issue(user=bob).access)
    user_services.token_revoke(refresh=legacy, access=str(RefreshToken.for_user(alice).access_token))
    user_services.token_revoke(refresh=legacy)  # again: nothing more to do, and no error
    with pytest.raises(TokenRejected):
        user_services.token_refresh(refresh=legacy)


def test_a_token_blacklisted_before_families_is_not_revived():
    alice = factories.user(email="alice@example.com")
    legacy = RefreshToken.for_user(alice)
    legacy.blacklist()  # what the old logout and rotation did
    with pytest.raises(TokenRejected):
        user_services.token_refresh(refresh=str(legacy))


def test_sign_ins_are_flushed_once_every_token_of_them_has_expired():
    from users.models import TokenFamily

    alice = factories.user(email="alice@example.com")
    expired = user_services.token_pair_issue(user=alice)
    live = user_services.token_pair_issue(user=alice)
    expired_family = RefreshToken(expired.refresh)["fam"]
    TokenFamily.objects.filter(id=expired_family).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.token_blacklist_flush() == 1
    assert list(TokenFamily.objects.values_list("id", flat=True)) == [RefreshToken(live.refresh)["fam"]]


# --- Delivery -----------------------------------------------------------------------------------


class RecordingSender:
    """Stands in for the vendor (SMTP server or Twilio), never for our own database or broker."""

    name = "recording"

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.sent = []

    def send(self, *, to, message, delivery_id):
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, Exception):
            raise outcome
        self.sent.append((to, message))
        return f"provider-{len(self.sent)}"


@pytest.fixture
def sender(monkeypatch):
    holder = {"sender": RecordingSender()}
    monkeypatch.setattr(providers, "provider_for", lambda channel: holder["sender"])

    def use(*outcomes):
        holder["sender"] = RecordingSender(*outcomes)
        return holder["sender"]

    return use


def test_delivery_is_sent_once_even_when_the_job_runs_twice(email_address, sender):
    recorder = sender()
    delivery = factories.issued_code(email_address)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert len(recorder.sent) == 1 and "123456" in recorder.sent[0][1].text
    assert (delivery.status, delivery.provider_id, delivery.attempts) == ("sent", "provider-1", 1)
    assert delivery.sent_at is not None and "123456" not in repr(Delivery.objects.values().get())


@pytest.mark.django_db(transaction=True)  # outside a transaction, as in a worker
def test_no_database_connection_is_held_while_the_provider_answers(email_address, sender):
    recorder = sender()
    connection_held = []

    def send(**kwargs):
        connection_held.append(connection.connection is not None)
        return RecordingSender.send(recorder, **kwargs)

    recorder.send = send
    delivery = factories.issued_code(email_address)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert connection_held == [False]
    assert delivery.status == "sent" and delivery.provider_id == "provider-1"


# The pool's wait for a connection in these tests, in seconds: the settings' 5 s made each test wait 5 s for
# what 1 s shows as well.
HELD_POOL_TIMEOUT_SECONDS = 1.0


def _pool_held_while_sending(recorder, monkeypatch, *, seconds):
    """Makes the sender take every connection of this process's pool, as a busy worker's other threads would,
    and give them back `seconds` later: the first try to record the send waits out the pool's timeout, which is
    HELD_POOL_TIMEOUT_SECONDS for the test."""
    from psycopg_pool import PoolTimeout

    pool = connection.pool
    monkeypatch.setattr(pool, "timeout", HELD_POOL_TIMEOUT_SECONDS)

    def send(**kwargs):
        held = []
        while True:
            try:
                held.append(pool.getconn(timeout=0.2))
            except PoolTimeout:
                break
        threading.Timer(seconds, lambda: [pool.putconn(conn) for conn in held]).start()
        return RecordingSender.send(recorder, **kwargs)

    recorder.send = send


@pytest.mark.django_db(transaction=True)
def test_an_accepted_send_is_recorded_when_the_database_answers_again(email_address, sender, monkeypatch):
    recorder = sender()
    # Past the first try's wait, inside the later tries.
    _pool_held_while_sending(recorder, monkeypatch, seconds=HELD_POOL_TIMEOUT_SECONDS + 0.3)
    delivery = factories.issued_code(email_address)
    services.delivery_send(delivery_id=delivery.id, code="123456")  # raises nothing: no second run, no resend
    delivery.refresh_from_db()
    assert len(recorder.sent) == 1
    assert (delivery.status, delivery.provider_id) == ("sent", "provider-1")


@pytest.mark.django_db(transaction=True)
def test_an_accepted_send_the_database_never_records_is_not_run_again(email_address, sender, monkeypatch, caplog):
    monkeypatch.setattr(delivering, "SENT_RECORD_PAUSES", ())  # one try, so the test does not wait out all of them
    recorder = sender()
    _pool_held_while_sending(recorder, monkeypatch, seconds=HELD_POOL_TIMEOUT_SECONDS + 0.3)
    delivery = factories.issued_code(email_address)
    services.delivery_send(delivery_id=delivery.id, code="123456")  # no database error reaches the task
    assert len(recorder.sent) == 1
    assert f"delivery {delivery.id} was accepted by email (provider id provider-1) but not recorded" in caplog.text
    assert Delivery.objects.get(id=delivery.id).status == "sending"  # waits in the pool until it is given back


def test_transient_failure_asks_for_a_retry_with_backoff(email_address, sender, settings):
    settings.OTP_SEND_RETRY_BACKOFF_SECONDS = 2
    recorder = sender(SendTransientError("SMTP 451"))
    delivery = factories.issued_code(email_address)
    tried_before(delivery, 2)
    with pytest.raises(services.DeliveryRetry) as exc:
        services.delivery_send(delivery_id=delivery.id, code="123456")
    assert 4 <= exc.value.countdown <= 8  # half to all of 2 * 2^2
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error, delivery.attempts) == ("queued", "SMTP 451", 3)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(recorder.sent) == 1


def tried_before(delivery: Delivery, tries: int) -> None:
    """As if `tries` claims of `delivery` had each ended in a transient failure put back in the queue."""
    Delivery.objects.filter(id=delivery.id).update(attempts=tries)


def test_transient_failures_stop_at_max_retries(email_address, sender, settings):
    settings.OTP_SEND_MAX_RETRIES = 2
    sender(SendTransientError("down"))
    delivery = factories.issued_code(email_address)
    tried_before(delivery, 2)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert delivery.status == "failed"


def test_no_retry_is_scheduled_past_the_codes_expiry(email_address, sender, settings):
    settings.OTP_SEND_RETRY_BACKOFF_SECONDS = 100
    sender(SendTransientError("down"))
    delivery = factories.issued_code(email_address)
    tried_before(delivery, 2)
    services.delivery_send(delivery_id=delivery.id, code="123456")  # 200..400 s > 120 s left
    delivery.refresh_from_db()
    assert delivery.status == "failed"


def test_a_job_put_back_without_a_try_spends_none_of_the_send_retries(email_address, sender, settings):
    # A review: the job's own retry count stood for the tries made, and a job that waited a few seconds for a worker
    # holding its key (a put-back a second) gave up at its first transient failure; past 1,023 put-backs the
    # backoff's 2**n overflowed a float.
    settings.OTP_SEND_MAX_RETRIES = 2
    sender(SendTransientError("SMTP 451"))
    delivery = factories.issued_code(email_address)
    with pytest.raises(services.DeliveryRetry):  # its first try, whatever the job's retry count says by now
        services.delivery_send(delivery_id=delivery.id, code="123456")
    assert 0 < delivering.delivery_retry_countdown(retries_done=5000) <= settings.OTP_SEND_RETRY_BACKOFF_SECONDS * 2**20


def test_permanent_failure_is_recorded_and_not_retried(email_address, sender):
    recorder = sender(SendPermanentError("Twilio 400 (code 21211): invalid number"))
    delivery = factories.issued_code(email_address)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "21211" in delivery.last_error and not recorder.sent


def test_an_unknown_outcome_is_recorded_counted_and_never_sent_again(email_address, sender, monkeypatch):
    counted = []
    monkeypatch.setattr(delivering, "metric_count", lambda name, **labels: counted.append((name, labels)))
    recorder = sender(SendOutcomeUnknownError("Twilio connection: ReadTimeout; asked Twilio: no such message"))
    delivery = factories.issued_code(email_address)

    services.delivery_send(delivery_id=delivery.id, code="123456")  # no retry asked for
    services.delivery_send(delivery_id=delivery.id, code="123456")  # a redelivered job

    delivery.refresh_from_db()
    assert recorder.sent == []  # the one try raised; the second run sent nothing
    assert (delivery.status, delivery.attempts, delivery.lease_until) == ("unknown", 1, None)
    assert "ReadTimeout" in delivery.last_error and delivery.provider == "locmem" and delivery.sent_at is None
    assert counted == [("otp_deliveries_total", {"channel": "email", "status": "unknown"})]


@pytest.mark.django_db(transaction=True)
def test_an_unknown_outcome_the_database_never_records_is_not_run_again(email_address, sender, monkeypatch, caplog):
    # Like an accepted send: a database error must not reach the task, whose retry would send again.
    monkeypatch.setattr(delivering, "SENT_RECORD_PAUSES", ())
    recorder = sender()
    _pool_held_while_sending(recorder, monkeypatch, seconds=HELD_POOL_TIMEOUT_SECONDS + 0.3)
    holding_send = recorder.send

    def send_then_lose_the_answer(**kwargs):
        holding_send(**kwargs)
        raise SendOutcomeUnknownError("Twilio connection: ReadTimeout")

    recorder.send = send_then_lose_the_answer
    delivery = factories.issued_code(email_address)
    services.delivery_send(delivery_id=delivery.id, code="123456")  # no database error reaches the task
    assert f"delivery {delivery.id} was left unknown by email (provider id none) but not recorded" in caplog.text
    assert Delivery.objects.get(id=delivery.id).status == "sending"  # waits in the pool until it is given back


# --- A code no provider took gives way to the one before it -------------------------------------------------


def code_mailed(address, fixed_code: list[str]) -> Delivery:
    """A /register/ code for `address`, issued (its code the next of `fixed_code`, the fixture's list) and handed to
    the provider the test's `sender` stands for."""
    delivery = services.code_issue(address=address, purpose=Purpose.REGISTER)
    services.delivery_send(delivery_id=delivery.id, code=fixed_code[-1])
    return delivery


def _not_sent_for_no_account(email_address, settings):
    return dict(purpose=Purpose.LOGIN)  # the address has no account: a /login/ sends nothing


def _not_sent_for_a_spent_budget(email_address, settings):
    settings.OTP_EMAIL_PER_DOMAIN_PER_HOUR, settings.OTP_EMAIL_DEVICE_SHARE = 1, 0  # the first code spent it
    return {}


def _not_sent_to_a_suppressed_recipient(email_address, settings):
    return dict(before_send=lambda: throttles.recipient_suppress(address=email_address))


def _refused_by_the_provider(email_address, settings):
    return dict(outcomes=[SendPermanentError("SMTP 554 transaction failed")])


def _recipient_refused(email_address, settings):
    return dict(outcomes=[SendRecipientRefusedError("SMTP 550 no such user")])


def _transient_failures_given_up(email_address, settings):
    settings.OTP_SEND_MAX_RETRIES = 0
    return dict(outcomes=[SendTransientError("SMTP 451 try later")])


def _job_refused_unread(email_address, settings):
    return dict(refuse=True)  # its sealed code did not open (otp.tasks)


NOT_SENT = [_not_sent_for_no_account, _not_sent_for_a_spent_budget, _not_sent_to_a_suppressed_recipient,
            _refused_by_the_provider, _recipient_refused, _transient_failures_given_up, _job_refused_unread]


@pytest.mark.parametrize("case", NOT_SENT, ids=[case.__name__.strip("_") for case in NOT_SENT])
def test_a_code_no_provider_took_gives_way_to_the_code_before_it(email_address, sender, fixed_code, settings,
                                                                redis_clean, case):
    # The known-failures pass's input: during a sign-up (no account yet), someone's /login/ for the address sent
    # nothing but superseded the code just mailed, and the user's right code answered "invalid".
    how = case(email_address, settings)
    recorder = sender()
    code_mailed(email_address, fixed_code)
    assert len(recorder.sent) == 1
    recorder = sender(*how.get("outcomes", []))
    how.get("before_send", lambda: None)()
    unsent = services.code_issue(address=email_address, purpose=how.get("purpose", Purpose.REGISTER))
    if how.get("refuse"):
        services.delivery_refuse(delivery_id=unsent.id, reason=services.PAYLOAD_REFUSED_ERROR)
    else:
        services.delivery_send(delivery_id=unsent.id, code=fixed_code[1])
    unsent.refresh_from_db()
    assert unsent.status == "failed" and not recorder.sent
    assert sorted(OneTimeCode.objects.values_list("status", flat=True)) == ["active", "unsent"]
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[1])  # the code nobody received opens nothing
    services.code_verify(address=email_address, code=fixed_code[0])  # the code the user holds signs in


@pytest.mark.parametrize("outcome", ["sent", "unknown"])
def test_a_code_a_provider_took_or_may_have_taken_still_supersedes(email_address, sender, fixed_code, outcome):
    sender()
    code_mailed(email_address, fixed_code)
    sender(SendOutcomeUnknownError("SMTP: no reply to the data") if outcome == "unknown" else "ok")
    newer = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    services.delivery_send(delivery_id=newer.id, code=fixed_code[1])
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])
    assert sorted(OneTimeCode.objects.values_list("status", flat=True)) == ["active", "superseded"]


def test_unsent_codes_in_a_row_give_way_to_the_last_one_sent(email_address, sender, fixed_code):
    sender()
    code_mailed(email_address, fixed_code)
    for code in ("654321", "111222"):
        login = services.code_issue(address=email_address, purpose=Purpose.LOGIN)
        services.delivery_send(delivery_id=login.id, code=code)
    assert sorted(OneTimeCode.objects.values_list("status", flat=True)) == ["active", "unsent", "unsent"]
    services.code_verify(address=email_address, code=fixed_code[0])


@pytest.mark.parametrize("before", ["used", "expired", "burned", "none"])
def test_an_unsent_code_revives_no_code_that_was_used_expired_burned_or_never_there(
        email_address, sender, fixed_code, settings, before):
    sender()
    if before != "none":
        code_mailed(email_address, fixed_code)
        status = {"used": "used", "burned": "burned"}.get(before, "active")
        OneTimeCode.objects.update(status=status)
        if before == "expired":
            OneTimeCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    login = services.code_issue(address=email_address, purpose=Purpose.LOGIN)
    services.delivery_send(delivery_id=login.id, code="654321")
    assert not OneTimeCode.objects.filter(status="active").exists()


def test_an_unsent_code_already_superseded_by_a_newer_one_revives_nothing(email_address, sender, fixed_code):
    # The worker takes the login job only after the user asked again: the newest code is theirs to use.
    sender()
    code_mailed(email_address, fixed_code)
    login = services.code_issue(address=email_address, purpose=Purpose.LOGIN)
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    services.delivery_send(delivery_id=login.id, code=fixed_code[1])
    assert sorted(OneTimeCode.objects.values_list("status", flat=True)) == ["active", "superseded", "unsent"]
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])
    services.code_verify(address=email_address, code=fixed_code[2])


def test_a_purge_between_the_supersede_and_the_withdrawal_leaves_the_code_to_revive(email_address, sender,
                                                                                  fixed_code):
    # Retries can take longer than beat's interval: the purge used to delete every code not active.
    sender()
    code_mailed(email_address, fixed_code)
    sender(SendPermanentError("SMTP 554"))
    refused = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    services.code_purge()
    services.delivery_send(delivery_id=refused.id, code=fixed_code[1])
    services.code_verify(address=email_address, code=fixed_code[0])


def test_a_code_withdrawn_after_it_was_superseded_is_never_revived(email_address, sender, fixed_code):
    sender()
    code_mailed(email_address, fixed_code)
    login = services.code_issue(address=email_address, purpose=Purpose.LOGIN)
    refused = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    services.delivery_send(delivery_id=login.id, code=fixed_code[1])  # unsent, already superseded
    sender(SendPermanentError("SMTP 554"))
    services.delivery_send(delivery_id=refused.id, code=fixed_code[2])  # unsent: the mailed code is the user's
    for never_received in fixed_code[1:]:
        with pytest.raises(InvalidCode):
            services.code_verify(address=email_address, code=never_received)
    services.code_verify(address=email_address, code=fixed_code[0])


def test_a_code_superseded_by_a_code_that_was_used_never_comes_back(email_address, sender, fixed_code):
    # A review's input: the purge deleted the used code that stood between, and a later unsent login revived the
    # code before it, still in the user's mailbox, after a newer code had been used.
    sender()
    for code in ("123456", "654321"):  # A, then B, which supersedes it (fixed_code pins these two)
        delivery = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
        services.delivery_send(delivery_id=delivery.id, code=code)
    services.code_verify(address=email_address, code=fixed_code[1])  # B is used
    services.code_purge()
    login = services.code_issue(address=email_address, purpose=Purpose.LOGIN)
    sender(SendPermanentError("SMTP 554"))
    services.delivery_send(delivery_id=login.id, code=fixed_code[2])
    assert not OneTimeCode.objects.filter(status="active").exists()
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])


def test_a_code_a_crashed_run_may_have_sent_is_never_withdrawn(email_address, sender, fixed_code):
    # A review's input: the run that took over a lapsed lease found the delivery unsendable (here the provider's
    # refusal; a spent budget or a deleted account alike) and withdrew a code the first run had handed over.
    sender()
    code_mailed(email_address, fixed_code)
    handed = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    now = timezone.now()
    assert queries.delivery_claim(delivery_id=handed.id, now=now, lease_until=now - timedelta(seconds=1))  # then died
    sender(SendPermanentError("SMTP 554"))
    services.delivery_send(delivery_id=handed.id, code=fixed_code[1])
    handed.refresh_from_db()
    assert (handed.status, handed.taken_over, handed.attempts) == ("failed", True, 2)
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])
    services.code_verify(address=email_address, code=fixed_code[1])  # the code the first run may have mailed


def test_a_refused_job_of_a_delivery_a_run_holds_withdraws_nothing(email_address, sender, fixed_code):
    sender()
    code_mailed(email_address, fixed_code)
    held = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    now = timezone.now()
    assert queries.delivery_claim(delivery_id=held.id, now=now, lease_until=now + timedelta(seconds=30))
    services.delivery_refuse(delivery_id=held.id, reason=services.PAYLOAD_REFUSED_ERROR)  # a copy of its job
    assert sorted(OneTimeCode.objects.values_list("status", flat=True)) == ["active", "superseded"]
    assert not delivering.delivery_unqueued_record(delivery=held, last_error="broker")  # held: not the API's
    held.refresh_from_db()
    assert (held.status, held.last_error) == ("sending", "")  # its holder records what its provider says


@pytest.mark.parametrize("end", ["used", "burned"])
def test_spending_a_code_supersedes_any_other_active_code_of_its_class(email_address, fixed_code, settings, end):
    # The race code_withdraw leaves: a code made active again beside a newer one must not work once the newer
    # is spent.
    older = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    OneTimeCode.objects.filter(expires_at=older.expires_at).update(status="active")  # as the race leaves them
    if end == "used":
        services.code_verify(address=email_address, code=fixed_code[1])
    else:
        for _ in range(settings.OTP_MAX_ATTEMPTS):
            with pytest.raises(InvalidCode):
                services.code_verify(address=email_address, code="000000")
    assert sorted(OneTimeCode.objects.values_list("status", flat=True)) == sorted([end, "superseded"])
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])


def test_an_unsent_code_gives_way_only_within_its_client_class(email_address, sender, fixed_code):
    sender()
    tokenless = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    services.delivery_send(delivery_id=tokenless.id, code=fixed_code[0])
    OneTimeCode.objects.update(status="superseded")  # as if a later tokenless code had superseded it, and was used
    login = services.code_issue(address=email_address, purpose=Purpose.LOGIN, device=True)
    services.delivery_send(delivery_id=login.id, code=fixed_code[1], device=True)
    assert sorted(OneTimeCode.objects.values_list("device", "status")) == [(False, "superseded"), (True, "unsent")]


def test_expired_job_is_dropped_and_recorded(email_address, sender):
    recorder = sender()
    delivery = factories.issued_code(email_address)
    Delivery.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "expired" in delivery.last_error and not recorder.sent


def test_held_lease_blocks_a_second_worker_until_it_lapses(email_address, sender):
    recorder = sender()
    delivery = factories.issued_code(email_address)
    Delivery.objects.update(status="sending", lease_until=timezone.now() + timedelta(seconds=10))
    with pytest.raises(services.DeliveryRetry) as retry:  # look again when the lease lapses, not never
        services.delivery_send(delivery_id=delivery.id, code="123456")
    assert 9 < retry.value.countdown < 11.5 and not recorder.sent
    Delivery.objects.update(lease_until=timezone.now() - timedelta(seconds=1))  # its worker died
    services.delivery_send(delivery_id=delivery.id, code="123456")
    assert len(recorder.sent) == 1


def test_provider_status_callback_updates_the_record(email_address, sender):
    sender()
    delivery = factories.issued_code(email_address)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    assert services.delivery_status_record(report=TwilioSmsProvider().status_callback_parse(
        url="http://localhost:8080/webhooks/twilio/status/",
        params={"MessageSid": "provider-1", "MessageStatus": "undelivered", "ErrorCode": "30003"}))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status) == ("failed", "undelivered") and "30003" in delivery.last_error
    assert not services.delivery_status_record(report=TwilioSmsProvider().status_callback_parse(
        url="http://localhost:8080/webhooks/twilio/status/", params={"MessageSid": "nope", "MessageStatus": "delivered"}))


def _callback(delivery, status, *, sid="SM1", error_code=""):
    """What the webhook applies for Twilio's signed callback `status` on `delivery`'s callback URL."""
    return services.delivery_status_record(report=TwilioSmsProvider().status_callback_parse(
        url=f"http://localhost:8080/webhooks/twilio/status/?delivery={delivery.id}",
        params={"MessageSid": sid, "MessageStatus": status, "ErrorCode": error_code}))


def test_a_carrier_failure_reported_during_a_failed_try_is_not_put_back_in_the_queue(email_address, sender):
    # The provider took the message and the carrier refused it, while the worker saw the call fail: the run
    # that puts the delivery back for a retry must not move a failed delivery back to queued.
    delivery = factories.issued_code(email_address)

    def accepted_then_lost():
        _callback(delivery, "undelivered", error_code="30003")
        return SendTransientError("Twilio 503")

    recorder = sender()
    recorder.send = lambda **kwargs: (_ for _ in ()).throw(accepted_then_lost())
    with pytest.raises(services.DeliveryRetry):
        services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status) == ("failed", "undelivered")
    services.delivery_send(delivery_id=delivery.id, code="123456")  # the retry sends nothing
    assert recorder.sent == []


def test_a_delivery_its_provider_reported_on_is_recorded_sent_not_sent_again(email_address, sender):
    # The provider took the message (its callback says so) but the worker never learnt it: a 5xx answer, or
    # a run that died after the send. The next run records it sent instead of sending a second message.
    delivery = factories.issued_code(email_address)
    calls = []

    def accepted_then_lost(**kwargs):
        calls.append(kwargs["to"])
        _callback(delivery, "queued")
        raise SendTransientError("Twilio 502")

    recorder = sender()
    recorder.send = accepted_then_lost
    with pytest.raises(services.DeliveryRetry):
        services.delivery_send(delivery_id=delivery.id, code="123456")
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert calls == ["alice@example.com"]
    assert (delivery.status, delivery.provider_id, delivery.provider_status) == ("sent", "SM1", "queued")


# --- Hosts whose clocks are off: every comparison of a code's life is on the database's clock --------------------
# (core.clock; a helper's clock-skew review found each of these with libfaketime on one host of a real stack.)


@pytest.fixture
def host_clock_off(monkeypatch):
    """Set this host's wall clock `seconds` off (negative: behind), as Django's timezone.now() reads it."""
    real_now = timezone.now

    def off(seconds):
        monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(seconds=seconds))
    return off


def test_a_code_issued_by_an_api_host_whose_clock_is_behind_lives_its_ttl(email_address, fixed_code, host_clock_off):
    host_clock_off(-(settings.OTP_TTL_SECONDS + 60))
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    host_clock_off(0)  # verified on another host, whose clock is right
    assert services.code_verify(address=email_address, code=fixed_code[0]).access


def test_a_code_is_still_refused_once_its_ttl_has_passed_on_a_host_whose_clock_is_behind(email_address, fixed_code,
                                                                                        host_clock_off):
    services.code_request(address=email_address, purpose=Purpose.REGISTER)
    OneTimeCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    host_clock_off(-600)
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=fixed_code[0])


def test_a_worker_whose_clock_is_ahead_sends_a_live_code(email_address, sender, host_clock_off):
    recorder = sender()
    delivery = factories.issued_code(email_address)
    host_clock_off(settings.OTP_TTL_SECONDS + 30)
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert delivery.status == "sent" and len(recorder.sent) == 1


def test_a_worker_whose_clock_is_behind_never_sends_an_expired_code(email_address, sender, host_clock_off):
    recorder = sender()
    delivery = factories.issued_code(email_address)
    Delivery.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    host_clock_off(-(settings.OTP_TTL_SECONDS + 30))
    services.delivery_send(delivery_id=delivery.id, code="123456")
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "expired" in delivery.last_error and not recorder.sent


def test_a_worker_whose_clock_is_ahead_does_not_take_over_a_held_lease(email_address, sender, host_clock_off):
    # The same code mailed twice: the second worker found the first one's lease lapsed by its own clock.
    recorder = sender()
    delivery = factories.issued_code(email_address)
    Delivery.objects.update(status="sending", lease_until=timezone.now() + timedelta(seconds=10))
    host_clock_off(60)
    with pytest.raises(services.DeliveryRetry) as retry:
        services.delivery_send(delivery_id=delivery.id, code="123456")
    assert 9 < retry.value.countdown < 11.5 and not recorder.sent
    assert Delivery.objects.get().taken_over is False


def test_a_maintenance_worker_whose_clock_is_ahead_keeps_live_codes_and_deliveries(email_address, host_clock_off):
    delivery = factories.issued_code(email_address)
    host_clock_off(86400)
    assert services.code_purge() == 0 and services.delivery_expire_stale() == 0
    delivery.refresh_from_db()
    assert OneTimeCode.objects.get().status == "active" and delivery.status == "queued"


# --- Housekeeping -------------------------------------------------------------------------------


def test_maintenance_purges_codes_in_batches_expires_stale_deliveries_and_flushes_tokens(email_address):
    now = timezone.now()
    past = now - timedelta(minutes=5)
    OneTimeCode.objects.bulk_create(
        [factories.code_row(f"u{i}@example.com", expires_at=past, save=False) for i in range(25)]
        + [factories.code_row("used@example.com", status="used", expires_at=now + timedelta(minutes=1), save=False)]
        + [factories.code_row("burned@example.com", status="burned", expires_at=now + timedelta(minutes=1), save=False)]
        # Kept until they expire: a superseded code is the user's again if the code that superseded it is never
        # sent, found through links that may pass an unsent one.
        + [factories.code_row(f"{status}@example.com", status=status, expires_at=now + timedelta(minutes=1),
                              save=False) for status in ("superseded", "unsent")]
    )
    live = factories.issued_code(email_address)
    stale = factories.delivery_row("u1@example.com", expires_at=past)
    user = factories.user(email="alice@example.com")
    token = RefreshToken.for_user(user)
    OutstandingToken.objects.update(expires_at=past)

    assert services.code_purge(batch_size=10) == 27
    assert sorted(OneTimeCode.objects.values_list("address", flat=True)) == [
        "alice@example.com", "superseded@example.com", "unsent@example.com"]
    assert services.delivery_expire_stale() == 1
    stale.refresh_from_db()
    live.refresh_from_db()
    assert stale.status == "failed" and live.status == "queued"
    assert services.token_blacklist_flush() >= 1 and not OutstandingToken.objects.filter(jti=token["jti"]).exists()



@settings_h(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(guess=st.from_regex(r"\A[0-9]{6}\Z"))
def test_any_wrong_guess_is_refused_and_counted_once(guess, email_address, monkeypatch, redis_clean):
    assume(guess != "482913")
    monkeypatch.setattr(codes, "code_generate", lambda: "482913")
    redis_flush(redis_clean, "*otp:*")
    OneTimeCode.objects.all().delete()
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    with pytest.raises(InvalidCode):
        services.code_verify(address=email_address, code=guess)
    assert OneTimeCode.objects.get().attempts == 1
    services.code_verify(address=email_address, code="482913")


@pytest.mark.django_db(transaction=True)
def test_with_no_broker_a_job_runs_after_its_request_on_a_thread_of_its_own(settings, caplog):
    # The quick run (CELERY_TASK_ALWAYS_EAGER): run inside the request, a login's job (the account check, then the
    # email) made an existing account's answer slower than an unknown one's (medians 8.77 against 8.03 ms).
    from django.core import mail
    from rest_framework.test import APIClient

    from otp.tasks import delivery_send
    from tests.support.http import post
    from tests.support.waiting import wait_for

    # Celery's configuration is read from Django's settings when first used: read it before the setting changes,
    # or the eager mode read here would be put back afterwards and every later test would run its jobs in-process.
    conf = delivery_send.app.conf
    eager_before = conf.task_always_eager
    assert eager_before is False
    settings.CELERY_TASK_ALWAYS_EAGER = conf.task_always_eager = True
    try:
        mail.outbox = []
        caplog.set_level("INFO", logger="otp.services")
        assert post(APIClient(), "/register/", {"email": "in-process@example.com"}).status_code == 202
        wait_for(lambda: Delivery.objects.filter(status=Delivery.Status.SENT).exists(), timeout=10,
                 message="the job's delivery sent")
    finally:
        conf.task_always_eager = eager_before
    (sent,) = [record for record in caplog.records if "sent by email" in record.getMessage()]
    assert sent.threadName.startswith("otp-in-process-job") and sent.threadName != threading.current_thread().name
    assert [message.to for message in mail.outbox] == [["in-process@example.com"]]


@pytest.mark.django_db(transaction=True)
def test_with_no_broker_a_request_during_shutdown_runs_its_job_itself(settings, caplog, monkeypatch):
    # Ctrl-C on the quick run stops the job thread while requests are still in flight: their submit raised
    # RuntimeError ("cannot schedule new futures after interpreter shutdown"), a 500 for a committed code never sent.
    from concurrent.futures import ThreadPoolExecutor

    from django.core import mail
    from rest_framework.test import APIClient

    from otp.services import issuing
    from otp.tasks import delivery_send
    from tests.support.http import post

    stopped = ThreadPoolExecutor(max_workers=1)
    stopped.shutdown()
    monkeypatch.setattr(issuing, "_in_process_jobs", stopped)
    conf = delivery_send.app.conf
    eager_before = conf.task_always_eager
    assert eager_before is False  # read before the setting changes: see the test above
    settings.CELERY_TASK_ALWAYS_EAGER = conf.task_always_eager = True
    try:
        mail.outbox = []
        caplog.set_level("INFO", logger="otp.services")
        assert post(APIClient(), "/register/", {"email": "shutdown@example.com"}).status_code == 202
    finally:
        conf.task_always_eager = eager_before
    assert Delivery.objects.get().status == Delivery.Status.SENT
    assert [message.to for message in mail.outbox] == [["shutdown@example.com"]]
