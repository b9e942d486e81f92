"""Reads used by the OTP services and views."""
from users.models import User

from otp.addresses import Address


def user_get_by_address(*, address: Address) -> User | None:
    return User.objects.filter(**{address.user_field: address.value}, is_active=True).first()
