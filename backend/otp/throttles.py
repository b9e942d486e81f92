"""Every per-address limit, declared once: its Redis key, its limit's setting, its period.

Issuing, verifying, the release after an outage, the support selector and the `address_status` command all
read these declarations. Adding a limit is one declaration below and one call where it applies; the
primitives (one atomic Redis operation each) are in core.ratelimit.

Keys hold a hash of the address, never the address itself.
"""
import hashlib
from dataclasses import dataclass

from django.conf import settings

from core.errors import RateLimited
from core.ratelimit import (HOUR, cooldown_release, cooldown_remaining, cooldown_then_rate_hit, rate_count, rate_hit,
                            rate_unhit)
from otp.addresses import Address, mailbox_canonical


def address_cache_key(prefix: str, address: Address) -> str:
    """The cache key of an address's throttle state: `prefix` and a SHA-256 of the normalised address."""
    return f"{prefix}:{hashlib.sha256(address.value.encode()).hexdigest()[:32]}"


@dataclass(frozen=True, kw_only=True)
class _AddressLimit:
    name: str
    key_prefix: str
    # True: one key for every address that reaches the same mailbox (contract: the send cooldown and hourly cap
    # key on the canonical mailbox), so plus-tags cannot multiply a victim's messages. False: the exact address.
    per_mailbox: bool = False

    def key(self, address: Address) -> str:
        return address_cache_key(self.key_prefix, mailbox_canonical(address) if self.per_mailbox else address)


@dataclass(frozen=True, kw_only=True)
class AddressCooldown(_AddressLimit):
    """At most one pass per `seconds_setting` seconds for an address (`SET NX EX`: of parallel requests one passes)."""

    seconds_setting: str

    @property
    def seconds(self) -> int:
        return getattr(settings, self.seconds_setting)

    def current(self, address: Address) -> int:
        """Whole seconds left on the cooldown (0 when none is running)."""
        return cooldown_remaining(key=self.key(address))

    def describe(self, value: int) -> str:
        return f"cooldown {value}s left"


@dataclass(frozen=True, kw_only=True)
class AddressRate(_AddressLimit):
    """At most `limit_setting` hits per address per `period_seconds` (GCRA: no double burst at any edge);
    `noun` names a hit for people."""

    limit_setting: str
    period_seconds: int
    noun: str

    @property
    def limit(self) -> int:
        return getattr(settings, self.limit_setting)

    def hit(self, address: Address) -> int:
        """Count one hit; 0 when allowed, else the whole seconds to wait (nothing counted)."""
        return rate_hit(key=self.key(address), limit=self.limit, period=self.period_seconds)

    def unhit(self, address: Address) -> None:
        """Give back one hit."""
        rate_unhit(key=self.key(address), limit=self.limit, period=self.period_seconds)

    def current(self, address: Address) -> int:
        """Hits spent now (they come back one per period / limit seconds)."""
        return rate_count(key=self.key(address), limit=self.limit, period=self.period_seconds)

    def describe(self, value: int) -> str:
        return f"{value} {self.noun} this hour" if self.period_seconds == HOUR else f"{value} {self.noun}"


SEND_COOLDOWN = AddressCooldown(name="send_cooldown", key_prefix="otp:cooldown", per_mailbox=True,
                                seconds_setting="OTP_RESEND_COOLDOWN_SECONDS")
SENDS_PER_HOUR = AddressRate(name="sends_per_hour", key_prefix="otp:sends", per_mailbox=True,
                             limit_setting="OTP_SENDS_PER_HOUR", period_seconds=HOUR, noun="sends")
# On the exact address: guesses at victim+1@ must not spend victim@'s budget.
FAILURES_PER_HOUR = AddressRate(name="failures_per_hour", key_prefix="otp:failures",
                                limit_setting="OTP_MAX_FAILURES_PER_HOUR", period_seconds=HOUR, noun="wrong codes")

# Every per-address limit, in the order support staff read them.
ADDRESS_LIMITS: tuple[AddressCooldown | AddressRate, ...] = (SEND_COOLDOWN, SENDS_PER_HOUR, FAILURES_PER_HOUR)


def send_throttle_take(*, address: Address) -> None:
    """Take the send cooldown, then count the send in the hourly cap, in one Redis operation.

    Counted for every request, account or not, so throttling reveals nothing (contract: "Sending is throttled
    per address"). Raises core.errors.RateLimited with the whole seconds to wait.
    """
    wait = cooldown_then_rate_hit(
        cooldown_key=SEND_COOLDOWN.key(address), seconds=SEND_COOLDOWN.seconds,
        key=SENDS_PER_HOUR.key(address), limit=SENDS_PER_HOUR.limit, period=SENDS_PER_HOUR.period_seconds,
    )
    if wait:
        raise RateLimited(wait)


def send_throttle_release(*, address: Address) -> None:
    """Give back what send_throttle_take took, when no code could be sent for a reason not the user's."""
    cooldown_release(key=SEND_COOLDOWN.key(address))
    SENDS_PER_HOUR.unhit(address)


def failure_take(*, address: Address) -> None:
    """Count one verify against the address's failure budget before the code is checked.

    Counted first and given back on success (failure_give_back), so parallel guesses cannot overshoot the
    budget. Raises core.errors.RateLimited with the whole seconds to wait once the budget is spent.
    """
    wait = FAILURES_PER_HOUR.hit(address)
    if wait:
        raise RateLimited(wait)


def failure_give_back(*, address: Address) -> None:
    """Take back the hit failure_take counted, after a successful verify."""
    FAILURES_PER_HOUR.unhit(address)


def address_throttle_state(*, address: Address) -> dict[str, int]:
    """Each limit's current value for `address`, by limit name: seconds left for a cooldown, hits spent for a rate."""
    return {limit.name: limit.current(address) for limit in ADDRESS_LIMITS}
