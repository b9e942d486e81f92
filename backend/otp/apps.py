"""App config for one-time codes and their delivery."""
from django.apps import AppConfig
from django.conf import settings


class OtpConfig(AppConfig):
    name = "otp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        delivery_chain_check()


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
