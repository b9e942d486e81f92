"""The failure budget's schedule: at most 1 % of the code space in compared wrong guesses a year per address."""
import pytest

from core.errors import RateLimited
from otp import services, throttles
from otp.models import Purpose

pytestmark = pytest.mark.django_db


def test_the_yearly_maximum_of_compared_guesses_is_within_one_percent_of_the_code_space(settings):
    # 27 a day: a burst of 27, then one every 3,200 s: 27 + 31,536,000 / 3,200 = 9,882 in 365 days.
    assert throttles.failure_budget_yearly_maximum() == 9_882
    assert throttles.failure_budget_yearly_maximum() <= 10 ** settings.OTP_LENGTH // 100


def test_past_the_daily_budget_verify_is_refused_with_the_real_wait(settings, email_address, fixed_code):
    settings.OTP_MAX_FAILURES_PER_DAY = 3
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    for _ in range(3):
        with pytest.raises(Exception) as refused:
            services.code_verify(address=email_address, code="000000")
        assert not isinstance(refused.value, RateLimited)
    with pytest.raises(RateLimited) as throttled:
        services.code_verify(address=email_address, code=fixed_code[-1])  # even the right code is not compared
    assert 86400 / 3 - 5 <= throttled.value.wait_seconds <= 86400 / 3


def test_a_successful_verify_resets_the_run_of_failures(settings, email_address, fixed_code):
    settings.OTP_MAX_FAILURES_PER_DAY = 3
    services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    for _ in range(2):
        with pytest.raises(Exception):
            services.code_verify(address=email_address, code="000000")
    services.code_verify(address=email_address, code=fixed_code[-1])
    assert throttles.address_throttle_state(address=email_address)["failures_per_day"] == 0
