"""Throttle primitives on Redis, so limits hold across every API process: one Redis operation per check.

A cooldown is `SET key value NX EX seconds`: of parallel requests exactly one sets it. A counter is a fixed
window: `INCR` and `EXPIRE ... NX` in one round trip, the key carrying the window's start so the wait until it
resets needs no TTL lookup. A cooldown guarding a counter (the per-address send limits) is one Lua script: one
round trip where the two would take two. Without REDIS_URL (the quick local run) the same rules run on an
in-process dict.
"""
import functools
import math
import threading
import time

import redis
from django.conf import settings

HOUR = 3600
RATE_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
                "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def rate_parse(rate: str) -> tuple[int, int]:
    """`30/min` -> (30, 60). Settings validated the format at start-up."""
    count, period = rate.split("/")
    return int(count), RATE_PERIODS[period]


# KEYS: the cooldown, the counter. ARGV: the cooldown's seconds, the counter's expiry. Returns {1, count} when
# the cooldown was taken (and the counter counted), {0, milliseconds left on the cooldown} when it was not.
_COOLDOWN_THEN_INCR = """
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then
    local count = redis.call('INCR', KEYS[2])
    redis.call('EXPIRE', KEYS[2], ARGV[2], 'NX')
    return {1, count}
end
return {0, redis.call('PTTL', KEYS[1])}
"""


class _RedisCounters:
    def __init__(self, url: str) -> None:
        # An outage must answer fast (503 through core.exception_handler), not hang a request.
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.cooldown_then_incr_script = self.client.register_script(_COOLDOWN_THEN_INCR)

    def cooldown_then_incr(self, cooldown_key: str, seconds: int, key: str, expire: int) -> tuple[bool, float]:
        taken, value = self.cooldown_then_incr_script(keys=[cooldown_key, key], args=[seconds, expire])
        return (True, value) if taken else (False, max(0.0, value / 1000))

    def ttl(self, key: str) -> float:
        return max(0.0, self.client.pttl(key) / 1000)

    def incr(self, key: str, expire: int) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, expire, nx=True)
        return pipe.execute()[0]

    def decr(self, key: str) -> None:
        self.client.decr(key)

    def get(self, key: str) -> int:
        return int(self.client.get(key) or 0)

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def ping(self) -> None:
        self.client.ping()


class _LocalCounters:
    """The same operations in this process, for a run without Redis (jobs and cache are in-process too)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)

    def _live(self, key: str) -> tuple[int, float] | None:
        entry = self.values.get(key)
        if entry and entry[1] <= time.time():
            del self.values[key]
            return None
        return entry

    def ttl(self, key: str) -> float:
        with self.lock:
            entry = self._live(key)
            return max(0.0, entry[1] - time.time()) if entry else 0.0

    def incr(self, key: str, expire: int) -> int:
        with self.lock:
            return self._incr(key, expire)

    def _incr(self, key: str, expire: int) -> int:
        value, expires_at = self._live(key) or (0, time.time() + expire)
        self.values[key] = (value + 1, expires_at)
        return value + 1

    def cooldown_then_incr(self, cooldown_key: str, seconds: int, key: str, expire: int) -> tuple[bool, float]:
        with self.lock:
            cooldown = self._live(cooldown_key)
            if cooldown:
                return False, max(0.0, cooldown[1] - time.time())
            self.values[cooldown_key] = (1, time.time() + seconds)
            return True, self._incr(key, expire)

    def decr(self, key: str) -> None:
        with self.lock:
            entry = self._live(key)
            if entry:
                self.values[key] = (entry[0] - 1, entry[1])

    def get(self, key: str) -> int:
        with self.lock:
            entry = self._live(key)
            return entry[0] if entry else 0

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
    """Readiness: raises when the Redis that holds the throttles does not answer."""
    _store().ping()


def cooldown_then_window_hit(*, cooldown_key: str, seconds: int, key: str, limit: int, window: int) -> int:
    """Take the cooldown, and only then count one hit in `key`'s window; return 0 when both allow it, else the
    whole seconds to wait: what is left of the cooldown, or of the window once `limit` is passed."""
    window_key, start = _window_key(key, window)
    taken, value = _store().cooldown_then_incr(cooldown_key, seconds, window_key, window + 1)
    if not taken:
        return max(1, math.ceil(value))
    return _window_wait(count=value, limit=limit, start=start, window=window)


def cooldown_remaining(*, key: str) -> int:
    return math.ceil(_store().ttl(key))


def cooldown_release(*, key: str) -> None:
    _store().delete(key)


def _window_key(key: str, window: int) -> tuple[str, float]:
    start = int(time.time() // window) * window
    return f"{key}:{start}", start


def _window_wait(*, count: int, limit: int, start: float, window: int) -> int:
    """0 while `count` is within `limit`, else the whole seconds to the end of the window that began at `start`."""
    return max(1, math.ceil(start + window - time.time())) if count > limit else 0


def window_hit(*, key: str, limit: int, window: int) -> int:
    """Count one hit in the current window; return 0 while within `limit`, else the seconds to the window's end."""
    window_key, start = _window_key(key, window)
    return _window_wait(count=_store().incr(window_key, window + 1), limit=limit, start=start, window=window)


def window_unhit(*, key: str, window: int) -> None:
    """Take back one hit counted in the current window (a success that should not use the budget)."""
    _store().decr(_window_key(key, window)[0])


def window_count(*, key: str, window: int) -> int:
    return _store().get(_window_key(key, window)[0])
