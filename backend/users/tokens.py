"""The JWTs and their keys: signed with the current key, verified with it and then each old key in turn, so
rotating the key signs nobody out.

simplejwt reads one key, once, into a module-level backend (`rest_framework_simplejwt.state`); its token classes
find their backend through `get_token_backend()`, which the classes here override (simplejwt's documented way to
customise tokens is to subclass them: `AUTH_TOKEN_CLASSES` names the access token class below).
"""
from functools import lru_cache
from typing import Any

import jwt
from django.conf import settings
from rest_framework_simplejwt import tokens as simplejwt_tokens
from rest_framework_simplejwt.backends import TokenBackend
from rest_framework_simplejwt.exceptions import TokenBackendError, TokenBackendExpiredToken
from rest_framework_simplejwt.settings import api_settings

FAMILY_CLAIM = "fam"


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
                return jwt.decode(token, key, algorithms=[self.algorithm], audience=self.audience,
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
        raise TokenBackendError("Token is invalid")


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
