"""Accounts and the tokens that stand for them: creating an account, issuing, rotating and revoking JWTs."""
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from rest_framework_simplejwt.exceptions import TokenBackendError, TokenBackendExpiredToken, TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken
from rest_framework_simplejwt.utils import datetime_from_epoch

from core.clock import clock_now
from core.errors import TokenRejected
from otp.addresses import email_normalize, mobile_normalize
from users.device_tokens import device_token_generate, device_token_hash, device_token_hashes, device_token_well_formed
from users.models import DeviceToken, TokenFamily, User
from users.tokens import FAMILY_CLAIM, RefreshToken, token_backend

logger = logging.getLogger(__name__)


def user_create(*, email: str | None = None, mobile: str | None = None, last_login: datetime | None = None,
                is_staff: bool = False) -> User:
    """Create an account for an email and/or a mobile, stored as the API stores them (otp.addresses: the
    contract's address rules; an address already normalised stays as it is).

    Raises django.core.exceptions.ValidationError for an address those rules refuse, and
    django.db.IntegrityError when another account has either address, or neither is given (the database's
    constraints).
    """
    return User.objects.create_user(email=email_normalize(email).value if email else None,
                                    mobile=mobile_normalize(mobile).value if mobile else None,
                                    last_login=last_login, is_staff=is_staff)


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    expires_in: int  # the access token's lifetime, in seconds


def token_pair_issue(*, user: User) -> TokenPair:
    """A new sign-in for `user`: a refresh token that starts a family (one row, see users.models.TokenFamily) and
    an access token derived from it. One INSERT; the caller's transaction, if any, holds it."""
    refresh = RefreshToken()
    refresh[api_settings.USER_ID_CLAIM] = str(getattr(user, api_settings.USER_ID_FIELD))
    refresh[FAMILY_CLAIM] = uuid.uuid4().hex
    TokenFamily.objects.create(id=refresh[FAMILY_CLAIM], user=user, current_jti=refresh[api_settings.JTI_CLAIM],
                               created_at=refresh.current_time, expires_at=datetime_from_epoch(refresh["exp"]))
    return _pair(refresh)


def _pair(refresh: RefreshToken) -> TokenPair:
    return TokenPair(access=str(refresh.access_token), refresh=str(refresh),
                     expires_in=settings.ACCESS_TOKEN_LIFETIME_SECONDS)


def _refresh_decode(raw: str, *, allow_expired: bool = False) -> dict:
    """The claims of a genuine refresh token: signed by a key we hold (the current or an old one), of type
    `refresh`, with an id and an account id; unexpired unless `allow_expired`. Raises TokenRejected (401)."""
    try:
        if allow_expired:
            claims = token_backend().decode(raw, verify_exp=False)
        else:
            claims = RefreshToken(raw).payload
    except (TokenError, TokenBackendError, TokenBackendExpiredToken) as exc:
        raise TokenRejected() from exc
    # The claims' types were checked in the decode (users.tokens.claims_shape_check); here, that these are present.
    if (claims.get(api_settings.TOKEN_TYPE_CLAIM) != RefreshToken.token_type
            or api_settings.JTI_CLAIM not in claims or api_settings.USER_ID_CLAIM not in claims):
        raise TokenRejected()
    return claims


def _family_id(claims: dict) -> str:
    # A token issued before families existed (no `fam` claim) is the first of a family named after it.
    return claims.get(FAMILY_CLAIM) or claims[api_settings.JTI_CLAIM]


def _legacy_family_adopt(*, claims: dict, now: datetime) -> None:
    """Give a refresh token from before families (still within its lifetime) a family row of its own, unless
    simplejwt's blacklist already revoked it. Concurrent adoptions insert one row (ON CONFLICT DO NOTHING)."""
    jti = claims[api_settings.JTI_CLAIM]
    if BlacklistedToken.objects.filter(token__jti=jti).exists():
        return
    if not User.objects.filter(pk=claims[api_settings.USER_ID_CLAIM]).exists():
        return
    TokenFamily.objects.bulk_create([TokenFamily(
        id=jti, user_id=claims[api_settings.USER_ID_CLAIM], current_jti=jti, created_at=now,
        expires_at=datetime_from_epoch(claims["exp"]))], ignore_conflicts=True)


def token_refresh(*, refresh: str) -> TokenPair:
    """Rotate `refresh`: a new refresh token of the same family (same account, same `fam`), and its access token.

    Exactly one of concurrent refreshes of one token wins, across processes and hosts: each locks the family's
    row (SELECT ... FOR UPDATE) and only the token the row names as current may rotate. Presenting any other
    token of the family, one already rotated, is reuse (RFC 9700 section 4.14.2): the family is revoked in the
    same committed write, so every token rotated from it stops working. The losers of a race count as reuse
    too (docs/reliability.md says why).

    Raises TokenRejected (401) for a token that is not genuine, expired, revoked or reused, or whose account was
    deleted or deactivated (simplejwt's rule: CHECK_USER_IS_ACTIVE).
    """
    claims = _refresh_decode(refresh)
    rotated, reused = _family_rotate(claims=claims)
    if reused:  # raised only now, so the revocation above has been committed
        raise TokenRejected()
    return _pair(rotated)


def _family_rotate(*, claims: dict) -> tuple[RefreshToken | None, bool]:
    """(the rotated token, False), or (None, True) for a reuse, whose family is then revoked and committed.
    Raises TokenRejected for the other refusals."""
    now = clock_now()
    with transaction.atomic():
        if FAMILY_CLAIM not in claims:
            _legacy_family_adopt(claims=claims, now=now)
        family = (TokenFamily.objects.select_for_update().filter(id=_family_id(claims))
                  .annotate(account_active=Exists(User.objects.filter(pk=OuterRef("user_id"), is_active=True)))
                  .first())
        if family is None or family.revoked_at is not None:
            raise TokenRejected()  # never issued, account deleted (its families went with it), or revoked
        if str(family.user_id) != claims[api_settings.USER_ID_CLAIM]:
            raise TokenRejected()
        if family.current_jti != claims[api_settings.JTI_CLAIM]:
            family.revoked_at = now
            family.save(update_fields=["revoked_at"])
            logger.warning("refresh token reused: sign-in %s of user %s revoked", family.id, family.user_id)
            return None, True  # leaving the block normally commits the revocation
        if not family.account_active:
            raise TokenRejected()  # deactivated; the family stays, so reactivation restores the sign-in
        rotated = RefreshToken()
        for name, value in claims.items():
            if name not in RefreshToken.no_copy_claims:
                rotated[name] = value  # the account and, for a token from before families, no `fam` yet
        rotated[FAMILY_CLAIM] = family.id
        family.current_jti = rotated[api_settings.JTI_CLAIM]
        family.expires_at = datetime_from_epoch(rotated["exp"])
        family.save(update_fields=["current_jti", "expires_at"])
        return rotated, False


def token_revoke(*, refresh: str, access: str | None = None, device_token: object = None) -> None:
    """Logout: revoke the sign-in `refresh` belongs to, i.e. that token and every token rotated from it (its
    family, one UPDATE), and with them the family's access tokens (users.authentication checks the family).
    With `device_token` (the body's, as sent), that device token is revoked too, if it is one of the refresh
    token's account (one UPDATE more); any other value changes nothing.

    The refresh token is the credential. Genuine is enough: an expired, already revoked or reused token, or one
    whose account is gone, is accepted and changes nothing more (logging out twice is not an error).
    `access` is the bearer token of the request's Authorization header, if any: an expired one is ignored; one
    that is not genuine, or belongs to another account, is refused.

    Raises TokenRejected (401) for a refresh token that is not genuine, or an `access` refused as above.
    """
    claims = _refresh_decode(refresh, allow_expired=True)
    if access is not None:
        _access_check(access=access, user_id=claims[api_settings.USER_ID_CLAIM])
    now = clock_now()
    if FAMILY_CLAIM in claims:
        TokenFamily.objects.filter(id=claims[FAMILY_CLAIM], revoked_at__isnull=True).update(revoked_at=now)
    elif User.objects.filter(pk=claims[api_settings.USER_ID_CLAIM]).exists():
        # A token from before families: its family row, revoked, whether or not a refresh made one already
        # (INSERT ... ON CONFLICT DO UPDATE, so a concurrent first refresh cannot slip past it).
        jti = claims[api_settings.JTI_CLAIM]
        TokenFamily.objects.bulk_create(
            [TokenFamily(id=jti, user_id=claims[api_settings.USER_ID_CLAIM], current_jti=jti, created_at=now,
                         expires_at=datetime_from_epoch(claims["exp"]), revoked_at=now)],
            update_conflicts=True, unique_fields=["id"], update_fields=["revoked_at"])
    if device_token is not None:
        device_token_revoke(token=device_token, user_id=claims[api_settings.USER_ID_CLAIM])


def _access_check(*, access: str, user_id: str) -> None:
    try:
        claims = token_backend().decode(access)
    except TokenBackendExpiredToken:
        return  # the signature matched; expired access tokens are what clients hold at logout
    except TokenBackendError as exc:
        raise TokenRejected() from exc
    if claims.get(api_settings.TOKEN_TYPE_CLAIM) != "access" or claims.get(api_settings.USER_ID_CLAIM) != user_id:
        raise TokenRejected()


def token_families_revoke(*, family_ids: list[str]) -> int:
    """Revoke sign-ins by family id (the admin's action): every token of each stops working, as at logout.
    Returns how many were still live."""
    return TokenFamily.objects.filter(id__in=family_ids, revoked_at__isnull=True).update(revoked_at=clock_now())


def users_delete(*, ids: list[int]) -> int:
    """Delete the accounts whose ids are `ids` (the admin's delete), with every row that belongs to them (sign-ins,
    device tokens); returns how many accounts were deleted.

    One transaction that locks each account's row first (SELECT ... FOR UPDATE, in id order), then collects and
    deletes: the order a sign-in takes them (/verify-otp/ locks the account, then writes the sign-in's rows).
    Django's collector alone deleted the dependent rows first: meeting a sign-in with a device token, each waited
    for the other and PostgreSQL ended one of the two (a deadlock: the sign-in answered 503 or the admin's page
    failed; found by a review), and rows a sign-in added after the collection failed the delete's foreign keys.
    """
    with transaction.atomic():
        locked = list(User.objects.select_for_update().filter(id__in=ids).order_by("id").values_list("id", flat=True))
        if not locked:
            return 0
        _, deleted = User.objects.filter(id__in=locked).delete()
        return deleted.get(User._meta.label, 0)


def device_token_issue(*, user: User, address: str, replacing: DeviceToken | None = None) -> str:
    """A new device token for `user` signing in with `address` (normalised), valid OTP_DEVICE_TOKEN_TTL_DAYS;
    returns the token (only its keyed hash is stored: users.device_tokens). `replacing`, the live token the
    request carried, is revoked in the same transaction: a device keeps one token, renewed at each sign-in, so
    an active user never drops out of the device class and a copied old token stops working.
    One INSERT (and one UPDATE when replacing); the caller's transaction, if any, holds them."""
    token = device_token_generate()
    now = clock_now()
    row = DeviceToken(user=user, address=address, token_hash=device_token_hash(token), created_at=now,
                      expires_at=now + timedelta(days=settings.OTP_DEVICE_TOKEN_TTL_DAYS))
    if replacing is None:
        row.save(force_insert=True)
        return token
    with transaction.atomic(savepoint=False):  # inside a caller's transaction, no savepoint's round trips
        DeviceToken.objects.filter(id=replacing.id, revoked_at__isnull=True).update(revoked_at=now)
        row.save(force_insert=True)
    return token


def device_token_revoke(*, token: object, user_id: int | str) -> int:
    """Revoke the device token `token` if it belongs to account `user_id` (logout); returns 1 when a live one was
    revoked, else 0. Anything not shaped like a token changes nothing, with no query."""
    if not device_token_well_formed(token):
        return 0
    return DeviceToken.objects.filter(token_hash__in=device_token_hashes(token), user_id=user_id,
                                      revoked_at__isnull=True).update(revoked_at=clock_now())


def device_tokens_revoke(*, ids: list[int]) -> int:
    """Revoke device tokens by id (the admin's action): each device is judged as any client without a token from
    then on. Returns how many were still unrevoked."""
    return DeviceToken.objects.filter(id__in=ids, revoked_at__isnull=True).update(revoked_at=clock_now())
