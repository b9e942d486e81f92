"""The device token's format, making one, and its keyed hash (OWASP's "device cookie" against targeted lockout).

A device token is 32 random bytes from the CSPRNG in URL-safe base64 (43 characters). The database holds only
its HMAC-SHA256 (RFC 2104) under a key derived from the code key (core.keys.device_token_keys), so a copy of
the database gives no token back, and rotating the code key with the old one in the fallbacks keeps every token
working: a lookup tries the hash under each key.
"""
import hashlib
import hmac
import re
import secrets

from core import keys

TOKEN_BYTES = 32
# What a token the service made looks like; anything else is ignored without a database lookup.
_TOKEN_FORMAT = re.compile(r"[A-Za-z0-9_-]{43}")
# The longest value the API reads as a device token; longer ones are ignored like any other garbage.
TOKEN_MAX_LENGTH = 256


def device_token_generate() -> str:
    """A new device token: TOKEN_BYTES bytes from the operating system's CSPRNG (`secrets`), URL-safe base64."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def device_token_well_formed(value: object) -> bool:
    """True when `value` has the form of a token this service makes (a str of 43 URL-safe base64 characters)."""
    return isinstance(value, str) and _TOKEN_FORMAT.fullmatch(value) is not None


def _digest(key: bytes, token: str) -> str:
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def device_token_hash(token: str) -> str:
    """The HMAC-SHA256 of `token` under the current device-token key, as 64 hex characters: what is stored."""
    return _digest(keys.device_token_keys()[0], token)


def device_token_hashes(token: str) -> list[str]:
    """The HMAC-SHA256 of `token` under the current key and each fallback, in that order: a stored hash equal to
    any of them is this token's (made before or after a key rotation)."""
    return [_digest(key, token) for key in keys.device_token_keys()]
