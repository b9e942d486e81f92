"""Making one-time codes and their keyed hashes; the plaintext code is never stored."""
import hashlib
import hmac
import secrets

from django.conf import settings


def _hmac_key() -> bytes:
    if settings.OTP_HMAC_KEY:
        return settings.OTP_HMAC_KEY.encode()
    # Derived, not SECRET_KEY itself, so the key for codes is not the key for sessions and tokens.
    return hashlib.sha256(b"otp-code-hmac:" + settings.SECRET_KEY.encode()).digest()


def code_generate() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(settings.OTP_LENGTH))


def code_hash(*, address: str, code: str) -> str:
    # The address is in the message so one code value hashes differently for every address.
    return hmac.new(_hmac_key(), f"{address}\n{code}".encode(), hashlib.sha256).hexdigest()


def code_matches(*, code_hash_hex: str, address: str, code: str) -> bool:
    return hmac.compare_digest(code_hash_hex, code_hash(address=address, code=code))
