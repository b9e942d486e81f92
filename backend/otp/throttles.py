"""Every per-address limit and every send budget, declared once: its Redis key, its limit's setting, its period.

Issuing, verifying, the release after an outage, the support selector and the `address_status` command all
read these declarations. Adding a limit is one declaration below and one call where it applies; the
primitives (one atomic Redis operation each) are in core.ratelimit.

Keys hold a keyed hash of the address, never the address itself. The send budgets are keyed on what many
addresses share (a number's prefix, a recipient domain, or nothing), which identifies no one.

Two client classes (contract: device tokens; OWASP's "device cookie" against targeted lockout): requests that
carry a live device token for the address, and the rest. Each class has its own send cooldown, hourly cap and
failure budget, with the same settings but separate keys, so a flood without a token cannot spend what a
returning client's device needs to sign in.
"""
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from core.errors import RateLimited
from core.keys import throttle_digest
from core.ratelimit import (HOUR, Rate, cooldown_release, cooldown_remaining, cooldown_start, cooldown_then_rate_hit,
                            cooldown_absent_then_rates_hit, peek_then_cooldown_then_rate_hit,
                            rate_count, rate_hit, rate_reset, rate_unhit, rates_hit, rates_wait)

DAY = 24 * HOUR
YEAR = 365 * DAY
from otp.addresses import Address, Channel, email_domain, mailbox_canonical, sms_destination_prefix


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


def failure_give_back(*, address: Address, device: bool = False) -> None:
    """Give back the verify failure_take counted (same `device`), when the code could not be compared for a
    reason not the user's (a database outage): a guess nobody compared is not a failure."""
    for limit in _failure_budget(device):
        limit.unhit(address)


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


# --- Send budgets: volume that many client addresses cannot bypass (contract: One-time codes) -------------------
#
# Per-address limits stop one victim from being flooded; they do nothing against SMS pumping (toll fraud: bots ask
# codes for many numbers whose revenue they share) or mail bombing of many addresses, since every request names
# a new address and comes from a new client. So each channel also has hourly budgets that every request shares:
# per destination (a number's prefix, a recipient domain) and overall. They count messages handed to the
# provider, in the worker (send_budget_take): a login for an address without an account, a refused number, a
# suppressed recipient spend nothing. /register/ and /login/ read them first (send_budget_wait) and answer 429
# while one is spent, so a pumping run stops at the API once the budget is gone. A GCRA rate each, so a spent
# budget comes back one message per hour / limit, not all at once on the hour.

# Seconds a request is told to wait while a channel is turned off (its budget set to 0): nothing tells when an
# operator turns it back on, and an hour is the budgets' period.
CHANNEL_OFF_WAIT_SECONDS = HOUR


@dataclass(frozen=True, kw_only=True)
class SendBudget:
    """At most `limit_setting` messages an hour on one channel, for every address together, or per `scope`
    (a function of the address: its destination prefix, its domain).

    `share_setting` names the percent of the budget reserved for requests carrying a valid device token
    (OTP_SMS_DEVICE_SHARE, OTP_EMAIL_DEVICE_SHARE): requests without one count on a second rate, `key:shared`,
    capped at the rest, so they can never spend the reserve, while device requests count only on the whole budget
    (and so may use what the others left). Without a reserve, requests without a token could spend a budget to
    the last message and lock out every user of a domain or a channel, device-token holders too (contract: device
    tokens; OWASP's device cookies). `name` is the `reason` label of the refusal metrics.
    """

    name: str
    key_prefix: str
    limit_setting: str
    share_setting: str
    scope: Callable[[Address], str] | None = None

    @property
    def limit(self) -> int:
        return getattr(settings, self.limit_setting)

    @property
    def shared_limit(self) -> int:
        """The part of the budget requests without a device token may spend."""
        return self.limit - self.limit * getattr(settings, self.share_setting) // 100

    def key(self, address: Address | None = None) -> str:
        return f"{self.key_prefix}:{self.scope(address)}" if self.scope else self.key_prefix

    def rates(self, address: Address, *, device: bool) -> list[Rate] | None:
        """The rates one message to `address` counts on, or None when this class of request has no budget at
        all (the channel is off, or the reserve is the whole budget)."""
        whole = Rate(self.key(address), self.limit, HOUR) if self.limit else None
        if device:
            return [whole] if whole else None
        shared = self.shared_limit
        return [whole, Rate(f"{self.key(address)}:shared", shared, HOUR)] if whole and shared else None


SMS_PER_PREFIX = SendBudget(name="budget_prefix", key_prefix="otp:budget:sms:prefix",
                            limit_setting="OTP_SMS_PER_PREFIX_PER_HOUR", share_setting="OTP_SMS_DEVICE_SHARE",
                            scope=sms_destination_prefix)
SMS_PER_HOUR = SendBudget(name="budget_global", key_prefix="otp:budget:sms", limit_setting="OTP_SMS_PER_HOUR",
                          share_setting="OTP_SMS_DEVICE_SHARE")
EMAIL_PER_DOMAIN = SendBudget(name="budget_domain", key_prefix="otp:budget:email:domain",
                              limit_setting="OTP_EMAIL_PER_DOMAIN_PER_HOUR", share_setting="OTP_EMAIL_DEVICE_SHARE",
                              scope=email_domain)
EMAIL_PER_HOUR = SendBudget(name="budget_global", key_prefix="otp:budget:email", limit_setting="OTP_EMAIL_PER_HOUR",
                            share_setting="OTP_EMAIL_DEVICE_SHARE")
SEND_BUDGETS: dict[Channel, tuple[SendBudget, ...]] = {
    Channel.SMS: (SMS_PER_PREFIX, SMS_PER_HOUR),
    Channel.EMAIL: (EMAIL_PER_DOMAIN, EMAIL_PER_HOUR),
}
# The `reason` of a refusal while a channel's budget is 0.
CHANNEL_OFF = "channel_off"


def _budget_rates(address: Address, device: bool) -> list[tuple[SendBudget, list[Rate] | None]]:
    return [(budget, budget.rates(address, device=device)) for budget in SEND_BUDGETS[address.channel]]


def _budget_spent(budget_rates: list[tuple[SendBudget, list[Rate] | None]]) -> tuple[int, str]:
    # Which budget stops a message, once the combined check said one does: a read per budget, on refusals only.
    waits = [(CHANNEL_OFF_WAIT_SECONDS, CHANNEL_OFF) if rates is None else (rates_wait(rates=rates), budget.name)
             for budget, rates in budget_rates]
    return max(waits, key=lambda item: item[0])


def send_budget_wait(*, address: Address, device: bool = False) -> tuple[int, str | None]:
    """Whether one more message to `address` fits its channel's budgets, counting nothing: (0, None) when it
    does, else (whole seconds until it would, the `name` of the budget that is spent, or CHANNEL_OFF).

    `device`: the request carries a valid device token (it may spend the reserved share). One read-only Redis
    operation while the budgets allow it. A channel turned off answers CHANNEL_OFF_WAIT_SECONDS.
    """
    budget_rates = _budget_rates(address, device)
    if any(rates is None for _, rates in budget_rates):
        return _budget_spent(budget_rates)
    if not rates_wait(rates=[rate for _, rates in budget_rates for rate in rates]):
        return 0, None
    return _budget_spent(budget_rates)


def send_budget_then_throttle_take(*, address: Address, device: bool = False) -> tuple[int, str | None]:
    """send_budget_wait, then, when the budgets allow one more message, send_throttle_take: one atomic Redis
    operation on the path of every /register/ and /login/, where the two were two round trips.

    Returns (0, None) when the throttles were taken; (whole seconds, the spent budget's `name` or CHANNEL_OFF)
    when a budget is spent, taking nothing (the address's throttles stay untouched, as before). Raises
    core.errors.RateLimited, as send_throttle_take does."""
    budget_rates = _budget_rates(address, device)
    if any(rates is None for _, rates in budget_rates):
        return _budget_spent(budget_rates)
    cooldown, per_hour = _send_limits(device)
    budget_wait, wait = peek_then_cooldown_then_rate_hit(
        peek=[rate for _, rates in budget_rates for rate in rates],
        cooldown_key=cooldown.key(address), seconds=cooldown.seconds,
        key=per_hour.key(address), limit=per_hour.limit, period=per_hour.period_seconds,
    )
    if budget_wait:
        # Which budget stops it: a read per budget, on refusals only.
        recheck, name = _budget_spent(budget_rates)
        return max(recheck, budget_wait), name
    if wait:
        raise RateLimited(wait)
    return 0, None


def send_budget_take(*, address: Address, device: bool = False) -> str | None:
    """Count one message to `address`, about to be handed to the provider, on every budget of its channel at
    once (one atomic Redis operation): None when all allow it (and each counted it), else the `name` of a budget
    that is spent (nothing counted)."""
    budget_rates = _budget_rates(address, device)
    if any(rates is None for _, rates in budget_rates):
        return CHANNEL_OFF
    if not rates_hit(rates=[rate for _, rates in budget_rates for rate in rates]):
        return None
    return _budget_spent(budget_rates)[1]


def send_budget_give_back(*, address: Address, device: bool = False) -> None:
    """Give back the message send_budget_take counted, when the provider did not take it after all."""
    for _, rates in _budget_rates(address, device):
        for rate in rates or ():
            rate_unhit(key=rate.key, limit=rate.limit, period=rate.period)


def send_budget_usage() -> dict[str, float]:
    """The share (0 to 1) of each channel-wide budget spent now, by name: `sms` and `email` (the whole budget),
    `sms_shared` and `email_shared` (the part requests without a device token may spend). A budget of 0 reads 1
    (spent)."""
    usage = {}
    for name, limit, key in (
        ("sms", SMS_PER_HOUR.limit, SMS_PER_HOUR.key()),
        ("sms_shared", SMS_PER_HOUR.shared_limit, f"{SMS_PER_HOUR.key()}:shared"),
        ("email", EMAIL_PER_HOUR.limit, EMAIL_PER_HOUR.key()),
        ("email_shared", EMAIL_PER_HOUR.shared_limit, f"{EMAIL_PER_HOUR.key()}:shared"),
    ):
        usage[name] = min(1.0, rate_count(key=key, limit=limit, period=HOUR) / limit) if limit else 1.0
    return usage


# Recipients whose mail server refused them permanently (a 5xx reply to RCPT): mailing them again only adds
# bounces, which cost the sending domain its reputation (and real codes then land in spam). On the exact address.
EMAIL_SUPPRESSION = AddressCooldown(name="email_suppressed", key_prefix="otp:suppressed",
                                    seconds_setting="OTP_EMAIL_SUPPRESSION_SECONDS")


def recipient_suppress(*, address: Address) -> None:
    """Mail nothing to `address` for OTP_EMAIL_SUPPRESSION_SECONDS (restarted if it was suppressed already)."""
    cooldown_start(key=EMAIL_SUPPRESSION.key(address), seconds=EMAIL_SUPPRESSION.seconds)


# What recipient_unsuppressed_then_send_budget_take answers for a suppressed recipient.
RECIPIENT_SUPPRESSED = "recipient_suppressed"


def recipient_unsuppressed_then_send_budget_take(*, address: Address, device: bool = False) -> str | None:
    """recipient_suppressed for an email address, then, unless it is, send_budget_take: one Redis operation on
    the path of every delivery, where the two were two round trips.

    Returns RECIPIENT_SUPPRESSED (nothing counted), else what send_budget_take returns (None: counted)."""
    if address.channel != Channel.EMAIL:
        return send_budget_take(address=address, device=device)
    budget_rates = _budget_rates(address, device)
    if any(rates is None for _, rates in budget_rates):
        return RECIPIENT_SUPPRESSED if recipient_suppressed(address=address) else CHANNEL_OFF
    wait = cooldown_absent_then_rates_hit(cooldown_key=EMAIL_SUPPRESSION.key(address),
                                          rates=[rate for _, rates in budget_rates for rate in rates])
    if wait is None:
        return RECIPIENT_SUPPRESSED
    if not wait:
        return None
    return _budget_spent(budget_rates)[1]


def recipient_suppressed(*, address: Address) -> int:
    """Whole seconds `address` stays suppressed (0: it is not)."""
    return EMAIL_SUPPRESSION.current(address)
