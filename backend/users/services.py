"""Accounts and the tokens that stand for them: creating an account, issuing and revoking JWTs."""
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import RefreshToken

from core.errors import TokenRejected
from otp.addresses import email_normalize, mobile_normalize
from users.models import User


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
    """A new refresh token for `user` (recorded for the blacklist) and an access token derived from it."""
    refresh = RefreshToken.for_user(user)
    return TokenPair(access=str(refresh.access_token), refresh=str(refresh),
                     expires_in=settings.ACCESS_TOKEN_LIFETIME_SECONDS)


def token_revoke(*, user: User, refresh: str) -> None:
    """Logout: blacklist `refresh`, which must be a genuine refresh token of `user`.

    Raises core.errors.TokenRejected (401) for a token that is not genuine, expired, revoked or another user's.
    """
    try:
        token = RefreshToken(refresh)
    except TokenError as exc:
        raise TokenRejected() from exc
    if str(token.get("user_id")) != str(user.pk):
        raise TokenRejected()
    token.blacklist()
