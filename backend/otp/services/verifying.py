"""Verifying: /verify-otp/ trades a valid code for tokens and a device token."""
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, Value, When

from core.clock import clock_now
from core.errors import CACHE_OUTAGES, DATABASE_OUTAGES, DependencyUnavailable, InvalidCode
from core.metrics import metric_count
from otp import codes, throttles
from otp.addresses import Address
from otp.models import OneTimeCode, Purpose
from otp.selectors import user_get_by_address
from users.models import DeviceToken, User
from users.services import TokenPair, device_token_issue, token_pair_issue, user_create

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignIn(TokenPair):
    device_token: str  # for the client to send back with its next requests for this address


def code_verify(*, address: Address, code: str, device_token: DeviceToken | None = None) -> SignIn:
    """Trade a valid code for tokens and a new device token; the code is consumed, and a /register/ code creates
    the account.

    `device_token` is the request's live device token for `address` (otp.selectors.device_token_find), or None.
    With one, the request is judged in the device class: its failure budget, and only a code issued to a
    device-token request is compared; on success that token is replaced by the new one. Without one, the same
    with the other class's budget and codes (contract: device tokens).
    Every failure looks the same (InvalidCode, 400: no oracle) and spends the class's failure budget;
    past the budget, raises core.errors.RateLimited (429). `code` is a well-formed code (codes.code_is_well_formed).
    A cache outage before the code is compared is a 503 that consumes nothing; once the code is consumed, one that
    keeps the failure budget from being reset does not fail the sign-in (it is logged). A database outage before
    the code was compared (core.errors.DATABASE_OUTAGES) is raised with the failure given back, as code_request
    gives back the send throttles; one after it (DependencyUnavailable, 503 alike) keeps it: a guess compared
    costs the budget whatever became of it, or outages could buy free guesses. Any other database error keeps it.
    The code's use, the account's creation or last login, and the sign-in's two token rows are one transaction:
    a database failing anywhere before its commit leaves the code unused, for the user to send again once the
    database is back (OWASP ASVS 4.0 V2.7.3 makes a code usable once; a use that signed nobody in would spend it
    for nothing).
    """
    device = device_token is not None
    throttles.failure_take(address=address, device=device)
    try:
        sign_in = _code_consume(address=address, code=code, device_token=device_token)
    except DATABASE_OUTAGES:  # only before a comparison: _code_consume raises DependencyUnavailable after one
        throttles.failure_give_back(address=address, device=device)
        raise
    if sign_in is None:
        metric_count("otp_codes_verified_total", result="failure")
        raise InvalidCode()
    try:
        throttles.failure_budget_reset(address=address, device=device)
    except CACHE_OUTAGES as exc:
        # The code is consumed and that is committed: a 503 now would burn it and sign nobody in (found by a
        # new-user pass). The run of failures stays counted, which can only make a later wrong guess wait longer.
        logger.warning("the failure budget of an address just signed in could not be reset: %s", exc)
    metric_count("otp_codes_verified_total", result="success")
    return sign_in


def _code_consume(*, address: Address, code: str, device_token: DeviceToken | None) -> SignIn | None:
    """Check `code` against the address's current code of the client class of `device_token` under a row lock
    (one verify at a time per code) and, when it matches, sign the account in, all in one transaction; None when
    it does not. Raises a database outage (core.errors.DATABASE_OUTAGES) as it comes until the code is compared,
    and as DependencyUnavailable("database") from then on, its commit included."""
    compared = False
    try:
        with transaction.atomic():
            otp = (OneTimeCode.objects.select_for_update()
                   .filter(address=address.value, status=OneTimeCode.Status.ACTIVE, device=device_token is not None)
                   .order_by("-created_at").first())
            compared = True  # from here on, whatever the database does, the guess was made
            user = _code_compared(otp=otp, address=address, code=code)
            if user is None:
                return None  # leaving the block normally commits the attempt's record
            # In the code's transaction: a database failing after the code's use but before these rows (a
            # failover, found by a helper's review) answered 503 with the code spent and no tokens.
            tokens = token_pair_issue(user=user)
            return SignIn(access=tokens.access, refresh=tokens.refresh, expires_in=tokens.expires_in,
                          device_token=device_token_issue(user=user, address=address.value,
                                                          replacing=device_token))
    except DATABASE_OUTAGES as exc:
        if compared:
            raise DependencyUnavailable("database") from exc
        raise


def _code_compared(*, otp: OneTimeCode | None, address: Address, code: str) -> User | None:
    """_code_consume's work once the code row is locked: compare, record the attempt or the use, find or create
    the account."""
    now = clock_now()
    if otp is None or otp.expires_at <= now:
        return None
    if not codes.code_matches(code_hash_hex=otp.code_hash, address=address.value, code=code):
        otp.attempts += 1
        if otp.attempts < settings.OTP_MAX_ATTEMPTS:
            otp.save(update_fields=["attempts"])
        else:
            _code_end(otp=otp, status=OneTimeCode.Status.BURNED)
        return None
    otp.used_at = now
    _code_end(otp=otp, status=OneTimeCode.Status.USED)

    # Locked before the sign-in's rows are written, the order users.services.users_delete (the admin's delete)
    # takes them in too: an account deleted meanwhile is None here rather than a deadlock.
    user = user_get_by_address(address=address, active_only=False, locked=True)
    if user is None:
        if otp.purpose != Purpose.REGISTER:
            return None  # the account went away after the login code was sent
        # The account is born here, so addresses nobody verified never fill the users table.
        return user_create(**{address.user_field: address.value}, last_login=now)
    if not user.is_active:
        # A deactivated account signs in no more, and its address cannot be registered again (creating a second
        # account for it was an IntegrityError: a 500).
        return None
    user.last_login = now
    user.save(update_fields=["last_login"])
    return user


def _code_end(*, otp: OneTimeCode, status: str) -> None:
    """Record `otp` used or burned (`status`, with its attempts and used_at), and supersede, in the same statement,
    any other active code of its address and class. There is one only after the race otp.services.code_withdraw
    documents (a code made active again while a newer one was issued): it must not work once the newer is spent.
    Raises django.db.DatabaseError."""
    this = Q(id=otp.id)
    (OneTimeCode.objects
     .filter(this | Q(address=otp.address, device=otp.device, status=OneTimeCode.Status.ACTIVE))
     .update(status=Case(When(this, then=Value(status)), default=Value(OneTimeCode.Status.SUPERSEDED.value),
                         output_field=OneTimeCode._meta.get_field("status")),
             attempts=Case(When(this, then=Value(otp.attempts)), default=F("attempts"),
                           output_field=OneTimeCode._meta.get_field("attempts")),
             used_at=Case(When(this, then=Value(otp.used_at)), default=F("used_at"),
                          output_field=OneTimeCode._meta.get_field("used_at"))))
    otp.status = status
