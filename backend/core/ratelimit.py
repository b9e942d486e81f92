"""Throttle primitives on the shared cache (Redis in every real deployment), so limits hold across processes.

A cooldown is one `SET key NX EX` (Django's cache.add). A counter is a fixed window: the key carries
the window's start, so the wait until it resets is known without asking Redis for a TTL.
"""
import math
import time

from django.core.cache import cache

RATE_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
                "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def rate_parse(rate: str) -> tuple[int, int]:
    """`30/min` -> (30, 60). Settings validated the format at start-up."""
    count, period = rate.split("/")
    return int(count), RATE_PERIODS[period]


def cooldown_acquire(*, key: str, seconds: int) -> int:
    """Take the cooldown for `key`; return 0 when taken, else the seconds left on it."""
    now = time.time()
    if cache.add(key, now + seconds, timeout=seconds):
        return 0
    held_until = cache.get(key)
    if held_until is None:  # it lapsed between the two calls: try once more
        return 0 if cache.add(key, now + seconds, timeout=seconds) else 1
    return max(1, math.ceil(held_until - now))


def window_hit(*, key: str, limit: int, window: int) -> int:
    """Count one hit in the current window; return 0 while within `limit`, else the seconds to the window's end."""
    now = time.time()
    start = int(now // window) * window
    window_key = f"{key}:{start}"
    cache.add(window_key, 0, timeout=window + 1)
    try:
        count = cache.incr(window_key)
    except ValueError:  # evicted between add and incr
        cache.add(window_key, 1, timeout=window + 1)
        count = 1
    if count > limit:
        return max(1, math.ceil(start + window - now))
    return 0


def window_unhit(*, key: str, window: int) -> None:
    """Take back one hit counted in the current window (a success that should not use the budget)."""
    start = int(time.time() // window) * window
    try:
        cache.decr(f"{key}:{start}")
    except ValueError:
        pass


def window_count(*, key: str, window: int) -> int:
    start = int(time.time() // window) * window
    return int(cache.get(f"{key}:{start}") or 0)
