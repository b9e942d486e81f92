"""The service's secret keys other than the JWTs': the key of codes' HMAC and of the delivery job's encryption,
with the fallbacks that let it be rotated, and the key of the throttles' Redis keys.

Rotation (contract: Configuration): the current key signs and encrypts; it and each fallback, in order, are
accepted, so moving the old key into the fallbacks voids no code already sent and no job already queued.
"""
import functools
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

KEY_BYTES = 32


def _derived_from_secret_key(secret_key: str) -> bytes:
    # Derived, not SECRET_KEY itself, so the key for codes is not the key for sessions and tokens.
    return hashlib.sha256(b"otp-code-hmac:" + secret_key.encode()).digest()


def code_keys() -> tuple[bytes, ...]:
    """The keys for codes: the current one first, then each fallback in the order configured.

    OTP_HMAC_KEY and OTP_HMAC_KEY_FALLBACKS as given, or, when OTP_HMAC_KEY is unset, 32-byte keys derived from
    SECRET_KEY and SECRET_KEY_FALLBACKS. Codes' HMACs (otp.codes) use them as they are; the delivery job's
    encryption derives its own key from each (key_derive).
    """
    if settings.OTP_HMAC_KEY:
        return tuple(key.encode() for key in (settings.OTP_HMAC_KEY, *settings.OTP_HMAC_KEY_FALLBACKS))
    return tuple(_derived_from_secret_key(key) for key in (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS))


def key_derive(key: bytes, *, purpose: bytes, salt: bytes | None = None) -> bytes:
    """A 32-byte key for `purpose` from `key`: HKDF-SHA256 (RFC 5869), `purpose` as its info, `salt` its salt.

    One key for each use, so a key found out in one place (say, the throttles') tells nothing of another's.
    """
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=purpose).derive(key)


@functools.lru_cache(maxsize=16)
def key_id(key: bytes) -> str:
    """A public name for `key`: the first 16 hex characters of HMAC-SHA256(key, "otp key id"), which tell nothing
    of the key, so that a delivery job can say which code key sealed it and a worker can tell a key it does not
    hold (a rotation not yet applied to it) from a job that was changed."""
    return hmac.new(key, b"otp key id", hashlib.sha256).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _throttle_key(configured: str, current_code_key: bytes) -> bytes:
    return key_derive(configured.encode() if configured else current_code_key, purpose=b"otp throttle keys")


def throttle_digest(value: str) -> str:
    """HMAC-SHA256 of `value` (an address, a client IP) under the throttle key, as 32 hex characters (128 bits).

    An unkeyed hash of a phone number is reversed by hashing the number space; this one is not without the key.
    The key is OTP_THROTTLE_KEY, or derived from the current code key when it is unset: it has no fallbacks, so
    rotating it (or, while it is unset, OTP_HMAC_KEY or SECRET_KEY) starts every throttle afresh.
    """
    key = _throttle_key(settings.OTP_THROTTLE_KEY, code_keys()[0])
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


DEVICE_TOKEN_PURPOSE = b"otp device token"


@functools.lru_cache(maxsize=8)
def _device_token_keys(code_keys_: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(key_derive(key, purpose=DEVICE_TOKEN_PURPOSE) for key in code_keys_)


def device_token_keys() -> tuple[bytes, ...]:
    """The keys of device tokens' HMACs: one derived (key_derive) from each code key, current first, so rotating
    OTP_HMAC_KEY (or SECRET_KEY) with its old key in the fallbacks keeps every device token working, and a key
    found out elsewhere (the throttles', the job encryption's) tells nothing of these."""
    return _device_token_keys(code_keys())
