"""Reads used by the OTP services and views."""
from dataclasses import dataclass

from core.ratelimit import HOUR, cooldown_remaining, window_count
from otp.addresses import Address, address_cache_key
from otp.models import Delivery, OneTimeCode
from users.models import User


def user_get_by_address(*, address: Address) -> User | None:
    return User.objects.filter(**{address.user_field: address.value}, is_active=True).first()


@dataclass(frozen=True)
class AddressState:
    user: User | None
    codes: list[OneTimeCode]
    deliveries: list[Delivery]
    cooldown_seconds_left: int
    sends_this_hour: int
    failures_this_hour: int


def address_state_get(*, address: Address, limit: int = 10) -> AddressState:
    """Everything support staff may need about an address; never a code (only hashes exist)."""
    return AddressState(
        user=user_get_by_address(address=address),
        codes=list(OneTimeCode.objects.filter(address=address.value).order_by("-created_at")[:limit]),
        deliveries=list(Delivery.objects.filter(address=address.value).order_by("-created_at")[:limit]),
        cooldown_seconds_left=cooldown_remaining(key=address_cache_key("otp:cooldown", address)),
        sends_this_hour=window_count(key=address_cache_key("otp:sends", address), window=HOUR),
        failures_this_hour=window_count(key=address_cache_key("otp:failures", address), window=HOUR),
    )
