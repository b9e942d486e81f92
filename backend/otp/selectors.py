"""Reads used by the OTP services, views and support commands."""
from dataclasses import dataclass

from otp import throttles
from otp.addresses import Address
from otp.models import Delivery, OneTimeCode
from users.models import User


def user_get_by_address(*, address: Address, active_only: bool = True) -> User | None:
    """The account whose email or mobile is `address` (only if active, unless `active_only` is false), or None."""
    accounts = User.objects.filter(**{address.user_field: address.value})
    return (accounts.filter(is_active=True) if active_only else accounts).first()


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
