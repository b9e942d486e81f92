"""The one-time code: its format (alphabet, length, how it may be typed), making one, and its keyed hash.

Everything that shows, checks or generates a code reads its format here: the API's input check, the
`/home/` page's input attributes and the message tests. The plaintext code is never stored.
"""
import hashlib
import hmac
import secrets
import unicodedata

from django.conf import settings

CODE_ALPHABET = "0123456789"


def code_length() -> int:
    """The number of characters of a code: `OTP_LENGTH` (6 to 10)."""
    return settings.OTP_LENGTH


# What people put between groups of digits, by Unicode general category: spaces (Zs: the no-break, thin,
# figure and ideographic spaces among them) and dashes and hyphens (Pd). Mobile numbers take the same
# (otp.addresses.mobile_normalize), so a number and a code may be typed alike.
SPACER_CATEGORIES = frozenset({"Zs", "Pd"})


def char_is_spacer(char: str) -> bool:
    return unicodedata.category(char) in SPACER_CATEGORIES


def code_is_well_formed(value: str) -> bool:
    """True when `value` is a code in its normalised form: the code's length, only characters of CODE_ALPHABET."""
    return len(value) == code_length() and all(char in CODE_ALPHABET for char in value)


def code_normalize(typed: str) -> str | None:
    """The code as it was typed, in its normalised form (ASCII digits); None when it is no well-formed code.

    Accepted (contract, One-time codes): decimal digits of any script (Unicode category Nd: ASCII, Arabic-Indic,
    Persian, Devanagari, full-width, ...), with spacers (SPACER_CATEGORIES) between them, and whitespace around
    them. Anything else (a superscript or circled digit, a letter, a dot, a spacer before the first digit or
    after the last) makes the code invalid. The digits are then checked for the code's length; comparing them
    with the stored hash, in constant time, is code_matches'.
    """
    text = typed.strip()
    if not text or unicodedata.category(text[0]) != "Nd" or unicodedata.category(text[-1]) != "Nd":
        return None
    digits = []
    for char in text:
        if unicodedata.category(char) == "Nd":
            digits.append(str(unicodedata.decimal(char)))
        elif not char_is_spacer(char):
            return None
    code = "".join(digits)
    return code if code_is_well_formed(code) else None


def code_input_attributes() -> dict[str, str]:
    """HTML attributes of an input that takes a code: `inputmode`, `pattern`, `maxlength`, `autocomplete`.

    They let through everything code_normalize accepts (the API judges the code, not the input): the pattern
    is the characters it reads, and `maxlength` leaves room for a spacer or a few between the digits.
    """
    return {"inputmode": "numeric", "pattern": r"[\p{Nd}\p{Zs}\p{Pd}]*", "maxlength": str(code_length() * 4),
            "autocomplete": "one-time-code"}


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
