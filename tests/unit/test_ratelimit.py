"""The throttle primitives, on Redis and on the in-process store the quick local run uses: the same rules."""
import time

import pytest

from core import ratelimit


@pytest.fixture(params=["redis", "local"])
def store(request, monkeypatch, redis_clean):
    from django.conf import settings

    chosen = ratelimit._RedisCounters(settings.REDIS_URL) if request.param == "redis" else ratelimit._LocalCounters()
    monkeypatch.setattr(ratelimit, "_store", lambda: chosen)
    return chosen


def hit(cooldown_key: str, limit: int = 10) -> int:
    return ratelimit.cooldown_then_window_hit(cooldown_key=cooldown_key, seconds=30, key="sends", limit=limit,
                                              window=3600)


def test_a_taken_cooldown_answers_its_seconds_left_and_counts_nothing(store):
    assert hit("cooldown:a") == 0
    assert 29 <= hit("cooldown:a") <= 30
    assert ratelimit.window_count(key="sends", window=3600) == 1


def test_past_the_limit_the_wait_is_what_is_left_of_the_window(store):
    assert [hit(f"cooldown:{n}", limit=2) for n in range(2)] == [0, 0]
    wait = hit("cooldown:third", limit=2)
    window_end = (int(time.time() // 3600) + 1) * 3600
    assert 1 <= wait <= window_end - time.time() + 1
    assert ratelimit.window_count(key="sends", window=3600) == 3


def test_a_released_cooldown_can_be_taken_again(store):
    assert hit("cooldown:a") == 0
    ratelimit.cooldown_release(key="cooldown:a")
    assert hit("cooldown:a") == 0
