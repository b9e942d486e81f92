"""The one-time code: its format (alphabet, length, well-formedness), making one, and its keyed hash.

Everything that shows, checks or generates a code reads its format here: the API's input check, the
`/home/` page's input attributes and the message tests. The plaintext code is never stored.
"""
import hashlib
import hmac
import secrets

from django.conf import settings

CODE_ALPHABET = "0123456789"


def code_length() -> int:
    """The number of characters of a code: `OTP_LENGTH` (6 to 10)."""
    return settings.OTP_LENGTH


def code_is_well_formed(value: str) -> bool:
    """True when `value` has the code's length and only characters of CODE_ALPHABET (ASCII digits)."""
    return len(value) == code_length() and all(char in CODE_ALPHABET for char in value)


def code_input_attributes() -> dict[str, str]:
    """HTML attributes of an input that takes a code: `inputmode`, `pattern`, `maxlength`, `autocomplete`."""
    return {"inputmode": "numeric", "pattern": f"[{CODE_ALPHABET[0]}-{CODE_ALPHABET[-1]}]*",
            "maxlength": str(code_length()), "autocomplete": "one-time-code"}


def code_generate() -> str:
    """A new code: `OTP_LENGTH` characters of CODE_ALPHABET from the operating system's CSPRNG (`secrets`).

    Services call it as `codes.code_generate()`, so a test pins codes by patching this one name.
    """
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(code_length()))


def _hmac_key() -> bytes:
    if settings.OTP_HMAC_KEY:
        return settings.OTP_HMAC_KEY.encode()
    # Derived, not SECRET_KEY itself, so the key for codes is not the key for sessions and tokens.
    return hashlib.sha256(b"otp-code-hmac:" + settings.SECRET_KEY.encode()).digest()


def code_hash(*, address: str, code: str) -> str:
    """HMAC-SHA256 (RFC 2104) of `address` and `code` under OTP_HMAC_KEY, as 64 hex characters.

    The address is in the message so one code value hashes differently for every address.
    """
    return hmac.new(_hmac_key(), f"{address}\n{code}".encode(), hashlib.sha256).hexdigest()


def code_matches(*, code_hash_hex: str, address: str, code: str) -> bool:
    """True when `code` for `address` hashes to `code_hash_hex`; compared in constant time."""
    return hmac.compare_digest(code_hash_hex, code_hash(address=address, code=code))
