"""Throttle primitives on Redis, so limits hold across every API process: one atomic Redis operation per check.

A cooldown is `SET key value NX EX seconds`: of parallel requests exactly one sets it.

A rate ("at most `limit` hits per `period` seconds") is the Generic Cell Rate Algorithm (GCRA, the virtual
scheduling form of ITU-T I.371): the key holds the theoretical arrival time (TAT) of the next hit; a hit is
allowed while TAT + one emission interval stays within one period of now, and then moves TAT on by that
interval. A full budget is spent in a burst and comes back one hit per `period / limit` seconds, so unlike a
fixed window (INCR + EXPIRE) no client can burst twice its rate across a window's edge. Each check is one Lua
script that reads Redis's own clock (TIME), so API processes on hosts with skewed clocks agree.

A cooldown guarding a rate (the per-address send limits) is one Lua script too. Without REDIS_URL (the quick
local run) the same rules run on an in-process dict.
"""
import functools
import math
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings

from core.redis_failover import failover_retry

HOUR = 3600
RATE_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
                "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def rate_parse(rate: str) -> tuple[int, int]:
    """`30/min` -> (30, 60): (hits, period in seconds). Settings validated the format at start-up."""
    count, period = rate.split("/")
    return int(count), RATE_PERIODS[period]


def _interval_ms(limit: int, period: int) -> int:
    # Rounded up: never more than `limit` hits a period.
    return math.ceil(period * 1000 / limit)


@dataclass(frozen=True)
class Rate:
    """"At most `limit` hits per `period` seconds" on the Redis key `key`."""

    key: str
    limit: int
    period: int

    @property
    def interval_ms(self) -> int:
        return _interval_ms(self.limit, self.period)

    def maximum_hits(self, seconds: float) -> int:
        """The most hits GCRA can allow in any span of `seconds`: the burst, plus one per emission interval."""
        return self.limit + math.floor(seconds * 1000 / self.interval_ms)


def _rate_args(rates: list[Rate]) -> list[int]:
    return [value for rate in rates for value in (rate.interval_ms, rate.limit)]


_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# GCRA over several rates at once, from KEYS[first] on, with ARGV[arg], ARGV[arg + 1] = emission interval (ms),
# limit for each key in turn. Needs `now`, `first` and `arg` in scope; leaves `wait`: 0 when every rate allows a
# hit (and then each has counted it), else the ms until all would (and nothing is counted).
_GCRA_STEP = """
local tats, wait = {}, 0
for i = first, #KEYS do
    local interval, limit = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1])
    arg = arg + 2
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    tats[i] = tat + interval
    wait = math.max(wait, tats[i] - interval * limit - now)
end
if wait <= 0 then
    wait = 0
    for i = first, #KEYS do redis.call('SET', KEYS[i], tats[i], 'PX', tats[i] - now) end
end
"""

# The GCRA step without its writes, over KEYS[1] .. KEYS[n] with ARGV[arg], ARGV[arg + 1] as in _GCRA_STEP. Needs
# `now`, `n` and `arg` in scope; leaves `peek`: the ms until every rate would allow a hit (0: now), counting nothing.
_GCRA_PEEK = """
local peek = 0
for i = 1, n do
    local interval, limit = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1])
    arg = arg + 2
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    peek = math.max(peek, tat + interval - interval * limit - now)
end
"""

# KEYS: the rates' keys. ARGV: interval (ms) and limit of each. Returns the ms to wait (0: allowed and counted).
_RATE_HIT = _NOW + "local first, arg = 1, 1\n" + _GCRA_STEP + "return wait\n"

# KEYS: the rates' keys. ARGV: interval (ms) and limit of each. Returns the ms until every rate would allow a hit
# (0: now), counting nothing.
_RATE_PEEK = _NOW + "local n, arg = #KEYS, 1\n" + _GCRA_PEEK + "return peek\n"

# KEYS: the rate's key. ARGV: emission interval (ms). Gives one hit back: TAT moves back one interval.
_RATE_UNHIT = _NOW + """
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local new_tat = tat - tonumber(ARGV[1])
if new_tat <= now then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now) end
return 0
"""

# KEYS: the cooldown, then the rates' keys. ARGV: the cooldown's seconds, then interval (ms) and limit of each
# rate. Returns {0, ms left on the cooldown} when the cooldown was running (nothing counted), else {1, ms to
# wait for the rates}.
_COOLDOWN_THEN_RATE_HIT = _NOW + """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then
    return {0, redis.call('PTTL', KEYS[1])}
end
local first, arg = 2, 2
""" + _GCRA_STEP + "return {1, wait}\n"

# The same, behind a read of other rates that must allow a hit first (a send budget before an address's
# throttle: one round trip where there were two). KEYS: the rates to read, the cooldown, the rates to hit.
# ARGV: how many rates to read, interval (ms) and limit of each, the cooldown's seconds, interval and limit of each
# rate to hit. Returns {0, ms until the read rates allow} when one does not (nothing taken), else what
# _COOLDOWN_THEN_RATE_HIT returns.
_PEEK_THEN_COOLDOWN_THEN_RATE_HIT = _NOW + "local n, arg = tonumber(ARGV[1]), 2\n" + _GCRA_PEEK + """
if peek > 0 then return {0, peek} end
if not redis.call('SET', KEYS[n + 1], 1, 'NX', 'EX', ARGV[arg]) then
    return {1, redis.call('PTTL', KEYS[n + 1])}
end
local first = n + 2
arg = arg + 1
""" + _GCRA_STEP + "return {2, wait}\n"

# KEYS: a flag (a cooldown's key), then the rates' keys. ARGV: interval (ms) and limit of each rate. Returns -1
# while the flag is set (nothing counted), else what _RATE_HIT returns: a read and a hit in one round trip.
_FLAG_ABSENT_THEN_RATE_HIT = _NOW + """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local first, arg = 2, 1
""" + _GCRA_STEP + "return wait\n"

# Written by the readiness check (store_ping): a write proves the server is a primary.
READINESS_KEY = "otp:readiness"


class _RedisCounters:
    def __init__(self, url: str) -> None:
        # An outage must answer fast (503 through core.exception_handler), not hang a request.
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, retry=failover_retry())
        self.rate_hit_script = self.client.register_script(_RATE_HIT)
        self.rate_unhit_script = self.client.register_script(_RATE_UNHIT)
        self.rate_peek_script = self.client.register_script(_RATE_PEEK)
        self.cooldown_then_rate_hit_script = self.client.register_script(_COOLDOWN_THEN_RATE_HIT)
        self.peek_then_cooldown_then_rate_hit_script = self.client.register_script(_PEEK_THEN_COOLDOWN_THEN_RATE_HIT)
        self.flag_absent_then_rate_hit_script = self.client.register_script(_FLAG_ABSENT_THEN_RATE_HIT)

    def rate_hit(self, rates: list[Rate]) -> float:
        return self.rate_hit_script(keys=[rate.key for rate in rates], args=_rate_args(rates)) / 1000

    def rate_unhit(self, key: str, interval_ms: int) -> None:
        self.rate_unhit_script(keys=[key], args=[interval_ms])

    def rate_peek(self, rates: list[Rate]) -> float:
        return max(0, self.rate_peek_script(keys=[rate.key for rate in rates], args=_rate_args(rates))) / 1000

    def flag_set(self, key: str, seconds: int) -> None:
        self.client.set(key, 1, ex=seconds)

    def rate_backlog_ms(self, key: str) -> float:
        # The key expires at its TAT, so its TTL is how far TAT is ahead of now.
        return max(0.0, float(self.client.pttl(key)))

    def cooldown_then_rate_hit(self, cooldown_key: str, seconds: int, rates: list[Rate]) -> tuple[bool, float]:
        taken, value = self.cooldown_then_rate_hit_script(keys=[cooldown_key, *(rate.key for rate in rates)],
                                                          args=[seconds, *_rate_args(rates)])
        return bool(taken), max(0.0, value / 1000)

    def peek_then_cooldown_then_rate_hit(self, peek: list[Rate], cooldown_key: str, seconds: int,
                                         rates: list[Rate]) -> tuple[int, float]:
        stage, value = self.peek_then_cooldown_then_rate_hit_script(
            keys=[*(rate.key for rate in peek), cooldown_key, *(rate.key for rate in rates)],
            args=[len(peek), *_rate_args(peek), seconds, *_rate_args(rates)])
        return stage, max(0.0, value / 1000)

    def flag_absent_then_rate_hit(self, flag_key: str, rates: list[Rate]) -> float | None:
        wait = self.flag_absent_then_rate_hit_script(keys=[flag_key, *(rate.key for rate in rates)],
                                                     args=_rate_args(rates))
        return None if wait < 0 else wait / 1000

    def ttl(self, key: str) -> float:
        return max(0.0, self.client.pttl(key) / 1000)

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def ping(self) -> None:
        # A write: a replica, which a failover may leave behind this address, answers PING as a primary does.
        self.client.set(READINESS_KEY, 1, ex=60)


class _LocalCounters:
    """The same operations in this process, for a run without Redis (jobs and cache are in-process too)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = {}  # key -> TAT (rates) or expiry (cooldowns), in ms since the epoch

    @staticmethod
    def _now() -> float:
        return time.time() * 1000

    def _rate_hit(self, rates: list[Rate]) -> float:
        now = self._now()
        tats = [max(self.values.get(rate.key, now), now) + rate.interval_ms for rate in rates]
        wait = max(tat - rate.interval_ms * rate.limit - now for tat, rate in zip(tats, rates))
        if wait <= 0:
            self.values.update({rate.key: tat for tat, rate in zip(tats, rates)})
            return 0.0
        return wait / 1000

    def rate_hit(self, rates: list[Rate]) -> float:
        with self.lock:
            return self._rate_hit(rates)

    def rate_unhit(self, key: str, interval_ms: int) -> None:
        with self.lock:
            if key in self.values:
                self.values[key] -= interval_ms

    def rate_peek(self, rates: list[Rate]) -> float:
        with self.lock:
            now = self._now()
            return max([0.0, *(max(self.values.get(rate.key, now), now) + rate.interval_ms * (1 - rate.limit) - now
                               for rate in rates)]) / 1000

    def flag_set(self, key: str, seconds: int) -> None:
        with self.lock:
            self.values[key] = self._now() + seconds * 1000

    def rate_backlog_ms(self, key: str) -> float:
        with self.lock:
            return max(0.0, self.values.get(key, 0.0) - self._now())

    def cooldown_then_rate_hit(self, cooldown_key: str, seconds: int, rates: list[Rate]) -> tuple[bool, float]:
        with self.lock:
            now = self._now()
            if self.values.get(cooldown_key, 0.0) > now:
                return False, (self.values[cooldown_key] - now) / 1000
            self.values[cooldown_key] = now + seconds * 1000
            return True, self._rate_hit(rates)

    def peek_then_cooldown_then_rate_hit(self, peek: list[Rate], cooldown_key: str, seconds: int,
                                         rates: list[Rate]) -> tuple[int, float]:
        with self.lock:
            now = self._now()
            wait = max([0.0, *(max(self.values.get(rate.key, now), now) + rate.interval_ms * (1 - rate.limit) - now
                               for rate in peek)])
            if wait > 0:
                return 0, wait / 1000
            if self.values.get(cooldown_key, 0.0) > now:
                return 1, (self.values[cooldown_key] - now) / 1000
            self.values[cooldown_key] = now + seconds * 1000
            return 2, self._rate_hit(rates)

    def flag_absent_then_rate_hit(self, flag_key: str, rates: list[Rate]) -> float | None:
        with self.lock:
            if self.values.get(flag_key, 0.0) > self._now():
                return None
            return self._rate_hit(rates)

    def ttl(self, key: str) -> float:
        with self.lock:
            return max(0.0, self.values.get(key, 0.0) - self._now()) / 1000

    def delete(self, key: str) -> None:
        with self.lock:
            self.values.pop(key, None)

    def ping(self) -> None:
        pass  # in this process: always there


@functools.cache
def _store():
    # Made on first use, in the process that uses it (never before a fork).
    return _RedisCounters(settings.REDIS_URL) if settings.REDIS_URL else _LocalCounters()


def store_ping() -> None:
    """Readiness: raises when the Redis that holds the throttles does not take a write (down, or a replica:
    redis.exceptions.ReadOnlyError)."""
    _store().ping()


def _whole_seconds(wait: float) -> int:
    return max(1, math.ceil(wait)) if wait > 0 else 0


def rate_hit(*, key: str, limit: int, period: int) -> int:
    """Count one hit against "at most `limit` hits per `period` seconds" (GCRA); return 0 when allowed (and
    counted), else the whole seconds until a hit would be allowed (nothing counted)."""
    return rates_hit(rates=[Rate(key, limit, period)])


def rates_hit(*, rates: list[Rate]) -> int:
    """Count one hit against every rate in `rates` at once, atomically: 0 when all allow it (each counts it),
    else the whole seconds until all would (none counts it)."""
    return _whole_seconds(_store().rate_hit(rates))


def rates_wait(*, rates: list[Rate]) -> int:
    """The whole seconds until every rate in `rates` would allow a hit (0: now), counting nothing: one read-only
    Redis operation. What a later rates_hit will answer, unless others hit the same keys meanwhile."""
    return _whole_seconds(_store().rate_peek(rates))


def rate_unhit(*, key: str, limit: int, period: int) -> None:
    """Give back one hit counted by rate_hit (a success that should not spend the budget)."""
    _store().rate_unhit(key, _interval_ms(limit, period))


def rate_reset(*, key: str) -> None:
    """Forget every hit counted on `key`."""
    _store().delete(key)


def rate_count(*, key: str, limit: int, period: int) -> int:
    """How many of the `limit` hits are spent now (they come back one per `period / limit` seconds)."""
    return math.ceil(_store().rate_backlog_ms(key) / _interval_ms(limit, period))


def cooldown_then_rate_hit(*, cooldown_key: str, seconds: int, key: str, limit: int, period: int) -> int:
    """Take the cooldown (`seconds` long), and only then count one hit against `key`'s rate; return 0 when both
    allow it, else the whole seconds to wait: what is left of the cooldown, or until the rate allows a hit."""
    taken, wait = _store().cooldown_then_rate_hit(cooldown_key, seconds, [Rate(key, limit, period)])
    if not taken:
        return max(1, math.ceil(wait))
    return _whole_seconds(wait)


def peek_then_cooldown_then_rate_hit(*, peek: list[Rate], cooldown_key: str, seconds: int, key: str, limit: int,
                                     period: int) -> tuple[int, int]:
    """rates_wait(rates=peek), then, only when it is 0, cooldown_then_rate_hit with the other arguments: one
    atomic Redis operation where the two were two round trips.

    Returns (whole seconds until every rate in `peek` would allow a hit, 0) when one does not (nothing taken,
    nothing counted), else (0, what cooldown_then_rate_hit returns)."""
    stage, wait = _store().peek_then_cooldown_then_rate_hit(peek, cooldown_key, seconds, [Rate(key, limit, period)])
    if stage == 0:
        return max(1, math.ceil(wait)), 0
    if stage == 1:
        return 0, max(1, math.ceil(wait))
    return 0, _whole_seconds(wait)


def cooldown_absent_then_rates_hit(*, cooldown_key: str, rates: list[Rate]) -> int | None:
    """Unless the cooldown `cooldown_key` is running, rates_hit(rates=rates), in one atomic Redis operation where
    cooldown_remaining and rates_hit were two round trips. Returns None while the cooldown runs (nothing counted),
    else what rates_hit returns."""
    wait = _store().flag_absent_then_rate_hit(cooldown_key, rates)
    return None if wait is None else _whole_seconds(wait)


def cooldown_remaining(*, key: str) -> int:
    """Whole seconds left on the cooldown `key` (0 when none is running)."""
    return math.ceil(_store().ttl(key))


def cooldown_start(*, key: str, seconds: int) -> None:
    """Start (or restart) the cooldown `key`, `seconds` long, whether or not one is running (`SET EX`)."""
    _store().flag_set(key, seconds)


def cooldown_release(*, key: str) -> None:
    """End the cooldown `key` now."""
    _store().delete(key)
