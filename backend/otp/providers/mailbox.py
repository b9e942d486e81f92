"""The sender's mailbox (`DEFAULT_FROM_EMAIL`), read with the email library: what the From header, the envelope
sender and the Message-ID's domain are built from.

It imports only the standard library and `idna`, so the settings can check the value at start-up.
"""
from dataclasses import dataclass
from email import errors, policy
from email.headerregistry import Address
from functools import lru_cache

import idna


@dataclass(frozen=True)
class Sender:
    """One mailbox: an optional display name (any text), an ASCII local part and a domain in A-labels."""

    display_name: str
    username: str
    domain: str

    @property
    def addr_spec(self) -> str:
        """`local@domain`, ASCII only (RFC 5322 section 3.4.1)."""
        return f"{self.username}@{self.domain}"

    @property
    def header(self) -> str:
        """The mailbox as a From value, display name quoted where RFC 5322 section 3.2.5 needs it
        (`"Login, Inc." <no-reply@example.com>`); a non-ASCII display name stays text, for the mail library to
        encode (RFC 2047)."""
        return str(Address(display_name=self.display_name, username=self.username, domain=self.domain))


def domain_to_ascii(domain: str) -> str:
    """`domain` in A-labels: IDNA 2008 with UTS 46 mapping, non-transitional (`straße.de` is
    `xn--strae-oqa.de`, never `strasse.de` as Python's own `idna` codec, IDNA 2003, would make it).

    Raises ValueError for a domain IDNA refuses (an IP literal, an empty label, a disallowed character).
    """
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"domain {domain!r}: {exc}") from exc


@lru_cache(maxsize=8)
def sender_parse(value: str) -> Sender:
    """Read `value` (`no-reply@example.com`, `OTP Login <no-reply@example.com>`, `"Login, Inc."
    <no-reply@example.com>`, `Name <no-reply@bücher.example>`) as exactly one mailbox under Python's strict
    email policy (RFC 5322 section 3.4).

    Raises ValueError naming what is wrong: not one mailbox, a parse defect, no domain, a non-ASCII local part
    (that needs SMTPUTF8, RFC 6531), or a domain IDNA refuses.
    """
    try:
        header = policy.strict.header_factory("From", value)
    except (ValueError, errors.HeaderParseError) as exc:
        raise ValueError(str(exc)) from exc
    if header.defects:
        raise ValueError("; ".join(str(defect) for defect in header.defects))
    if len(header.addresses) != 1:
        raise ValueError(f"{len(header.addresses)} addresses instead of one")
    address = header.addresses[0]
    if not address.username or not address.domain:
        raise ValueError("no local part or no domain")
    if not address.username.isascii():
        raise ValueError("a non-ASCII local part")
    return Sender(display_name=address.display_name, username=address.username,
                  domain=domain_to_ascii(address.domain))
