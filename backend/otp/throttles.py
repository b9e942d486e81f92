"""Every per-address limit, declared once: its Redis key, its limit's setting, its period.

Issuing, verifying, the release after an outage, the support selector and the `address_status` command all
read these declarations. Adding a limit is one declaration below and one call where it applies; the
primitives (one atomic Redis operation each) are in core.ratelimit.

Keys hold a keyed hash of the address, never the address itself.
"""
from dataclasses import dataclass

from django.conf import settings

from core.errors import RateLimited
from core.keys import throttle_digest
from core.ratelimit import (HOUR, Rate, cooldown_release, cooldown_remaining, cooldown_then_rate_hit, rate_count,
                            rate_hit, rate_reset, rate_unhit, rates_hit)

DAY = 24 * HOUR
YEAR = 365 * DAY
from otp.addresses import Address, mailbox_canonical


def address_cache_key(prefix: str, address: Address) -> str:
    """The cache key of an address's throttle state: `prefix` and a keyed hash of the normalised address
    (core.keys.throttle_digest: an unkeyed one gives phone numbers back to whoever hashes the number space)."""
    return f"{prefix}:{throttle_digest(address.value)}"


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

    def rate(self, address: Address) -> Rate:
        return Rate(self.key(address), self.limit, self.period_seconds)

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
        return f"{value} {self.noun} " + {HOUR: "this hour", DAY: "today"}.get(self.period_seconds, "now")


SEND_COOLDOWN = AddressCooldown(name="send_cooldown", key_prefix="otp:cooldown", per_mailbox=True,
                                seconds_setting="OTP_RESEND_COOLDOWN_SECONDS")
SENDS_PER_HOUR = AddressRate(name="sends_per_hour", key_prefix="otp:sends", per_mailbox=True,
                             limit_setting="OTP_SENDS_PER_HOUR", period_seconds=HOUR, noun="sends")
# The failure budget: wrong guesses compared for one address, across all its codes (contract: One-time codes).
# A burst of OTP_MAX_FAILURES_PER_HOUR, and over a year no more than failure_budget_yearly_maximum(), which
# start-up keeps within 1 % of the code space. On the exact address: guesses at victim+1@ must not spend
# victim@'s budget.
FAILURES_PER_HOUR = AddressRate(name="failures_per_hour", key_prefix="otp:failures",
                                limit_setting="OTP_MAX_FAILURES_PER_HOUR", period_seconds=HOUR, noun="wrong codes")
FAILURES_PER_DAY = AddressRate(name="failures_per_day", key_prefix="otp:failures:day",
                               limit_setting="OTP_MAX_FAILURES_PER_DAY", period_seconds=DAY, noun="wrong codes")
FAILURE_BUDGET = (FAILURES_PER_HOUR, FAILURES_PER_DAY)

# Every per-address limit, in the order support staff read them.
ADDRESS_LIMITS: tuple[AddressCooldown | AddressRate, ...] = (SEND_COOLDOWN, SENDS_PER_HOUR, *FAILURE_BUDGET)


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
    """Count one verify against every rate of the address's failure budget, atomically, before the code is
    checked.

    Counted first and reset on success (failure_budget_reset), so parallel guesses cannot overshoot the budget.
    Raises core.errors.RateLimited with the whole seconds until the budget allows a guess again (the real wait:
    GCRA knows it exactly).
    """
    wait = rates_hit(rates=[limit.rate(address) for limit in FAILURE_BUDGET])
    if wait:
        raise RateLimited(wait)


def failure_budget_reset(*, address: Address) -> None:
    """After a successful verify: the address's run of failures is over (contract: "A successful verify resets
    the consecutive count")."""
    for limit in FAILURE_BUDGET:
        rate_reset(key=limit.key(address))


def failure_budget_yearly_maximum() -> int:
    """The most wrong guesses the failure budget lets anyone have compared for one address in a year (with no
    successful verify between them): each rate allows its burst plus one guess per emission interval, and a
    guess needs every rate's leave, so the tightest rate bounds it."""
    return min(Rate("", limit.limit, limit.period_seconds).maximum_hits(YEAR) for limit in FAILURE_BUDGET)


def address_throttle_state(*, address: Address) -> dict[str, int]:
    """Each limit's current value for `address`, by limit name: seconds left for a cooldown, hits spent for a rate."""
    return {limit.name: limit.current(address) for limit in ADDRESS_LIMITS}
