"""The one-time code: its format (alphabet, length, well-formedness), making one, and its keyed hash.

Everything that shows, checks or generates a code reads its format here: the API's input check, the
`/home/` page's input attributes and the message tests. The plaintext code is never stored.
"""
import hashlib
import hmac
import secrets

from django.conf import settings

from core import keys

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


def _code_hmac(key: bytes, *, address: str, code: str) -> str:
    return hmac.new(key, f"{address}\n{code}".encode(), hashlib.sha256).hexdigest()


def code_hash(*, address: str, code: str) -> str:
    """HMAC-SHA256 (RFC 2104) of `address` and `code` under the current key (OTP_HMAC_KEY, or derived from
    SECRET_KEY: core.keys.code_keys), as 64 hex characters.

    The address is in the message so one code value hashes differently for every address.
    """
    return _code_hmac(keys.code_keys()[0], address=address, code=code)


def code_matches(*, code_hash_hex: str, address: str, code: str) -> bool:
    """True when `code` for `address` hashes to `code_hash_hex` under the current key or any fallback, so a code
    sent before a key rotation still works; each comparison in constant time, and every key always tried."""
    candidates = [_code_hmac(key, address=address, code=code) for key in keys.code_keys()]
    return any([hmac.compare_digest(code_hash_hex, candidate) for candidate in candidates])
