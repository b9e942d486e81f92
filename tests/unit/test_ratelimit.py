"""The throttle primitives, on Redis and on the in-process store the quick local run uses: the same rules."""
import pytest

from core import ratelimit
from core.throttling import client_key


@pytest.fixture(params=["redis", "local"])
def store(request, monkeypatch, redis_clean):
    from django.conf import settings

    chosen = ratelimit._RedisCounters(settings.REDIS_URL) if request.param == "redis" else ratelimit._LocalCounters()
    monkeypatch.setattr(ratelimit, "_store", lambda: chosen)
    return chosen


def hit(cooldown_key: str, limit: int = 10) -> int:
    return ratelimit.cooldown_then_rate_hit(cooldown_key=cooldown_key, seconds=30, key="sends", limit=limit,
                                            period=3600)


def test_a_taken_cooldown_answers_its_seconds_left_and_counts_nothing(store):
    assert hit("cooldown:a") == 0
    assert 29 <= hit("cooldown:a") <= 30
    assert ratelimit.rate_count(key="sends", limit=10, period=3600) == 1


def test_past_the_limit_the_wait_is_until_one_hit_comes_back(store):
    assert [hit(f"cooldown:{n}", limit=2) for n in range(2)] == [0, 0]
    wait = hit("cooldown:third", limit=2)
    # Two hits an hour: one comes back 1800 s after the first was counted.
    assert 1795 <= wait <= 1800
    assert ratelimit.rate_count(key="sends", limit=2, period=3600) == 2


def test_a_spent_peeked_rate_takes_neither_the_cooldown_nor_the_rate(store):
    budget = ratelimit.Rate("budget", 2, 3600)
    assert ratelimit.rates_hit(rates=[budget]) == 0
    taken = dict(peek=[budget], seconds=30, key="sends", limit=10, period=3600)

    assert ratelimit.peek_then_cooldown_then_rate_hit(cooldown_key="cooldown:a", **taken) == (0, 0)
    assert ratelimit.rate_count(key="sends", limit=10, period=3600) == 1
    assert ratelimit.rates_hit(rates=[budget]) == 0  # the budget's second and last message
    wait, throttle_wait = ratelimit.peek_then_cooldown_then_rate_hit(cooldown_key="cooldown:b", **taken)

    assert 1795 <= wait <= 1800 and throttle_wait == 0
    assert ratelimit.cooldown_remaining(key="cooldown:b") == 0
    assert ratelimit.rate_count(key="sends", limit=10, period=3600) == 1
    assert ratelimit.rate_count(key="budget", limit=2, period=3600) == 2  # read, never counted by this call
    # Under the budget, the cooldown still answers as cooldown_then_rate_hit does.
    assert ratelimit.peek_then_cooldown_then_rate_hit(cooldown_key="cooldown:a", **{**taken, "peek": []})[1] >= 29


def test_a_running_cooldown_keeps_the_rates_from_counting(store):
    rates = [ratelimit.Rate("budget", 2, 3600)]
    assert ratelimit.cooldown_absent_then_rates_hit(cooldown_key="suppressed", rates=rates) == 0
    ratelimit.cooldown_start(key="suppressed", seconds=60)

    assert ratelimit.cooldown_absent_then_rates_hit(cooldown_key="suppressed", rates=rates) is None
    assert ratelimit.rate_count(key="budget", limit=2, period=3600) == 1
    ratelimit.cooldown_release(key="suppressed")
    assert ratelimit.cooldown_absent_then_rates_hit(cooldown_key="suppressed", rates=rates) == 0
    assert 1795 <= ratelimit.cooldown_absent_then_rates_hit(cooldown_key="suppressed", rates=rates) <= 1800


def test_a_released_cooldown_can_be_taken_again(store):
    assert hit("cooldown:a") == 0
    ratelimit.cooldown_release(key="cooldown:a")
    assert hit("cooldown:a") == 0


def test_a_rate_allows_its_limit_in_a_burst_and_never_twice_that_across_any_edge(store):
    # A fixed window of 60 a minute let a client have 120 judged within seconds across the minute's edge;
    # GCRA allows the burst of 60, then one more per second, wherever the clock stands.
    allowed = sum(ratelimit.rate_hit(key="ip:verify:x", limit=60, period=60) == 0 for _ in range(200))
    assert allowed == 60
    assert ratelimit.rate_hit(key="ip:verify:x", limit=60, period=60) == 1


def test_a_peek_tells_what_the_next_hit_would_answer_and_counts_nothing(store):
    rates = [ratelimit.Rate("whole", 3, 3600), ratelimit.Rate("share", 2, 3600)]
    assert ratelimit.rates_wait(rates=rates) == 0
    assert [ratelimit.rates_hit(rates=rates) for _ in range(2)] == [0, 0]
    # The tighter rate decides: two an hour, so one comes back 1800 s after the first.
    assert 1795 <= ratelimit.rates_wait(rates=rates) <= 1800
    assert ratelimit.rates_wait(rates=rates[:1]) == 0  # the whole budget still has one
    assert ratelimit.rate_count(key="whole", limit=3, period=3600) == 2  # the peeks counted nothing
    refused, peeked = ratelimit.rates_hit(rates=rates), ratelimit.rates_wait(rates=rates)
    assert refused > 0 and abs(refused - peeked) <= 1  # a second's rounding apart at most


def test_a_started_cooldown_runs_even_over_one_already_running(store):
    ratelimit.cooldown_start(key="suppressed", seconds=100)
    ratelimit.cooldown_start(key="suppressed", seconds=1000)
    assert 990 <= ratelimit.cooldown_remaining(key="suppressed") <= 1000


def test_a_hit_given_back_can_be_used_again(store):
    assert [ratelimit.rate_hit(key="failures", limit=3, period=3600) for _ in range(3)] == [0, 0, 0]
    assert ratelimit.rate_hit(key="failures", limit=3, period=3600) > 0
    ratelimit.rate_unhit(key="failures", limit=3, period=3600)
    assert ratelimit.rate_count(key="failures", limit=3, period=3600) == 2
    assert ratelimit.rate_hit(key="failures", limit=3, period=3600) == 0


@pytest.mark.parametrize("ident, key", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::"),
    ("2001:db8:1:2::1", "2001:db8:1:2::"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("not-an-address", "not-an-address"),
])
def test_ipv6_clients_are_one_client_per_64(ident, key):
    assert client_key(ident) == key
