"""Every per-address limit, declared once: its Redis key, its limit's setting, its period.

Issuing, verifying, the release after an outage, the support selector and the `address_status` command all
read these declarations. Adding a limit is one declaration below and one call where it applies; the
primitives (one atomic Redis operation each) are in core.ratelimit.

Keys hold a keyed hash of the address, never the address itself.

Two client classes (contract: device tokens; OWASP's "device cookie" against targeted lockout): requests that
carry a live device token for the address, and the rest. Each class has its own send cooldown, hourly cap and
failure budget, with the same settings but separate keys, so a flood without a token cannot spend what a
returning client's device needs to sign in.
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
    # What support staff read before the value: the device class's limits say so.
    label: str = ""

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
        return f"{self.label}cooldown {value}s left"


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
        return f"{self.label}{value} {self.noun} " + {HOUR: "this hour", DAY: "today"}.get(self.period_seconds, "now")


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

# The device class: the same settings on keys of its own. Only a request with a live device token for the address
# reaches them (otp.selectors.device_token_find), so none of the limits above, however spent, holds it back.
DEVICE_SEND_COOLDOWN = AddressCooldown(name="device_send_cooldown", key_prefix="otp:device:cooldown",
                                       per_mailbox=True, label="device: ", seconds_setting="OTP_RESEND_COOLDOWN_SECONDS")
DEVICE_SENDS_PER_HOUR = AddressRate(name="device_sends_per_hour", key_prefix="otp:device:sends", per_mailbox=True,
                                    label="device: ", limit_setting="OTP_SENDS_PER_HOUR", period_seconds=HOUR,
                                    noun="sends")
DEVICE_FAILURES_PER_HOUR = AddressRate(name="device_failures_per_hour", key_prefix="otp:device:failures",
                                       label="device: ", limit_setting="OTP_MAX_FAILURES_PER_HOUR",
                                       period_seconds=HOUR, noun="wrong codes")
DEVICE_FAILURES_PER_DAY = AddressRate(name="device_failures_per_day", key_prefix="otp:device:failures:day",
                                      label="device: ", limit_setting="OTP_MAX_FAILURES_PER_DAY", period_seconds=DAY,
                                      noun="wrong codes")
DEVICE_FAILURE_BUDGET = (DEVICE_FAILURES_PER_HOUR, DEVICE_FAILURES_PER_DAY)

# Every per-address limit, in the order support staff read them.
ADDRESS_LIMITS: tuple[AddressCooldown | AddressRate, ...] = (
    SEND_COOLDOWN, SENDS_PER_HOUR, *FAILURE_BUDGET,
    DEVICE_SEND_COOLDOWN, DEVICE_SENDS_PER_HOUR, *DEVICE_FAILURE_BUDGET,
)


def _send_limits(device: bool) -> tuple[AddressCooldown, AddressRate]:
    return (DEVICE_SEND_COOLDOWN, DEVICE_SENDS_PER_HOUR) if device else (SEND_COOLDOWN, SENDS_PER_HOUR)


def _failure_budget(device: bool) -> tuple[AddressRate, ...]:
    return DEVICE_FAILURE_BUDGET if device else FAILURE_BUDGET


def send_throttle_take(*, address: Address, device: bool = False) -> None:
    """Take the send cooldown, then count the send in the hourly cap, in one Redis operation; those of the
    device class when `device` (the request carries a live device token for the address), else the others.

    Counted for every request, account or not, so throttling reveals nothing (contract: "Sending is throttled
    per address and client class"). Raises core.errors.RateLimited with the whole seconds to wait.
    """
    cooldown, per_hour = _send_limits(device)
    wait = cooldown_then_rate_hit(
        cooldown_key=cooldown.key(address), seconds=cooldown.seconds,
        key=per_hour.key(address), limit=per_hour.limit, period=per_hour.period_seconds,
    )
    if wait:
        raise RateLimited(wait)


def send_throttle_release(*, address: Address, device: bool = False) -> None:
    """Give back what send_throttle_take took (same `device`), when no code could be sent for a reason not the
    user's."""
    cooldown, per_hour = _send_limits(device)
    cooldown_release(key=cooldown.key(address))
    per_hour.unhit(address)


def failure_take(*, address: Address, device: bool = False) -> None:
    """Count one verify against every rate of the address's failure budget of its client class (the device
    class's when `device`), atomically, before the code is checked.

    Counted first and reset on success (failure_budget_reset), so parallel guesses cannot overshoot the budget.
    Raises core.errors.RateLimited with the whole seconds until the budget allows a guess again (the real wait:
    GCRA knows it exactly).
    """
    wait = rates_hit(rates=[limit.rate(address) for limit in _failure_budget(device)])
    if wait:
        raise RateLimited(wait)


def failure_budget_reset(*, address: Address, device: bool = False) -> None:
    """After a successful verify: the run of failures of the address's client class is over (contract: "A
    successful verify resets the consecutive count"). Only that class's: a device's sign-in must not hand a
    flood without a token fresh guesses, nor the other way round."""
    for limit in _failure_budget(device):
        rate_reset(key=limit.key(address))


def failure_budget_yearly_maximum() -> int:
    """The most wrong guesses the failure budget lets anyone have compared for one address in a year (with no
    successful verify between them): each rate allows its burst plus one guess per emission interval, and a
    guess needs every rate's leave, so the tightest rate bounds it."""
    return min(Rate("", limit.limit, limit.period_seconds).maximum_hits(YEAR) for limit in FAILURE_BUDGET)


def address_throttle_state(*, address: Address) -> dict[str, int]:
    """Each limit's current value for `address`, by limit name: seconds left for a cooldown, hits spent for a rate."""
    return {limit.name: limit.current(address) for limit in ADDRESS_LIMITS}
