"""App config for one-time codes and their delivery."""
from django.apps import AppConfig
from django.conf import settings


class OtpConfig(AppConfig):
    name = "otp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        delivery_chain_check()
        failure_budget_check()


def failure_budget_check() -> None:
    """Refuse to start unless the failure budget allows at most 1 % of the code space in compared wrong guesses
    a year (contract: One-time codes; at 6 digits, 10,000). Raises SystemExit with one line naming the setting."""
    from otp.throttles import failure_budget_yearly_maximum

    allowed = 10 ** settings.OTP_LENGTH // 100
    if failure_budget_yearly_maximum() > allowed:
        raise SystemExit(
            f"Invalid setting OTP_MAX_FAILURES_PER_DAY={settings.OTP_MAX_FAILURES_PER_DAY!r}: expected a value that "
            f"keeps the wrong guesses compared for one address within {allowed} a year (1 % of the "
            f"{settings.OTP_LENGTH}-digit code space; now {failure_budget_yearly_maximum()}): "
            f"at most {allowed // 366} a day with OTP_LENGTH={settings.OTP_LENGTH}."
        )


def delivery_chain_check() -> None:
    """Refuse to start unless the longest provider wait < the delivery lease < the broker's visibility timeout.

    A worker that still waits on a provider after its lease lapsed, or after the broker handed its job to
    another worker, is exactly how a second worker sends the same code again (contract: Delivery). The lease
    is derived from the configured providers (otp.providers.registry), hence this check runs once the apps
    are ready rather than in the settings module. Raises SystemExit with one line naming the variable.
    """
    from otp import providers

    lease = providers.delivery_lease_seconds()
    # A run that finds the delivery held retries just after the lease lapses: that delay must be due before
    # the broker would hand the job out again.
    if lease + 1 >= settings.CELERY_VISIBILITY_TIMEOUT_SECONDS:
        raise SystemExit(
            f"Invalid setting CELERY_VISIBILITY_TIMEOUT_SECONDS={settings.CELERY_VISIBILITY_TIMEOUT_SECONDS!r}: "
            f"expected a value above the delivery lease ({lease:g} s: the slowest configured provider's timeout "
            f"plus a margin) plus 1."
        )
