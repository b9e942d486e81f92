"""The one-time code: its format (alphabet, length, how it may be typed), making one, its keyed hash, and its
sealing for the delivery job.

Everything that shows, checks or generates a code reads its format here: the API's input check, the
`/home/` page's input attributes and the message tests. The plaintext code is never stored, and travels only
sealed (encrypted and authenticated) in the delivery job.
"""
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import unicodedata

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from core import keys

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
    """HTML attributes of an input that takes a code: `inputmode`, `maxlength`, `autocomplete`.

    They let through everything code_normalize accepts (the API judges the code, not the input): no `pattern`,
    which would block what a person typed before the page could read it (the page normalises the code the way
    code_normalize does), and a `maxlength` with room for a spacer or a few between the digits.
    """
    return {"inputmode": "numeric", "maxlength": str(code_length() * 4), "autocomplete": "one-time-code"}


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


# --- Sealing: the code inside the delivery job -----------------------------------------------------------------

SEAL_PURPOSE = b"otp delivery job code"
SEAL_SALT_BYTES = 16
SEAL_NONCE_BYTES = 12


class CodeSealInvalid(Exception):
    """A sealed code no configured key opens for this delivery: tampered with, moved from another delivery's job,
    or (for a job that does not name its key) sealed under a key this process does not have."""


class CodeSealKeyUnknown(Exception):
    """A sealed code whose job names a key (code_seal_key_id) this process does not hold: sealed by a process whose
    keys were rotated and this one's not yet, or after this one's fallback was dropped."""


def _seal_context(delivery_id: int, expires_at: float) -> bytes:
    # The associated data: a ciphertext opens only in the job of its own delivery and expiry.
    return f"otp.delivery_send delivery={int(delivery_id)} expires_at={float(expires_at)!r}".encode()


def code_seal(*, code: str, delivery_id: int, expires_at: float) -> str:
    """`code` encrypted for the job of delivery `delivery_id`, whose code expires at `expires_at` (Unix seconds),
    as URL-safe base64 of salt (16 bytes), nonce (12) and ciphertext with its 16-byte tag.

    AES-256-GCM (NIST SP 800-38D) with the delivery id and the expiry as associated data, so the ciphertext is
    refused in any other job. The key is derived (HKDF-SHA256, RFC 5869) from the current code key
    (core.keys.code_keys) with a fresh random salt, so each message has a key of its own: GCM's limit of 2^32
    random nonces per key (SP 800-38D section 8.3) is never approached, whatever the volume.
    """
    salt, nonce = secrets.token_bytes(SEAL_SALT_BYTES), secrets.token_bytes(SEAL_NONCE_BYTES)
    key = keys.key_derive(keys.code_keys()[0], purpose=SEAL_PURPOSE, salt=salt)
    sealed = AESGCM(key).encrypt(nonce, code.encode(), _seal_context(delivery_id, expires_at))
    return base64.urlsafe_b64encode(salt + nonce + sealed).decode()


def code_seal_key_id() -> str:
    """The public name (core.keys.key_id) of the key code_seal seals with now: the current code key's."""
    return keys.key_id(keys.code_keys()[0])


def code_unseal(*, sealed: str, delivery_id: int, expires_at: float, key_id: str | None = None) -> str:
    """The code code_seal sealed for this delivery and expiry, opened with the key `key_id` names (the job's
    code_seal_key_id), or, for a job that names none (queued before jobs did), the current key or any fallback.

    Raises CodeSealKeyUnknown when no configured key has the name `key_id`, and CodeSealInvalid when `sealed` is
    malformed, was changed, belongs to another delivery or expiry, or (without `key_id`) was sealed under a key no
    longer or not yet configured.
    """
    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
        context = _seal_context(delivery_id, expires_at)
    except (AttributeError, TypeError, ValueError, binascii.Error) as exc:
        raise CodeSealInvalid("malformed") from exc
    salt, rest = raw[:SEAL_SALT_BYTES], raw[SEAL_SALT_BYTES:]
    nonce, body = rest[:SEAL_NONCE_BYTES], rest[SEAL_NONCE_BYTES:]
    if len(nonce) != SEAL_NONCE_BYTES or not body:
        raise CodeSealInvalid("malformed")
    candidates = keys.code_keys()
    if key_id is not None and not (isinstance(key_id, str) and re.fullmatch(r"[0-9a-f]{16}", key_id)):
        raise CodeSealInvalid("malformed key id")  # no key has such a name: changed, not waiting for a worker
    if key_id is not None:
        candidates = tuple(key for key in candidates if keys.key_id(key) == key_id)
        if not candidates:
            raise CodeSealKeyUnknown(f"sealed under key {str(key_id)[:16]!r}, which this process does not hold")
    for key in candidates:
        try:
            return AESGCM(keys.key_derive(key, purpose=SEAL_PURPOSE, salt=salt)).decrypt(nonce, body, context).decode()
        except InvalidTag:
            continue
    raise CodeSealInvalid("no configured key opens it for this delivery")
