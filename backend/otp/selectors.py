"""Reads used by the OTP services, views and support commands."""
from collections.abc import Iterator
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from core.clock import clock_now
from otp import throttles
from otp.addresses import Address, email_normalize, mobile_normalize
from otp.models import Delivery, OneTimeCode
from users.device_tokens import device_token_hashes, device_token_well_formed
from users.models import DeviceToken, User


def user_get_by_address(*, address: Address, active_only: bool = True, locked: bool = False) -> User | None:
    """The account whose email or mobile is `address` (only if active, unless `active_only` is false), or None.
    `locked`: its row locked for the caller's transaction (SELECT ... FOR UPDATE), which must be open."""
    accounts = User.objects.filter(**{address.user_field: address.value})
    if locked:
        accounts = accounts.select_for_update()
    return (accounts.filter(is_active=True) if active_only else accounts).first()


def device_token_find(*, token: object, address: Address) -> DeviceToken | None:
    """The live device token `token` is for `address`, or None: the request is then judged as one without a
    token (contract: device tokens).

    Live: genuine (its keyed hash, under the current key or a fallback, is stored), unexpired, unrevoked, issued
    for `address`, and its account active and still owning `address`. Anything else (forged, expired, revoked,
    another account's or another address's, an address with no account, not a string) gives None, the same
    None for every cause. One query, none for a value not shaped like a token.
    """
    if not device_token_well_formed(token):
        return None
    return (DeviceToken.objects
            .filter(token_hash__in=device_token_hashes(token), address=address.value, revoked_at__isnull=True,
                    expires_at__gt=clock_now(), user__is_active=True,
                    **{f"user__{address.user_field}": address.value})
            .only("id", "user_id", "address")
            .first())


@dataclass(frozen=True)
class AddressState:
    user: User | None
    codes: list[OneTimeCode]
    deliveries: list[Delivery]
    # Each per-address limit's current value, by its name in otp.throttles (seconds left, or hits this window).
    throttles: dict[str, int]


def address_state_get(*, address: Address, limit: int = 10) -> AddressState:
    """Everything support staff may need about an address, `limit` newest codes and deliveries; never a code
    (only hashes exist)."""
    return AddressState(
        user=user_get_by_address(address=address),
        codes=list(OneTimeCode.objects.filter(address=address.value).order_by("-created_at")[:limit]),
        deliveries=list(Delivery.objects.filter(address=address.value).order_by("-created_at")[:limit]),
        throttles=throttles.address_throttle_state(address=address),
    )


@dataclass(frozen=True)
class AddressFinding:
    """An account's stored address that today's rules refuse (`verdict` "refused", `detail` says why) or spell
    otherwise (`verdict` "normalised", `normalised` the spelling; `clashes_with` the id of another account that
    already holds that spelling, or None)."""

    id: int
    field: str
    stored: str
    verdict: str
    normalised: str | None = None
    detail: str = ""
    clashes_with: int | None = None


def account_address_findings() -> Iterator[AddressFinding]:
    """Every account whose stored email or mobile the address rules (otp.addresses) refuse or normalise to
    another value, in id order; reads only, a batch of rows at a time."""
    for field, normalize in (("email", email_normalize), ("mobile", mobile_normalize)):
        rows = User.objects.filter(**{f"{field}__isnull": False}).order_by("pk").values_list("pk", field)
        for pk, stored in rows.iterator(chunk_size=2000):
            try:
                normalised = normalize(stored).value
            except ValidationError as exc:
                yield AddressFinding(id=pk, field=field, stored=stored, verdict="refused", detail=" ".join(exc.messages))
                continue
            if normalised != stored:
                holder = User.objects.filter(**{field: normalised}).exclude(pk=pk).values_list("pk", flat=True).first()
                yield AddressFinding(id=pk, field=field, stored=stored, verdict="normalised", normalised=normalised,
                                     clashes_with=holder)


def account_count() -> int:
    return User.objects.count()
