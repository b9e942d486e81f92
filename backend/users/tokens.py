"""The JWTs and their keys: signed with the current key, verified with it and then each old key in turn, so
rotating the key signs nobody out.

simplejwt reads one key, once, into a module-level backend (`rest_framework_simplejwt.state`); its token classes
find their backend through `get_token_backend()`, which the classes here override (simplejwt's documented way to
customise tokens is to subclass them: `AUTH_TOKEN_CLASSES` names the access token class below).
"""
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import jwt
from django.conf import settings
from rest_framework_simplejwt import tokens as simplejwt_tokens
from rest_framework_simplejwt.backends import TokenBackend
from rest_framework_simplejwt.exceptions import TokenBackendError, TokenBackendExpiredToken
from rest_framework_simplejwt.settings import api_settings

FAMILY_CLAIM = "fam"
# The largest account id PostgreSQL's bigint holds (the accounts' BigAutoField).
_USER_ID_MAX = 2**63 - 1


class KeyRotatingTokenBackend(TokenBackend):
    """simplejwt's backend with old keys: signs with `signing_key`, verifies with it, then with each of
    `fallback_keys` in turn (HMAC algorithms only: the key that signs is the key that verifies).

    Only a signature mismatch moves on to the next key; any other failure (expired, malformed) is the answer
    of the key that matched, so an expired token is reported expired, never "invalid" for want of a key.
    """

    def __init__(self, *args, fallback_keys: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.algorithm.startswith("HS"):
            raise TokenBackendError("Key rotation here is for HMAC keys (HS256, HS384, HS512).")
        self.fallback_keys = fallback_keys

    def _verifying_keys(self) -> list[Any]:
        return [self.prepared_signing_key, *(self._prepare_key(key) for key in self.fallback_keys)]

    def decode(self, token, verify: bool = True, *, verify_exp: bool = True) -> dict[str, Any]:
        """The token's claims, once a known key's signature matches.

        Raises TokenBackendExpiredToken when the signature matches and `exp` has passed (unless `verify_exp` is
        false: logout takes an expired token as genuine), TokenBackendError for anything else.
        """
        if not verify:
            return super().decode(token, verify=False)
        for key in self._verifying_keys():
            try:
                claims = jwt.decode(token, key, algorithms=[self.algorithm], audience=self.audience,
                                    issuer=self.issuer, leeway=self.get_leeway(),
                                    options={"verify_aud": self.audience is not None, "verify_exp": verify_exp})
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAlgorithmError as exc:
                raise TokenBackendError("Invalid algorithm specified") from exc
            except jwt.ExpiredSignatureError as exc:
                raise TokenBackendExpiredToken("Token is expired") from exc
            except jwt.InvalidTokenError as exc:
                raise TokenBackendError("Token is invalid") from exc
            claims_shape_check(claims)
            return claims
        raise TokenBackendError("Token is invalid")


def claims_shape_check(claims: dict[str, Any]) -> None:
    """Refuse a signed token whose claims are not of the shapes this service issues, before anything reads them.

    The signature proves only that a key we hold signed the claims, not that our code wrote them: a leaked or
    misused key, or another service sharing it, can sign `exp: 1e20` (past what a datetime holds) or
    `user_id: "abc"` (not an account id), which simplejwt and Django turned into 500s at /profile/,
    /token/refresh/ and /logout/ (OWASP ASVS 4.0 V3.5.3: verify a token's integrity and its claims).

    `claims`: the decoded payload. The shapes: `exp`, `iat` and `nbf`, when present, are numbers of seconds
    since the epoch within what a datetime holds (years 1 to 9999, RFC 7519 section 2 "NumericDate"); the
    account id (`user_id`) is a string of ASCII digits within PostgreSQL's bigint, as simplejwt writes it;
    `jti`, and the sign-in's `fam` when present, are strings. Returns None; raises TokenBackendError.
    """
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _numeric_date(claims[name]):
            raise TokenBackendError("Token is invalid")
    user_id = claims.get(api_settings.USER_ID_CLAIM)
    if user_id is not None and not (isinstance(user_id, str) and user_id.isascii() and user_id.isdigit()
                                    and int(user_id) <= _USER_ID_MAX):
        raise TokenBackendError("Token is invalid")
    for name in (api_settings.JTI_CLAIM, FAMILY_CLAIM):
        if name in claims and not isinstance(claims[name], str):
            raise TokenBackendError("Token is invalid")


def _numeric_date(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return False
    return True


def jwt_keys() -> tuple[str, tuple[str, ...]]:
    """(the signing key, the old keys still accepted), from the settings.

    JWT_SIGNING_KEY_FALLBACKS are the old JWT keys. While JWT_SIGNING_KEY is SECRET_KEY (unset: the contract's
    default), SECRET_KEY_FALLBACKS are old JWT keys too, so rotating SECRET_KEY signs nobody out; a JWT key set
    on its own is rotated with its own list alone.
    """
    fallbacks = list(settings.JWT_SIGNING_KEY_FALLBACKS)
    if settings.JWT_SIGNING_KEY == settings.SECRET_KEY:
        fallbacks += settings.SECRET_KEY_FALLBACKS
    return settings.JWT_SIGNING_KEY, tuple(key for key in dict.fromkeys(fallbacks) if key != settings.JWT_SIGNING_KEY)


@lru_cache(maxsize=4)
def _backend(signing_key: str, fallback_keys: tuple[str, ...]) -> KeyRotatingTokenBackend:
    return KeyRotatingTokenBackend(api_settings.ALGORITHM, signing_key, api_settings.VERIFYING_KEY,
                                   api_settings.AUDIENCE, api_settings.ISSUER, api_settings.JWK_URL,
                                   api_settings.LEEWAY, api_settings.JSON_ENCODER, fallback_keys=fallback_keys)


def token_backend() -> KeyRotatingTokenBackend:
    """The backend for the keys the settings name now (read on each call, so a test's settings apply)."""
    signing_key, fallback_keys = jwt_keys()
    return _backend(signing_key, fallback_keys)


class _KeyRotatingToken:
    def get_token_backend(self) -> KeyRotatingTokenBackend:
        return token_backend()


class AccessToken(_KeyRotatingToken, simplejwt_tokens.AccessToken):
    """An access token, verified with the current and the old keys (`AUTH_TOKEN_CLASSES`)."""


class RefreshToken(_KeyRotatingToken, simplejwt_tokens.RefreshToken):
    """A refresh token, verified with the current and the old keys.

    Decoding checks signature, expiry and type only: whether the token was rotated, revoked or reused is decided
    by users.services against its family's row, under that row's lock (simplejwt's blacklist check, a read
    outside any lock, cannot make one of two concurrent uses lose).
    """

    access_token_class = AccessToken

    def check_blacklist(self) -> None:
        pass
